"""Plain functions behind the pages: reading uploaded pictures and the Plotly figures (hostile inputs:
tests/test_bad_inputs.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from dashboard.charts import alpha_animation, alpha_heatmaps, alpha_lines, bars, training_curves
from mtl_core.models import MMOE_EXPERTS, MODELS
from mtl_core.predict import preprocess_canvas, read_image_bytes


def png(mode: str, size=(64, 64)) -> bytes:
    img = Image.new(mode, size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "1", "I;16"])
def test_uploads_of_any_mode_become_rgba(mode):
    arr = read_image_bytes(png(mode))
    assert arr.shape == (64, 64, 4) and arr.dtype == np.uint8


def test_a_drawn_digit_upload_is_preprocessed():
    img = Image.new("L", (100, 100), 255)
    img.paste(0, (45, 20, 55, 80))  # dark stroke on white paper
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    assert preprocess_canvas(read_image_bytes(buf.getvalue())) is not None


def test_figures_have_one_trace_per_task_and_frames_per_epoch():
    rec = lambda e: {
        "epoch": e,
        "train_loss": {"even": 1.0 / e, "value": 0.1},  # noqa: E731
        "metrics": {"even": {"acc": 0.9}, "value": {"mae": 0.1}},
        "avg_acc": 0.9,
    }
    fig = training_curves([rec(1), rec(2)], total_epochs=5)
    assert len(fig.data) == 5  # 2 losses, 2 metrics, the average
    history = [[[[1.0, 0.0], [0.0, 1.0]]] * 2, [[[0.9, 0.1], [0.2, 0.8]]] * 2]
    heat = alpha_heatmaps(history[1], ["even", "mult3"])
    assert [list(map(list, t.z)) for t in heat.data] == [[[0.9, 0.1], [0.2, 0.8]]] * 2
    assert len(alpha_animation(history, ["even", "mult3"]).frames) == 2
    assert len(alpha_lines(history, ["even", "mult3"]).data) == 4 * 2  # 4 alphas x 2 units


def test_accuracy_bars_zoom_so_close_values_look_different_and_say_so():
    plain = bars(["a", "b"], [97.8, 98.7], "Best average accuracy (%)")
    assert plain.layout.yaxis.range is None
    zoomed = bars(["a", "b"], [97.8, 98.7, None][:2], "Best average accuracy (%)", zoom=True)
    lo, hi = zoomed.layout.yaxis.range
    assert 95 < lo < 97.8 and 98.7 < hi <= 100  # the gap fills a visible part of the axis
    assert (98.7 - 97.8) / (hi - lo) > 0.3
    assert f"axis starts at {round(lo, 1):g}" in zoomed.layout.title.text


def test_digit_captions_start_with_the_true_digit():
    from dashboard.details import _caption

    preds = {"even": {"pred": np.array([1]), "true": np.array([0])}, "value": {"pred": np.array([6.9])}}
    assert _caption(preds, 0, 7) == "7 → ✗even · 6.9"


def test_the_alpha_reading_says_how_much_each_unit_shares_and_whether_anything_moved():
    from dashboard.alphas import alpha_reading, initial_alphas

    start = initial_alphas("identity", 2, 2)
    assert start == [[[1.0, 0.0], [0.0, 1.0]]] * 2
    still = alpha_reading([start, start], alpha_lr_mult=1)
    assert "Unit 1: same-task α ≈ 1.00, other-task |α| ≈ 0.00" in still[0] and "little sharing" in still[0]
    assert "barely moved" in still[2] and "100 to 1000" in still[2]
    assert not any("barely" in line for line in alpha_reading([start, start], alpha_lr_mult=500)[:2])
    assert "100 to 1000" not in " ".join(alpha_reading([start, start], alpha_lr_mult=500))

    shared = [[[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.2], [0.1, 0.8]]]
    lines = alpha_reading([start, shared], alpha_lr_mult=100)
    assert "strong sharing" in lines[0] and "take in some" in lines[1]
    assert not any("barely moved" in line for line in lines)
    wild = [[[3.7, -0.7], [0.1, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]
    assert "free weights" in alpha_reading([start, wild], alpha_lr_mult=1000)[-1]


def test_the_alpha_reading_names_negative_alphas_and_says_nothing_about_movement_at_epoch_zero():
    from dashboard.alphas import alpha_reading, initial_alphas

    start = initial_alphas("identity", 2, 2)
    (only,) = alpha_reading([start], alpha_lr_mult=1, tasks=["even", "mult3"])
    assert "nothing has been learned yet" in only and "moved" not in only
    subtracting = [[[2.1, -1.37], [0.3, 1.9]], [[1.0, -0.02], [0.0, 1.0]]]
    unit1, unit2, *_ = alpha_reading([start, subtracting], alpha_lr_mult=500, tasks=["even", "mult3"])
    assert "Negative: α[even←mult3] = −1.37" in unit1 and "subtracts the other task's features" in unit1
    assert "Negative" not in unit2  # −0.02 is noise around 0, not a sign the column subtracts


def test_one_colour_scale_holds_for_every_epoch_unless_asked_to_rescale():
    from dashboard.alphas import colour_limit

    history = [[[[1.0, 0.0], [0.0, 1.0]]], [[[1.3, 0.2], [0.1, 1.1]]], [[[4.6, -1.4], [0.3, 3.2]]]]
    assert colour_limit(history) == 5.0 and colour_limit(history[::-1]) == 5.0  # the largest of any epoch
    assert colour_limit(history[:2]) == 1.5 and colour_limit(history[:1]) == 1.0
    for epoch in history:  # the first epoch drawn on the whole run's scale, not on its own ±1
        (heat,) = alpha_heatmaps(epoch, ["even", "mult3"], limit=colour_limit(history)).data
        assert (heat.zmin, heat.zmax) == (-5.0, 5.0)
    (own,) = alpha_heatmaps(history[0], ["even", "mult3"]).data
    assert own.zmin is None and own.zmax is None
    anim = alpha_animation(history, ["even", "mult3"], first_epoch=0, limit=colour_limit(history))
    assert {(f.data[0].zmin, f.data[0].zmax) for f in anim.frames} == {(-5.0, 5.0)}


def test_alpha_charts_can_start_at_epoch_zero():
    history = [[[[1.0, 0.0], [0.0, 1.0]]]] * 3
    lines = alpha_lines(history, ["even", "mult3"], first_epoch=0)
    assert list(lines.data[0].x) == [0, 1, 2] and lines.layout.xaxis.dtick == 1  # whole epochs
    anim = alpha_animation(history, ["even", "mult3"], first_epoch=0)
    assert [f.name for f in anim.frames] == ["0", "1", "2"] and anim.layout.title.text == "epoch 0"


def test_legends_hang_below_the_plot_and_grow_downwards():
    from dashboard.charts import overlay

    fig = overlay({f"run {i}": ([1, 2], [0.5, 0.6]) for i in range(12)}, "Test average accuracy", "accuracy")
    assert fig.layout.legend.yanchor == "top" and fig.layout.legend.y < 0  # below, growing away from the curves


@pytest.mark.parametrize(
    "model, tasks, shared, own, mixing",
    [
        ("stl", ("even", "mult3"), 0, 6, 0),
        ("hard", ("even", "mult3"), 1, 2, 0),
        ("hard", ("even", "digit", "value"), 1, 3, 0),
        ("cross_stitch", ("even", "mult3"), 0, 6, 2),
        ("cnn", ("even", "gt4", "digit", "value"), 1, 4, 0),
        ("stl_cnn", ("digit", "even"), 0, 8, 0),
        ("cross_stitch_cnn", ("digit", "even"), 0, 8, 3),
        ("mmoe", ("even", "mult3"), 2, 4, 0),
    ],
)
def test_architecture_pictures_show_what_is_shared_and_what_is_each_tasks(model, tasks, shared, own, mixing):
    from dashboard.architecture import MIX, OWN, SHARED, architecture_dot

    dot = architecture_dot(model, tasks)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}") and dot.count("{") == dot.count("}")
    assert (dot.count(SHARED), dot.count(OWN), dot.count(MIX)) == (shared, own, mixing)
    for t in tasks:
        assert f"{t} head" in dot
    if model == "hard" and "digit" in tasks:
        assert "32→10" in dot  # the digit head: ten logits


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_registered_model_has_a_picture_of_its_own_sharing(model):
    """Drawn from the registry: every model's picture follows its ModelSpec.sharing and family."""
    from dashboard.architecture import MIX, SHARED, architecture_dot
    from mtl_core.models import body_stages

    spec = MODELS[model]
    dot = architecture_dot(model, spec.default_tasks)
    shared = {"nothing": 0, "trunk": 1, "cross_stitch": 0, "experts": MMOE_EXPERTS}[spec.sharing]
    mixing = len(body_stages(spec.family)) if spec.sharing == "cross_stitch" else 0
    assert (dot.count(SHARED), dot.count(MIX)) == (shared, mixing)
    assert all(f"{t} head" in dot for t in spec.default_tasks)


