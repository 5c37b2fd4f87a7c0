"""Comparison numbers: Δm, the table rows, curve rows, confusion matrices."""

import math

import numpy as np
import pytest
import torch

from mtl_core.analysis import (
    compare_rows,
    confusion,
    curve_rows,
    delta_m,
    delta_m_missing,
    is_mistake,
    ordered_columns,
    predictions_on_test_set,
)
from mtl_core.models import build_model


def run(model, best, tasks=("even", "mult3"), status="finished", created=1.0, data="mnist", **config):
    return {
        "id": f"id-{model}-{created}",
        "label": "",
        "model": model,
        "status": status,
        "created": created,
        "config": {"tasks": list(tasks), "data": data, "epochs": 20, "seed": 0} | config,
        "params": 1,
        "train_seconds": 2.0,
        "best_epoch": 3,
        "best": best,
        "best_avg": 0.9,
    }


def test_delta_m_signs_and_missing_tasks():
    base = {"even": {"acc": 0.8}, "value": {"mae": 0.2}}
    better = {"even": {"acc": 0.88}, "value": {"mae": 0.1}}  # +10 % and a halved MAE (+50 %)
    assert delta_m(better, base) == pytest.approx(30.0)
    assert delta_m({"mult3": {"acc": 0.9}}, base) is None


def test_compare_rows_use_the_matching_stl_run():
    stl = run("stl", {"even": {"acc": 0.98}, "mult3": {"acc": 0.96}}, created=1)
    other_data = run("stl", {"even": {"acc": 0.5}, "mult3": {"acc": 0.5}}, created=3, data="synthetic")
    hard = run("hard", {"even": {"acc": 0.98}, "mult3": {"acc": 0.99}}, created=2)
    rows = compare_rows([hard, stl], pool=[stl, hard, other_data])
    assert rows[0]["Δm vs STL %"] == pytest.approx(100 * (0.03 / 0.96) / 2, abs=0.01)
    assert rows[1]["Δm vs STL %"] is None  # STL itself
    assert rows[0]["even acc %"] == 98.0


def test_every_run_without_a_delta_m_says_why():
    best = {"even": {"acc": 0.98}, "mult3": {"acc": 0.99}}
    stl, hard = run("stl", best, created=1), run("hard", best, created=2)
    assert delta_m_missing(hard, [stl, hard]) == ""  # it has one
    assert "baseline" in delta_m_missing(stl, [stl, hard])
    assert "no finished epoch" in delta_m_missing(run("hard", None, status="running"), [stl])
    cnn = run("cnn", best, tasks=("even", "digit"), created=3)
    # A CNN is measured against one CNN per task (its family's single-task model), never against MLPs.
    stl_mlp_same_tasks = run("stl", best, tasks=("even", "digit"), created=4)
    message = delta_m_missing(cnn, [stl, stl_mlp_same_tasks, cnn])
    assert "no finished single-task CNN run on even+digit with the same seed 0, 20 epochs, mnist" in message
    stl_cnn = run("stl_cnn", best, tasks=("even", "digit"), created=5)
    assert delta_m_missing(cnn, [stl_cnn, cnn]) == ""
    assert "baseline" in delta_m_missing(stl_cnn, [stl_cnn, cnn])
    assert "no finished STL run" in delta_m_missing(hard, [run("stl", best, data="synthetic"), hard])


def test_curve_rows_and_confusion():
    rec = {
        "epoch": 1,
        "train_loss": {"even": 0.5},
        "test_loss": {"even": 0.4},
        "metrics": {"even": {"acc": 0.9}},
        "avg_acc": 0.9,
        "seconds": 0.3,
    }
    rows = curve_rows(run("hard", {}), [rec])
    assert {r["quantity"] for r in rows} == {"train loss", "test loss", "test acc", "seconds"}
    m = confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_test_predictions_cover_every_task(synthetic):
    torch.manual_seed(0)
    preds = predictions_on_test_set(build_model("cnn"), synthetic)
    assert set(preds) == {"digit", "even", "gt4", "value"}
    assert preds["digit"]["pred"].shape == (synthetic.n_test,)
    assert preds["value"]["true"].max() <= 9.0
    assert isinstance(is_mistake(preds, 0), bool)


