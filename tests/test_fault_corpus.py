"""The bad-input and fault corpus in one table: every hostile input or fault a person can meet (a link, the
form, a name or a label, an upload, a canvas message, a model file, a damaged or lost store, a full or
read-only disk, a killed worker or server), where it enters, and the sentence that person then reads.

One test drives the whole table. Before each case a finished run is recorded the way a worker records one
(mtl_core/store/run_link.py: epochs, model file, the record kept beside it); after the case it must still be
listed with the same best accuracy, and its model file must be byte for byte the one it had.

The cases go through the real pages (Streamlit's AppTest) and the real store files. The job runner's
workers are idle processes unless a case needs real ones (killed workers, a killed server), so a page
costs a fraction of a second. The functions behind each sentence have their own, finer tests
(tests/test_safe_text.py, tests/test_canvas_input.py, tests/test_bad_inputs.py, tests/test_links.py,
tests/test_store_salvage.py, tests/test_jobs.py); this file is where a reader sees all of it at once."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import streamlit as st
import torch
from safetensors.torch import save as st_save
from streamlit.testing.v1 import AppTest
from test_bad_inputs import MODEL_FILES, UPLOADS
from test_canvas_input import data_url, flat_png, inject
from test_jobs import _alive
from test_pages import OWNER, ROOT, assert_ok, texts
from test_safe_text import HOSTILE, INVISIBLE, assert_page_inert, readable
from test_store_salvage import N_RUNS, _finished_store, _read_only, _scribble_over_the_page_of, _train_in_process
from waiting import wait_for

from dashboard.state import has_model
from mtl_core.checkpoint import FORMAT, load_model, model_bytes
from mtl_core.config import TrainConfig
from mtl_core.jobs.runner import JobRunner, _Worker, server_runner, shutdown_server_runners
from mtl_core.store.run_link import StoreLink
from mtl_core.store.runs import PUBLIC_NOTICE, RunStore, default_store_path
from mtl_core.training.loop import Training

KEPT_LABEL = "kept run"
REAL_SPAWN = JobRunner._spawn
LONG_RUN = dict(epochs=500, batch_size=8, data="synthetic")  # the smallest run that is still training when killed


# ----------------------------------------------------------------------------- the finished run that must survive


@dataclass(frozen=True)
class Kept:
    id: str
    best_avg: float
    best: dict
    digest: str  # sha256 of its model file


# None of these faults is about the C++ step (mtl_core/native/__init__.py); after an edit of its sources its first
# build takes a minute or more on 2 cores, which the killed-worker cases would otherwise wait for.
NO_NATIVE = {"MTL_NATIVE": "0"}


@pytest.fixture(scope="module")
def recipe(synthetic):
    """One short training, done once: its epochs, summary and model file are replayed for each case."""
    config = TrainConfig.preset("hard", epochs=2, data="synthetic")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in NO_NATIVE.items():
            mp.setenv(name, value)
        training = Training(config, synthetic)
        records = list(training.records())
    summary = training.summary()
    return config, training.params, records, summary, model_bytes(training.model, config, {"summary": summary})


def finish_a_run(recipe) -> Kept:
    """Record a finished run through the worker's own link: the store's rows, the model file, the sidecar."""
    config, params, records, summary, blob = recipe
    store = RunStore()
    rid = store.create_run(config.to_dict(), owner=OWNER, label=KEPT_LABEL)
    assert store.claim_next("corpus-worker", os.getpid()) == rid
    link = StoreLink(store, rid, "corpus-worker", store.get_run(rid))
    link.started(params, "synthetic", "cpu")
    for record in records:
        assert link.epoch(record)
    assert link.save_weights(blob, summary["best_epoch"]) == ""
    assert link.finish("finished", "", summary, weights=True)
    run = store.get_run(rid)
    assert run["best_avg"] is not None and has_model(run)
    return Kept(rid, run["best_avg"], run["best"], hashlib.sha256(Path(run["weights_path"]).read_bytes()).hexdigest())


def assert_kept(kept: Kept) -> None:
    """The finished run is listed (as the pages list it) with its numbers, and its model file is untouched."""
    runs = {r["id"]: r for r in server_runner().store.list_runs(owner=OWNER)}
    assert kept.id in runs, f"the finished run is gone: {sorted(runs)}"
    run = runs[kept.id]
    assert run["status"] == "finished" and run["label"] == KEPT_LABEL
    assert (run["best_avg"], run["best"]) == (kept.best_avg, kept.best)
    assert has_model(run)
    assert hashlib.sha256(Path(run["weights_path"]).read_bytes()).hexdigest() == kept.digest
    load_model(run["weights_path"])  # and it still loads


# ----------------------------------------------------------------------------- what a case gets and gives


@dataclass
class Ctx:
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    kept: Kept


@dataclass
class Seen:
    """What the person reads (Markdown as sent to the page), the page it was on, and words the table cannot
    hold because the case works them out (how many runs a damaged page left readable)."""

    text: str
    at: AppTest | None = None
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    where: str  # link, form, name, label, upload, canvas, model file, store, worker, server
    name: str  # the hostile input or the fault
    enter: Callable[[Ctx], Seen]  # puts it in where it enters, returns what the person then reads
    sees: tuple[str, ...]  # words that must all be in it, with Markdown escapes resolved


def _idle_spawn(self, extra=False) -> _Worker:
    """A worker that holds no run: the pages' runner gets a pool without loading torch in a new process."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    return _Worker(proc, f"idle-{proc.pid}")


