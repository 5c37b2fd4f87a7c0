"""Teacher and students: the token, display names, the teacher's view and switches, the class gallery."""

from __future__ import annotations

import os
import re
import stat

import pytest
from test_pages import OWNER, assert_ok, open_page, stored_run, texts

from mtl_core.analysis import run_label
from mtl_core.store.classroom import is_teacher_token, teacher_token
from mtl_core.store.runs import RunStore
from mtl_core.text import clean_name

TOKEN = "class-token-123"
OTHER = "bbbbbbbbbbbb"


@pytest.fixture
def teacher_env(monkeypatch):
    monkeypatch.setenv("MTL_TEACHER_TOKEN", TOKEN)


def sidebar_toggles(at) -> list[str]:
    return [t.label for t in at.sidebar.toggle]


def test_the_token_is_generated_once_kept_private_and_compared_exactly(tmp_path, monkeypatch):
    monkeypatch.delenv("MTL_TEACHER_TOKEN", raising=False)
    first = teacher_token(tmp_path)
    assert len(first) >= 16 and teacher_token(tmp_path) == first  # a restart keeps the bookmark working
    assert stat.S_IMODE(os.stat(tmp_path / "teacher-token").st_mode) == 0o600
    assert is_teacher_token(first, first) and is_teacher_token(f" {first} ", first)
    assert not is_teacher_token(first[:-1], first) and not is_teacher_token("", first)
    monkeypatch.setenv("MTL_TEACHER_TOKEN", "from-env")
    assert teacher_token(tmp_path) == "from-env"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  Ada   Lovelace ", "Ada Lovelace"),
        ("x" * 100, "x" * 30),
        ("bell\x07 and\nnewline\u202e", "bell and newline"),  # control and bidi-override characters go
        ("**bold** <b>tag</b>", "**bold** <b>tag</b>"),  # kept as typed; shown as plain text
        ("", ""),
    ],
)
def test_display_names_are_plain_bounded_text(raw, clean):
    assert clean_name(raw) == clean


def test_a_student_sees_only_their_runs_and_no_teacher_switches(synthetic, teacher_env):
    mine = stored_run("hard", synthetic)
    theirs = stored_run("stl", synthetic, owner=OTHER)
    at = open_page("pages/train.py")
    assert_ok(at)
    store = RunStore()
    assert at.selectbox(key="watch_select").options == [run_label(store.get_run(mine))]
    assert run_label(store.get_run(theirs)) not in at.selectbox(key="watch_select").options
    assert "All students' runs" not in sidebar_toggles(at)


def test_a_wrong_token_is_refused_and_the_right_one_unlocks_the_teacher_view(synthetic, teacher_env):
    stored_run("hard", synthetic)
    other = stored_run("stl", synthetic, owner=OTHER)
    RunStore().touch_owner(OTHER, "Grace")
    at = open_page("pages/train.py")
    at.query_params["teacher"] = "wrong"
    at.run()
    assert "not valid" in texts(at.sidebar.error)
    assert "All students' runs" not in sidebar_toggles(at)
    at.query_params["teacher"] = TOKEN
    at.run()
    assert_ok(at)
    assert "teacher" not in at.query_params  # the token leaves the address bar at once
    assert "All students' runs" in sidebar_toggles(at)
    at.sidebar.toggle(key="show_all_runs").set_value(True).run()
    labels = at.selectbox(key="watch_select").options
    assert any(label.startswith("Grace: stl") for label in labels) and len(labels) == 2
    # The teacher may delete anyone's run.
    at.selectbox(key="watch_select").set_value(other).run()
    at.button(key=f"delete_{other}").click().run()
    assert_ok(at)
    assert RunStore().get_run(other) is None


def test_a_name_is_saved_for_the_owner_and_found_again(synthetic):
    at = open_page("pages/train.py")
    at.sidebar.text_input(key="student_name").input("  Ada  <i>L</i> ").run()
    assert_ok(at)
    assert RunStore().owner_names()[OWNER] == "Ada <i>L</i>"
    rid = stored_run("hard", synthetic)
    assert run_label(RunStore().get_run(rid)).startswith("Ada <i>L</i>: hard")
    again = open_page("pages/train.py")  # a new session of the same identity (a reload)
    assert again.sidebar.text_input(key="student_name").value == "Ada <i>L</i>"


