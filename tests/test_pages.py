"""The pages under Streamlit's AppTest: every page renders, Train queues runs, Compare, Cross-stitch and Draw
show stored runs. Runs are trained in-process on synthetic data and written to the store directly, so no
test waits for the worker; the app's server runner is shut down after each test."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from dashboard.architecture import architecture_dot
from dashboard.text import md_escape
from mtl_core.checkpoint import save_model
from mtl_core.config import TrainConfig
from mtl_core.models import MODELS
from mtl_core.reference import SEED_STUDY
from mtl_core.store.runs import RunStore
from mtl_core.training.loop import Training

ROOT = Path(__file__).resolve().parent.parent
OWNER = "abcdefabcdef"  # the identity (normally from the browser's cookie) every test browses as
PAGES = {
    "home": (None, "Multi-task learning playground"),
    "train": ("pages/train.py", "Train"),
    "compare": ("pages/compare.py", "Compare"),
    "cross_stitch": ("pages/cross_stitch.py", "Cross-stitch units"),
    "draw": ("pages/draw.py", "Draw a digit"),
}


# ----------------------------------------------------------------------------- fixtures and helpers


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["owner"] = OWNER  # AppTest has no cookies: the session's identity is set directly
    if page:
        at.switch_page(page)
    return at.run()


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def stored_run(model: str, data, owner: str = OWNER, label: str = "", **overrides) -> str:
    """Train `model` for 2 epochs in this process and record it in the store like the worker would."""
    store = RunStore()
    source = "multimnist" if MODELS[model].family == "lenet" else "synthetic"  # (the LeNets' tasks need pairs)
    config = TrainConfig.preset(model, **({"epochs": 2, "data": source} | overrides))
    training = Training(config, data)
    run_id = store.create_run(config.to_dict(), owner=owner, label=label)
    assert store.claim_next("test-worker", os.getpid()) == run_id
    store.mark_started(run_id, "test-worker", training.params, data.source, str(training.device))
    for record in training.records():
        store.add_epoch(run_id, record)
    path = store.models_dir / f"{run_id}.safetensors"
    save_model(path, training.model, config, {"run_id": run_id, "summary": training.summary()})
    store.finish(run_id, "finished", "", training.summary(), str(path))
    return run_id


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def stroke_png() -> str:
    """A 280x280 RGBA drawing: a white vertical stroke (a "1") on black, as the canvas sends it."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    ImageDraw.Draw(img).line([(140, 50), (140, 230)], fill=(255, 255, 255, 255), width=18)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


# ----------------------------------------------------------------------------- every page


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_with_an_empty_store(name):
    page, title = PAGES[name]
    at = open_page(page)
    assert_ok(at)
    assert title in at.title[0].value
    assert at.session_state["owner"] == OWNER and "u" not in at.query_params  # no identity in the address
    if name == "compare":
        assert "No runs to compare yet" in texts(at.info)
    elif name == "cross_stitch":
        assert "No cross-stitch run yet" in texts(at.info)
    elif name == "train":
        assert "No runs yet" in texts(at.info)


# ----------------------------------------------------------------------------- Train


def test_train_form_queues_a_run_with_the_chosen_config():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    assert_ok(at)
    at.number_input(key="f_epochs_hard").set_value(3)
    at.number_input(key="f_batch_hard").set_value(64)
    at.number_input(key="f_lr_hard").set_value(0.002)
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.number_input(key="f_w_even_hard").set_value(2.0)
    assert at.selectbox(key="f_prec_hard").value == "auto"  # the preset's; fp32 is one choice away
    at.selectbox(key="f_prec_hard").set_value("fp32")
    at.text_input(key="f_label_hard").input("my hard run")
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    assert not at.error

    runs = RunStore().list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] in ("queued", "running", "finished")
    assert run["owner"] == OWNER and run["label"] == "my hard run" and run["model"] == "hard"
    cfg = run["config"]
    assert cfg["epochs"] == 3 and cfg["batch_size"] == 64 and cfg["data"] == "synthetic"
    assert cfg["lr"] == pytest.approx(0.002) and cfg["precision"] == "fp32"
    assert cfg["tasks"] == ["even", "mult3"] and cfg["loss_weights"] == {"even": 2.0}
    assert at.session_state["watch_select"] == run["id"]  # the new run is shown on the right
    assert at.selectbox(key="watch_select").value == run["id"]