def _dies_at_once(self, extra=False) -> _Worker:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    return _Worker(proc, f"dying-{proc.pid}")


def page(path: str = "pages/train.py", teacher: bool = False, query: dict | None = None, state: dict | None = None):
    """A page as this case's browser opens it; a teacher sees every run and what happened to the store."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["owner"] = OWNER
    if teacher:
        at.session_state["teacher"] = True
        at.session_state["show_all_runs"] = True
    for key, value in (state or {}).items():
        at.session_state[key] = value
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page(path)
    return at.run()


def said(at: AppTest) -> str:
    """Every sentence of the page's alerts and toasts, the sidebar's included."""
    return texts([*at.error, *at.warning, *at.info, *at.success, *at.toast])


# ----------------------------------------------------------------------------- links


def link(**query) -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        at = page(query=query)
        return Seen(texts(at.warning), at)

    return enter


def wrong_teacher_link(ctx: Ctx) -> Seen:
    at = page(query={"teacher": "not-the-token"})
    return Seen(texts(at.sidebar.error), at)


# ----------------------------------------------------------------------------- the Train form


def form(fill: Callable[[AppTest], None], clicks: int = 1, env: dict | None = None) -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        for name, value in (env or {}).items():
            ctx.monkeypatch.setenv(name, value)
        at = page()
        at.radio(key="train_model").set_value("hard").run()
        at.selectbox(key="f_data_hard").set_value("synthetic")
        fill(at)
        for _ in range(clicks):
            at.button(key="train_submit_hard").click().run()
        return Seen(said(at), at)

    return enter


def no_weights(at: AppTest) -> None:
    at.number_input(key="f_w_even_hard").set_value(0.0)
    at.number_input(key="f_w_mult3_hard").set_value(0.0)


def no_tasks(at: AppTest) -> None:
    at.multiselect(key="f_tasks_hard").set_value([])


def one_queued_then_two_seeds(at: AppTest) -> None:
    at.button(key="train_submit_hard").click().run()
    at.number_input(key="f_nseeds_hard").set_value(2)


def labelled(label: str) -> Callable[[AppTest], None]:
    return lambda at: at.text_input(key="f_label_hard").input(label)


def store_refuses(make_unwritable: Callable[[Ctx], None]) -> Callable[[Ctx], Seen]:
    """The page is open and working; then the store stops taking writes and the student presses Start."""

    def enter(ctx: Ctx) -> Seen:
        at = page()
        at.radio(key="train_model").set_value("hard").run()
        at.selectbox(key="f_data_hard").set_value("synthetic")
        make_unwritable(ctx)
        try:
            at.button(key="train_submit_hard").click().run()
        finally:
            _writable_again(ctx)
        return Seen(texts(at.warning), at)

    return enter


def _chmod_read_only(ctx: Ctx) -> None:
    """Read-only as a teacher would make it. Root writes through file modes, so SQLite is then also told
    at its connect edge to open read-only (tests/test_store_salvage.py `_read_only`), which it enforces."""
    path = default_store_path()
    for p in (path, path.parent):
        os.chmod(p, 0o444 if p.is_file() else 0o555)
    if os.geteuid() == 0:
        _read_only(ctx.monkeypatch)


def _writable_again(ctx: Ctx) -> None:
    path = default_store_path()
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)


class _FullDisk(sqlite3.Connection):
    """SQLite on a full disk: every write fails with SQLite's own words for it (SQLITE_FULL)."""

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE", "CREATE", "ALTER")):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def _disk_full(ctx: Ctx) -> None:
    """The edge a test cannot reach (a real full disk: tests/test_faults.py) is SQLite's write; the run
    store's connections get one whose writes fail as SQLite's do."""
    connect = sqlite3.connect

    def full(database, *args, **kwargs):
        if "runs.sqlite" in str(database):
            kwargs["factory"] = _FullDisk
        return connect(database, *args, **kwargs)

    ctx.monkeypatch.setattr(sqlite3, "connect", full)


