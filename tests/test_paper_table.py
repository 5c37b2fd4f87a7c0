"""The MultiMNIST table (mtl_core/paper_table.py): its runs, ours beside the published figures, and which
differences survive the spread between seeds."""

from __future__ import annotations

import math

import pytest

from mtl_core.paper_table import ROWS, TableRow, differences, table_configs, table_rows


def test_the_table_trains_every_row_on_the_papers_recipe_over_seeds():
    runs = table_configs(seeds=3, epochs=20)
    assert len(runs) == len(ROWS) * 3
    by_label = dict(runs)
    single = by_label["table single task · seed 2"]
    assert (single.model, single.loss_weighting, single.seed, single.epochs) == ("stl_lenet", "static", 2, 20)
    mgda = by_label["table MGDA-UB · seed 0"]
    assert (mgda.model, mgda.loss_weighting, mgda.data, mgda.optimizer, mgda.batch_size) == (
        "lenet",
        "mgda_ub",
        "multimnist",
        "sgd",
        256,
    )
    # A run ends once 15 epochs bring no better validation score (the LeNets peak well before 100).
    assert all(c.val_split == 6000 and c.patience == 15 for _, c in runs)
    assert {c.patience for _, c in table_configs(seeds=1, epochs=10)} == {0}  # a patience past the end: none


def _run(label, left, right, created, status="finished"):
    best = {"left": {"acc": left / 100}, "right": {"acc": right / 100}}
    return {"label": label, "status": status, "best": best, "created": created, "config": {"epochs": 20}}


def test_our_rows_are_the_mean_and_std_of_the_newest_run_of_each_seed():
    runs = [
        _run("table single task · seed 0", 97.0, 95.0, 1),
        _run("table single task · seed 1", 96.0, 96.0, 2),
        _run("table single task · seed 1", 10.0, 10.0, 0),  # an older run of seed 1: replaced, not counted
        _run("table uniform scaling · seed 0", 99.0, 99.0, 3, status="running"),
        _run("something else · seed 0", 1.0, 1.0, 4),
    ]
    rows = {r.name: r for r in table_rows(runs)}
    single = rows["single task"]
    assert single.seeds == 2 and single.mean == {"left": 96.5, "right": 95.5}
    assert single.std["left"] == pytest.approx(math.sqrt(0.5))
    assert rows["uniform scaling"].seeds == 0 and rows["uniform scaling"].mean["left"] is None
    assert single.published == {"Sener & Koltun 2018": (97.23, 95.90)} and single.epochs == 20


def test_a_row_is_close_within_one_point_or_two_standard_errors():
    pub = {"paper": (97.0, 95.0)}
    assert TableRow("a", 3, {"left": 96.1, "right": 95.9}, {"left": 0.1, "right": 0.1}, pub, 20).close_to("paper")
    assert not TableRow("b", 3, {"left": 95.9, "right": 95.0}, {"left": 0.1, "right": 0.1}, pub, 20).close_to("paper")
    # 1.5 points off, but a spread of 2 over 3 seeds: two standard errors are 2.31, so it is close.
    wide = TableRow("c", 3, {"left": 95.5, "right": 95.0}, {"left": 2.0, "right": 0.0}, pub, 20)
    assert wide.close_to("paper")


def test_a_difference_survives_the_spread_only_beyond_two_standard_errors():
    pub = {"paper": (0.0, 0.0)}
    single = TableRow("single task", 4, {"left": 97.0, "right": 96.0}, {"left": 0.3, "right": 1.0}, pub, 20)
    other = TableRow("uniform scaling", 4, {"left": 96.5, "right": 95.5}, {"left": 0.3, "right": 1.0}, pub, 20)
    # left: -0.50 against 2 * sqrt(0.09/4 + 0.09/4) = 0.42; right: -0.50 against 2 * sqrt(1/4 + 1/4) = 1.41
    assert differences([single, other]) == [
        "uniform scaling left -0.50 (beyond the spread)",
        "uniform scaling right -0.50 (within the spread)",
    ]
    assert differences([single.__class__("single task", 1, single.mean, single.std, pub, 20), other]) == []


def test_the_command_line_trains_the_table_through_the_queue_and_writes_it(tmp_path):
    import json

    from mtl_core.cli import main as cli_main
    from mtl_core.store.runs import RunStore

    out = tmp_path / "table.json"
    args = ["table", "--seeds", "1", "--epochs", "1", "--train-limit", "512", "--val-split", "128"]
    assert cli_main([*args, "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert [r["name"] for r in written["rows"]] == [name for name, *_ in ROWS]
    runs = RunStore().list_runs()
    assert len(runs) == len(ROWS) and all(r["status"] == "finished" for r in runs)
    single = next(r for r in runs if r["label"] == "table single task · seed 0")
    row = written["rows"][0]
    assert row["seeds"] == 1 and row["mean"]["left"] == pytest.approx(100 * single["best"]["left"]["acc"])
    assert row["published"] == {"Sener & Koltun 2018": [97.23, 95.9]} and set(row["close"]) == {"Sener & Koltun 2018"}


def test_compare_puts_our_table_beside_the_published_one(synthetic):
    from test_pages import OWNER, assert_ok, open_page, stored_run

    from mtl_core.data import make_multimnist
    from mtl_core.store.runs import RunStore

    pairs = make_multimnist(synthetic)
    for label, config in table_configs(seeds=2, epochs=1)[:4]:  # single task and uniform scaling, 2 seeds
        stored_run(config.model, pairs, label=label, epochs=1, seed=config.seed)
    at = open_page("pages/compare.py")
    assert_ok(at)
    (frame,) = [d.value for d in at.dataframe if "close to Sener & Koltun 2018" in d.value.columns]
    rows = {r.name: r for r in table_rows(RunStore().list_runs())}
    single = frame[frame["method"] == "single task"].iloc[0]
    want = rows["single task"]
    assert single["left %"] == f"{want.mean['left']:.2f} ± {want.std['left']:.2f}" and single["seeds"] == 2
    assert single["Sener & Koltun 2018"] == "97.23 / 95.90"
    found = differences(list(rows.values()))
    assert found and any("; ".join(found) in c.value for c in at.caption)
    # The whole table is over a student's cap of 4 active jobs: 4 are queued, the other 14 wait their turn
    # in the store (the sidebar says so, with a way to drop them), and the runner queues them as runs end.
    at.button(key="table_queue").click().run()
    assert any("Queued 4 of 18 runs; the other 14 join the queue as yours end" in s.value for s in at.success)
    store = RunStore()
    (turn,) = store.waiting_turns(OWNER)
    assert [store.get_run(i)["label"] for i in turn["runs"]] == [label for label, _ in table_configs(3, 20)[:4]]
    at.run()  # the sidebar, drawn before the page's button, says it from the next run on
    assert any("14 more of your runs wait their turn" in c.value for c in at.sidebar.caption)
    (drop,) = [b for b in at.sidebar.button if b.label == "Drop the 14 waiting runs"]
    drop.click().run()
    assert store.waiting_turns() == [] and store.turn(turn["id"])["waiting"] == turn["waiting"]