def test_a_model_that_says_nothing_of_its_sharing_is_refused():
    from dataclasses import replace

    with pytest.raises(ValueError, match="sharing 'some' is not one of"):
        replace(MODELS["hard"], sharing="some")


def test_epoch_axes_show_whole_epochs_only():
    from dashboard.charts import overlay

    records = [{"epoch": e, "train_loss": {"even": 0.5}, "metrics": {"even": {"acc": 0.9}}, "avg_acc": 0.9}
               for e in (1, 2)]  # fmt: skip
    assert training_curves(records, total_epochs=2).layout.xaxis.dtick == 1
    assert overlay({"a": ([1, 2, 3], [0.1, 0.2, 0.3])}, "t", "y").layout.xaxis.dtick == 1
    assert overlay({"a": (list(range(1, 201)), [0.1] * 200)}, "t", "y").layout.xaxis.dtick == 20  # ten ticks


def test_a_polling_fragment_does_not_undo_a_students_click():
    """Streamlit merges queued reruns and the newest page wins: a fragment's rerun after a click on
    another page would send the student back. full_rerun_pending() must see the click (read from the
    pinned Streamlit's own request queue), and must not mistake the fragments' own polls for one."""
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

    from dashboard.state import full_rerun_pending

    requests = ScriptRequests()
    assert not full_rerun_pending(requests)  # nothing queued
    requests.request_rerun(RerunData(fragment_id_queue=["monitor"], is_auto_rerun=True))
    assert not full_rerun_pending(requests)  # only a fragment's poll: the fragment must rerun the app itself
    requests.request_rerun(RerunData(page_script_hash="compare-page"))
    assert full_rerun_pending(requests)  # the click is queued: the fragment leaves it alone
    assert not full_rerun_pending(None)  # outside a session: rerun as before