def full_at_start(ctx: Ctx) -> Seen:
    _disk_full(ctx)
    at = page()
    return Seen(texts(at.sidebar.warning), at)


# ----------------------------------------------------------------------------- names and labels


def typed_name(name: str, taken_by_someone: str = "") -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        if taken_by_someone:
            RunStore().set_owner_name("someone-else", taken_by_someone)
        at = page()
        at.sidebar.text_input(key="student_name").input(name).run()
        options = at.selectbox(key="watch_select").options
        return Seen(texts(at.sidebar.warning) + "\n" + "\n".join(options), at)

    return enter


def stored_label(label: str) -> Callable[[Ctx], Seen]:
    """A label written past the store's cleaning, as an older store or another writer may hold it."""

    def enter(ctx: Ctx) -> Seen:
        config = TrainConfig.preset("stl", data="synthetic").to_dict()
        rid = RunStore().create_run(config, owner=OWNER, label="x")
        with sqlite3.connect(default_store_path()) as db:
            db.execute("UPDATE runs SET label=? WHERE id=?", (label, rid))
        at = page(state={"watch_select": rid})
        (option,) = [o for o in at.selectbox(key="watch_select").options if o.endswith(rid[-6:])]
        assert len(option) < 160 and not INVISIBLE.search(option), option
        return Seen(texts(at.markdown) + "\n" + option, at)

    return enter


# ----------------------------------------------------------------------------- Draw: uploads, canvas, model files


def _uploaded(ctx: Ctx, key: str, payload: bytes, name: str) -> None:
    """AppTest cannot drive a file uploader: the Draw page's uploader `key` hands over this file."""

    class Upload:
        def getvalue(self):
            return payload

    Upload.name = name
    real = st.file_uploader

    def uploader(*args, **kwargs):
        return Upload() if kwargs.get("key") == key else real(*args, **kwargs)

    ctx.monkeypatch.setattr(st, "file_uploader", uploader)


def upload(make: Callable[[], bytes]) -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        _uploaded(ctx, "upload", make(), "digit.png")
        at = page("pages/draw.py")
        return Seen(texts(at.error), at)

    return enter


def canvas(message: object) -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        at = page("pages/draw.py")
        inject(at, message() if callable(message) else message)
        assert not at.get("progress")  # no prediction from a refused picture
        return Seen(texts(at.error), at)

    return enter


def model_file(make: Callable[[Path], bytes], name: str = "model.safetensors") -> Callable[[Ctx], Seen]:
    def enter(ctx: Ctx) -> Seen:
        _uploaded(ctx, "model_file", make(ctx.tmp_path), name)
        at = page("pages/draw.py")
        assert not (ctx.tmp_path / "sentinel").exists(), "a loader ran the file's code"
        return Seen(texts(at.error), at)

    return enter


