"""Text from users is data: a corpus of hostile strings through md_escape, plain_text, chart_text, the
run labels and the CSV cells, then through the real pages (labels and names in the store, a link's
parameters, a model file's metadata), where no element may hold live markup, an autolink or a bidi control."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import save as st_save
from streamlit.testing.v1 import AppTest
from test_pages import OWNER, assert_ok, open_page, stored_run, stroke_png

from dashboard.text import chart_text, markdown_table, md_escape
from mtl_core.analysis import compare_rows, curve_rows, group_label, run_label
from mtl_core.checkpoint import FORMAT, ModelFileError, load_model_bytes
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.store.runs import RunStore
from mtl_core.text import clean_name, csv_cell, label_text, plain_text, shown, spreadsheet_safe

HOSTILE = {
    "image": "![x](http://evil.test/a.png)",
    "link": "[Teacher says: click here](http://evil.test/phish)",
    "reference link": "[here][1] [1]: http://evil.test",
    "angle autolink": "<http://evil.test/x> <bob@evil.test>",
    "autolink http": "see http://evil.test/x now",
    "autolink https": "HTTPS://evil.test",
    "autolink www": "go to www.evil.test or WWW.Evil.test/p",
    "autolink email": "mail bob@evil.test or mailto:eve@evil.test",
    "hidden autolink": "h\u200bttp://evil.test ww\u2060w.evil.test bob\u00ad@evil.test",
    "html img": "<img src=x onerror=alert(1)>",
    "html script": "<script>alert(1)</script>",
    "entity": "&#x202E;reversed &lt;b&gt;",
    "markdown": "**bold** _it_ ~~del~~ `code` # h > q - l | t :red[red] $x^2$",
    "bidi": "abc\u202edcba\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u061c",
    "zero width": "zero\u200bwidth\u200c\u200d\u200e\u200f\ufeff\u2060",
    "controls": "c0\x00\x01\x07\x08\x1b[31m\x7f c1\x80\x85\x9b\x9f",
    "lines": "one\ntwo\r\nthree\u2028four\u2029five\tsix",
    "impersonation": "Alice: my run",
    "look-alike colon": "Alice\uff1a my run",
    "formula": '=HYPERLINK("http://evil.test","click")',
    "long": "A" * 5000 + "![x](http://evil.test/a.png)",
}

# Characters that must never reach a page: C0/C1 controls (tab and newline aside: Markdown of our own),
# bidi embeddings, overrides, isolates and marks, zero-width characters, the BOM.
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
# What remark-gfm (mdast-util-gfm-autolink-literal) turns into a link: it searches the text nodes, i.e.
# the text *after* backslash escapes are resolved.
URL = re.compile(r"(https?://|www(?=\.))[-.\w]+", re.IGNORECASE)
EMAIL = re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+")
LIVE = ("![", "](", "][", "]:", "<img", "<script", "<http", "<bob", "&#", "&lt;", ":red[", "$x")


def readable(md: str) -> str:
    """The text a reader sees: every backslash escape resolved (as the Markdown parser does)."""
    return re.sub(r"\\(.)", r"\1", md, flags=re.DOTALL)


def assert_inert(md: str, where: str = "") -> None:
    """`md` rendered as Markdown holds no markup from the corpus, no autolink and no invisible character."""
    assert not INVISIBLE.search(md), (where, md)
    live = re.sub(r"\\.", "\0", md, flags=re.DOTALL)  # escaped characters are text, whatever they are
    for token in LIVE:
        assert token not in live.lower(), (where, token, md)
    assert not re.search(r":[A-Za-z]", live), (where, md)  # a Streamlit directive (:red[...]) could start
    text = readable(md)
    assert not URL.search(text) and not EMAIL.search(text), (where, md)


# ----------------------------------------------------------------------------- the functions


@pytest.mark.parametrize("case", list(HOSTILE))
def test_md_escape_leaves_no_markup_link_autolink_or_invisible_character(case):
    raw = HOSTILE[case]
    escaped = md_escape(raw)
    assert_inert(escaped, case)
    # Stricter than any one construct needs: every character Markdown, HTML, GFM, math or Streamlit's
    # directives (:red[...]) give a meaning is escaped, so none starts anything on its own.
    live = re.sub(r"\\.", "", escaped, flags=re.DOTALL)
    assert not set(live) & set("\\`*_{}[]()#+-.!|<>~$:=^&"), (case, escaped)
    # Reads as the cleaned text, with the three autolink characters swapped for look-alikes.
    swapped = plain_text(raw).replace("://", "\u2236//").replace("@", "\uff20")
    assert readable(escaped) == re.sub(r"(?i)(www)\.", "\\1\u2024", swapped)


def test_md_escape_is_bounded_and_takes_any_value():
    assert len(readable(md_escape(HOSTILE["long"], limit=100))) == 100
    assert md_escape(None) == "" and md_escape(ValueError("a*b")) == "a\\*b" and md_escape(3.5) == "3\\.5"


def test_a_markdown_table_holds_any_cell_as_plain_text_in_its_own_column():
    cells = [HOSTILE["markdown"], "a | b\n| c | d |", HOSTILE["link"]]
    table = markdown_table(["one", "t|wo", "three"], [cells, ["1", "2", "3"]])
    header, rule, *rows = table.split("\n")
    assert rule == "|---|---|---|" and len(rows) == 2  # a line break in a cell starts no row
    for line in (header, *rows):  # three columns each: every | inside a cell is escaped
        assert len(re.findall(r"(?<!\\)\|", line)) == 4, line
    first = re.split(r"(?<!\\)\| ", rows[0].strip("| "))
    assert [c.rstrip() for c in first] == [md_escape(c.replace("\n", " ")) for c in cells]
    for cell in first:
        assert_inert(cell, "table cell")


def test_streamlits_autolink_rules_are_the_ones_md_escape_breaks():
    """md_escape swaps the characters that remark-gfm's autolinks (as bundled in Streamlit's frontend) key
    on: "://", "www." and "@". If an upgrade bundles other rules, this fails: check md_escape again."""
    import streamlit

    bundle = "".join(p.read_text(errors="ignore") for p in Path(streamlit.__file__).parent.glob("static/**/*.js"))
    rules = re.findall(r"\[/([^\n]{10,80}?)/g[iu]*,\w+\]", bundle[bundle.find("autolinkProtocol") :])[:2]
    assert rules == [
        r"(https?:\/\/|www(?=\.))([-.\w]+)([^ \t\r\n]*)",  # what the test's URL pattern stands for
        r"(?<=^|\s|\p{P}|\p{S})([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)",  # and EMAIL
    ]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_plain_text_is_one_line_of_visible_characters(case):
    text = plain_text(HOSTILE[case])
    assert not INVISIBLE.search(text) and "\n" not in text and "\t" not in text
    assert text == text.strip() and "  " not in text
    assert plain_text(text) == text  # idempotent


def test_plain_text_cuts_long_text_with_an_ellipsis():
    assert plain_text("x" * 100, 10) == "x" * 9 + "…"
    assert plain_text("short", 10) == "short"
    assert shown("\u202eevil" + "y" * 100) == repr("evil" + "y" * 35 + "…")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_chart_text_has_no_tag_and_no_invisible_character(case):
    text = chart_text(HOSTILE[case])
    assert "<" not in text and ">" not in text and not INVISIBLE.search(text)


def test_a_label_with_a_colon_is_quoted_and_a_name_has_none():
    assert label_text("Alice: my run") == "“Alice: my run”"
    assert label_text("Alice\uff1a my run") == "“Alice\uff1a my run”"  # a look-alike colon too
    assert label_text("Alice\u200b: my run") == "“Alice: my run”"
    assert label_text("lr 0.1") == "lr 0.1"
    assert clean_name("Alice: x") == "Alice x" and clean_name("Bob\u2236 y\u202e") == "Bob y"


def run(label: str = "", student: str = "", **extra) -> dict:
    return {"id": "20260101-000000-abcdef", "label": label, "student": student, "model": "hard",
            "config": {"tasks": ["even", "mult3"], "seed": 0}, **extra}  # fmt: skip


def test_a_nameless_student_cannot_pass_for_another_students_runs():
    alices = run_label(run("my run", student="Alice"))
    assert alices == "Alice: my run · even+mult3 · abcdef"
    for fake in ("Alice: my run", "Alice\uff1a my run", "Alice\u2236 my run", "\u202eAlice: my run"):
        label = run_label(run(fake))
        assert not label.startswith("Alice"), label  # the fake opens with a quote mark
    assert run_label(run("Alice: my run", student="Eve")).startswith("Eve: “Alice: my run”")
    # Seed groups show the label without the name: quoted too.
    assert group_label([run("Alice: my run · seed 0")]).startswith("“Alice: my run”")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_run_labels_are_plain_and_bounded_wherever_shown(case):
    for text in (run_label(run(HOSTILE[case], student=HOSTILE[case])), group_label([run(HOSTILE[case])])):
        assert not INVISIBLE.search(text) and len(text) < 160
        assert_inert(md_escape(text), case)


def test_spreadsheet_cells_never_start_a_formula_and_numbers_stay_numbers():
    for cell in ("=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://evil.test")'):
        assert csv_cell(cell) == "'" + cell
    for cell in ("-0.5", "+3", "1e-3", -2.5, -3, None, "ok", "a=b"):
        assert csv_cell(cell) == cell
    table = pd.DataFrame({"run": ["=cmd|' /C calc'!A0", "ok"], "value": [-1.5, 2.0], "n": [-1, 2]})
    safe = spreadsheet_safe(table)
    assert list(safe["run"]) == ["'=cmd|' /C calc'!A0", "ok"]
    assert safe["value"].tolist() == [-1.5, 2.0] and safe["n"].dtype == table["n"].dtype
    assert table["run"][0].startswith("=")  # a copy: the table on the page is unchanged


def test_the_comparison_downloads_hold_no_formula():
    """What Compare's CSV buttons write, for a run named like a formula (no student name to put first)."""
    r = run(HOSTILE["formula"].replace(":", ""), status="finished", created=0.0, best=None, best_avg=None,
            params=1, train_seconds=1.0, data_source="synthetic", best_epoch=1)  # fmt: skip
    r["config"] = TrainConfig.preset("hard").to_dict()
    records = [{"epoch": 1, "train_loss": {"even": -1.0}, "metrics": {}, "seconds": 1.0}]
    assert run_label(r).startswith("=")
    for rows in (compare_rows([r]), curve_rows(r, records)):
        cells = list(csv.reader(io.StringIO(spreadsheet_safe(pd.DataFrame(rows)).to_csv(index=False))))[1]
        assert cells[0].startswith("'=HYPERLINK")
        assert not any(c.startswith(("=", "+", "@")) or re.match(r"-(?![\d.])", c) for c in cells), cells
    assert cells[-1] == "-1.0"  # the negative loss is still a number


