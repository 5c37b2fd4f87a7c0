"""Private identity: signed cookies (identity and teacher), recovery codes, unique names, the limit on new
identities per address, the exercise lock; then the same through the app under AppTest, with the cookies a
browser would send put in by hand (AppTest has none)."""

from __future__ import annotations

import os
import re
import stat
import time

import pytest
from streamlit.testing.v1 import AppTest
from test_pages import ROOT, assert_ok, stored_run, texts

from mtl_core.analysis import run_label
from mtl_core.store.identity import (
    CODE_TTL_S,
    ID_COOKIE,
    TEACHER_COOKIE,
    TEACHER_MAX_AGE_S,
    IdentityStore,
    RateLimits,
    new_secret,
    normalize_code,
    owner_of,
    sign_identity,
    sign_teacher,
    signing_key,
    verify_identity,
    verify_teacher,
)
from mtl_core.store.runs import NameTaken, RunStore

KEY = "k" * 43
TOKEN = "class-token-123"


@pytest.fixture
def ids(tmp_path) -> IdentityStore:
    return IdentityStore(
        tmp_path / "identity.sqlite", RateLimits(new_per_address=3, window_s=600, bad_codes_per_address=5)
    )


def tamper(token: str) -> str:
    """The same token with one character of its signature changed."""
    i = len(token) - 3
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


# ----------------------------------------------------------------------------- signed identity cookies


def test_an_identity_cookie_round_trips_and_the_owner_reveals_no_secret():
    secret = new_secret()
    cookie = sign_identity(secret, KEY)
    assert verify_identity(cookie, KEY) == secret
    owner = owner_of(secret)
    assert re.fullmatch(r"[0-9a-f]{20}", owner) and owner == owner_of(secret)
    assert owner not in cookie
    assert owner_of(new_secret()) != owner
    assert verify_identity(sign_identity(owner, KEY), KEY) is None  # an owner id is no secret


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "garbage",
        "a.b.c",
    ],
)
def test_malformed_identity_cookies_are_refused(bad):
    assert verify_identity(bad, KEY) is None


def test_a_tampered_or_foreign_identity_cookie_is_refused():
    cookie = sign_identity(new_secret(), KEY)
    assert verify_identity(tamper(cookie), KEY) is None
    assert verify_identity(cookie, "another-server-key") is None
    _, stamp, signature = cookie.rsplit(".", 2)
    other_payload = sign_identity(new_secret(), KEY).rsplit(".", 2)[0]
    forged = f"{other_payload}.{stamp}.{signature}"  # another payload under this cookie's signature
    assert verify_identity(forged, KEY) is None


def test_an_identity_cookie_expires(monkeypatch):
    cookie = sign_identity(new_secret(), KEY)
    later = time.time() + 100
    monkeypatch.setattr(time, "time", lambda: later)
    assert verify_identity(cookie, KEY, max_age_s=50) is None
    assert verify_identity(cookie, KEY, max_age_s=500) is not None


def test_the_signing_key_is_made_once_and_private(tmp_path):
    key = signing_key(tmp_path)
    assert len(key) >= 40 and signing_key(tmp_path) == key
    assert stat.S_IMODE(os.stat(tmp_path / "identity-key").st_mode) == 0o600


# ----------------------------------------------------------------------------- the teacher's cookie


def test_a_teacher_cookie_holds_the_switch_and_is_tied_to_the_token():
    cookie = sign_teacher(KEY, TOKEN, all_runs=False)
    got = verify_teacher(cookie, KEY, TOKEN)
    assert got is not None and got["all"] is False
    assert verify_teacher(cookie, KEY, "a-new-token") is None  # a new token signs everyone out
    assert verify_teacher(tamper(cookie), KEY, TOKEN) is None
    assert verify_teacher(cookie, "another-key", TOKEN) is None
    assert verify_teacher(sign_identity(new_secret(), KEY), KEY, TOKEN) is None  # a student's cookie is not it
    assert verify_identity(cookie, KEY) is None