def _hostile_tensor_names(tmp: Path) -> bytes:
    tensors = {HOSTILE[k]: torch.zeros(1) for k in ("image", "bidi", "link", "autolink http")}
    return st_save(tensors, metadata={"format": FORMAT, "config": json.dumps(TrainConfig.preset("hard").to_dict())})


# ----------------------------------------------------------------------------- the store


def _drop_store_files() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(default_store_path()) + suffix).unlink(missing_ok=True)


def scribbled_middle(ctx: Ctx) -> Seen:
    """Random bytes over one page in the middle of a store of many runs, found when the server starts."""
    path = default_store_path()
    _finished_store(path)
    hit = _scribble_over_the_page_of(path, b"run-015-")
    lost = sum(f"run-{i:03d}-".encode() in hit for i in range(N_RUNS)) + (KEPT_LABEL.encode() in hit)
    at = page(teacher=True, state={"watch_select": ctx.kept.id})  # the others' epochs are padding, not records
    n = N_RUNS + 1 - lost
    return Seen(texts(at.sidebar.warning), at, (f"{n} runs were recovered from the damaged file",))


def scribbled_schema(ctx: Ctx) -> Seen:
    """Random bytes over the first page (the tables' schema): no row can be read; the run comes back
    from the record the worker kept beside its model."""
    path = default_store_path()
    raw = bytearray(path.read_bytes())
    raw[100:4096] = random.Random(1).randbytes(3996)
    path.write_bytes(bytes(raw))
    at = page(teacher=True)
    return Seen(texts(at.sidebar.warning), at)


def zero_bytes(ctx: Ctx) -> Seen:
    default_store_path().write_bytes(b"")
    Path(str(default_store_path()) + "-wal").unlink(missing_ok=True)
    at = page(teacher=True)
    return Seen(texts(at.sidebar.warning), at)


def zero_bytes_student(ctx: Ctx) -> Seen:
    default_store_path().write_bytes(b"")
    at = page()
    assert texts(at.sidebar.warning) == PUBLIC_NOTICE  # no file names, no SQLite words for students
    return Seen(texts(at.sidebar.warning), at)


def while_the_server_runs(damage: Callable[[], None]) -> Callable[[Ctx], Seen]:
    """The server is up when the store is damaged: its supervisor renews the store, the page says so."""

    def enter(ctx: Ctx) -> Seen:
        at = page(teacher=True)
        store = server_runner().store
        damage()
        assert wait_for(lambda: store.notice, timeout=15), "the server never noticed"
        at.run()
        return Seen(texts(at.sidebar.warning), at)

    return enter


def _replaced_by_another_store() -> None:
    other = RunStore(default_store_path().parent / "elsewhere" / "runs.sqlite")  # beside no model file
    _drop_store_files()
    os.replace(other.path, default_store_path())


def truncated_during_a_save(ctx: Ctx) -> Seen:
    """The store is emptied while a worker saves a run's second epoch; the server starts afterwards."""
    path = default_store_path()

    def truncate(epoch: int) -> None:
        if epoch == 2:
            path.write_bytes(b"")
            Path(str(path) + "-wal").unlink(missing_ok=True)

    rid = _train_in_process(RunStore(path, repair=False), 50, truncate)
    at = page(teacher=True, state={"watch_select": rid})
    return Seen(texts(at.sidebar.warning) + "\n" + texts(at.warning), at)