def test_table_columns_keep_one_order_whichever_run_is_selected_first():
    cnn = run(
        "cnn", {"value": {"mae": 0.1}, "digit": {"acc": 0.99}, "even": {"acc": 0.99}}, tasks=("value", "digit", "even")
    )
    hard = run("hard", {"mult3": {"acc": 0.98}, "even": {"acc": 0.97}}, tasks=("mult3", "even"), created=2)
    a = ordered_columns(compare_rows([cnn, hard]))
    b = ordered_columns(compare_rows([hard, cnn]))
    assert a == b
    assert a[:5] == ["run", "best avg acc %", "Δm vs STL %", "params", "train_s"]
    tasks = [c for c in a if c.endswith(("acc %", "(digits)")) and c != "best avg acc %"]
    assert tasks == ["digit acc %", "even acc %", "mult3 acc %", "value MAE (digits)"]  # the task list's order


def test_the_seed_study_sits_beside_the_reference_once_all_three_finished():
    from mtl_core.analysis import seed_study_rows
    from mtl_core.reference import SEED_STUDY

    best = {"even": {"acc": 0.98}, "mult3": {"acc": 0.99}}
    study = []
    for i, m in enumerate(("stl", "hard", "cross_stitch")):
        r = run(m, best, created=10 + i)
        r["label"], r["params"], r["best_avg"] = f"seed study {m}", 1000 + i, 0.985
        study.append(r)
    older = dict(study[1], label="seed study hard", created=1, best_avg=0.5)
    assert seed_study_rows(study[:2]) == []  # not all three yet
    rows = seed_study_rows([older, *study, run("hard", best, created=99)])
    assert [r["model"] for r in rows] == ["stl", "hard", "cross_stitch"]
    hard = rows[1]
    assert hard["best avg acc %"] == 98.5  # the newest study's hard run, not the older one
    assert hard["params (reference)"] == SEED_STUDY["rows"]["hard"]["params"]
    assert hard["difference (pp)"] == round(98.5 - 100 * SEED_STUDY["rows"]["hard"]["best_avg"], 2)


def test_task_affinity_groups_the_tasks_that_help_each_other():
    from mtl_core.analysis import run_affinity, suggest_grouping

    tasks = ["digit", "even", "gt4", "value"]
    helps = {("digit", "value"), ("value", "digit"), ("even", "gt4"), ("gt4", "even")}
    affinity = {f"{i}|{j}": (0.01 if (i, j) in helps else -0.004) for i in tasks for j in tasks if i != j}
    assert suggest_grouping(affinity, tasks) == [("digit", "value"), ("even", "gt4")]
    # Nothing helps anything: every task alone. Everything helps everything: one shared network.
    assert suggest_grouping({k: -0.01 for k in affinity}, tasks) == [(t,) for t in tasks]
    assert suggest_grouping({k: 0.01 for k in affinity}, tasks) == [tuple(tasks)]
    records = [{"conflict": {"affinity": {"a|b": 0.2}}}, {"conflict": None}, {"conflict": {"affinity": {"a|b": 0.4}}}]
    assert run_affinity(records) == {"a|b": pytest.approx(0.3)}


def test_a_label_shuffled_copy_of_a_task_gets_no_affinity_from_it(real_data):
    """Fifty et al.'s sanity check: a step on 'even' lowers even's own loss, and does nothing for a task
    whose labels are even's labels shuffled (its loss cannot follow what the step learned)."""
    import torch

    from mtl_core.config import TrainConfig
    from mtl_core.training.loop import Training

    training = Training(TrainConfig.preset("hard", epochs=1, data=real_data.source, path="autograd"), real_data)
    shuffled = torch.randperm(len(training._train_t["even"]), generator=torch.Generator().manual_seed(0))
    training._train_t["mult3"] = training._train_t["even"][shuffled]
    list(training.records())
    for b in range(8):
        training._probe_conflict(torch.arange(b * 128, (b + 1) * 128))
    z = training._conflict_record()["affinity"]
    assert z["even|even"] > 0.002
    assert abs(z["even|mult3"]) < 0.05 * z["even|even"], z


# ----------------------------------------------------------------------------- seeds, budgets, Δm


def test_a_baseline_must_share_the_seed_and_the_budget():
    best = {"even": {"acc": 0.9}, "mult3": {"acc": 0.9}}
    hard = run("hard", {"even": {"acc": 0.99}, "mult3": {"acc": 0.9}}, created=9, seed=3, val_split=1000)
    for why, other in {
        "seed": run("stl", best, seed=4, val_split=1000),
        "epochs": run("stl", best, seed=3, val_split=1000, epochs=10),
        "validation split": run("stl", best, seed=3),
        "digits": run("stl", best, seed=3, val_split=1000, train_limit=500),
    }.items():
        assert compare_rows([hard], pool=[other])[0]["Δm vs STL %"] is None, why
        assert "seed 3, 20 epochs, mnist" in delta_m_missing(hard, [other]), why
    same = run("stl", best, seed=3, val_split=1000)
    assert compare_rows([hard], pool=[same])[0]["Δm vs STL %"] == pytest.approx(5.0)
    assert compare_rows([hard], pool=[same])[0]["best epoch picked on"] == "validation (1,000 digits)"


