"""A training run's progress line, kept live by the browser itself instead of by a polling script run.

Every script run, fragment runs included, makes Streamlit's frontend render the page's elements again:
a tab that reran its status line every 2 s cost its browser about 6 % of a core while watching a run train
(benchmarks/watch_cpu.py), most of it for elements that had not changed. Here the line is a small component
(`progress_line`) that asks the server for the run's progress every 2 s over plain HTTP (`/_mtl/live/...`,
a route `python -m dashboard.serve` adds) and moves its own bar; it asks Streamlit for a rerun only when the
run's state changes (its first epoch is in, it finished, it was stopped) or when new epochs are in and the
charts beside it are due (dashboard/monitor.py's CHART_EVERY_S).

The address holds the run's id signed with the server's key, so a page the server drew is the only place
to get one; it tells the run's progress and nothing else. Under plain `streamlit run app.py` or AppTest
there is no such route (`served()` is false) and the monitor falls back to its polling fragment.
"""

from __future__ import annotations

import json
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

from mtl_core.jobs.estimate import duration_words
from mtl_core.store.identity import signing_key
from mtl_core.store.runs import RunStore

ROUTE = "_mtl/live/{token}"  # under the server's base path (server.baseUrlPath), as Streamlit's own routes
POLL_MS = 2000  # a stop or a finished run shows within 2 s, as the polling fragment did
_SALT = "mtl-live-progress"  # a token for this route only: it opens nothing else signed with the key
_served = False


def served() -> bool:
    """Whether this process's Streamlit server answers the progress route (it was built with it)."""
    return _served


def _eta(done: int, total: int, per_epoch_s: float) -> str:
    if not done:
        return "first epoch running…"
    return f"{duration_words(per_epoch_s * (total - done))} left ({per_epoch_s:.1f} s per epoch)"


def running_line(done: int, total: int, within: float, per_epoch_s: float) -> tuple[float, str]:
    """A training run's bar (0-1) and the words beside it, from its epochs done, the fraction of the next
    one done and its mean seconds per epoch so far."""
    if done:
        text = f"Epoch {done} of {total} · epoch {done + 1} {within:.0%} done · {_eta(done, total, per_epoch_s)}"
    else:  # a long first epoch (a CNN on 60,000 digits) still shows it moves
        text = f"Epoch 0 of {total} · first epoch {within:.0%} done"
    return min(1.0, (done + within) / total), text


def progress_state(run: dict, done: int, per_epoch_s: float, within: float) -> dict:
    """What the component shows: the run's status, epochs done, bar, words and whether it is paused."""
    fraction, text = running_line(done, run["config"]["epochs"], within, per_epoch_s)
    return {"status": run["status"], "epochs": done, "fraction": fraction, "text": text,
            "paused": bool(run.get("yield_requested"))}  # fmt: skip


def progress(store: RunStore, run_id: str) -> dict | None:
    """`progress_state` read from the store, as the route answers it; None when the run is gone."""
    run = store.get_run(run_id)
    if run is None:
        return None
    done, per = store.epoch_progress([run_id]).get(run_id, (0, 0.0))
    within = store.within_epoch(run_id) or 0.0 if run["status"] == "running" else 0.0
    return progress_state(run, done, per, within)


def _path(token: str = "{token}") -> str:
    from streamlit import config

    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return "/" + "/".join(filter(None, [base, ROUTE.format(token=token)]))


def _signer(home: Path) -> URLSafeSerializer:
    return URLSafeSerializer(signing_key(home), salt=_SALT)


def token_for(store: RunStore, run_id: str) -> str:
    return _signer(store.path.parent).dumps(run_id)


def run_of(store: RunStore, token: str) -> str | None:
    try:
        run_id = _signer(store.path.parent).loads(token)
    except BadSignature:
        return None
    return run_id if isinstance(run_id, str) else None


def routes(store_of) -> list:
    """The progress route, for Starlette. `store_of()` gives the server's run store when asked (the
    runner starts before the server, so it is there by the first request)."""
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(request) -> Response:  # a plain function: Starlette runs it in its thread pool
        store = store_of()
        run_id = run_of(store, request.path_params["token"])
        state = progress(store, run_id) if run_id else None
        if state is None:
            return Response('{"status": "gone"}', status_code=404, media_type="application/json")
        return Response(json.dumps(state), media_type="application/json", headers={"Cache-Control": "no-store"})

    return [Route(_path(), answer, methods=["GET"])]


