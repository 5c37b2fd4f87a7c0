"""The router: page config, the shared sidebar, then the pages (titles and order live here)."""

import streamlit as st

from dashboard.sidebar import sidebar_ui
from dashboard.state import keep_widget_values

st.set_page_config(page_title="MTL playground", page_icon="🧠", layout="wide")

pages = [
    st.Page("views/home.py", title="Home", icon="🏠", default=True),
    st.Page("views/train.py", title="Train", icon="🏋️"),
    st.Page("views/compare.py", title="Compare", icon="📊"),
    st.Page("views/cross_stitch.py", title="Cross-stitch", icon="🧵"),
    st.Page("views/draw.py", title="Draw", icon="✏️"),
]
keep_widget_values()
nav = st.navigation(pages)
sidebar_ui()
nav.run()