@pytest.mark.parametrize("click_first", [True, False])
def test_a_poll_and_a_page_switch_colliding_always_end_on_the_clicked_page(click_first):
    """The collision, provoked both ways with the pinned Streamlit's own request queue: the student's click
    to Compare and a polling fragment's rerun of the Train page meet in one queue. Whichever comes first,
    the queued rerun is the student's page, with the student's widget change kept."""
    from streamlit.proto.WidgetStates_pb2 import WidgetStates
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

    from dashboard.state import request_app_rerun

    requests = ScriptRequests()
    requests.request_rerun(RerunData(fragment_id_queue=["monitor"], is_auto_rerun=True))  # the poll itself
    widgets = WidgetStates()
    widgets.widgets.add(id="f_epochs_hard", int_value=7)
    click = RerunData(page_script_hash="compare-page", widget_states=widgets)
    poll = RerunData(page_script_hash="train-page")  # what the fragment's st.rerun(scope="app") asks for
    if click_first:
        requests.request_rerun(click)
        assert not request_app_rerun(requests, poll)  # the poll sees the click and leaves it alone
    else:
        assert request_app_rerun(requests, poll)
        requests.request_rerun(click)  # the click lands after: the newest request's page wins
    data = requests._rerun_data
    assert data.page_script_hash == "compare-page" and not data.fragment_id_queue
    assert [w.id for w in data.widget_states.widgets] == ["f_epochs_hard"]