def test_runs_that_differ_only_in_their_seed_are_one_configuration_with_mean_and_std():
    from mtl_core.analysis import group_rows, seed_groups
    from mtl_core.metrics import mean_std

    def hard(seed, acc, created, **kw):
        r = run("hard", {"even": {"acc": acc}, "mult3": {"acc": acc}}, created=created, seed=seed, **kw)
        r["best_avg"], r["train_seconds"] = acc, 10.0 + seed
        return r

    runs = [hard(0, 0.90, 1), hard(1, 0.92, 2), hard(2, 0.94, 3), hard(0, 0.5, 4, lr=0.1)]
    groups = seed_groups(runs)
    assert [[r["config"]["seed"] for r in g] for g in groups] == [[0, 1, 2], [0]]
    assert mean_std([0.9, 0.92, 0.94]) == (pytest.approx(0.92), pytest.approx(0.02))
    assert mean_std([1.0]) == (1.0, None)
    rows = group_rows(groups, pool=runs)
    assert rows[0]["seeds"] == 3 and rows[0]["best avg acc %"] == "92.00 ± 2.00"
    assert rows[0]["even acc %"] == "92.00 ± 2.00" and rows[0]["train_s"] == "11.0 ± 1.0"
    assert rows[1]["best avg acc %"] == "50.00"  # one seed: no spread to show
    full = group_rows(groups, pool=runs, rounded=False)
    assert full[0]["best avg acc % mean"] == pytest.approx(92.0)
    assert full[0]["best avg acc % std"] == pytest.approx(2.0)
    # A run still training is counted, not averaged.
    runs[2]["status"] = "running"
    assert group_rows(seed_groups(runs), pool=runs)[0]["best avg acc %"] == "91.00 ± 1.41"


def test_group_delta_m_is_paired_seed_by_seed_and_names_the_missing_seeds():
    from mtl_core.analysis import group_delta_m, missing_baselines, seed_groups

    hard = [
        run("hard", {"even": {"acc": a}, "mult3": {"acc": a}}, created=i, seed=i) for i, a in enumerate((0.9, 0.99))
    ]
    stl0 = run("stl", {"even": {"acc": 0.9}, "mult3": {"acc": 0.9}}, created=10, seed=0)
    stl1 = run("stl", {"even": {"acc": 0.9}, "mult3": {"acc": 0.9}}, created=11, seed=1)
    (group,) = seed_groups(hard)
    values, why = group_delta_m(group, [*hard, stl0])
    assert values == [] and "with seed 1 and the same 20 epochs, mnist" in why
    (cfg,) = missing_baselines(hard, [*hard, stl0])
    assert (cfg["model"], cfg["seed"], cfg["epochs"], cfg["data"]) == ("stl", 1, 20, "mnist")
    assert cfg["tasks"] == ["even", "mult3"]
    queued = dict(stl1, status="queued", best={})
    assert missing_baselines(hard, [*hard, stl0, queued]) == []  # already on its way
    values, why = group_delta_m(group, [*hard, stl0, stl1])
    assert why == "" and values == [pytest.approx(0.0), pytest.approx(10.0)]  # each against its own seed


def test_bands_are_the_mean_and_std_of_each_epoch():
    from mtl_core.analysis import band

    a = [{"epoch": 1, "avg_acc": 0.5}, {"epoch": 2, "avg_acc": 0.7}]
    b = [{"epoch": 1, "avg_acc": 0.7}, {"epoch": 2, "avg_acc": 0.9}, {"epoch": 3, "avg_acc": 0.95}]
    epochs, mean, std = band([a, b])
    assert epochs == [1, 2, 3]
    assert mean == pytest.approx([0.6, 0.8, 0.95])
    assert std == pytest.approx([math.sqrt(0.02), math.sqrt(0.02), 0.0])


def test_validation_curves_are_named_as_such():
    rec = {
        "epoch": 1,
        "split": "validation",
        "train_loss": {"even": 0.5},
        "val_loss": {"even": 0.4},
        "metrics": {"even": {"acc": 0.9}},
        "avg_acc": 0.9,
        "seconds": 0.3,
    }
    rows = curve_rows(run("hard", {}), [rec])
    assert {r["quantity"] for r in rows} == {"train loss", "validation loss", "validation acc", "seconds"}


