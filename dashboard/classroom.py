"""Who is looking: the teacher (unlocked with the server's token) or a student (a display name, their
own runs, and the class gallery when the teacher opens it). Who is who comes from signed cookies
(dashboard/identity.py); nothing in the address bar grants anything."""

from __future__ import annotations

import streamlit as st

from dashboard.identity import keep_teacher_switches, restore_teacher, sign_in_teacher, sign_out_teacher
from dashboard.state import get_store, owner_id
from mtl_core.store.classroom import is_teacher_token, teacher_token
from mtl_core.store.runs import NameTaken, StoreUnavailable
from mtl_core.text import NAME_MAX, clean_name

# The teacher's class-wide switches, kept in the run store (mtl_core.store.runs.SETTINGS).
CLASS_SWITCHES = (("gallery", "Class gallery open"), ("gallery_downloads", "Students may download gallery models"))


def server_teacher_token() -> str:
    return teacher_token(get_store().path.parent)


def is_teacher() -> bool:
    return bool(st.session_state.get("teacher"))


def unlock_from_url() -> None:
    """A teacher cookie (12 hours from sign-in) signs a reloaded tab in again; `?teacher=TOKEN` signs in
    and then leaves the address bar, so a projected URL never shows it."""
    if not st.session_state.get("_teacher_checked"):
        restore_teacher(server_teacher_token())
    given = st.query_params.get("teacher")
    if given is None:
        return
    del st.query_params["teacher"]
    if is_teacher_token(given, server_teacher_token()):
        sign_in_teacher(server_teacher_token())
    else:
        st.session_state["teacher_error"] = "That teacher link is not valid on this server."


def gallery_open() -> bool:
    return get_store().setting("gallery")


def visible_runs(statuses: tuple[str, ...] | None = None) -> list[dict]:
    """Your runs; everyone's in the teacher's all-runs view; plus others' finished runs (read-only) when
    the class gallery is open and you chose to look at it."""
    store = get_store()
    if is_teacher() and st.session_state.get("show_all_runs"):
        return store.list_runs(None, statuses)
    mine = store.list_runs(owner_id(), statuses)
    if st.session_state.get("show_gallery") and gallery_open() and (statuses is None or "finished" in statuses):
        others = [r for r in store.list_runs(None, ("finished",)) if r["owner"] != owner_id()]
        return sorted(mine + others, key=lambda r: r["created"], reverse=True)
    return mine


def can_manage(run: dict) -> bool:
    """Stop or delete: the run's owner, or the teacher."""
    return run["owner"] == owner_id() or is_teacher()


def can_download(run: dict) -> bool:
    return can_manage(run) or get_store().setting("gallery_downloads")


def _save_name() -> None:
    """Only this browser's own name can change here; a name another student has is refused."""
    name = clean_name(st.session_state.get("student_name", ""))
    try:
        get_store().set_owner_name(owner_id(), name)
        st.session_state["student_name"] = name
    except NameTaken as exc:
        st.session_state["student_name"] = get_store().owner_names().get(owner_id(), "")
        st.session_state["name_error"] = str(exc)
    except StoreUnavailable as exc:
        st.session_state["student_name"] = name
        st.session_state["name_error"] = str(exc)


def name_ui() -> None:
    if "student_name" not in st.session_state:  # a reload or a new tab finds the name again
        st.session_state["student_name"] = get_store().owner_names().get(owner_id(), "")
    if st.session_state.get("name_error"):
        st.warning(st.session_state.pop("name_error"))
    st.text_input(
        "Your name",
        key="student_name",
        max_chars=NAME_MAX,
        on_change=_save_name,
        placeholder="for example Alice",  # short: a longer one was cut in the sidebar's width
        help="So your teacher can tell your runs apart. Only you and your teacher can change it.",
    )


def teacher_ui() -> None:
    """The teacher's switches; a sign-in box for everyone else."""
    store = get_store()
    if is_teacher():
        st.markdown("**Teacher**")
        st.toggle(
            "All students' runs",
            key="show_all_runs",
            help="Every run on this server, with its student's name.",
            on_change=keep_teacher_switches,
            args=(server_teacher_token(),),
        )
        st.toggle("Projector view", key="projector", help="The Train page shows only the watched run, large.")
        for name, label in CLASS_SWITCHES:
            stored = store.setting(name)
            if st.toggle(label, value=stored, key=f"t_{name}") != stored:
                store.set_setting(name, not stored)
        if st.button("Sign out", key="t_leave", help="Leave the teacher view on this browser."):
            sign_out_teacher()
            st.rerun()
        return
    if gallery_open():
        st.toggle("Class gallery", key="show_gallery", help="Everyone's finished runs, read-only.")
    with st.expander("Teacher sign-in"):
        if st.session_state.get("teacher_error"):
            st.error(st.session_state.pop("teacher_error"))
        with st.form("teacher_sign_in", border=False):
            given = st.text_input("Teacher token", type="password", key="t_token")
            if st.form_submit_button("Unlock"):
                if is_teacher_token(given, server_teacher_token()):
                    sign_in_teacher(server_teacher_token())
                    st.rerun()
                st.error("That token is not right.")