@pytest.mark.parametrize("late", ["timed", "trigger"])
def test_a_fragments_late_rerun_never_takes_a_student_back_from_a_page_switch(late):
    """The collision the load benchmark's class hit: the student clicks Compare, and before that rerun
    starts, the Train page's fragment asks for its own rerun (its timer, or the progress line's trigger,
    sent by the page being left). Streamlit folds the two and the newest page wins; with
    guard_page_switches the click's page, address and kind stay, and the fragment's widget values are
    still folded in. Two fragment requests still fold as Streamlit folds them."""
    from streamlit.proto.WidgetStates_pb2 import WidgetStates
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

    from dashboard.state import guard_page_switches

    guard_page_switches()
    guard_page_switches()  # twice is once
    requests = ScriptRequests()
    requests.request_rerun(RerunData(page_script_hash="compare-page", query_string="", page_name="compare"))
    widgets = WidgetStates()
    widgets.widgets.add(id="live_progress_r1", string_trigger_value={"data": "finished:2"})
    fragment = {"timed": dict(fragment_id="monitor", is_auto_rerun=True), "trigger": dict(fragment_id="monitor")}
    requests.request_rerun(RerunData(page_script_hash="train-page", query_string="run=r1", page_name="train",
                                     widget_states=widgets, **fragment[late]))  # fmt: skip
    data = requests._rerun_data
    assert (data.page_script_hash, data.query_string, data.page_name) == ("compare-page", "", "compare")
    assert not data.fragment_id_queue and not data.is_auto_rerun
    assert [w.id for w in data.widget_states.widgets] == ["live_progress_r1"]
    # A click after a fragment's request: the click's page, as before.
    requests = ScriptRequests()
    requests.request_rerun(RerunData(page_script_hash="train-page", **fragment[late]))
    requests.request_rerun(RerunData(page_script_hash="compare-page"))
    assert requests._rerun_data.page_script_hash == "compare-page"
    # Two fragments' requests on one page: both fragments queued, the newest's page (Streamlit's own fold).
    requests = ScriptRequests()
    requests.request_rerun(RerunData(page_script_hash="train-page", fragment_id="a", is_auto_rerun=True))
    requests.request_rerun(RerunData(page_script_hash="train-page", fragment_id="b", is_auto_rerun=True))
    assert requests._rerun_data.fragment_id_queue == ["a", "b"]


def test_the_conflict_chart_has_one_line_per_task_pair_and_a_zero_line():
    from dashboard.charts import conflict_chart

    rec = lambda e, c: {"epoch": e, "conflict": {"cos": {"digit|even": c, "digit|gt4": -c, "even|gt4": 0.1}}}  # noqa: E731
    fig = conflict_chart([rec(1, 0.5), rec(2, -0.2)])
    assert [t.name for t in fig.data] == ["digit vs even", "digit vs gt4", "even vs gt4"]
    assert list(fig.data[1].y) == [-0.5, 0.2]
    assert any(s.y0 == 0 for s in fig.layout.shapes)  # the line below which tasks conflict
    assert conflict_chart([{"epoch": 1, "conflict": None}]) is None  # STL: nothing shared, nothing drawn


def test_every_chart_is_drawn_on_white_with_the_projector_margins():
    """The look comes from plotly's default template (set once in dashboard/charts.py), not from each figure."""
    import json

    import plotly.io as pio

    from dashboard.charts import conflict_chart

    fig = conflict_chart([{"epoch": 1, "conflict": {"cos": {"a|b": 0.5}}}])
    drawn = json.loads(pio.to_json(fig))["layout"]  # what st.plotly_chart sends the browser
    assert drawn["template"]["layout"]["plot_bgcolor"] == "white"
    assert drawn["margin"] == {"l": 10, "r": 10, "t": 45, "b": 10}


