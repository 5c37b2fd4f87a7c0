"""User-typed text (run names, student names, file names) shown as plain text, never as markup."""

from __future__ import annotations

import html
import re

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=^])")


def md_escape(text: str) -> str:
    """For st.markdown, captions and toasts: every Markdown (and HTML) character is taken literally."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def chart_text(text: str) -> str:
    """For Plotly legends and axis labels, which render a subset of HTML tags (and links)."""
    return html.escape(str(text), quote=True)