def install() -> None:
    """Add the progress route to the routes Streamlit's server builds (`python -m dashboard.serve` calls
    this before the server starts; Streamlit 1.67 offers routes only to an `st.App` script). `served()`
    turns true when the server is really built with it."""
    from streamlit.web.server.starlette import starlette_app

    build = starlette_app.create_streamlit_routes
    if getattr(build, "with_live_progress", False):
        return

    def with_progress(runtime):  # noqa: ANN001, ANN202 - Streamlit's own signature
        global _served
        from mtl_core.jobs.runner import server_runner

        built = [*routes(lambda: server_runner().store), *build(runtime)]
        _served = True
        return built

    with_progress.with_live_progress = True  # type: ignore[attr-defined]
    starlette_app.create_streamlit_routes = with_progress


# The component: our own code and CSS, no user text (the words come from `running_line` and are set as
# text, never as markup). It polls while the run trains and asks for one rerun when its state changes.
_CSS = """
.live { contain: content; }
.line { font-size: 0.875rem; margin: 0 0 0.25rem 0; color: var(--st-text-color, #31333f); }
.track { height: 0.5rem; border-radius: 0.25rem; background: var(--st-secondary-background-color, #f0f2f6); }
.bar { height: 100%; border-radius: 0.25rem; background: var(--st-primary-color, #ff4b4b); width: 0; }
.paused { font-size: 0.875rem; margin: 0.5rem 0 0 0; }
"""
_HTML = """
<div class="live" data-testid="mtl-live-progress">
  <p class="line"></p>
  <div class="track" role="progressbar" aria-label="Training progress" aria-valuemin="0" aria-valuemax="100">
    <div class="bar"></div>
  </div>
  <p class="paused" hidden>Paused so another student's run could start; it resumes by itself where it stopped.</p>
</div>
"""
_JS = """
export default function (component) {
    const { data, parentElement, setTriggerValue } = component;
    const root = parentElement.querySelector(".live");
    if (!root || !data) return;
    const line = root.querySelector(".line"), track = root.querySelector(".track"),
          bar = root.querySelector(".bar"), paused = root.querySelector(".paused");
    const show = (s) => {
        line.textContent = s.text;
        bar.style.width = (100 * s.fraction).toFixed(1) + "%";
        track.setAttribute("aria-valuenow", Math.round(100 * s.fraction));
        paused.hidden = !s.paused;
    };
    show(data.state);
    const drawn = Date.now();  // when the fragment drew this line and the charts beside it
    let asked = false, gone = false;
    // Whether the app is between runs. A click on another page removes this line at once (and its cleanup
    // sets `gone`); a rerun asked for after that would carry this page's address and take the student back.
    const idle = () => {
        const app = document.querySelector("[data-test-script-state]");
        return !app || app.getAttribute("data-test-script-state") === "notRunning";
    };
    const poll = async () => {
        if (asked || gone) return;
        let s;
        try {
            const r = await fetch(data.url, { cache: "no-store", credentials: "same-origin" });
            s = await r.json();
        } catch (e) { return; }  // the server restarts or the network blinks: try again next turn
        if (gone) return;  // the page changed while the answer was on its way
        const changed = s.status !== data.state.status || (data.state.epochs === 0 && s.epochs > 0);
        const charts_due = s.epochs > data.state.epochs && Date.now() - drawn >= data.chart_every_ms;
        if ((changed || charts_due) && idle()) {
            asked = true;  // one rerun: the page draws the new state (and this component anew)
            setTriggerValue("changed", s.status + ":" + s.epochs);
            return;
        }
        show(s);
    };
    // Called again with new data (the fragment redrew it): one timer per line, never two. The cleanup
    // stops its own timer only: it may run after the next call has started that one's.
    clearInterval(root._mtlTimer);
    const timer = setInterval(poll, data.poll_ms);
    root._mtlTimer = timer;
    return () => { gone = true; clearInterval(timer); };
}
"""
_component = None


def progress_line(store: RunStore, run_id: str, state: dict, chart_every_s: float) -> None:
    """Draw the live progress line for a run in training, starting from `state` (`progress_state`). It asks
    for a rerun of the fragment it is in when the run's state changes, or when new epochs are in and
    `chart_every_s` has passed since it was drawn (so the charts drawn beside it take them)."""
    import streamlit as st

    global _component
    if _component is None:
        _component = st.components.v2.component("mtl_live_progress", html=_HTML, css=_CSS, js=_JS)
    url = _path(token_for(store, run_id))
    _component(
        key=f"live_progress_{run_id}",
        data={"url": url, "state": state, "poll_ms": POLL_MS, "chart_every_ms": round(1000 * chart_every_s)},
        on_changed_change=lambda: None,  # a trigger with a callback reruns the fragment the line is in
        height="content",
    )
