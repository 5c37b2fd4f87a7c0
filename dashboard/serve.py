"""Start the dashboard: the job runner first (so queued jobs resume and dead workers are replaced with
no browser open), then Streamlit on `app.py` in this same process.

What this launcher adds to Streamlit's own server, each in a function below: connections without Nagle's
delay, Streamlit's immutable files answered from memory (dashboard/static_cache.py) and a budget on what
one tab may send (dashboard/ingress.py) in front of its middleware, the training progress route
(dashboard/live.py), the router from the first request on, no page switch undone by a fragment's late
rerun (dashboard/state.py), one torch thread and two malloc arenas for the server's own work.

`python -m dashboard.serve [streamlit run options]`, e.g. `--server.port 8501`. Plain
`streamlit run app.py` works too; the runner then starts with the first page view.
"""

from __future__ import annotations

import ctypes
import socket
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own memory arena and keeps what was freed there for that
    thread; Streamlit runs every session's script in a thread of its own, so memory one session freed
    stays with its thread. In benchmarks/load.py's class of 30 the server peaked at +975 MB over idle
    without this (a light run: the hostile tab gave up early) and at +287 MB with it (the hostile tab
    flooding throughout); BENCHMARKS.md has both rows. Set before any thread starts; elsewhere than glibc
    it does nothing."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _one_torch_thread() -> None:
    """The server's own torch work (answers on Draw, saliency, confusion matrices, exports) is small and
    comes from many sessions at once, while the training workers keep the cores busy. Two intra-op threads
    then wait on each other at every parallel step: a saliency map took 66 ms at the median with two
    threads and 7 ms with one beside two busy processes at nice 10 (12 and 3 ms on an idle machine).
    Parallelism across students comes from the sessions' own threads; the workers set their own count."""
    import torch

    torch.set_num_threads(1)


def _answer_without_delay() -> None:
    """Streamlit 1.67 binds its listening socket as `socket.socket(family)`, whose protocol number reads 0,
    and asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose socket says TCP. So
    every answer after the first on a kept-alive connection waited for the browser's delayed ACK: 44 ms a
    file (2-7 ms on a fresh connection), and a first visit asks for about 60 scripts and styles over six
    connections. The socket is the same; it is only named as TCP here, so each connection it accepts gets
    TCP_NODELAY from asyncio (tests/test_server.py checks the option, tests/browser/test_http.py times a
    kept-alive connection)."""
    from streamlit.web.server.starlette import starlette_server

    bind = starlette_server._bind_socket
    if getattr(bind, "names_tcp", False):
        return

    def bind_as_tcp(address: str, port: int, backlog: int) -> socket.socket:
        sock = bind(address, port, backlog)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.setblocking(False)
        return sock

    bind_as_tcp.names_tcp = True  # type: ignore[attr-defined]
    starlette_server._bind_socket = bind_as_tcp


def _install_front_middleware() -> None:
    """Put dashboard/static_cache.py's memory of Streamlit's immutable files, then dashboard/ingress.py's
    per-tab budget, in front of Streamlit's own middleware. Streamlit 1.67 offers middleware only to an
    `st.App` script, which plain `streamlit run app.py` is not, so the list its server builds is extended
    here; tests/test_ingress.py checks that the list still takes them."""
    from starlette.middleware import Middleware
    from streamlit import config
    from streamlit.web.server.starlette import starlette_app

    from dashboard.ingress import IngressBudget, IngressLimits
    from dashboard.static_cache import StaticCache

    limits = IngressLimits.from_env()
    build = starlette_app.create_streamlit_middleware
    if getattr(build, "with_front_middleware", False):
        return

    def with_front() -> list[Middleware]:
        base = (config.get_option("server.baseUrlPath") or "").strip("/")
        static = "/" + "/".join(filter(None, [base, "static"])) + "/"
        return [Middleware(StaticCache, prefix=static), Middleware(IngressBudget, limits=limits), *build()]

    with_front.with_front_middleware = True  # type: ignore[attr-defined]
    starlette_app.create_streamlit_middleware = with_front


def _router_from_the_first_request() -> None:
    """Streamlit treats a `pages/` folder beside the main script as its legacy multipage layout until some
    session has run `st.navigation`: before that, a deep link such as /train runs pages/train.py bare,
    without app.py (its sidebar, identity, links). Our pages are app.py's st.Page entries, so the legacy
    layout is off for every session from the first request on (tests/browser/test_first_request.py), and
    in AppTest, which asks again for each run (tests/conftest.py calls this too)."""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__
    if not getattr(init, "router_only", False):

        def router_only(self: PagesManager, *args: object, **kwargs: object) -> None:
            init(self, *args, **kwargs)
            PagesManager.uses_pages_directory = False

        router_only.router_only = True  # type: ignore[attr-defined]
        PagesManager.__init__ = router_only  # type: ignore[method-assign]
    PagesManager.uses_pages_directory = False


def main(argv: list[str] | None = None) -> None:
    _fewer_malloc_arenas()
    _one_torch_thread()
    from dashboard.live import install as install_live_progress
    from dashboard.state import guard_page_switches
    from mtl_core.jobs.runner import RunnerSettings, server_runner
    from mtl_core.settings import SettingError
    from mtl_core.store.classroom import teacher_token
    from mtl_core.store.identity import RateLimits
    from mtl_core.store.runs import StoreUnavailable

    try:
        RunnerSettings.from_env()  # every MTL_* setting checked before anything is opened or started
        RateLimits.from_env()
        _install_front_middleware()
        _answer_without_delay()
        install_live_progress()
        _router_from_the_first_request()
        guard_page_switches()
        runner = server_runner()
    except (SettingError, StoreUnavailable) as exc:
        print(f"mtl-playground: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    where = "this server trains" if runner.has_pool else "another server already trains for this store"
    print(f"mtl-playground: runs in {runner.store.path} ({where}; {runner.n_workers} worker(s))", flush=True)
    token = teacher_token(runner.store.path.parent)
    print(
        f"mtl-playground: teacher view: add ?teacher={token} to the dashboard's address once "
        "(or type the token under 'Teacher sign-in'); keep it off the projector",
        flush=True,
    )
    if runner.store.notice:
        print(f"mtl-playground: {runner.store.notice}", flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    cli.main()


if __name__ == "__main__":
    main()
