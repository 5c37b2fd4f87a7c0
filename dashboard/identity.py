"""This browser's identity in the dashboard: found in its signed cookie when a session starts, made (and the
cookie written by a tiny script) on a first visit, moved to another computer with a one-time code; the
teacher's sign-in in a cookie of its own; the exercise lock kept per identity. The rules themselves live
in `mtl_core/store/identity.py`.

Streamlit reads cookies once, when the browser connects (`st.context.cookies`), so a cookie written during
a session counts from the next reload or tab on; until then the session keeps what it knows in its state.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import streamlit as st

from dashboard.state import client_address, get_store
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.store.identity import (
    CODE_TTL_S,
    ID_COOKIE,
    ID_MAX_AGE_S,
    TEACHER_COOKIE,
    TEACHER_MAX_AGE_S,
    IdentityStore,
    new_secret,
    owner_of,
    sign_identity,
    sign_teacher,
    signing_key,
    verify_identity,
    verify_teacher,
)

# Runs in the app's own page (components v2 are not iframes), so it can set the page's cookies. Each
# payload is mounted under its own key, so a new payload always runs the function again.
_WRITER_JS = """
export default function (component) {
    const cookies = (component.data && component.data.cookies) || [];
    for (const c of cookies) {
        let line = `${c.name}=${c.value}; Path=/; Max-Age=${c.max_age}; SameSite=Strict`;
        if (window.location.protocol === "https:") line += "; Secure";
        document.cookie = line;
    }
}
"""
_writer = None
_stores: dict[Path, IdentityStore] = {}


def _home() -> Path:
    return get_store().path.parent


def _key() -> str:
    return signing_key(_home())


def identity_store() -> IdentityStore:
    path = _home() / "identity.sqlite"
    if path not in _stores:
        _stores[path] = IdentityStore(path)
    return _stores[path]


def _cookie(name: str) -> str | None:
    try:
        return st.context.cookies.get(name)
    except Exception:  # noqa: BLE001 - no connection (bare mode): no cookies
        return None


def _write_cookie(name: str, value: str, max_age: int) -> None:
    """Queue a cookie for the writer to set (max_age 0 deletes it)."""
    st.session_state.setdefault("_cookies_out", {})[name] = {"name": name, "value": value, "max_age": int(max_age)}


def cookie_writer() -> None:
    """Set the cookies this session made; drawn at the end of the sidebar every run (no visible content)."""
    out = st.session_state.get("_cookies_out")
    if not out:
        return
    global _writer
    if _writer is None:
        _writer = st.components.v2.component("mtl_cookie_writer", js=_WRITER_JS)
    payload = sorted(out.values(), key=lambda c: c["name"])
    _writer(key=f"cookie_writer_{abs(hash(repr(payload)))}", data={"cookies": payload}, height="content")


# -- students ---------------------------------------------------------------------------------------


def _adopt(secret: str) -> None:
    st.session_state["_secret"] = secret
    st.session_state["owner"] = owner_of(secret)


def start_identity() -> None:
    """The first call of a session: the identity in the browser's cookie, or a new one (cookie written)
    if this address has not made too many lately. A link's old `?u=` grants nothing."""
    key = _key()
    secret = verify_identity(_cookie(ID_COOKIE), key)
    if secret is None:
        secret = new_secret()
        try:
            admitted = identity_store().admit(owner_of(secret), client_address())
        except (sqlite3.Error, OSError):
            admitted = True  # the bookkeeping file is unwritable: identities still work, unlimited
        if not admitted:
            st.warning(
                "Many new visitors came from this network address in the last few minutes. If this dashboard "
                "is open in another tab of this browser, use that tab (or reload it); otherwise wait a few "
                "minutes and reload this page."
            )
            st.stop()
        _write_cookie(ID_COOKIE, sign_identity(secret, key), ID_MAX_AGE_S)
    _adopt(secret)


def identity_ui() -> None:
    """Every run, before anything else: the identity is known, and an old `?u=` leaves the address bar."""
    if "owner" not in st.session_state:
        start_identity()
    if "u" in st.query_params:
        del st.query_params["u"]


def _issue_code() -> None:
    secret = st.session_state.get("_secret")
    if not secret:
        st.session_state["_code"] = ("", 0.0)
        return
    try:
        code = identity_store().issue_code(st.session_state["owner"], secret)
    except (sqlite3.Error, OSError):
        code = ""
    st.session_state["_code"] = (code, time.time() + CODE_TTL_S)