@pytest.mark.parametrize("name", ["model", "opt", "data", "epochs"])
def test_a_links_error_is_plain_bounded_text(name):
    from dashboard.links import config_from_query

    query = {"model": "hard", name: HOSTILE["bidi"] + HOSTILE["lines"] + HOSTILE["long"]}
    with pytest.raises(ConfigError) as err:
        config_from_query(query)
    message = str(err.value)
    assert message == plain_text(message) and not INVISIBLE.search(message) and len(message) <= 2000


def test_the_store_keeps_labels_as_plain_bounded_text(store):
    config = TrainConfig.preset("hard").to_dict()
    ids = store.create_runs([config] * 2, labels=[HOSTILE["bidi"] + HOSTILE["lines"], HOSTILE["long"]])
    labels = [store.get_run(i)["label"] for i in ids]
    assert labels[0] == plain_text(HOSTILE["bidi"] + HOSTILE["lines"]) and not INVISIBLE.search(labels[0])
    assert len(labels[1]) == 80 and labels[1].endswith("…")


# ----------------------------------------------------------------------------- a model file's metadata


def hostile_model_file(config: str, tensors: dict | None, fmt: str) -> bytes:
    import torch

    return st_save(tensors or {"w": torch.zeros(1)}, metadata={"format": fmt, "config": config, "extra": "{}"})