def test_train_form_rejects_an_invalid_config_with_the_reason():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.number_input(key="f_w_even_hard").set_value(0.0)
    at.number_input(key="f_w_mult3_hard").set_value(0.0)
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    assert len(at.error) == 1
    assert "Cannot start this run" in at.error[0].value
    assert "at least one loss weight must be above 0" in at.error[0].value
    assert RunStore().list_runs() == []


def test_train_form_with_no_tasks_shows_an_error_and_queues_nothing():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.multiselect(key="f_tasks_hard").set_value([])
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    assert RunStore().list_runs() == []
    assert at.error and "task" in at.error[0].value.lower()


# ----------------------------------------------------------------------------- Compare


def test_compare_shows_stored_runs_and_the_reference_study(synthetic):
    stl = stored_run("stl", synthetic)
    hard = stored_run("hard", synthetic)
    stored_run("hard", synthetic, owner="0123456789ab")  # someone else's: not listed
    at = open_page("pages/compare.py")
    assert_ok(at)
    assert set(at.multiselect(key="compare_runs").value) == {stl, hard}

    table = at.dataframe[0].value
    assert len(table) == 2
    assert "Δm vs STL %" in table.columns
    rows = {r["model"]: r for r in table.to_dict("records")}
    assert rows["hard"]["params"] == 52_386 and rows["stl"]["params"] == 104_706
    assert rows["hard"]["epochs"] == 2 and rows["hard"]["status"] == "finished"
    dm = rows["hard"]["Δm vs STL %"]
    assert isinstance(dm, float) and not pd.isna(dm)  # a number: the STL baseline was found
    assert "even acc %" in table.columns and "mult3 acc %" in table.columns
    assert "STL is the baseline Δm is measured against" in texts(at.caption)  # why the STL row has none

    reference = at.dataframe[1].value
    assert list(reference["model"]) == list(SEED_STUDY["rows"])
    assert list(reference["params"]) == [f["params"] for f in SEED_STUDY["rows"].values()]

    # Only the open tab is built: the curves first, then the bars, then one run's insides.
    titles = [json.dumps(spec["layout"].get("title", "")) for spec in plotly_specs(at)]
    assert len(titles) == 2 and "Test average accuracy" in titles[0] and "Train loss" in titles[1]
    assert "detail_run" not in [w.key for w in at.selectbox]
    at.session_state["compare_view"] = "📊 Parameters, time, accuracy"
    at.run()
    assert_ok(at)
    titles = [json.dumps(spec["layout"].get("title", "")) for spec in plotly_specs(at)]
    assert len(titles) == 3 and "Parameters" in titles[0] and "Best average accuracy" in titles[2]
    at.session_state["compare_view"] = "🔍 Look inside one run"
    at.run()
    assert_ok(at)
    assert at.selectbox(key="detail_run").value in {stl, hard}
    titles = [json.dumps(spec["layout"].get("title", "")) for spec in plotly_specs(at)]
    assert titles and all("accuracy" in t for t in titles)  # one confusion matrix per task
    assert not any("Parameters" in t for t in titles)


def test_a_run_that_patience_ended_says_after_how_many_epochs_and_why(synthetic):
    import sqlite3

    mine = stored_run("hard", synthetic)  # 2 epochs recorded; as if it had been asked for 9 with patience 1
    store = RunStore()
    config = dict(store.get_run(mine)["config"], epochs=9, patience=1)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(config), mine))
    at = open_page("pages/train.py")
    assert_ok(at)
    assert "Finished after 2 of 9 epochs (stopped early: no better score in 1)" in texts(at.success)