def test_a_teacher_cookie_expires_twelve_hours_after_sign_in_however_often_rewritten(monkeypatch):
    signed_in = time.time() - TEACHER_MAX_AGE_S - 5
    rewritten = sign_teacher(KEY, TOKEN, since=signed_in)  # freshly signed, but the sign-in is older
    assert verify_teacher(rewritten, KEY, TOKEN) is None
    cookie = sign_teacher(KEY, TOKEN)
    later = time.time() + TEACHER_MAX_AGE_S + 5
    monkeypatch.setattr(time, "time", lambda: later)
    assert verify_teacher(cookie, KEY, TOKEN) is None


# ----------------------------------------------------------------------------- recovery codes


def test_a_recovery_code_moves_the_secret_once(ids):
    secret = new_secret()
    code = ids.issue_code(owner_of(secret), secret)
    assert re.fullmatch(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}", code)
    assert secret not in ids.path.read_bytes().decode("latin-1")  # the file alone opens nothing
    typed = " " + code.lower().replace("-", " ") + " "
    assert normalize_code(typed) == code
    assert ids.redeem_code(typed, "10.0.0.2") == secret
    assert ids.redeem_code(code, "10.0.0.2") is None  # used up


def test_a_recovery_code_expires_and_a_new_one_replaces_the_old(ids):
    secret = new_secret()
    now = time.time()
    old = ids.issue_code(owner_of(secret), secret, now=now)
    new = ids.issue_code(owner_of(secret), secret, now=now)
    assert ids.redeem_code(old, "a", now=now) is None
    assert ids.redeem_code(new, "a", now=now + CODE_TTL_S + 1) is None
    fresh = ids.issue_code(owner_of(secret), secret, now=now)
    assert ids.redeem_code(fresh, "a", now=now + CODE_TTL_S - 1) == secret


def test_guessing_codes_is_cut_off_per_address(ids):
    secret = new_secret()
    code = ids.issue_code(owner_of(secret), secret)
    for _ in range(5):
        assert ids.redeem_code("2222-2222-2222", "10.0.0.9") is None
    assert ids.too_many_bad_codes("10.0.0.9")
    assert ids.redeem_code(code, "10.0.0.9") is None  # even the right code, from there, for a while
    assert ids.redeem_code(code, "10.0.0.3") == secret


@pytest.mark.parametrize("typed", ["", "ABCD-EFGH-JK", "0000-1111-IIII", "ABCD-EFGH-JKMN-P"])
def test_what_cannot_be_a_code_is_refused(typed):
    assert normalize_code(typed) is None


# ----------------------------------------------------------------------------- new identities per address


def test_new_identities_are_limited_per_address_and_window(ids):
    now = time.time()
    assert all(ids.admit(owner_of(new_secret()), "10.0.0.1", now=now) for _ in range(3))
    assert not ids.admit(owner_of(new_secret()), "10.0.0.1", now=now + 1)
    assert ids.admit(owner_of(new_secret()), "10.0.0.2", now=now + 1)  # another address is not held up
    assert ids.admit(owner_of(new_secret()), "10.0.0.1", now=now + 601)  # the window has passed
    assert all(ids.admit(owner_of(new_secret()), "", now=now) for _ in range(10))  # unknown address: no limit


def test_the_default_limit_lets_a_class_behind_one_address_arrive_at_once(tmp_path):
    limits = RateLimits()
    assert limits.new_per_address >= 60 and limits.window_s == 600
    ids = IdentityStore(tmp_path / "i.sqlite", limits)
    now = time.time()
    assert all(ids.admit(owner_of(new_secret()), "school-nat", now=now) for _ in range(30))


# ----------------------------------------------------------------------------- exercise locks and names