@pytest.mark.parametrize(
    "config, tensors, fmt",
    [
        (json.dumps({"model": HOSTILE["image"] + HOSTILE["bidi"] + HOSTILE["long"]}), None, FORMAT),
        (json.dumps({HOSTILE["link"]: 1, HOSTILE["autolink email"]: 2, HOSTILE["long"]: 3}), None, FORMAT),
        ("{}", None, HOSTILE["html img"] + HOSTILE["controls"] + HOSTILE["long"]),
        (json.dumps(TrainConfig.preset("hard").to_dict()), "hostile names", FORMAT),
    ],
    ids=["config value", "config fields", "format", "tensor names"],
)
def test_a_model_files_metadata_is_quoted_as_plain_bounded_text(config, tensors, fmt):
    import torch

    if tensors == "hostile names":
        tensors = {HOSTILE[k]: torch.zeros(1) for k in ("image", "bidi", "html script", "long", "autolink www")}
    with pytest.raises(ModelFileError) as err:
        load_model_bytes(hostile_model_file(config, tensors, fmt))
    message = str(err.value)
    assert len(message) <= 400 and not INVISIBLE.search(message), message
    assert_inert(md_escape(message))


def _model_file_page(payload: bytes, name: str) -> None:
    """The Draw page's model-file box with a file 'uploaded' (AppTest cannot drive a file uploader)."""
    import streamlit as st

    from dashboard.draw_ui import model_file_ui

    class Upload:
        def getvalue(self):
            return payload

    Upload.name = name
    uploader, st.file_uploader = st.file_uploader, lambda *a, **k: Upload()
    try:
        model_file_ui()
    finally:
        st.file_uploader = uploader