def test_train_page_offers_the_model_file_and_deletes_an_owned_run(synthetic):
    mine = stored_run("hard", synthetic)
    path = RunStore().get_run(mine)["weights_path"]
    at = open_page("pages/train.py")
    assert_ok(at)
    assert at.selectbox(key="watch_select").value == mine
    assert "Finished all 2 epochs" in texts(at.success)
    label = f"hard · even+mult3 · {mine[-6:]}"
    assert md_escape(f"Delete “{label}”?") in texts(at.markdown)  # it asks, naming the run
    at.button(key=f"delete_{mine}").click().run()
    assert_ok(at)
    assert md_escape(f"Deleted “{label}”.") in texts(at.toast)
    assert RunStore().get_run(mine) is None and not os.path.exists(path)
    assert "No runs yet" in texts(at.info)


# ----------------------------------------------------------------------------- Cross-stitch


def test_cross_stitch_page_draws_the_stored_alphas(synthetic):
    run_id = stored_run("cross_stitch", synthetic)
    history = [r["alphas"] for r in RunStore().epochs(run_id)]
    assert len(history) == 2
    at = open_page("pages/cross_stitch.py")
    assert_ok(at)
    assert at.selectbox(key="cs_run").value == run_id

    def heatmap_z(title: str) -> list:
        figs = [s for s in plotly_specs(at) if title in json.dumps(s["layout"].get("title", ""))]
        assert len(figs) == 1, [s["layout"].get("title") for s in plotly_specs(at)]
        traces = [t for t in figs[0]["data"] if t["type"] == "heatmap"]
        return [t["z"] for t in traces]

    z = heatmap_z("Alphas after epoch 2")
    assert len(z) == len(history[-1]) == 2  # one heatmap per cross-stitch unit
    for got, want in zip(z, history[-1]):
        assert np.asarray(got) == pytest.approx(np.asarray(want))

    at.slider(key="cs_epoch").set_value(1).run()
    assert_ok(at)
    for got, want in zip(heatmap_z("Alphas after epoch 1"), history[0]):
        assert np.asarray(got) == pytest.approx(np.asarray(want))
    at.slider(key="cs_epoch").set_value(0).run()  # epoch 0: the initialisation the config names
    assert_ok(at)
    for got in heatmap_z("Alphas as initialised"):
        assert np.asarray(got) == pytest.approx(np.eye(2))  # the preset starts from identity
    assert "What they say" in " ".join(m.value for m in at.markdown)


def test_cross_stitch_page_opens_on_a_run_with_alphas_not_one_cancelled_in_the_queue(synthetic):
    trained = stored_run("cross_stitch", synthetic)
    store = RunStore()
    queued = store.create_run(TrainConfig.preset("cross_stitch", data="synthetic").to_dict(), owner=OWNER)
    store.request_stop(queued)  # cancelled while queued: newer, but nothing to show
    assert store.get_run(queued)["status"] == "cancelled"
    at = open_page("pages/cross_stitch.py")
    assert_ok(at)
    assert at.selectbox(key="cs_run").value == trained


# ----------------------------------------------------------------------------- Draw


def test_draw_page_predicts_a_drawn_digit(synthetic):
    hard = stored_run("hard", synthetic)
    cnn = stored_run("cnn", synthetic)
    at = open_page("pages/draw.py")
    assert_ok(at)
    assert set(at.multiselect(key="draw_models").value) == {hard, cnn}
    assert "draw a digit" in texts(at.info).lower()  # blank canvas: an invitation, no predictions
    assert not at.get("progress") and not at.metric

    at.session_state["canvas"] = {
        "drawing": {"raw": {"objects": [{}]}, "data": stroke_png()},
        "backgroundFit": None,
    }
    at.run()
    assert_ok(at)
    assert "draw a digit" not in texts(at.info).lower()
    # hard: even + mult3 (binary -> progress); cnn: even + gt4 (binary), digit (bar chart), value (metric)
    progress = at.get("progress")
    assert len(progress) == 4
    for p in progress:
        assert 0 <= p.proto.value <= 100
    assert [m.label for m in at.metric] == ["value: digit value"]
    assert any("digit:" in json.dumps(s["layout"].get("title", "")) for s in plotly_specs(at))
    images = at.get("image")
    first = RunStore().get_run(at.multiselect(key="draw_models").value[0])
    assert len(images) == 1 + len(first["config"]["tasks"])  # the 28x28 model input, a saliency map per task
    assert "28×28 from the canvas" in str(images[0].proto)
    assert "Which pixels drove each answer" in texts(at.markdown)
    assert texts(at.caption).count("answered in ") == 2  # each model's inference time
    assert "SmoothGrad" in texts(at.caption)
    second = RunStore().get_run(at.multiselect(key="draw_models").value[1])
    at.selectbox(key="sal_model").set_value(1).run()  # explain the other model: its own tasks' maps
    assert_ok(at)
    images = at.get("image")
    assert len(images) == 1 + len(second["config"]["tasks"])
    assert all(second["id"][-6:] in str(im.proto) for im in images[1:])


