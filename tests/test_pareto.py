"""The Pareto front (mtl_core/pareto.py): the sweep, the non-dominated set against a brute-force check, the
hypervolume against a hand count."""

from __future__ import annotations

import itertools
import random

import pytest

from mtl_core.config import ConfigError, TrainConfig
from mtl_core.pareto import dominated, front, hypervolume, sweep_configs, sweep_weights


def test_the_sweep_runs_from_one_task_to_the_other():
    assert sweep_weights(5) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    with pytest.raises(ConfigError):
        sweep_weights(1)
    points = sweep_configs(TrainConfig.preset("lenet"), ("left", "right"), 3, methods=("mgda_ub", "static"))
    assert [c.loss_weights for _, c in points[:3]] == [
        {"left": 1.0, "right": 0.0},
        {"left": 0.5, "right": 0.5},
        {"left": 0.0, "right": 1.0},
    ]
    assert [c.loss_weighting for _, c in points] == ["static"] * 3 + ["mgda_ub"]
    assert all(c.model == "lenet" and c.data == "multimnist" for _, c in points)
    assert points[0][0] == "front: left ×1, right ×0"


def _brute_force(points):
    """Dominated, by the definition: some other point is >= on both and > on one."""
    out = []
    for i, p in enumerate(points):
        out.append(any(all(q[k] >= p[k] for k in (0, 1)) and q != p for j, q in enumerate(points) if j != i))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_the_non_dominated_set_matches_a_brute_force_check(seed):
    rng = random.Random(seed)
    # Few distinct values: ties on one coordinate and repeated points happen often.
    points = [(rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([0.5, 0.6, 0.7, 0.8])) for _ in range(rng.randint(1, 9))]
    assert dominated(points) == _brute_force(points)


def test_a_repeated_point_dominates_neither_copy():
    assert dominated([(0.9, 0.9), (0.9, 0.9), (0.8, 0.95), (0.8, 0.8)]) == [False, False, False, True]


def test_the_hypervolume_is_the_area_the_front_dominates():
    assert hypervolume([(0.9, 0.5), (0.5, 0.9)]) == pytest.approx(0.9 * 0.5 + 0.5 * 0.9 - 0.5 * 0.5)
    assert hypervolume([(0.9, 0.5), (0.5, 0.9), (0.4, 0.4)]) == pytest.approx(0.65)  # a dominated point adds 0
    # A grid count of the same area, to 1/200 on each side.
    pts = [(0.95, 0.2), (0.8, 0.7), (0.3, 0.9)]
    grid = sum(
        any(x < px and y < py for px, py in pts)
        for x, y in itertools.product([(i + 0.5) / 200 for i in range(200)], repeat=2)
    )
    assert hypervolume(pts) == pytest.approx(grid / 200**2, abs=0.01)
    assert hypervolume([]) == 0.0


def test_the_front_reads_finished_runs_and_leaves_the_others_out():
    def run(i, a, b, status="finished", weights=None, method="static"):
        config = {"loss_weights": weights or {}, "loss_weighting": method}
        best = {"left": {"acc": a}, "right": {"acc": b}}
        return {"id": f"r{i}", "label": f"p{i}", "status": status, "best": best, "config": config}

    runs = [
        run(1, 0.9, 0.5, weights={"left": 1.0, "right": 0.0}),
        run(2, 0.8, 0.8, method="mgda_ub"),
        run(3, 0.7, 0.7),
        run(4, 0.99, 0.99, status="running"),
    ]
    points = front(runs, ("left", "right"))
    assert [p.run_id for p in points] == ["r1", "r2", "r3"]
    assert [p.dominated for p in points] == [False, False, True]
    assert points[0].weights == {"left": 1.0, "right": 0.0} and points[1].method == "mgda_ub"
    assert points[1].accuracy == {"left": 80.0, "right": 80.0}


