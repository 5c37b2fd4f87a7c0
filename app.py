"""The router: page config, the shared sidebar, then the pages (titles and order live here)."""

import sqlite3

import streamlit as st

from dashboard.sidebar import sidebar_ui
from dashboard.state import get_runner, guard_page_switches, keep_widget_values
from dashboard.text import md_escape
from dashboard.timing import timed_run
from mtl_core.settings import SettingError
from mtl_core.store.runs import StoreUnavailable

st.set_page_config(page_title="MTL playground", page_icon="🧠", layout="wide")
# Our own style rule (no user text in it): captions and small print dark enough to read on a projector and
# to pass axe-core's colour-contrast check (Streamlit fades them to 60 % opacity, about 3.9:1 on white; this
# grey at full opacity is about 7:1).
st.html("<style>[data-testid='stCaptionContainer'] {color: #55575f !important; opacity: 1 !important;}</style>")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/compare.py", title="Compare", icon="📊"),
    st.Page("pages/cross_stitch.py", title="Cross-stitch", icon="🧵"),
    st.Page("pages/draw.py", title="Draw", icon="✏️"),
]
guard_page_switches()  # a fragment's late rerun never undoes a page switch (once per process)
keep_widget_values()
nav = st.navigation(pages)
# getattr: outside a server (bare mode, e.g. a process that imports this file) a page has no title.
with timed_run(getattr(nav, "title", "")):  # only with MTL_TIMING_LOG set (benchmarks/load.py)
    try:
        sidebar_ui()
        nav.run()
    except SettingError as exc:  # `streamlit run app.py` with a wrong MTL_* value (dashboard.serve refuses at start)
        st.error(md_escape(f"The server's settings need fixing before anything can train: {exc}"))
    except StoreUnavailable as exc:  # a read-only or full disk: a sentence, and the page stops here
        st.warning(str(exc))
    except sqlite3.DatabaseError:  # damaged while the server runs: a sentence, never SQLite's words or paths
        get_runner().store_damaged()  # renewed now, as a restart would: damaged file kept, readable rows moved
        st.error(
            "The run store was found damaged, so runs could not be shown. The server keeps the damaged file, "
            "moves what it can read into a new store and tells the teacher; reload this page."
        )