def test_draw_preselects_finished_models_of_every_kind_and_tabulates_many(synthetic):
    from dashboard.draw_ui import default_models

    kinds = {m: stored_run(m, synthetic) for m in ("stl", "hard", "cross_stitch", "cnn")}
    store = RunStore()
    stopped = store.create_run(TrainConfig.preset("hard", data="synthetic").to_dict(), owner=OWNER)
    store.claim_next("test-worker", os.getpid())
    store.set_best(stopped, "test-worker", 1, store.get_run(kinds["hard"])["weights_path"])
    store.finish(stopped, "cancelled", "stopped by request during epoch 2", worker="test-worker")
    newest_first = store.list_runs(owner=OWNER)
    assert newest_first[0]["id"] == stopped  # newer than the finished hard run, but only one epoch
    assert set(default_models(newest_first)) == set(kinds.values())  # finished first, all four kinds

    at = open_page("pages/draw.py")
    assert_ok(at)
    assert set(at.multiselect(key="draw_models").value) == set(kinds.values())
    at.session_state["canvas"] = {"drawing": {"raw": {"objects": [{}]}, "data": stroke_png()}, "backgroundFit": None}
    at.run()
    assert_ok(at)
    table = at.table[0].value  # four models: one row per task, one column per model
    assert list(table.columns)[0] == "task" and len(table.columns) == 1 + 4
    assert table["task"].iloc[-1] == "inference time"
    assert all(str(v).endswith(" ms") for v in table.iloc[-1, 1:])
    assert not at.get("progress")  # no squeezed columns of bars


def test_draw_page_without_models_offers_a_quick_model():
    at = open_page("pages/draw.py")
    assert_ok(at)
    assert "No trained model yet" in texts(at.info)
    at.button(key="quick_model").click().run()
    assert_ok(at)
    runs = RunStore().list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["model"] == "cnn" and run["owner"] == OWNER and run["label"] == "quick model"
    assert run["config"]["epochs"] == 3 and run["config"]["train_limit"] == 8000
    at.run()  # the next rerun (any interaction) shows the job and starts waiting for the model
    assert_ok(at)
    assert "1 job(s) training" in texts(at.caption)


def test_draw_quick_model_click_gives_feedback_at_once():
    at = open_page("pages/draw.py")
    at.button(key="quick_model").click().run()
    assert_ok(at)
    assert len(RunStore().list_runs()) == 1
    assert "1 job(s) training" in texts(at.caption)


def test_each_full_run_of_the_app_is_timed_only_when_asked(tmp_path, monkeypatch):
    """benchmarks/load.py reads these lines for the server's own share of an interaction."""
    log = tmp_path / "timing.tsv"
    open_page("pages/compare.py")
    assert not log.exists()  # off unless the variable is set
    monkeypatch.setenv("MTL_TIMING_LOG", str(log))
    at = open_page("pages/compare.py")
    at.switch_page("pages/home.py").run()
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    assert [page for _, page, _, _ in lines] == ["Compare", "Home"]
    assert all(0 < float(seconds) < 60 for _, _, seconds, _ in lines)
    # Compare with no runs ends early through st.stop(); Home runs to its end.
    assert [ended for *_, ended in lines] == ["StopException", "done"]