def model_save_fails(ctx: Ctx) -> Seen:
    """A full disk when the model file is written (ENOSPC, at the write the worker makes)."""
    import mtl_core.store.run_link

    def full_disk(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(mtl_core.store.run_link, "atomic_write_bytes", full_disk)
    rid = _train_in_process(RunStore(), 2)
    at = page(teacher=True, state={"watch_select": rid})
    return Seen(texts(at.success), at)


# ----------------------------------------------------------------------------- workers and the server


def killed_worker(ctx: Ctx) -> Seen:
    ctx.monkeypatch.setattr(JobRunner, "_spawn", REAL_SPAWN)
    runner = server_runner()
    store = runner.store
    rid = runner.submit(TrainConfig.preset("hard", **LONG_RUN), owner=OWNER, label="long")
    # An epoch in the store and its best weights on disk: an epoch is recorded a moment before its weights
    # are saved, and a kill in between rightly keeps the curve without weights (tests/test_jobs.py waits too).
    assert wait_for(lambda: (store.get_run(rid)["best_epoch"] or 0) >= 1, timeout=120)
    ctx.monkeypatch.setattr(JobRunner, "_spawn", _idle_spawn)  # its replacement need not load torch
    os.kill(store.get_run(rid)["worker_pid"], signal.SIGKILL)  # as the out-of-memory killer would
    assert wait_for(lambda: store.get_run(rid)["status"] == "interrupted", timeout=15)
    at = page(state={"watch_select": rid})
    return Seen(texts(at.warning), at)


def workers_die_at_once(ctx: Ctx) -> Seen:
    ctx.monkeypatch.setattr(JobRunner, "_spawn", _dies_at_once)
    at = page()
    assert wait_for(lambda: server_runner().problem, timeout=15)
    at.run()
    return Seen(texts(at.sidebar.error), at)


def killed_server(ctx: Ctx) -> Seen:
    """SIGKILL the process that holds the pool while its worker trains; then a server starts again."""
    script = textwrap.dedent(f"""
        import time
        from mtl_core.config import TrainConfig
        from mtl_core.jobs.runner import JobRunner
        from mtl_core.store.runs import RunStore
        store = RunStore()
        runner = JobRunner(store)
        rid = runner.submit(TrainConfig.preset("hard", **{LONG_RUN!r}), owner={OWNER!r}, label="long")
        end = time.monotonic() + 120
        while not store.epochs(rid) and time.monotonic() < end:
            time.sleep(0.05)
        print(rid, store.get_run(rid)["worker_pid"], flush=True)
        time.sleep(600)
    """)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        rid, worker_pid = server.stdout.readline().split()
    finally:
        server.kill()  # as an out-of-memory kill or a pulled plug would
        server.wait()
    assert wait_for(lambda: not _alive(int(worker_pid)), timeout=15), "the orphaned worker kept training"
    at = page(state={"watch_select": rid})
    return Seen(texts(at.warning), at)


# ----------------------------------------------------------------------------- the corpus


def C(where: str, name: str, enter: Callable[[Ctx], Seen], *sees: str) -> Case:
    return Case(where, name, enter, sees)


LINK_REFUSED = "This link's settings cannot be used"
READ_ONLY = "The run store cannot be written (its folder is read-only); finished runs can still be viewed."
FULL = "The run store cannot be written (the disk is full); finished runs can still be viewed"
BROUGHT_BACK = "1 run was brought back from the records kept beside their models."

CASES = [
    # where it enters, what arrives, how it arrives, what the person then reads
    C("link", "epochs below the range", link(model="hard", epochs="-3"),
      LINK_REFUSED, "epochs=-3 is outside the allowed range, 1 to 500", "The form shows the reference recipe."),
    C("link", "an unknown model", link(model="transformer"), LINK_REFUSED, "unknown model 'transformer'"),
    C("link", "NaN learning rate", link(model="hard", lr="nan"), "lr=nan is outside the allowed range"),
    C("link", "a word for a number", link(model="hard", epochs="many"), "'epochs=many' is not a int"),
    C("link", "an unknown task", link(model="hard", tasks="even,colour"), LINK_REFUSED, "colour"),
    C("link", "settings without a model", link(epochs="3", batch="0"),
      "This link has settings (batch, epochs) but no model=", "The form shows the reference recipe."),
    C("link", "a Markdown image as a weight", link(model="hard", w_even=HOSTILE["image"]),
      LINK_REFUSED, "'w_even=![x](http", "is not a number"),
    C("link", "bidi overrides as the epochs", link(model="hard", epochs=HOSTILE["bidi"]),
      LINK_REFUSED, "'epochs=abcdcba' is not a int"),
    C("link", "bidi overrides as the optimiser", link(model="hard", opt=HOSTILE["bidi"]),
      LINK_REFUSED, "unknown optimizer 'abcdcba'; valid: adam, adamw, sgd"),
    C("link", "a script tag as the data", link(model="hard", data=HOSTILE["html script"]),
      LINK_REFUSED, "<script>alert(1)</script>"),
    C("link", "a wrong teacher token", wrong_teacher_link, "That teacher link is not valid on this server."),
    C("form", "every loss weight 0", form(no_weights),
      "Cannot start this run", "at least one loss weight must be above 0"),
    C("form", "no task", form(no_tasks), "Cannot start this run", "choose at least one task"),
    C("form", "a second run past the per-student cap", form(lambda at: None, clicks=2, env={"MTL_MAX_PER_OWNER": "1"}),
      "you already have 1 job queued or running and this adds 1 (limit 1); wait for one to finish or stop one"),
    C("form", "more seeds than free slots", form(one_queued_then_two_seeds, env={"MTL_MAX_PER_OWNER": "2"}),
      "2 runs need 2 free job slots: you already have 1 job queued or running and this adds 2 (limit 2)"),
    C("label", "a label that looks like another student's", form(labelled("Alice: my run")),
      "Queued “Alice: my run” · even+mult3"),
    C("label", "a Markdown link typed as a label", form(labelled(HOSTILE["link"][:40])),
      "Queued “[Teacher says: click here](http"),
    C("label", "bidi and zero-width characters in a label", form(labelled("abc\u202edcba\u200b\u2066x\u2069")),
      "Queued abcdcbax · even+mult3"),
    C("label", "an image, 5,000 characters long, from an older store", stored_label(HOSTILE["image"] + "A" * 5000),
      "![x](http", "AAAA…"),
    C("label", "an HTML tag and an entity from an older store",
      stored_label(HOSTILE["html img"] + HOSTILE["entity"]), "<img src=x onerror=alert(1)>", "reversed"),
    C("name", "a colon, to pass for the server's prefix", typed_name("Alice: Bob"), "Alice Bob: kept run"),
    C("name", "Markdown and bidi in a name", typed_name("**Eve**\u202e [x](http://evil.test)"),
      "**Eve** [x](http //evil.test): kept run"),
    C("name", "a name someone else has, in capitals", typed_name("ALICE", taken_by_someone="Alice"),
      "Someone in this class already has that name: add an initial or pick another."),
    *(C("upload", case, upload(UPLOADS[case][0]), "That file cannot be used:", UPLOADS[case][1])
      for case in ("empty file", "over 2 MB", "text renamed .png", "truncated PNG", "1x1 picture")),
    C("upload", "16 M pixels in a small PNG", upload(lambda: flat_png(5000, 5000)),
      "That file cannot be used: the picture is 5000x5000 pixels; at most 16,777,216 pixels in all."),
    C("canvas", "a script address", canvas("javascript:alert(1)"),
      "That drawing cannot be used:", "did not arrive as a picture"),
    C("canvas", "HTML instead of a picture", canvas("data:text/html;base64,PGgxPg=="), "did not arrive as a picture"),
    C("canvas", "a JSON object", canvas(json.dumps({"not": "a picture"})), "did not arrive as a picture"),
    C("canvas", "broken base64", canvas("data:image/png;base64,not base64!"), "damaged or cut short"),
    C("canvas", "an empty picture", canvas("data:image/png;base64,"), "the file is empty"),
    C("canvas", "3 MB of payload", canvas("data:image/png;base64," + "A" * (3 * 2**20)), "the limit is 2 MB"),
    C("canvas", "a picture larger than a canvas", canvas(lambda: data_url(flat_png(2400, 2400))),
      "the picture is 2400x2400 pixels; at most 2000x2000"),
    C("canvas", "81 M pixels", canvas(lambda: data_url(flat_png(9000, 9000))), "the picture is 9000x9000 pixels"),
    *(C("model file", case, model_file(MODEL_FILES[case][0]), "That model file cannot be used:", MODEL_FILES[case][1])
      for case in ("zero bytes", "torch.save with a code payload", "raw pickle with a code payload",
                   "oversized header", "not this playground's file", "wrong architecture", "NaN weights")),
    C("model file", "hostile tensor names", model_file(_hostile_tensor_names, HOSTILE["image"] + ".safetensors"),
      "That model file cannot be used:"),
    C("store", "random bytes over a page in the middle", scribbled_middle,
      "The run store could not be read (it is damaged). It was moved aside to runs.sqlite.damaged-"),
    C("store", "random bytes over its schema", scribbled_schema,
      "could not be read (it is damaged)", "0 runs were recovered from the damaged file; " + BROUGHT_BACK),
    C("store", "0 bytes, seen by the teacher", zero_bytes,
      "The run store was empty (0 bytes): truncated, or never written.", BROUGHT_BACK),
    C("store", "0 bytes, seen by a student", zero_bytes_student, PUBLIC_NOTICE),
    C("store", "deleted while the server runs", while_the_server_runs(_drop_store_files),
      "The run store was deleted while the server ran; a new one was started. " + BROUGHT_BACK),
    C("store", "replaced by another store while the server runs", while_the_server_runs(_replaced_by_another_store),
      "The run store was replaced by another file while the server ran; it is used now. " + BROUGHT_BACK),
    C("store", "read-only when Start is pressed", store_refuses(_chmod_read_only), READ_ONLY),
    C("store", "a full disk when Start is pressed", store_refuses(_disk_full), FULL),
    C("store", "a full disk when the server starts", full_at_start, FULL + ", but no new run can start."),
    C("store", "emptied while a worker saves an epoch", truncated_during_a_save,
      "The run store was empty (0 bytes)", "2 runs were brought back from the records kept beside their models",
      "Interrupted after 2 epochs of 50", "the curve so far and the model file are kept"),
    C("store", "a full disk when the model file is saved", model_save_fails,
      "Finished all 2 epochs", "Note: the model could not be saved (No space left on device)."),
    C("worker", "killed (SIGKILL) mid-run", killed_worker,
      "Interrupted after", "of 500: its worker process died (exit code -9); the curve so far is kept.",
      "The curve and the weights of its best epoch"),
    C("worker", "dies as soon as it starts", workers_die_at_once,
      "Training is paused: workers stopped soon after starting (1 in a row, exit code 1)"),
    C("server", "killed (SIGKILL) while its worker trains", killed_server,
      "of 500: the server stopped during the run; the curve so far is kept.",
      "The curve and the weights of its best epoch"),
]  # fmt: skip


@pytest.fixture
def ctx(recipe, monkeypatch, tmp_path):
    # One worker of one thread, not niced: on a busy 2-core test machine a niced or oversubscribed
    # worker can wait minutes for its first epoch.
    for name, value in {**NO_NATIVE, "MTL_WORKERS": "1", "MTL_THREADS": "1", "MTL_WORKER_NICE": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(JobRunner, "_spawn", _idle_spawn)
    shutdown_server_runners()
    try:
        yield Ctx(monkeypatch, tmp_path, finish_a_run(recipe))
    finally:
        shutdown_server_runners()


def test_the_corpus_covers_every_way_in():
    assert len(CASES) >= 40
    assert {c.where for c in CASES} == {"link", "form", "label", "name", "upload", "canvas", "model file", "store",
                                        "worker", "server"}  # fmt: skip
    assert len({(c.where, c.name) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.where}: {c.name}" for c in CASES])
def test_each_bad_input_or_fault_gets_its_sentence_and_loses_no_finished_run(case, ctx):
    seen = case.enter(ctx)
    if seen.at is not None:
        assert_ok(seen.at)
        assert_page_inert(seen.at)  # whatever the input held, nothing on the page is live markup or invisible
    text = readable(seen.text)
    for words in (*case.sees, *seen.also):
        assert words in text, f"{words!r} not in what the person reads: {text!r}"
    assert_kept(ctx.kept)