def test_the_draw_page_shows_a_hostile_model_file_as_plain_text():
    import torch

    tensors = {HOSTILE[k]: torch.zeros(1) for k in ("image", "bidi", "link", "autolink http")}
    payload = st_save(tensors, metadata={"format": FORMAT, "config": json.dumps(TrainConfig.preset("hard").to_dict())})
    at = AppTest.from_function(_model_file_page, args=(payload, HOSTILE["image"] + ".safetensors"), default_timeout=60)
    at.run()
    assert_ok(at)
    assert at.error and "cannot be used" in at.error[0].value
    assert_page_inert(at)


# ----------------------------------------------------------------------------- the pages

MARKDOWN_FIELDS = {"body", "label", "help", "caption", "text", "content", "placeholder"}


def _strings(message, field_name: str = ""):
    """(field name, text) of every string in a protobuf message, nested messages included."""
    for field, value in message.ListFields():
        repeated = field.is_repeated
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            for item in value if repeated else [value]:
                yield from _strings(item, field.name)
        elif field.type == field.TYPE_STRING:
            for item in value if repeated else [value]:
                yield field.name, item


def assert_page_inert(at: AppTest) -> int:
    """Every element and block of the page: Markdown-rendered text inert, every other text (options,
    chart specs, tables) free of invisible characters and of tags. Returns how many texts were read."""
    n = charts = 0
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        kind = getattr(node, "type", "")
        for name, text in _strings(proto):
            n += 1
            if kind == "text_input" and name == "value":
                continue  # what the user typed, back in their own input box (the sidebar's name)
            if name in MARKDOWN_FIELDS or (kind == "radio" and name == "options"):
                assert_inert(text, f"{kind}.{name}")
            else:
                assert not INVISIBLE.search(text), (name, text)  # options and tables are plain text
                if kind == "plotly_chart" and name == "spec":  # legends and axis labels render some HTML
                    charts += 1
                    decoded = json.dumps(json.loads(text), ensure_ascii=False)  # \u003c is a < too
                    assert "<img" not in decoded and "<script" not in decoded and not INVISIBLE.search(decoded)
    for frame in at.dataframe:
        for cell in frame.value.to_numpy().ravel():
            assert not INVISIBLE.search(str(cell)), cell
    assert charts == len(at.get("plotly_chart"))
    return n


def _force_label(run_id: str, label: str) -> None:
    """Write a label past the store's cleaning, as an older store (or another writer) may hold it."""
    with sqlite3.connect(RunStore().path) as db:
        db.execute("UPDATE runs SET label=? WHERE id=?", (label, run_id))


def _force_name(owner: str, name: str) -> None:
    with sqlite3.connect(RunStore().path) as db:
        db.execute("INSERT OR REPLACE INTO owners (owner, name, seen) VALUES (?, ?, 0)", (owner, name))