def test_the_form_keeps_its_values_across_pages_and_reset_brings_the_recipe_back():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    assert at.number_input(key="f_epochs_hard").value == 20  # the reference recipe to start with
    at.number_input(key="f_epochs_hard").set_value(3)
    at.number_input(key="f_lr_hard").set_value(0.002)
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.selectbox(key="f_prec_hard").set_value("fp32")
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    assert len(RunStore().list_runs()) == 1
    for _ in range(3):  # away and back, three times: the model and the submitted values stay
        at.switch_page("pages/compare.py").run()
        at.switch_page("pages/train.py").run()
        assert_ok(at)
    assert at.radio(key="train_model").value == "hard"
    assert at.number_input(key="f_epochs_hard").value == 3
    assert at.selectbox(key="f_data_hard").value == "synthetic"

    at.button(key="reset_hard").click().run()
    assert_ok(at)
    preset = TrainConfig.preset("hard")
    assert at.number_input(key="f_epochs_hard").value == preset.epochs
    assert at.number_input(key="f_lr_hard").value == pytest.approx(preset.lr)
    assert at.selectbox(key="f_data_hard").value == preset.data
    assert at.selectbox(key="f_prec_hard").value == preset.precision
    assert not at.warning  # no "created with a default value but also set via Session State" warning


def test_a_run_that_failed_before_training_does_not_say_it_waits_for_a_worker():
    store = RunStore()
    run_id = store.create_run(TrainConfig.preset("hard", data="mnist").to_dict(), owner=OWNER)
    assert store.claim_next("test-worker", os.getpid()) == run_id
    store.finish(run_id, "failed", "the data is not available here (offline)", worker="test-worker")
    at = open_page("pages/train.py")
    assert_ok(at)
    assert "waiting for a worker" not in " ".join(m.value for m in at.markdown)
    assert "the data is not available here" in texts(at.error)


def test_a_training_runs_diagnostics_take_new_epochs_at_their_own_slower_pace(synthetic, monkeypatch):
    """While a run trains, its curves take every new epoch at the charts' pace; the gradient-agreement
    chart (and the other diagnostics) at a quarter of it, so the browser keeps those charts as they are
    in between; all of them once the run is over."""
    from dashboard import monitor

    done = stored_run("hard", synthetic, epochs=4)
    store = RunStore()
    records = [{**r, "conflict": {"cos": {"even|mult3": r["epoch"] / 10}, "norm": {"even": 1.0, "mult3": 2.0}}}
               for r in store.epochs(done)]  # fmt: skip
    at = open_page("pages/train.py")  # first: a starting server interrupts runs it finds running
    run_id = store.create_run(TrainConfig.preset("hard", epochs=4, data="synthetic").to_dict(), owner=OWNER)
    assert store.claim_next("test-worker", os.getpid()) == run_id
    store.mark_started(run_id, "test-worker", 1, "synthetic", "cpu")
    store.add_epoch(run_id, records[0])
    at.run()
    at.selectbox(key="watch_select").set_value(run_id).run()

    def drawn() -> tuple[int, int]:
        assert_ok(at)
        specs = plotly_specs(at)
        curves = [s for s in specs if "Train loss per task" in json.dumps(s["layout"].get("annotations", []))]
        conflict = [s for s in specs if "Gradient agreement" in json.dumps(s["layout"].get("title", ""))]
        return len(curves[0]["data"][0]["x"]), len(conflict[0]["data"][0]["x"])

    assert drawn() == (1, 1)  # the first epoch everywhere at once
    store.add_epoch(run_id, records[1])
    at.run()
    assert drawn() == (2, 1)  # the diagnostics wait for their turn
    monkeypatch.setattr(monitor, "DIAGNOSTICS_EVERY_S", 0.0)
    store.add_epoch(run_id, records[2])
    at.run()
    assert drawn() == (3, 3)  # their turn came: every epoch so far
    monkeypatch.setattr(monitor, "DIAGNOSTICS_EVERY_S", 3600.0)
    store.add_epoch(run_id, records[3])
    at.run()
    assert drawn() == (4, 3)
    store.finish(run_id, "finished", "", {}, None)
    at.run()
    assert drawn() == (4, 4)  # over: nothing held back