def test_an_exercise_lock_is_kept_per_identity_and_a_plain_link_ends_it(ids):
    ids.save_lock("me", {"model": "hard", "lr": 0.002}, frozenset({"lr", "batch"}))
    assert ids.lock("me") == ({"model": "hard", "lr": 0.002}, frozenset({"lr", "batch"}))
    assert ids.lock("someone-else") is None
    ids.save_lock("me", {"model": "stl"}, frozenset())
    assert ids.lock("me") is None


def test_display_names_are_unique_in_the_class_however_they_are_typed(store):
    store.set_owner_name("a", "Alice")
    for taken in ("Alice", "alice", "ALICE", "\uff21lice", "\uff41\uff4c\uff49\uff43\uff45", "Alice "):
        with pytest.raises(NameTaken, match="already has that name"):
            store.set_owner_name("b", taken)
    assert store.owner_names() == {"a": "Alice"}
    store.set_owner_name("a", "alice")  # one's own name may change case
    store.set_owner_name("b", "Alice B")
    with pytest.raises(NameTaken):
        store.set_owner_name("e", "alice  b")  # runs of spaces read as one on a list
    store.set_owner_name("c", "")
    store.set_owner_name("d", "")  # no name is no clash
    assert store.owner_names() == {"a": "alice", "b": "Alice B", "c": "", "d": ""}


# ----------------------------------------------------------------------------- through the app


def app(cookies: dict | None = None, page: str | None = "pages/train.py") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if page:
        at.switch_page(page)
    return at


@pytest.fixture
def cookie_jar(monkeypatch):
    """What a browser would send: AppTest has no cookies, so the app's cookie reader is pointed here."""
    from dashboard import identity

    jar: dict[str, str] = {}
    monkeypatch.setattr(identity, "_cookie", lambda name: jar.get(name))
    return jar


def written(at: AppTest) -> dict[str, dict]:
    """The cookies the session asked its browser to set (the writer's payload)."""
    return dict(at.session_state["_cookies_out"]) if "_cookies_out" in at.session_state else {}


def test_a_first_visit_makes_an_identity_and_a_cookie_brings_it_back(synthetic, cookie_jar):
    at = app().run()
    assert_ok(at)
    owner = at.session_state["owner"]
    cookie = written(at)[ID_COOKIE]
    assert cookie["max_age"] > 30 * 24 * 3600 and owner not in cookie["value"]
    rid = stored_run("hard", synthetic, owner=owner)
    cookie_jar[ID_COOKIE] = cookie["value"]  # a reload: the browser now sends the cookie
    again = app().run()
    assert again.session_state["owner"] == owner
    assert again.selectbox(key="watch_select").options == [run_label(RunStore().get_run(rid))]
    assert ID_COOKIE not in written(again)  # nothing to write: it came with the cookie


def test_an_old_u_link_or_a_tampered_cookie_grants_nothing(synthetic, cookie_jar):
    victim = app().run()
    theirs = stored_run("hard", synthetic, owner=victim.session_state["owner"])
    cookie_jar[ID_COOKIE] = tamper(written(victim)[ID_COOKIE]["value"])
    at = app()
    at.query_params["u"] = victim.session_state["owner"]
    at.run()
    assert_ok(at)
    assert at.session_state["owner"] != victim.session_state["owner"]
    assert "u" not in at.query_params  # the old link's id leaves the address bar
    label = run_label(RunStore().get_run(theirs))
    assert not any(label in str(option) for box in at.selectbox for option in box.options)
    assert f"delete_{theirs}" not in [b.key for b in at.button]


def test_a_second_alice_is_told_and_keeps_her_name(cookie_jar):
    RunStore().set_owner_name("someone", "Alice")
    at = app().run()
    at.sidebar.text_input(key="student_name").input("alice").run()
    assert_ok(at)
    assert "already has that name" in texts(at.sidebar.warning)
    assert at.sidebar.text_input(key="student_name").value == ""
    assert RunStore().owner_names()["someone"] == "Alice"
    at.sidebar.text_input(key="student_name").input("Alice K").run()
    assert RunStore().owner_names()[at.session_state["owner"]] == "Alice K"