def test_a_click_on_a_confusion_cell_is_read_back_as_that_cell():
    from dashboard.charts import cell_of_point, confusion_heatmap

    classes = ("0", "1", "2")
    fig = confusion_heatmap(np.arange(9).reshape(3, 3), classes, "digit")
    markers = fig.data[1]
    for row in range(3):
        for col in range(3):
            k = row * 3 + col  # the marker of cell (true row, predicted col) sits on that cell
            assert (markers.x[k], markers.y[k]) == (classes[col], classes[row])
            assert cell_of_point({"curve_number": 1, "point_index": k}, 3) == (row, col)
    assert cell_of_point({"curve_number": 0, "point_index": 4}, 3) is None  # the heatmap itself reports nothing
    assert cell_of_point({"curve_number": 1}, 3) is None


def test_a_clicked_cell_opens_the_cell_picker_on_it():
    from types import SimpleNamespace

    from streamlit.testing.v1 import AppTest

    def page():
        from types import SimpleNamespace

        import numpy as np
        import streamlit as st
        import torch

        from dashboard import details

        true, pred = np.array([0, 1, 1, 1]), np.array([1, 1, 0, 0])
        data = SimpleNamespace(test_x=torch.zeros(4, 1, 28, 28), test_y=true)
        if st.session_state.get("click"):  # what Streamlit runs when a cell of the "even" matrix is clicked
            details._open_clicked_cell("even", 2)
        details.cell_digits_ui({"even": {"true": true, "pred": pred}}, data, ["even"])

    at = AppTest.from_function(page)
    at.run()
    assert at.selectbox(key="cell_true_even").value == 1 and at.selectbox(key="cell_pred_even").value == 0
    at.session_state["cm_even"] = SimpleNamespace(
        selection=SimpleNamespace(points=[{"curve_number": 1, "point_index": 1}])
    )
    at.session_state["click"] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="cell_true_even").value == 0 and at.selectbox(key="cell_pred_even").value == 1
    assert any(c.value.startswith("1 test digits are") for c in at.caption)
    assert at.session_state["cell_open"] is True


def test_lines_differ_by_dash_and_marker_and_heat_maps_use_colour_blind_safe_scales():
    """Issue 24: readable by colour-blind students. Every line of a chart differs from the others by dash
    and marker, not only by colour; the palette is Okabe-Ito's; heat maps use one hue or blue against red."""
    from plotly.colors import get_colorscale

    from dashboard.charts import PALETTE, SAFE_SCALES, affinity_heatmap, confusion_heatmap, overlay

    fig = overlay({f"run {i}": ([1, 2], [0.5, 0.6]) for i in range(6)}, "t", "y")
    looks = [(t.line.dash, t.marker.symbol) for t in fig.data]
    assert len({d for d, _ in looks}) == len({s for _, s in looks}) == 6
    assert PALETTE[:3] == ["#0072B2", "#E69F00", "#009E73"]
    records = [{"epoch": 1, "train_loss": {"even": 0.5, "mult3": 0.4},
                "metrics": {"even": {"acc": 0.9}, "mult3": {"acc": 0.8}}, "avg_acc": 0.85}]  # fmt: skip
    curves = training_curves(records).data
    assert curves[0].line.dash != curves[2].line.dash and curves[0].marker.symbol != curves[2].marker.symbol
    assert (curves[0].line.dash, curves[0].marker.symbol) == (curves[1].line.dash, curves[1].marker.symbol)
    safe = [[colour for _, colour in get_colorscale(name)] for name in SAFE_SCALES]
    heat_maps = [
        confusion_heatmap(np.arange(9).reshape(3, 3), ("0", "1", "2"), "digit"),
        alpha_heatmaps([[[0.9, 0.1], [0.1, 0.9]]], ["even", "mult3"]),
        affinity_heatmap(
            {"even|even": 0.01, "even|mult3": -0.003, "mult3|even": 0.002, "mult3|mult3": 0.01}, ["even", "mult3"]
        ),  # fmt: skip
    ]
    for fig in heat_maps:
        for t in fig.data:
            if t.type == "heatmap":
                assert [colour for _, colour in t.colorscale] in safe