def test_home_describes_every_model_in_full():
    from mtl_core.models import MODELS

    at = open_page()
    assert_ok(at)
    shown = " ".join(m.value for m in at.markdown)
    for spec in MODELS.values():
        assert spec.description in shown, spec.title  # whole sentences, not a cut-off table cell


def test_the_monitor_shows_how_far_a_long_first_epoch_is():
    at = open_page("pages/train.py")  # first: a starting server interrupts runs it finds running
    store = RunStore()
    run_id = store.create_run(TrainConfig.preset("cnn", data="synthetic").to_dict(), owner=OWNER)
    assert store.claim_next("test-worker", os.getpid()) == run_id
    store.mark_started(run_id, "test-worker", 1, "synthetic", "cpu")
    store.heartbeat(run_id, "test-worker", epoch_done=0.4)
    at.run()
    assert_ok(at)
    (bar,) = at.get("progress")
    assert "first epoch 40% done" in bar.proto.text and bar.proto.value == 4  # 0.4 of 10 epochs: 4 %


def test_train_and_home_picture_the_models():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("cross_stitch").run()
    assert_ok(at)
    assert not at.get("graphviz_chart")  # drawn only once the student opens "What this model looks like"
    at.session_state["train_picture"] = True  # what a click on the expander sends
    at.run()
    (chart,) = at.get("graphviz_chart")
    assert "cross-stitch unit 1" in chart.proto.spec
    home = open_page()
    assert_ok(home)
    assert not home.get("graphviz_chart")  # drawn only once the student opens the pictures
    home.session_state["home_pictures"] = True  # what a click on the expander sends
    home.run()
    for name, spec in MODELS.items():  # one picture per model kind, the chosen tab's only
        home.session_state["home_picture_tab"] = spec.title
        home.run()
        assert_ok(home)
        (chart,) = home.get("graphviz_chart")
        assert chart.proto.spec == architecture_dot(name, spec.default_tasks), name


def test_the_seed_study_says_how_long_it_will_take_before_it_is_queued():
    at = open_page("pages/compare.py")
    assert_ok(at)
    caption = texts(at.caption)
    assert "⏱ 20 epochs each on" in caption and "all three" in caption
    for model in ("stl", "hard", "cross_stitch"):
        assert f"{model} " in caption


def test_a_confusion_cell_opens_the_digits_it_counts(synthetic):
    import re

    from mtl_core.analysis import predictions_on_test_set
    from mtl_core.checkpoint import load_model
    from mtl_core.data import load_data

    run_id = stored_run("hard", synthetic)
    model, _, _ = load_model(RunStore().get_run(run_id)["weights_path"])
    preds = predictions_on_test_set(model, load_data("synthetic"))["even"]  # the test set the page scores
    at = open_page("pages/compare.py")
    at.session_state["compare_view"] = "🔍 Look inside one run"
    at.run()
    assert_ok(at)
    assert at.selectbox(key="cell_task").value == "even"
    for true, pred in [(0, 0), (1, 0), (1, 1)]:
        at.selectbox(key="cell_true_even").set_value(true)
        at.selectbox(key="cell_pred_even").set_value(pred).run()
        assert_ok(at)
        want = int(((preds["true"] == true) & (preds["pred"] == pred)).sum())
        shown = [c.value for c in at.caption if "test digits are" in c.value]
        assert shown and int(re.match(r"(\d+) test digits", shown[0]).group(1)) == want


def test_a_run_stopped_in_the_queue_does_not_promise_kept_weights():
    store = RunStore()
    run_id = store.create_run(TrainConfig.preset("hard", data="synthetic").to_dict(), owner=OWNER)
    store.request_stop(run_id)
    assert store.get_run(run_id)["status"] == "cancelled"
    at = open_page("pages/train.py")
    assert_ok(at)
    warning = texts(at.warning)
    assert "there is no model to keep" in warning and "best" not in warning.lower()


