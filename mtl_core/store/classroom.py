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


def kept_secret(path: Path, nbytes: int) -> str:
    """A random secret made once and kept in `path` (readable by the server's user only), so a restart
    keeps it. Two processes that start at once agree on the first one written; on a read-only disk it
    lasts as long as this process."""
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = _unsaved.setdefault(str(path), secrets.token_urlsafe(nbytes))
    for flags in (os.O_CREAT | os.O_EXCL, os.O_TRUNC):  # an empty file left behind is written over
        try:
            fd = os.open(path, os.O_WRONLY | flags, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            return secret
        except FileExistsError:  # another process wrote it first: use theirs
            theirs = path.read_text().strip()
            if theirs:
                return theirs
        except OSError:
            return secret
    return secret


def teacher_token(home: Path) -> str:
    env = os.environ.get("MTL_TEACHER_TOKEN", "").strip()
    return env or kept_secret(Path(home) / "teacher-token", 12)


_unsaved: dict[str, str] = {}  # secrets a read-only disk could not keep: stable for this process at least


def is_teacher_token(given: str, token: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed character by character."""
    return bool(given) and hmac.compare_digest(given.strip().encode(), token.encode())