def test_the_command_line_sweeps_a_front_through_the_queue_and_writes_its_points(tmp_path, capsys):
    import json

    from mtl_core.cli import main as cli_main
    from mtl_core.store.runs import RunStore

    out = tmp_path / "front.json"
    args = ["pareto", "--model", "hard", "--data", "synthetic", "--points", "3", "--epochs", "1"]
    assert cli_main([*args, "--methods", "mgda_ub", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    points = written["points"]
    assert [p["weights"] for p in points[:3]] == [
        {"even": 1.0, "mult3": 0.0},
        {"even": 0.5, "mult3": 0.5},
        {"even": 0.0, "mult3": 1.0},
    ]
    assert points[3]["method"] == "mgda_ub" and len(points) == 4
    store = RunStore()
    for p in points:  # each point is a stored run, and its accuracies are that run's
        run = store.get_run(p["run_id"])
        assert p["accuracy"] == {t: pytest.approx(100 * run["best"][t]["acc"]) for t in ("even", "mult3")}
    xy = [(p["accuracy"]["even"], p["accuracy"]["mult3"]) for p in points]
    assert [p["dominated"] for p in points] == _brute_force(xy)
    assert written["hypervolume"] == pytest.approx(hypervolume([(x / 100, y / 100) for x, y in xy]))
    # Refused before anything is queued, with the reason.
    assert cli_main(["pareto", "--model", "stl", "--data", "synthetic"]) == 2
    assert cli_main(["pareto", "--model", "cnn", "--data", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "stl shares no parameters" in err and "give --tasks A B (cnn has 4 here)" in err
    assert len(store.list_runs()) == 4


def test_compare_draws_a_sweeps_front_and_a_click_opens_a_point(synthetic):
    from test_pages import assert_ok, open_page, plotly_specs, stored_run

    from mtl_core.store.runs import RunStore

    base = TrainConfig.preset("hard", data="synthetic", epochs=1)
    ids = [
        stored_run(
            "hard", synthetic, label=label, loss_weights=config.loss_weights, loss_weighting=config.loss_weighting
        )
        for label, config in sweep_configs(base, ("even", "mult3"), 3, ("mgda_ub",), "abc123")
    ]
    at = open_page("pages/compare.py")
    at.session_state["compare_view"] = "⚖ Pareto front"
    at.run()
    at.selectbox(key="front_source").set_value("abc123").run()
    assert_ok(at)
    (spec,) = [s for s in plotly_specs(at) if "Pareto front" in str(s["layout"]["title"])]
    store = RunStore()
    runs = [store.get_run(i) for i in ids]
    points = front(runs, ("even", "mult3"))
    shown = {x for t in spec["data"] if t.get("customdata") for x in t["customdata"]}
    assert shown == set(ids)
    hv = hypervolume([(p.accuracy["even"] / 100, p.accuracy["mult3"] / 100) for p in points])
    assert any(f"Hypervolume **{hv:.4f}**" in c.value for c in at.caption)
    # A click on a point (what the chart's on_select leaves) opens its run on the Train page.
    at.session_state["front_open"] = ids[1]
    at.run()
    assert_ok(at)
    assert at.session_state["watch_select"] == ids[1]


def test_compare_queues_a_sweep_in_one_click(synthetic):
    from test_pages import assert_ok, open_page, stored_run

    from mtl_core.store.runs import RunStore

    stored_run("hard", synthetic)  # Compare opens its tabs once there is a run
    at = open_page("pages/compare.py")
    at.session_state["compare_view"] = "⚖ Pareto front"
    at.run()
    at.selectbox(key="front_model").set_value("hard").run()
    at.selectbox(key="front_data_hard").set_value("synthetic")
    at.number_input(key="front_points").set_value(3)
    at.button(key="front_queue").click().run()
    assert_ok(at)
    swept = [r for r in RunStore().list_runs() if r["label"].startswith("front ")]
    assert len(swept) == 3 and {r["config"]["loss_weights"].get("even", 1.0) for r in swept} == {0.0, 0.5, 1.0}
    assert at.session_state["front_source"] == swept[0]["label"][6:12]


# --- class mode: the teacher opens a sweep, each student's Start trains its next point -------------------


def _class_sweep(k=3):
    from mtl_core.store.runs import RunStore

    store = RunStore()
    points = sweep_configs(TrainConfig.preset("hard", data="synthetic", epochs=1), ("even", "mult3"), k, (), "c1a55e")
    store.open_sweep("c1a55e", [(label, c.to_dict()) for label, c in points], owner="teacher")
    return store, points


def test_each_student_gets_the_next_point_nobody_has_and_a_failed_one_is_offered_again():
    from mtl_core.store.runs import Limits

    store, points = _class_sweep(3)
    labels = [label for label, _ in points]
    a = store.claim_sweep_point("c1a55e", "alice", limits=Limits())
    b = store.claim_sweep_point("c1a55e", "bob", limits=Limits())
    assert [store.get_run(i)["label"] for i in (a, b)] == labels[:2]
    assert store.get_run(a)["owner"] == "alice" and store.get_run(b)["config"]["loss_weights"] == {
        "even": 0.5,
        "mult3": 0.5,
    }
    (sweep,) = store.open_sweeps()
    assert sweep["taken"] == 2 and len(sweep["points"]) == 3
    store.finish(a, "failed", "boom", {}, None)  # a point whose run failed is free again
    c = store.claim_sweep_point("c1a55e", "carol")
    assert store.get_run(c)["label"] == labels[0]
    d = store.claim_sweep_point("c1a55e", "dave")
    assert store.get_run(d)["label"] == labels[2]
    assert store.claim_sweep_point("c1a55e", "erin") is None  # every point is taken
    store.close_sweep("c1a55e")
    assert store.open_sweeps() == []


def test_two_students_pressing_start_at_once_never_get_the_same_point():
    import threading

    store, points = _class_sweep(6)
    got, barrier = [], threading.Barrier(6)

    def press(name):
        barrier.wait()
        got.append(store.claim_sweep_point("c1a55e", name))

    threads = [threading.Thread(target=press, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = sorted(store.get_run(i)["label"] for i in got)
    assert labels == sorted(label for label, _ in points)


def test_a_students_cap_applies_to_sweep_points():
    from mtl_core.jobs.runner import QueueFull
    from mtl_core.store.runs import Limits

    store, _ = _class_sweep(3)
    store.claim_sweep_point("c1a55e", "alice", limits=Limits(per_owner=1))
    with pytest.raises(QueueFull):
        store.claim_sweep_point("c1a55e", "alice", limits=Limits(per_owner=1))


def test_a_student_trains_the_teachers_next_point_from_the_train_page():
    from test_pages import OWNER, assert_ok, open_page

    store, points = _class_sweep(2)
    at = open_page("pages/train.py")
    assert any("Your teacher's sweep c1a55e" in i.value for i in at.info)
    at.button(key="sweep_claim_c1a55e").click().run()
    assert_ok(at)
    (run,) = store.list_runs(OWNER)
    assert run["label"] == points[0][0] and at.session_state["watch_select"] == run["id"]