def test_compare_puts_a_finished_seed_study_beside_the_reference(synthetic):
    for m in ("stl", "hard", "cross_stitch"):
        stored_run(m, synthetic, label=f"seed study {m}")
    at = open_page("pages/compare.py")
    assert_ok(at)
    assert "Your seed study beside the reference" in [h.value for h in at.subheader]
    study = at.dataframe[1].value  # after "Your runs"
    assert list(study["model"]) == ["stl", "hard", "cross_stitch"]
    assert list(study["params"]) == [104_706, 52_386, 104_714] == list(study["params (reference)"])
    assert "this study used 2 epochs, synthetic data" in texts(at.caption)


def test_runs_on_different_task_sets_are_charted_apart(synthetic):
    stored_run("hard", synthetic)
    stored_run("cnn", synthetic)
    at = open_page("pages/compare.py")
    titles = [json.dumps(spec["layout"].get("title", ""), ensure_ascii=False) for spec in plotly_specs(at)]
    assert len(titles) == 4  # accuracy and loss, once per task set
    assert sum("Test average accuracy · even+mult3" in t for t in titles) == 1
    assert sum("Test average accuracy · digit+even+gt4+value" in t for t in titles) == 1
    at.session_state["compare_view"] = "📊 Parameters, time, accuracy"
    at.run()
    titles = [json.dumps(spec["layout"].get("title", ""), ensure_ascii=False) for spec in plotly_specs(at)]
    accuracy = [t for t in titles if "Best average accuracy" in t]
    assert len(accuracy) == 2 and any("even+mult3" in t for t in accuracy)


def test_task_affinity_suggests_a_grouping_and_one_click_trains_it(synthetic):
    mine = stored_run("hard", synthetic)
    store = RunStore()
    for record in store.epochs(mine):  # what the probe would record for two tasks that hurt each other
        aff = {"even|even": 0.01, "even|mult3": -0.003, "mult3|even": -0.002, "mult3|mult3": 0.008}
        store.add_epoch(mine, {**record, "conflict": {**(record["conflict"] or {}), "affinity": aff, "cos": {}}})
    at = open_page("pages/train.py")
    assert_ok(at)
    assert any(d.get("type") == "heatmap" for s in plotly_specs(at) for d in s.get("data", []))
    assert "Suggested grouping: even · mult3" in texts(at.caption)
    at.button(key=f"grouping_{mine}").click().run()
    assert_ok(at)
    queued = [r for r in store.list_runs() if r["label"].startswith("grouping of")]
    assert sorted(tuple(r["config"]["tasks"]) for r in queued) == [("even",), ("mult3",)]
    assert all(r["config"]["model"] == "hard" and r["config"]["epochs"] == 2 for r in queued)
    # at once, with no other click: the run picker lists the new runs and watches the first one
    picker = at.selectbox(key="watch_select")
    assert all(any(r["id"][-6:] in option for option in picker.options) for r in queued)  # labels end in the id
    assert picker.value in {r["id"] for r in queued}
    assert "Queued 2 runs, one per group" in texts(at.success)


def test_train_form_queues_one_run_per_seed_with_a_validation_split():
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.number_input(key="f_epochs_hard").set_value(2)
    at.number_input(key="f_seed_hard").set_value(4)
    at.number_input(key="f_nseeds_hard").set_value(3)
    at.number_input(key="f_val_hard").set_value(200)
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    runs = sorted(RunStore().list_runs(), key=lambda r: r["config"]["seed"])
    assert [r["config"]["seed"] for r in runs] == [4, 5, 6]
    assert [r["label"] for r in runs] == ["hard · seed 4", "hard · seed 5", "hard · seed 6"]
    assert {r["config"]["val_split"] for r in runs} == {200}
    assert {r["config"]["epochs"] for r in runs} == {2}