def _redeem_code() -> None:
    typed = st.session_state.get("id_typed", "")
    st.session_state["id_typed"] = ""
    try:
        secret = identity_store().redeem_code(typed, client_address())
    except (sqlite3.Error, OSError):
        secret = None
    if secret is None:
        st.session_state["_code_error"] = "That code is not valid: it may be mistyped, used already or expired."
        return
    kept = ("teacher", "show_all_runs", "_teacher_since", "_cookies_out")
    keep = {k: st.session_state[k] for k in kept if k in st.session_state}
    for k in list(st.session_state):  # what this browser showed belonged to its old identity
        del st.session_state[k]
    st.session_state.update(keep)
    _adopt(secret)
    st.session_state["_teacher_checked"] = True
    _write_cookie(ID_COOKIE, sign_identity(secret, _key()), ID_MAX_AGE_S)
    st.session_state["_code_done"] = True


def move_ui() -> None:
    """Getting one's runs onto another computer: a one-time code shown on request, typed on the other."""
    with st.expander("Move my runs to another computer"):
        if st.session_state.pop("_code_done", False):
            st.success("This browser now has the runs of the code's owner.")
        code, until = st.session_state.get("_code", ("", 0.0))
        st.button("Show a one-time code", key="id_issue", on_click=_issue_code)
        if "_code" in st.session_state:
            if code and time.time() < until:
                st.code(code, language=None)
                st.caption(
                    f"On the other computer, open this dashboard and type it below within {CODE_TTL_S // 60} "
                    "minutes; it works once. Whoever types it gets your runs: keep it off the projector."
                )
            elif not code:
                st.caption("Codes cannot be made in this session.")
            else:
                st.caption("That code has expired: make a new one.")
        with st.form("id_redeem", border=False):
            st.text_input("I have a code", key="id_typed", placeholder="7K3F-Q9PX-M2TA", max_chars=20)
            st.form_submit_button("Use the code", on_click=_redeem_code)
            st.caption("This browser then shows the code's runs instead of its own.")
        if st.session_state.get("_code_error"):
            st.error(st.session_state.pop("_code_error"))


# -- the teacher ------------------------------------------------------------------------------------


def restore_teacher(teacher_token: str) -> None:
    """Once per session: a valid teacher cookie signs this tab in again (a reload, a restart)."""
    if st.session_state.get("_teacher_checked"):
        return
    st.session_state["_teacher_checked"] = True
    payload = verify_teacher(_cookie(TEACHER_COOKIE), _key(), teacher_token)
    if payload and not st.session_state.get("teacher"):
        st.session_state["teacher"] = True
        st.session_state["show_all_runs"] = payload["all"]
        st.session_state["_teacher_since"] = payload["since"]


def sign_in_teacher(teacher_token: str) -> None:
    st.session_state["teacher"] = True
    st.session_state["show_all_runs"] = False  # off as before; the cookie remembers where the teacher puts it
    st.session_state["_teacher_since"] = time.time()
    _write_teacher_cookie(teacher_token)


def _write_teacher_cookie(teacher_token: str) -> None:
    since = st.session_state.get("_teacher_since", time.time())
    left = max(1, int(since + TEACHER_MAX_AGE_S - time.time()))
    value = sign_teacher(_key(), teacher_token, bool(st.session_state.get("show_all_runs")), since)
    _write_cookie(TEACHER_COOKIE, value, left)


def keep_teacher_switches(teacher_token: str) -> None:
    """The all-runs switch was flipped: the cookie remembers it for the next reload."""
    _write_teacher_cookie(teacher_token)


def sign_out_teacher() -> None:
    for key in ("teacher", "show_all_runs", "projector", "_teacher_since"):
        st.session_state.pop(key, None)
    _write_cookie(TEACHER_COOKIE, "", 0)


# -- the exercise lock ------------------------------------------------------------------------------


def save_exercise_lock(config: TrainConfig, hidden: frozenset[str]) -> None:
    """The exercise link's settings and hidden controls, kept for this identity (a link hiding nothing
    ends the lock)."""
    try:
        identity_store().save_lock(st.session_state["owner"], config.to_dict(), hidden)
    except (sqlite3.Error, OSError, KeyError):
        pass  # the lock then lasts as long as this session


def pending_exercise_lock() -> tuple[TrainConfig, frozenset[str]] | None:
    """Once per session: this identity's exercise lock, to put back into the form after a reload."""
    if st.session_state.get("_lock_checked") or "form_hidden" in st.session_state:
        return None
    st.session_state["_lock_checked"] = True
    try:
        found = identity_store().lock(st.session_state["owner"])
        return (TrainConfig.from_dict(found[0]), found[1]) if found else None
    except (sqlite3.Error, OSError, KeyError, ConfigError, TypeError, ValueError):
        return None
