"""The teacher's token and the rules for display names: what a classroom server needs to tell the
teacher apart from the students, with no accounts.

The token comes from $MTL_TEACHER_TOKEN, else it is generated once and kept (readable by the server's
user only) beside the run store, so a restart keeps the teacher's bookmark working.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from .text import COLON_LIKE, plain_text

NAME_MAX = 30


def teacher_token(home: Path) -> str:
    env = os.environ.get("MTL_TEACHER_TOKEN", "").strip()
    if env:
        return env
    path = Path(home) / "teacher-token"
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = _unsaved.setdefault(str(path), secrets.token_urlsafe(12))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    except OSError:
        pass  # a read-only disk: the token lasts as long as this server process
    return token


_unsaved: dict[str, str] = {}


def is_teacher_token(given: str, token: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed character by character."""
    return bool(given) and hmac.compare_digest(given.strip().encode(), token.encode())


def clean_name(raw: str) -> str:
    """A display name as plain text (mtl_core.text.plain_text: no control, bidi or zero-width characters,
    spaces collapsed), at most 30 characters. Markdown and HTML stay as typed; pages escape them. No colon
    (nor a look-alike): pages show "name: run", and only the server's part may hold one."""
    return plain_text(COLON_LIKE.sub(" ", plain_text(raw)))[:NAME_MAX].rstrip()
