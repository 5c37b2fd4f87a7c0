"""One field list: the table of controls beside TrainConfig (mtl_core/config.py) makes the Train form's widgets,
the share link's names and the command line's flags, so a new row there shows up in all three."""

from __future__ import annotations

from dataclasses import fields

import pytest
from test_pages import assert_ok, open_page

from mtl_core import config as config_module
from mtl_core.config import CONTROLS, NOT_CONTROLS, ConfigError, Control, TrainConfig
from mtl_core.models import MODELS
from mtl_core.store.runs import RunStore
from mtl_core.tasks import PAIR_TASKS


def test_every_config_field_is_a_control_or_says_why_not():
    controlled = [c.field for c in CONTROLS]
    assert len(controlled) == len(set(controlled))
    assert not set(controlled) & set(NOT_CONTROLS)
    assert set(controlled) | set(NOT_CONTROLS) == {f.name for f in fields(TrainConfig)}


def test_names_and_flags_are_unique_and_leave_room_for_the_links_own():
    names = [c.name for c in CONTROLS]
    flags = [c.flag for c in CONTROLS if c.flag]
    assert len(names) == len(set(names)) and len(flags) == len(set(flags))
    # A link's model= and hide= are its own, and w_<task> is a task's loss weight (dashboard/links.py).
    assert not {"model", "hide", "label", "nseeds"} & set(names)
    assert not any(n.startswith("w_") for n in names)
    assert all(c.label and c.row for c in CONTROLS if c.section and c.field != "loss_weights")


def _model_for(c: Control) -> str:
    return next(m for m in MODELS if c.applies(m))


@pytest.mark.parametrize("c", [c for c in CONTROLS if c.bounds], ids=lambda c: c.field)
def test_the_ends_of_every_form_range_are_values_trainconfig_accepts(c):
    """A range in the table wider than TrainConfig's check would let the form and a link offer a value that
    can only fail at Start."""
    preset = TrainConfig.preset(_model_for(c))
    for end in c.bounds:
        if c.field == "loss_weights":
            preset.replace(loss_weights={preset.tasks[0]: end})
        else:
            preset.replace(**{c.field: end})


@pytest.mark.parametrize("c", [c for c in CONTROLS if c.choices], ids=lambda c: c.field)
def test_every_choice_the_table_offers_is_one_trainconfig_accepts(c):
    preset = TrainConfig.preset(_model_for(c))
    for choice in c.choices:
        if c.field == "tasks" and choice in PAIR_TASKS:  # they read two digits: the MultiMNIST data
            preset.replace(tasks=(choice,), data="multimnist")
            continue
        preset.replace(**{c.field: (choice,) if c.field == "tasks" else choice})
    with pytest.raises(ConfigError):
        preset.replace(**{c.field: ("nonsense",) if c.field == "tasks" else "nonsense"})


@pytest.fixture
def momentum_control(monkeypatch):
    """SGD's momentum, today no control's field, made one by a single new row in the table."""
    row = Control("momentum", "mom", "Momentum", "more", "optimiser", bounds=(0.0, 0.99), step=0.05, flag="--momentum")
    monkeypatch.setattr(config_module, "CONTROLS", (*CONTROLS, row))
    return row


def test_a_new_row_in_the_table_is_a_flag_and_a_link_name(momentum_control):
    from dashboard.links import config_from_query, hideable, link_keys, query_from_config
    from mtl_core.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--model", "hard", "--momentum", "0.5"])
    assert _config_from_args(args).momentum == 0.5
    config = TrainConfig.preset("hard", momentum=0.5)
    query = query_from_config(config, hide=("mom",))
    assert query == {"model": "hard", "mom": "0.5", "hide": "mom"}
    assert config_from_query(query) == config
    assert "mom" in link_keys() and "mom" in hideable()
    with pytest.raises(ConfigError, match="mom=2 is outside the allowed range, 0 to 0.99"):
        config_from_query({"model": "hard", "mom": "2"})


def test_a_new_row_in_the_table_is_a_widget_of_the_form(momentum_control):
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    assert_ok(at)
    widget = at.number_input(key="f_mom_hard")
    assert (widget.label, widget.value, widget.min, widget.max) == ("Momentum", 0.9, 0.0, 0.99)
    widget.set_value(0.5)
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    (run,) = RunStore().list_runs()
    assert run["config"]["momentum"] == pytest.approx(0.5)