def test_the_class_gallery_shows_others_finished_runs_read_only(synthetic, teacher_env):
    stored_run("hard", synthetic)
    theirs = stored_run("cross_stitch", synthetic, owner=OTHER)
    store = RunStore()
    at = open_page("pages/train.py")
    assert "Class gallery" not in sidebar_toggles(at)  # closed until the teacher opens it
    store.set_setting("gallery", True)
    at.run()
    at.sidebar.toggle(key="show_gallery").set_value(True).run()
    assert_ok(at)
    assert run_label(store.get_run(theirs)) in at.selectbox(key="watch_select").options
    at.selectbox(key="watch_select").set_value(theirs).run()
    assert not [b for b in at.get("download_button")] and f"delete_{theirs}" not in [b.key for b in at.button]
    store.set_setting("gallery_downloads", True)
    at.run()
    keys = sorted(b.key for b in at.get("download_button"))
    assert keys == sorted(f"dl_{kind}_{theirs}" for kind in ("model", "torchscript", "onnx"))
    assert f"delete_{theirs}" not in [b.key for b in at.button]  # still read-only


def test_settings_move_the_change_counter(store):
    v = store.version()
    store.set_setting("gallery", True)
    assert store.setting("gallery") and store.version() > v
    with pytest.raises(ValueError, match="unknown setting"):
        store.set_setting("anything", True)


def test_the_teachers_switches_set_the_class_settings(teacher_env):
    at = open_page("pages/train.py")
    at.query_params["teacher"] = TOKEN
    at.run()
    store = RunStore()
    assert not store.setting("gallery") and not store.setting("gallery_downloads")
    at.sidebar.toggle(key="t_gallery").set_value(True).run()
    assert_ok(at)
    assert store.setting("gallery") and not store.setting("gallery_downloads")
    at.sidebar.toggle(key="t_gallery_downloads").set_value(True).run()
    at.sidebar.toggle(key="t_gallery").set_value(False).run()
    assert not store.setting("gallery") and store.setting("gallery_downloads")


def all_text(at) -> str:
    kinds = ("markdown", "caption", "success", "info", "warning", "error")
    return "\n".join(e.value for kind in kinds for e in at.get(kind)) + "\n".join(
        e.value for kind in kinds for e in at.sidebar.get(kind)
    )


def test_students_see_no_server_paths_and_the_teacher_sees_where_the_data_is(teacher_env):
    # Where the data came from (full MNIST) or where it was looked for (the subset instead): a server path.
    # The data is cached for the process, so the folder is the one of whichever test loaded it first.
    where = re.compile(r"(cached in|looked for it in) /")
    at = open_page("pages/home.py")
    assert_ok(at)
    assert "digits" in all_text(at)  # which data is in use is said either way
    assert not where.search(all_text(at))
    at.query_params["teacher"] = TOKEN
    at.run()
    assert_ok(at)
    assert where.search(all_text(at))


def test_full_mnist_cannot_be_chosen_where_the_server_has_none(monkeypatch):
    from dashboard import forms

    monkeypatch.setattr(forms, "full_mnist_here", lambda: False)
    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    assert "(not here)" in at.selectbox(key="f_data_hard").format_func("mnist")
    at.selectbox(key="f_data_hard").set_value("mnist")
    at.button(key="train_submit_hard").click().run()
    assert_ok(at)
    assert "Full MNIST is not on this server" in texts(at.error)
    assert RunStore().list_runs() == []  # nothing queued that could only fail


def test_the_teachers_compare_names_each_student_and_pools_students_only_when_asked(synthetic, teacher_env):
    stored_run("hard", synthetic, seed=0)
    stored_run("hard", synthetic, seed=0, owner=OTHER)
    stored_run("hard", synthetic, seed=1, owner=OTHER)
    store = RunStore()
    store.touch_owner(OWNER, "Ada")
    store.touch_owner(OTHER, "Grace")
    at = open_page("pages/compare.py")
    at.query_params["teacher"] = TOKEN
    at.run()
    at.sidebar.toggle(key="show_all_runs").set_value(True).run()
    at.multiselect(key="compare_runs").set_value([r["id"] for r in store.list_runs()]).run()
    assert_ok(at)
    table = at.dataframe[0].value
    # Two students' seed 0 is not "2 seeds (0, 0)": each student's runs are their own row.
    assert sorted(zip(table["student"], table["seeds"])) == [("Ada", 1), ("Grace", 2)]
    assert at.toggle(key="compare_combine").value and not at.toggle(key="compare_across").value
    at.toggle(key="compare_across").set_value(True).run()
    assert_ok(at)
    (row,) = at.dataframe[0].value.to_dict("records")
    assert row["seeds"] == 2 and row["configuration"].endswith("2 seeds (0, 1)")
    # Grace's newer seed-0 run counts; Ada's is named as its duplicate, with her name.
    assert row["student"] == "Grace"
    assert re.fullmatch(r"run \w{6} \(Ada\) duplicate of seed 0 \(run \w{6} \(Grace\) counts\)", row["duplicates"])
    # One run per row again: still each with its student.
    at.toggle(key="compare_combine").set_value(False).run()
    assert sorted(at.dataframe[0].value["student"]) == ["Ada", "Grace", "Grace"]
