"""Text from users (display names, run labels, link parameters, file names, model-file metadata) as data:
`plain_text` is what the store keeps and what messages quote, `label_text` shows a run's name, and
`spreadsheet_safe` keeps downloaded tables from being read as formulas. dashboard/text.py builds on them.

Names versus labels: pages show a run as "Alice: my run · tasks · id", where "Alice: " is added by the
server from the student's display name. Display names hold no colon (clean_name, below), and a label
holding a colon or a look-alike (：∶꞉...) is shown in quotes, “Alice: my run”: whatever stands before the
first unquoted colon of a run's name is the server's, so a label cannot pass for another student's runs.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

LABEL_MAX = 80  # the form takes 40 characters; a multi-seed start adds " · seed N"
MESSAGE_MAX = 400  # an error message that quotes a file or a link

# Format characters (bidi embeddings, overrides and isolates, zero-width spaces and joiners, the BOM,
# tag characters), surrogates, private-use and unassigned code points: removed without a trace.
_DROPPED = ("Cf", "Cs", "Co", "Cn")
# Colons and the characters that pass for one: the separator of the server's "student: " prefix.
COLON_LIKE = re.compile(
    "[:\uff1a\ufe55\ufe13\ufe30\u2236\ua789\u02f8\u02d0\u02d1\u0589\u05c3\u0703\u0704\u16ec\u1804\u205a\u2982\u1361]"
)


def plain_text(text: Any, limit: int | None = None) -> str:
    """`text` as one line of visible characters: controls and line breaks become spaces, format
    characters (bidi, zero-width) go, runs of spaces collapse, NFC; longer than `limit`: cut, with "…"."""
    kept = []
    for c in unicodedata.normalize("NFC", "" if text is None else str(text)):
        kind = unicodedata.category(c)
        if kind in _DROPPED:
            continue
        kept.append(" " if kind[0] in "CZ" else c)  # Cc controls, Zs/Zl/Zp spaces and separators
    out = unicodedata.normalize("NFC", " ".join("".join(kept).split()))
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)].rstrip() + "…"
    return out


def shown(value: Any, limit: int = 40) -> str:
    """A value from outside (a file's metadata, a tensor name) quoted inside a message: plain, short."""
    return repr(plain_text(value, limit))


def label_text(label: Any) -> str:
    """A run's label for display: plain text, and in quotes when it holds a colon (see the docstring)."""
    text = plain_text(label, LABEL_MAX)
    return f"“{text}”" if COLON_LIKE.search(text) else text


# A spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula gets a leading ', which shows as text;
    numbers (negative ones too) and text that is just a number stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_safe(table):
    """A copy of a pandas DataFrame with every text cell through `csv_cell`: call it before any to_csv.
    Numeric, boolean and date columns are left alone, dtype and all."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype.kind not in "biufcmM":
            out[column] = out[column].map(csv_cell)
    return out


NAME_MAX = 30


def clean_name(raw: str) -> str:
    """A display name as plain text (plain_text: no control, bidi or zero-width characters,
    spaces collapsed), at most 30 characters. Markdown and HTML stay as typed; pages escape them. No colon
    (nor a look-alike): pages show "name: run", and only the server's part may hold one."""
    return plain_text(COLON_LIKE.sub(" ", plain_text(raw)))[:NAME_MAX].rstrip()