LABELS = {
    "hard": " ".join(HOSTILE[k] for k in ("image", "link", "autolink http", "autolink www", "bidi", "zero width")),
    "cross_stitch": " ".join(
        [HOSTILE["formula"].replace(":", "")] + [HOSTILE[k] for k in ("html img", "html script", "entity", "controls")]
    ),
    "stl": HOSTILE["impersonation"] + " " + HOSTILE["autolink www"],  # no Δm: shown in that caption
}


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """What the page's download buttons hand out, by file name (AppTest keeps it in a media store)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files, load = {}, MemoryMediaFileStorage.load_and_get_id

    def keep(self, data, mimetype, kind, filename=None):
        if filename and isinstance(data, bytes):
            files[filename] = data
        return load(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return files


@pytest.fixture
def hostile_runs(synthetic):
    ids = {}
    for model, label in LABELS.items():
        ids[model] = stored_run(model, synthetic, label="x")
        _force_label(ids[model], label)
    return ids


def test_hostile_labels_are_inert_on_every_page(hostile_runs, downloads):
    runs = list(hostile_runs.values())
    at = open_page("pages/train.py")  # the run header of each run in turn
    seen = []
    for run_id in runs:
        at.selectbox(key="watch_select").set_value(run_id).run()
        assert_ok(at)
        assert_page_inert(at)
        seen += [m.value for m in at.markdown]
    assert "evil" in readable(" ".join(seen))  # the hostile labels were on the page, as text

    at = open_page("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(runs).run()
    assert_ok(at)
    options = at.multiselect(key="compare_runs").options
    assert any(o.startswith("“Alice: my run go to www.evil") for o in options), options  # not "Alice: ..."
    assert not any(o.startswith("Alice") for o in options)
    no_dm = [c.value for c in at.caption if c.value.startswith("No Δm")]
    assert no_dm and "evil" in readable(no_dm[0])
    assert assert_page_inert(at) > 20
    for name in ("comparison.csv", "curves.csv"):  # the CSV buttons: no cell a spreadsheet would run
        rows = list(csv.reader(io.StringIO(downloads[name].decode())))
        cells = [c for row in rows[1:] for c in row]
        assert any(c.startswith("'=HYPERLINK") for c in cells), name
        assert not any(c.startswith(("=", "+", "@")) or re.match(r"-(?![\d.])", c) for c in cells), name
        assert not any(re.match(r"'[-+]?[\d.]", c) for c in cells), name  # numbers stay numbers
    at.session_state["compare_view"] = "📊 Parameters, time, accuracy"
    at.run()
    assert_ok(at)
    bars = [t for chart in at.get("plotly_chart") for t in json.loads(chart.proto.spec)["data"] if t["type"] == "bar"]
    assert bars and any("evil" in str(t["x"]) for t in bars)  # the runs' names under the bars
    assert_page_inert(at)

    at = open_page("pages/cross_stitch.py")
    assert_ok(at)
    assert_page_inert(at)

    at = open_page("pages/draw.py")  # with a drawing: every chosen model's title and answers are shown
    at.session_state["canvas"] = {"drawing": {"raw": {"objects": [{}]}, "data": stroke_png()}, "backgroundFit": None}
    at.session_state["draw_models"] = runs
    at.run()
    assert_ok(at)
    assert at.get("progress")
    assert_page_inert(at)
    assert "evil" in readable(" ".join(m.value for m in at.markdown))


def test_a_hostile_display_name_is_inert_and_cannot_hold_a_colon(synthetic):
    run_id = stored_run("hard", synthetic, label="my run")
    _force_name(OWNER, "Alice: " + HOSTILE["image"] + HOSTILE["bidi"] + HOSTILE["autolink email"])
    for page in ("pages/train.py", "pages/compare.py", "pages/draw.py"):
        at = open_page(page)
        assert_ok(at)
        assert_page_inert(at)
    label = run_label(RunStore().get_run(run_id))
    assert label.startswith("Alice ![x](http") and label.count(":") == 1  # the server's colon alone


@pytest.mark.parametrize("name", ["model", "epochs", "w_even", "opt"])
@pytest.mark.parametrize("value", [HOSTILE["image"], HOSTILE["link"], HOSTILE["bidi"], HOSTILE["autolink www"]])
def test_a_hostile_link_parameter_is_shown_as_plain_text(name, value):
    at = open_page("pages/train.py")
    if name != "model":
        at.query_params["model"] = "hard"
    at.query_params[name] = value
    at.run()
    assert_ok(at)
    assert "This link's settings cannot be used" in " ".join(w.value for w in at.warning)
    assert_page_inert(at)
