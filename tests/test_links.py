"""Experiments as links: the Train form's settings in the address, hidden controls, train again."""

from __future__ import annotations

import pytest
from test_pages import OWNER, assert_ok, open_page, stored_run, texts

from dashboard.links import config_from_query, hidden_from_query, link_to, query_from_config
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.store.runs import RunStore

CONFIGS = {
    "a preset": TrainConfig.preset("hard"),
    "the usual changes": TrainConfig.preset("hard", epochs=3, lr=0.002, data="mnist-subset", train_limit=2000),
    "tasks and weights": TrainConfig.preset("hard", tasks=("even", "digit", "value"), loss_weights={"value": 10.0}),
    "the paper's cross-stitch": TrainConfig.preset("cross_stitch", alpha_init="convex-0.9", alpha_lr_mult=500.0),
    "a CNN without channels_last": TrainConfig.preset("cnn", channels_last=False, precision="fp32", seed=7),
    "everything else": TrainConfig.preset(
        "stl",
        optimizer="adamw",
        weight_decay=0.01,
        scheduler="step",
        step_size=3,
        gamma=0.25,
        loss_weighting="uncertainty",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_link_gives_back_exactly_its_configuration(case):
    config = CONFIGS[case]
    assert config_from_query(query_from_config(config)) == config


def test_a_link_carries_only_what_differs_from_the_recipe():
    assert query_from_config(TrainConfig.preset("hard")) == {"model": "hard"}
    query = query_from_config(CONFIGS["the usual changes"], hide=("lr", "batch", "nonsense"))
    assert query == {"model": "hard", "epochs": "3", "lr": "0.002", "data": "mnist-subset", "limit": "2000",
                     "hide": "lr,batch"}  # fmt: skip
    assert hidden_from_query(query) == {"lr", "batch"}


@pytest.mark.parametrize(
    "query, reason",
    [
        ({"model": "transformer"}, "unknown model"),
        ({"model": "hard", "epochs": "many"}, "'epochs=many' is not a int"),
        ({"model": "hard", "epochs": "-3"}, "epochs"),
        ({"model": "hard", "lr": "0"}, "lr"),
        ({"model": "hard", "w_even": "heavy"}, "not a number"),
        ({"model": "hard", "tasks": "even,colour"}, "colour"),
        ({"model": "cnn", "cl": "maybe"}, "not a bool"),
    ],
)
def test_a_bad_link_is_refused_with_the_reason(query, reason):
    with pytest.raises(ConfigError, match=reason):
        config_from_query(query)


def test_the_link_points_at_the_train_page_of_the_same_server():
    url = link_to("http://school:8501/compare?u=0123456789ab", CONFIGS["the usual changes"])
    assert url.startswith("http://school:8501/train?model=hard&epochs=3")
    assert "u=" not in url  # a link never hands out the sender's own runs


def test_opening_a_link_fills_the_form_and_hides_what_it_fixes():
    at = open_page("pages/train.py")
    for name, value in {"model": "hard", "epochs": "3", "lr": "0.002", "data": "synthetic", "hide": "lr,batch"}.items():
        at.query_params[name] = value
    at.run()
    assert_ok(at)
    assert at.radio(key="train_model").value == "hard"
    assert at.number_input(key="f_epochs_hard").value == 3
    keys = [w.key for w in at.number_input]
    assert "f_lr_hard" not in keys and "f_batch_hard" not in keys  # fixed by the link, not shown
    # in plain words, with the values the link fixed
    shown = texts(at.caption).replace("\\", "")  # as the page renders it (markdown escapes "0\\.002")
    assert "This link fixes some settings for the exercise: Batch size 128; Learning rate 0.002." in shown
    assert "epochs" not in at.query_params and "u" not in at.query_params  # the address is tidy again
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    (run,) = RunStore().list_runs()
    assert run["config"]["lr"] == pytest.approx(0.002) and run["config"]["epochs"] == 3
    assert run["config"]["batch_size"] == 128 and run["config"]["data"] == "synthetic"
    at.number_input(key="f_epochs_hard").set_value(9).run()
    assert at.button(key="reset_hard").label == "↺ Reset to the link's settings"
    at.button(key="reset_hard").click().run()  # back to the link's settings, not to the 20-epoch recipe
    assert at.session_state["f_lr_hard"] == pytest.approx(0.002)
    assert at.number_input(key="f_epochs_hard").value == 3


def test_share_these_settings_gives_a_link_before_anything_is_trained():
    """A teacher makes an exercise from the form itself: Share commits the form's values (no run is
    queued) and shows the link, with the settings to fix named in plain words with their values."""
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    at.number_input(key="f_epochs_hard").set_value(7)
    at.number_input(key="f_lr_hard").set_value(0.002)
    at.button(key="train_share_hard").click().run()
    assert_ok(at)
    assert RunStore().list_runs() == []  # shared, not started
    (link,) = [c.value for c in at.code if "/train?" in c.value]
    assert "model=hard" in link and "epochs=7" in link and "lr=0.002" in link and "hide=" not in link
    hide = at.multiselect(key="hide_form_hard")
    assert "Learning rate 0.002" in hide.options and "Epochs 7" in hide.options and "Batch size 128" in hide.options
    hide.select("lr").select("batch").run()
    (link,) = [c.value for c in at.code if "/train?" in c.value]
    assert "hide=lr%2Cbatch" in link or "hide=lr,batch" in link
    at.button(key="sharing_close_hard").click().run()
    assert not [c for c in at.code if "/train?" in c.value]


def test_the_link_a_student_opened_stays_what_reset_returns_to_after_a_reload():
    at = open_page("pages/train.py")
    for name, value in {"model": "hard", "epochs": "4", "lr": "0.002", "hide": "lr"}.items():
        at.query_params[name] = value
    at.run()
    again = open_page("pages/train.py")  # the same identity, a new session: a reload
    assert_ok(again)
    assert "Learning rate 0.002" in texts(again.caption).replace("\\", "")  # the lock is back
    again.number_input(key="f_epochs_hard").set_value(11).run()
    again.button(key="reset_hard").click().run()
    assert again.number_input(key="f_epochs_hard").value == 4


def test_a_bad_link_says_why_and_leaves_the_recipe():
    at = open_page("pages/train.py")
    at.query_params["model"] = "hard"
    at.query_params["epochs"] = "-3"
    at.run()
    assert_ok(at)
    assert "This link's settings cannot be used" in texts(at.warning)
    model = at.radio(key="train_model").value
    assert at.number_input(key=f"f_epochs_{model}").value == TrainConfig.preset(model).epochs


def test_train_again_puts_a_runs_settings_in_the_form(synthetic):
    run_id = stored_run("cross_stitch", synthetic)  # 2 epochs, synthetic data: not the recipe
    at = open_page("pages/train.py")
    assert_ok(at)
    at.button(key=f"again_{run_id}").click().run()
    assert_ok(at)
    assert at.radio(key="train_model").value == "cross_stitch"
    assert at.number_input(key="f_epochs_cross_stitch").value == 2
    assert at.selectbox(key="f_data_cross_stitch").value == "synthetic"


def test_a_lesson_queues_its_runs_for_the_student_in_one_click():
    from dashboard.lessons import LESSONS

    at = open_page()
    assert_ok(at)
    assert [e.label for e in at.expander if e.label in {x.question for x in LESSONS}] == [x.question for x in LESSONS]
    at.button(key="lesson_queue_sharing").click().run()
    assert_ok(at)
    runs = RunStore().list_runs(owner=OWNER)
    assert {(r["model"], r["label"]) for r in runs} == {
        ("stl", "lesson: no sharing (STL)"),
        ("hard", "lesson: hard sharing"),
    }
    assert all(r["config"]["data"] == "mnist-subset" and r["config"]["epochs"] == 5 for r in runs)
    said = "Queued its 2 runs. Watch them train on the **Train** page; **Compare** shows them side by side."
    # (Home's "Training on mnist: ..." is a success box too, where the server has full MNIST.)
    assert said in texts(at.success).splitlines() and texts(at.toast) == said
    at.run()  # a rerun that is not the click (a poll, another widget): the confirmation stays
    assert said in texts(at.success).splitlines()


def test_compare_opens_on_exactly_the_runs_a_lesson_queued(synthetic):
    for seed in range(7):  # more finished runs than Compare selects by itself
        stored_run("hard", synthetic, seed=seed)
    at = open_page()
    at.button(key="lesson_queue_noise").click().run()
    assert_ok(at)
    store = RunStore()
    lesson = {r["id"] for r in store.list_runs(owner=OWNER) if r["label"].startswith("lesson: ")}
    assert len(lesson) == 4
    while store.claim_next("test-worker"):  # they start (Compare lists runs once they have started)
        pass
    at.switch_page("pages/compare.py").run()
    assert_ok(at)
    assert set(at.multiselect(key="compare_runs").value) == lesson


def test_a_lesson_opens_in_the_train_form_with_its_settings():
    at = open_page()
    at.button(key="lesson_open_alphas").click().run()
    assert_ok(at)
    assert at.radio(key="train_model").value == "cross_stitch"  # now on the Train page
    assert at.selectbox(key="f_ainit_cross_stitch").value == "convex-0.9"
    assert at.number_input(key="f_amult_cross_stitch").value == pytest.approx(500.0)
    assert RunStore().list_runs() == []  # nothing queued until Start


def test_the_noise_lesson_queues_two_seeds_of_each_model_that_compare_pairs_up():
    from mtl_core.analysis import group_label, missing_baselines, seed_groups

    at = open_page()
    at.button(key="lesson_queue_noise").click().run()
    assert_ok(at)
    runs = RunStore().list_runs(owner=OWNER)
    assert len(runs) == 4  # within a student's cap of queued runs
    assert any(t.startswith("Queued its 4 runs.") for t in texts(at.success).splitlines())  # as every lesson
    assert all(r["config"]["val_split"] == 500 and r["config"]["data"] == "mnist-subset" for r in runs)
    groups = seed_groups(sorted(runs, key=lambda r: r["model"]))
    assert [(g[0]["model"], [r["config"]["seed"] for r in g]) for g in groups] == [("hard", [0, 1]), ("stl", [0, 1])]
    # In quotes: a label with a colon cannot pass for a student's "name: " (mtl_core/text.py).
    assert group_label(groups[0]).startswith("“lesson: hard sharing” · even+mult3 · 2 seeds")
    # The STL runs are the hard-sharing runs' baselines (same tasks, data, seeds and budget), on their way.
    hard = [dict(r, best={"even": {"acc": 0.9}, "mult3": {"acc": 0.9}}) for r in groups[0]]
    assert missing_baselines(hard, runs) == []


# ----------------------------------------------------------------------------- values outside the form's range

OUT_OF_RANGE = [
    ({"model": "hard", "batch": "10000"}, "batch=10000 is outside the allowed range, 1 to 8,192"),
    ({"model": "hard", "val": "50000"}, "val=50000 is outside the allowed range, 0 to 30,000"),
    ({"model": "hard", "limit": "70000"}, "limit=70000 is outside the allowed range, 0 to 60,000"),
    ({"model": "hard", "epochs": "100000"}, "epochs=100000 is outside the allowed range, 1 to 500"),
    ({"model": "hard", "epochs": "0"}, "epochs=0 is outside the allowed range, 1 to 500"),
    ({"model": "hard", "lr": "nan"}, "lr=nan is outside the allowed range, 1e-06 to 10"),
    ({"model": "hard", "lr": "inf"}, "lr=inf is outside the allowed range"),
    ({"model": "hard", "lr": "1e-7"}, "lr=1e-7 is outside the allowed range"),
    ({"model": "hard", "wd": "2"}, "wd=2 is outside the allowed range, 0 to 1"),
    ({"model": "hard", "seed": "-1"}, "seed=-1 is outside the allowed range, 0 to 2,147,483,647"),
    ({"model": "cnn", "gamma": "0.001"}, "gamma=0.001 is outside the allowed range, 0.01 to 1"),
    ({"model": "cnn", "step": "501"}, "step=501 is outside the allowed range, 1 to 500"),
    ({"model": "cross_stitch", "amult": "20000"}, "amult=20000 is outside the allowed range, 0.01 to 10000"),
    ({"model": "hard", "w_even": "nan"}, "w_even=nan is outside the allowed range, 0 to 1000"),
    ({"model": "hard", "w_even": "-1"}, "w_even=-1 is outside the allowed range"),
    ({"model": "stl", "weighting": "gradnorm"}, "weighting=gradnorm needs a model that shares layers; for stl: static"),
]


@pytest.mark.parametrize("query, reason", OUT_OF_RANGE)
def test_a_value_outside_the_forms_range_is_refused_not_replaced(query, reason):
    with pytest.raises(ConfigError) as err:
        config_from_query(query)
    assert reason in str(err.value)


def test_every_problem_of_a_link_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_query({"model": "hard", "epochs": "100000", "batch": "0", "lr": "nan"})
    assert str(err.value).count("outside the allowed range") == 3


def test_the_edges_of_the_forms_ranges_are_accepted():
    from mtl_core.config import FORM_RANGES

    config = config_from_query({"model": "hard", "batch": "8192", "val": "30000", "limit": "60000", "lr": "1e-6"})
    assert (config.batch_size, config.val_split, config.train_limit) == (8192, 30000, 60000)
    assert config.batch_size == FORM_RANGES["batch_size"][1]


def test_a_link_with_settings_but_no_model_gets_a_sentence():
    from dashboard.links import settings_without_model

    assert settings_without_model({}) is None and settings_without_model({"model": "hard"}) is None
    sentence = settings_without_model({"epochs": "100000", "batch": "0", "lr": "nan"})
    assert "This link has settings (batch, epochs, lr) but no model=" in sentence
    assert "valid models: stl, hard" in sentence


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"model": "hard", "batch": "10000"}, "batch=10000 is outside the allowed range, 1 to 8,192"),
        ({"model": "hard", "batch": "10000", "hide": "batch"}, "batch=10000 is outside the allowed range"),
        ({"epochs": "100000", "batch": "0", "lr": "nan"}, "This link has settings (batch, epochs, lr) but no model="),
    ],
)
def test_a_link_outside_the_form_is_refused_on_the_page_before_anything_is_loaded(query, expected):
    at = open_page("pages/train.py")
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    assert_ok(at)
    warning = texts(at.warning).replace("\\", "")  # the page escapes what it echoes
    assert expected in warning
    model = at.radio(key="train_model").value
    assert at.number_input(key=f"f_batch_{model}").value == TrainConfig.preset(model).batch_size  # the recipe
    assert "batch" not in at.query_params and "u" not in at.query_params
    at.button(key=f"train_submit_{model}").click().run()
    assert_ok(at)
    assert all(r["config"]["batch_size"] != 10000 for r in RunStore().list_runs())


@pytest.mark.parametrize("model", ["hard", "cross_stitch"])
def test_the_forms_widgets_and_the_link_check_read_one_table_of_ranges(model):
    from mtl_core.config import FORM_RANGES, controls

    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value(model).run()
    assert_ok(at)
    inputs = {w.key: w for w in at.number_input}
    checked = 0
    for c in controls():
        name = "w_even" if c.field == "loss_weights" else c.name
        if c.bounds and f"f_{name}_{model}" in inputs:
            widget = inputs[f"f_{name}_{model}"]
            assert (widget.min, widget.max) == pytest.approx(FORM_RANGES[c.field]), name
            checked += 1
    assert checked == len(FORM_RANGES) - (model == "hard")  # hard has no alpha multiplier