def test_a_recovery_code_carries_the_runs_to_another_browser(synthetic, cookie_jar):
    home = app().run()
    owner = home.session_state["owner"]
    rid = stored_run("hard", synthetic, owner=owner)
    home.sidebar.button(key="id_issue").click().run()
    code = home.sidebar.code[0].value
    other = app().run()
    assert other.session_state["owner"] != owner
    other.sidebar.text_input(key="id_typed").input(code)
    _submit_code(other)
    assert_ok(other)
    assert other.session_state["owner"] == owner
    assert run_label(RunStore().get_run(rid)) in other.selectbox(key="watch_select").options
    assert verify_identity(written(other)[ID_COOKIE]["value"], signing_key(RunStore().path.parent))
    third = app().run()  # the code works once
    third.sidebar.text_input(key="id_typed").input(code)
    _submit_code(third)
    assert third.session_state["owner"] != owner and "not valid" in texts(third.sidebar.error)


def _submit_code(at: AppTest) -> None:
    [button] = [b for b in at.sidebar.get("button") if getattr(b, "label", "") == "Use the code"]
    button.click().run()


def test_too_many_new_identities_from_one_address_are_told_to_wait(monkeypatch, cookie_jar):
    from dashboard import identity

    monkeypatch.setenv("MTL_NEW_IDS_PER_ADDRESS", "2")
    monkeypatch.setattr(identity, "client_address", lambda: "10.1.2.3")
    for _ in range(2):
        assert_ok(app().run())
    flood = app().run()
    assert "owner" not in flood.session_state
    assert "Many new visitors" in texts(flood.warning)
    assert not flood.get("form")  # no Train form, so nothing can be queued


def test_the_teacher_stays_signed_in_across_a_reload_until_signing_out(monkeypatch, cookie_jar):
    monkeypatch.setenv("MTL_TEACHER_TOKEN", TOKEN)
    at = app().run()
    at.query_params["teacher"] = TOKEN
    at.run()
    assert at.session_state["teacher"] and not at.session_state["show_all_runs"]
    at.sidebar.toggle(key="show_all_runs").set_value(True).run()
    cookie_jar.update({name: c["value"] for name, c in written(at).items()})
    assert written(at)[TEACHER_COOKIE]["max_age"] <= TEACHER_MAX_AGE_S
    reloaded = app().run()
    assert_ok(reloaded)
    assert reloaded.session_state["teacher"] and reloaded.session_state["show_all_runs"]  # as the teacher left it
    assert reloaded.session_state["owner"] == at.session_state["owner"]
    reloaded.sidebar.button(key="t_leave").click().run()
    assert "teacher" not in reloaded.session_state or not reloaded.session_state["teacher"]
    assert written(reloaded)[TEACHER_COOKIE]["max_age"] == 0  # the browser drops the cookie
    assert "All students' runs" not in [t.label for t in reloaded.sidebar.toggle]


def test_an_exercise_links_lock_survives_a_reload(cookie_jar):
    at = app()
    for name, value in {"model": "hard", "epochs": "3", "lr": "0.002", "hide": "lr,batch"}.items():
        at.query_params[name] = value
    at.run()
    assert_ok(at)
    cookie_jar[ID_COOKIE] = written(at)[ID_COOKIE]["value"]
    reloaded = app().run()
    assert_ok(reloaded)
    assert reloaded.radio(key="train_model").value == "hard"
    keys = [w.key for w in reloaded.number_input]
    assert "f_lr_hard" not in keys and "f_batch_hard" not in keys
    assert reloaded.session_state["f_lr_hard"] == pytest.approx(0.002)
    assert "This link fixes some settings" in texts(reloaded.caption)
    cookie_jar.clear()
    stranger = app().run()  # another browser: no lock
    assert "f_lr_hard" in [w.key for w in stranger.number_input] or stranger.radio(key="train_model").value != "hard"