# ----------------------------------------------------------------------------- whose runs, which seeds count


def seeded(seed, acc, created, owner="ada", student="Ada", status="finished", **config):
    r = run("hard", {"even": {"acc": acc}, "mult3": {"acc": acc}}, created=created, status=status, seed=seed, **config)
    r.update(id=f"run-{owner}-{created:06.0f}", owner=owner, student=student, best_avg=acc)
    return r


def test_one_owners_runs_with_distinct_seeds_are_one_row_of_n_seeds():
    from mtl_core.analysis import group_rows, sort_seeds

    runs = [seeded(s, a, created=s + 1) for s, a in ((2, 0.94), (0, 0.90), (1, 0.92))]
    seeds = sort_seeds(runs)
    assert [[r["config"]["seed"] for r in g] for g in seeds.groups] == [[0, 1, 2]] and seeds.duplicates == {}
    (row,) = group_rows(seeds, pool=runs)
    assert row["seeds"] == 3 and row["best avg acc %"] == "92.00 ± 2.00"
    assert row["configuration"].startswith("Ada: hard · even+mult3 · 3 seeds (0, 1, 2)")
    assert "duplicates" not in row  # no column of blanks when nothing repeats


def test_a_repeated_seed_is_one_seed_and_a_flagged_duplicate_never_a_zero_spread():
    from mtl_core.analysis import group_rows, sort_seeds

    old, new = seeded(0, 0.9873, created=1), seeded(0, 0.9873, created=2)
    seeds = sort_seeds([old, new])
    (group,) = seeds.groups
    assert group == [new]  # the newest run of the seed counts
    assert seeds.duplicates == {old["id"]: (old, new)}
    (row,) = group_rows(seeds, pool=[old, new])
    assert row["seeds"] == 1 and row["best avg acc %"] == "98.73"  # no "± 0.00" from one seed twice
    assert row["configuration"].endswith("· seed 0")
    assert row["duplicates"] == f"run {old['id'][-6:]} duplicate of seed 0 (run {new['id'][-6:]} counts)"
    # A newer run of the seed still training does not push out the finished one.
    running = seeded(0, None, created=3, status="running")
    running["best"], running["best_avg"] = {}, None
    seeds = sort_seeds([old, new, running])
    assert seeds.groups == [[new]] and set(seeds.duplicates) == {old["id"], running["id"]}
    # With a second seed: the spread is over seeds 0 and 1, one run each.
    one = seeded(1, 0.9673, created=4)
    (row,) = group_rows(sort_seeds([old, new, one]), pool=[old, new, one])
    assert row["seeds"] == 2 and row["best avg acc %"] == "97.73 ± 1.41"


def test_two_students_are_two_rows_unless_the_teacher_combines_them():
    from mtl_core.analysis import group_rows, sort_seeds

    runs = [
        seeded(0, 0.90, 1, owner="ada", student="Ada"),
        seeded(0, 0.94, 2, owner="bob", student="Bob"),
        seeded(1, 0.92, 3, owner="bob", student="Bob"),
        seeded(0, 0.80, 4, owner="cy", student=""),  # no name given
    ]
    apart = group_rows(sort_seeds(runs), pool=runs, students=True)
    assert [(r["student"], r["seeds"]) for r in apart] == [("Ada", 1), ("Bob", 2), ("(no name given)", 1)]
    assert apart[0]["configuration"].startswith("Ada: hard") and apart[1]["configuration"].startswith("Bob: hard")
    pooled = sort_seeds(runs, across_owners=True)
    (group,) = pooled.groups
    assert [(r["owner"], r["config"]["seed"]) for r in group] == [("cy", 0), ("bob", 1)]  # newest of seed 0
    assert {d["owner"] for d, _ in pooled.duplicates.values()} == {"ada", "bob"}
    (row,) = group_rows(pooled, pool=runs, students=True)
    assert row["seeds"] == 2 and row["student"] == "Bob, 1 without a name"
    assert row["configuration"].startswith("Bob, 1 without a name: hard · even+mult3 · 2 seeds (0, 1)")
    assert row["duplicates"] == (
        "run 000002 (Bob) duplicate of seed 0 (run 000004 (no name given) counts); "
        "run 000001 (Ada) duplicate of seed 0 (run 000004 (no name given) counts)"
    )
