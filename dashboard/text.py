"""User-typed text (run names, student names, file names, link parameters, what a model file says) shown
as plain text, never as markup: `md_escape` for everything Streamlit renders as Markdown, `chart_text`
for Plotly."""

from __future__ import annotations

import html
import re
from typing import Any

from mtl_core.text import plain_text

# Every character Markdown, GFM, Streamlit's directives (:red[...]) or math ($) give a meaning, and &
# (an entity such as &#x202E; would bring back a bidi override after the text was cleaned).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=^&])")
# remark-gfm finds URLs and e-mail addresses in the text *after* backslash escapes are resolved
# (mdast-util-gfm-autolink-literal runs on text nodes), so an escape cannot stop an autolink: the
# characters it keys on are replaced by look-alikes that no autolink rule accepts.
_WWW = re.compile(r"(www)\.", re.IGNORECASE)


def md_escape(text: Any, limit: int | None = None) -> str:
    """The one way user text goes into st.markdown, captions, alerts, toasts and labels: plain text
    (no control, bidi or zero-width characters; see mtl_core.text.plain_text) in which no Markdown,
    HTML, image, link or autolink can form. Reads the same; `limit` cuts it to that many characters."""
    text = plain_text(text, limit)
    text = text.replace("://", "\u2236//").replace("@", "\uff20")  # ratio sign, full-width at
    text = _WWW.sub("\\1\u2024", text)  # one-dot leader
    return _MARKDOWN.sub(r"\\\1", text)


def chart_text(text: Any) -> str:
    """For Plotly legends and axis labels, which render a subset of HTML tags (and links)."""
    return html.escape(plain_text(text), quote=True)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GFM table for st.markdown, every cell as `md_escape` text (one line, its `|` escaped, so no cell
    can end its row or the table). For a few rows of words it is much lighter for the browser than
    st.table or st.dataframe, which load Streamlit's Arrow code."""
    lines = ["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in rows]
    return "\n".join(lines)