def test_compare_combines_seeds_into_mean_std_with_bands_and_pairs_delta_m_by_seed(synthetic):
    for seed in (0, 1):
        stored_run("hard", synthetic, label=f"hard · seed {seed}", seed=seed)
    stored_run("stl", synthetic, seed=0)  # a baseline for seed 0 only
    stored_run("stl", synthetic, seed=1, epochs=1)  # seed 1, but another budget: not a baseline
    at = open_page("pages/compare.py")
    assert_ok(at)
    assert at.toggle(key="compare_combine").value  # seeds combined by default
    table = at.dataframe[0].value
    hard = table[table["model"] == "hard"].iloc[0]
    assert hard["seeds"] == 2 and hard["finished"] == 2 and " ± " in hard["best avg acc %"]
    assert hard["Δm vs STL %"] is None
    caption = texts(at.caption)
    assert "no finished STL run on even+mult3 with seed 1 and the same 2 epochs" in caption
    specs = plotly_specs(at)
    assert any(t.get("fill") == "tonexty" for spec in specs for t in spec["data"])  # the seeds' band
    # One click queues the missing baseline: STL, seed 1, the same budget.
    at.button(key="train_baselines").click().run()
    assert_ok(at)
    queued = [r for r in RunStore().list_runs() if r["status"] in ("queued", "running", "finished")]
    new = [r for r in queued if r["model"] == "stl" and r["config"]["seed"] == 1 and r["config"]["epochs"] == 2]
    assert len(new) == 1 and new[0]["config"]["data"] == "synthetic"
    # Without combine: one row per run again.
    at.toggle(key="compare_combine").set_value(False).run()
    per_run = at.dataframe[0].value
    assert "run" in per_run.columns and len(per_run) == 4  # the four runs chosen when the page opened


def test_compare_counts_a_repeated_seed_once_and_names_the_duplicate(synthetic):
    first = stored_run("hard", synthetic, seed=0)
    again = stored_run("hard", synthetic, seed=0)  # the same experiment again, not a second seed
    stored_run("hard", synthetic, seed=1)
    at = open_page("pages/compare.py")
    assert_ok(at)
    table = at.dataframe[0].value
    (row,) = table.to_dict("records")
    assert row["seeds"] == 2 and row["finished"] == 2 and row["configuration"].endswith("2 seeds (0, 1)")
    assert row["duplicates"] == f"run {first[-6:]} duplicate of seed 0 (run {again[-6:]} counts)"
    assert "student" not in table.columns  # one student's own runs
    caption = texts(at.caption)
    assert "Not counted as seeds" in caption and "newest finished run of each seed counts" in caption
    assert md_escape(f"hard · even+mult3 · {first[-6:]} repeats seed 0 of hard · even+mult3 · {again[-6:]}") in caption


def test_the_download_box_states_what_the_exported_files_take_and_give(synthetic):
    from mtl_core.data import MEAN, STD

    stored_run("hard", synthetic)
    at = open_page("pages/train.py")
    assert_ok(at)
    caption = texts(at.caption)
    assert f"Input: N×1×28×28 float32, pixels in 0–1 (white ink on black), then (x − {MEAN}) / {STD}." in caption
    assert "Outputs, in this order: even: one logit per image, > 0 means even; mult3:" in caption


def test_a_run_with_a_validation_split_says_where_its_epoch_was_picked(synthetic):
    run_id = stored_run("hard", synthetic, val_split=100)
    at = open_page("pages/train.py")
    at.selectbox(key="watch_select").set_value(run_id).run()
    assert_ok(at)
    assert "picked on 100 held-out training digits; on the test set, scored once after" in texts(at.success)
    assert "Average acc (validation)" in [m.label for m in at.metric]
    subplot_titles = [a["text"] for spec in plotly_specs(at) for a in spec["layout"].get("annotations", [])]
    assert "Validation metric per task" in subplot_titles


def test_an_mmoe_run_shows_how_much_of_each_expert_every_task_reads(synthetic):
    run_id = stored_run("mmoe", synthetic)
    at = open_page("pages/train.py")
    at.selectbox(key="watch_select").set_value(run_id).run()
    assert_ok(at)
    gates = [s for s in plotly_specs(at) if "Gate weights per task" in json.dumps(s["layout"].get("title", ""))]
    assert len(gates) == 1
    names = {t["name"] for t in gates[0]["data"]}
    assert names == {"even: expert 1", "even: expert 2", "mult3: expert 1", "mult3: expert 2"}
