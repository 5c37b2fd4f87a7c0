"""Who a browser is, with no accounts: a random secret in a signed cookie, the teacher's signed sign-in,
one-time recovery codes, the exercise lock of each identity, and limits on how fast new identities come.

A student's runs carry `owner_of(secret)`, a one-way hash, so the run store, its exports and every screen
show only something that cannot be turned back into a cookie. The signing key is generated once and kept
beside the run store (readable by the server's user only), so a restart keeps everyone's identity. The
small SQLite file here (`identity.sqlite`, beside the run store) holds what must outlive a session but is
no run: when each identity was made and from which address, open recovery codes, exercise locks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from mtl_core.settings import env_float, env_int
from mtl_core.store.classroom import kept_secret

ID_COOKIE = "mtl_id"
TEACHER_COOKIE = "mtl_teacher"
ID_MAX_AGE_S = 400 * 24 * 3600  # browsers cap a cookie's life at 400 days
TEACHER_MAX_AGE_S = 12 * 3600  # one school day: a forgotten sign-in on a shared computer expires
CODE_TTL_S = 10 * 60
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read aloud or typed from a screen
CODE_LENGTH = 12  # 31**12, about 2**59: guessing within ten minutes and 20 tries is hopeless


@dataclass(frozen=True)
class RateLimits:
    """How fast one network address may make new identities and try recovery codes.

    A school behind one NAT address is one address for the whole class, so the limit must let 30 students
    arrive at once: 60 new identities per address per 10 minutes. A browser that keeps its cookie never
    needs another identity (its new tabs share one), so only cookie-less clients meet the limit; the run
    store's caps (4 active runs per identity, 8 per address) still bound what identities can queue.
    """

    new_per_address: int = 60
    window_s: float = 600.0
    bad_codes_per_address: int = 20

    @classmethod
    def from_env(cls) -> RateLimits:
        """The limits from MTL_NEW_IDS_PER_ADDRESS and MTL_NEW_IDS_WINDOW_S; SettingError names a bad one."""
        return cls(
            env_int("MTL_NEW_IDS_PER_ADDRESS", 60, 1, 1_000_000),
            env_float("MTL_NEW_IDS_WINDOW_S", 600.0, 1.0, 86_400.0),
        )


# -- secrets, owners and signed cookies ---------------------------------------------------------


def signing_key(home: Path) -> str:
    """The server's cookie-signing key: made once, kept in `home/identity-key` with mode 0600."""
    return kept_secret(Path(home) / "identity-key", 32)


def new_secret() -> str:
    return secrets.token_hex(32)


def owner_of(secret: str) -> str:
    """The id runs are stored under: a one-way hash of the secret, useless as a cookie."""
    return hashlib.sha256(b"mtl-owner:" + secret.encode()).hexdigest()[:20]


def _serializer(key: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=salt)


def sign_identity(secret: str, key: str) -> str:
    return _serializer(key, "mtl-identity").dumps(secret)


def verify_identity(cookie: str | None, key: str, max_age_s: float = ID_MAX_AGE_S) -> str | None:
    """The secret in a cookie this server signed, else None (missing, tampered, expired, malformed)."""
    if not cookie:
        return None
    try:
        secret = _serializer(key, "mtl-identity").loads(cookie, max_age=max_age_s)
    except BadSignature:  # SignatureExpired is a BadSignature too
        return None
    return secret if isinstance(secret, str) and len(secret) == 64 else None


def _fingerprint(teacher_token: str) -> str:
    """Ties a teacher cookie to the token it was earned with: a new token signs everyone out."""
    return hashlib.sha256(b"mtl-teacher:" + teacher_token.encode()).hexdigest()[:16]


def sign_teacher(key: str, teacher_token: str, all_runs: bool = True, since: float | None = None) -> str:
    payload = {"t": _fingerprint(teacher_token), "since": time.time() if since is None else since, "all": all_runs}
    return _serializer(key, "mtl-teacher").dumps(payload)


def verify_teacher(
    cookie: str | None, key: str, teacher_token: str, max_age_s: float = TEACHER_MAX_AGE_S, now: float | None = None
) -> dict | None:
    """{"since": sign-in time, "all": the all-runs switch} from a valid teacher cookie, else None. The
    12 hours count from the sign-in, however often the cookie was rewritten since."""
    if not cookie:
        return None
    try:
        payload = _serializer(key, "mtl-teacher").loads(cookie, max_age=max_age_s)
    except BadSignature:
        return None
    if not isinstance(payload, dict) or not hmac.compare_digest(str(payload.get("t")), _fingerprint(teacher_token)):
        return None
    since = payload.get("since")
    now = time.time() if now is None else now
    if not isinstance(since, (int, float)) or not (now - max_age_s <= since <= now + 60):
        return None
    return {"since": float(since), "all": bool(payload.get("all", True))}


# -- recovery codes --------------------------------------------------------------------------------


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalize_code(text: str) -> str | None:
    """A typed code in its canonical form (case, spaces and dashes forgiven), or None if it cannot be one."""
    raw = "".join(c for c in (text or "").upper() if c.isalnum())
    if len(raw) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in raw):
        return None
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def _code_keys(code: str) -> tuple[str, bytes]:
    """(the row's id, a pad that hides the secret): both from the code, so the file alone opens nothing."""
    derived = hashlib.pbkdf2_hmac("sha256", code.encode(), b"mtl-recovery", 20_000, dklen=64)
    return derived[:32].hex(), derived[32:]


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


# -- the identity file -----------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (owner TEXT PRIMARY KEY, client TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS identities_client ON identities(client, created);
CREATE TABLE IF NOT EXISTS events (kind TEXT NOT NULL, client TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, client, at);
CREATE TABLE IF NOT EXISTS codes (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, sealed TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    owner TEXT PRIMARY KEY, config TEXT NOT NULL, hidden TEXT NOT NULL, at REAL NOT NULL
);
"""


class IdentityStore:
    """Identities' bookkeeping in one small SQLite file; every check and the write it guards are one
    transaction, so two tabs opening at once cannot both slip under a limit."""

    def __init__(self, path: Path, limits: RateLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or RateLimits.from_env()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.commit()
        finally:
            db.close()

    # new identities

    def admit(self, owner: str, client: str, now: float | None = None) -> bool:
        """Record a new identity made for `client`; False (nothing recorded) when that address has made
        `new_per_address` in the window already. An unknown address ("") is not limited."""
        now = time.time() if now is None else now
        with self._connect() as db:
            if client:
                made = db.execute(
                    "SELECT COUNT(*) FROM identities WHERE client=? AND created>?", (client, now - self.limits.window_s)
                ).fetchone()[0]
                if made >= self.limits.new_per_address:
                    return False
            db.execute(
                "INSERT OR IGNORE INTO identities (owner, client, created) VALUES (?, ?, ?)", (owner, client, now)
            )
        return True

    # recovery codes

    def issue_code(self, owner: str, secret: str, now: float | None = None) -> str:
        """A one-time code that gives this identity to another browser for CODE_TTL_S; it replaces any
        code this identity had open."""
        now = time.time() if now is None else now
        code = new_code()
        row_id, pad = _code_keys(code)
        sealed = _xor(bytes.fromhex(secret), pad).hex()
        with self._connect() as db:
            db.execute("DELETE FROM codes WHERE owner=? OR expires<?", (owner, now))
            db.execute(
                "INSERT INTO codes (id, owner, sealed, expires) VALUES (?, ?, ?, ?)",
                (row_id, owner, sealed, now + CODE_TTL_S),
            )
        return code

    def redeem_code(self, typed: str, client: str, now: float | None = None) -> str | None:
        """The secret behind a valid, unexpired, unused code (which is then used up), else None. An address
        that typed `bad_codes_per_address` wrong codes in the window gets None for every code."""
        now = time.time() if now is None else now
        window = now - self.limits.window_s
        code = normalize_code(typed)
        row_id, pad = _code_keys(code) if code else ("", b"")
        with self._connect() as db:
            bad = db.execute(
                "SELECT COUNT(*) FROM events WHERE kind='bad_code' AND client=? AND at>?", (client, window)
            ).fetchone()[0]
            if bad >= self.limits.bad_codes_per_address:
                return None
            row = db.execute("DELETE FROM codes WHERE id=? RETURNING sealed, expires", (row_id,)).fetchone()
            if row is None or row[1] < now:
                db.execute("INSERT INTO events (kind, client, at) VALUES ('bad_code', ?, ?)", (client, now))
                db.execute("DELETE FROM events WHERE at<?", (window,))
                return None
        return _xor(bytes.fromhex(row[0]), pad).hex()

    def too_many_bad_codes(self, client: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._connect() as db:
            bad = db.execute(
                "SELECT COUNT(*) FROM events WHERE kind='bad_code' AND client=? AND at>?",
                (client, now - self.limits.window_s),
            ).fetchone()[0]
        return bad >= self.limits.bad_codes_per_address

    # exercise locks

    def save_lock(self, owner: str, config: dict, hidden: list[str] | tuple[str, ...] | frozenset[str]) -> None:
        """The exercise link this identity opened last: its settings and the controls it hides. A link that
        hides nothing removes the lock."""
        with self._connect() as db:
            if hidden:
                db.execute(
                    "INSERT INTO locks (owner, config, hidden, at) VALUES (?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE "
                    "SET config=excluded.config, hidden=excluded.hidden, at=excluded.at",
                    (owner, json.dumps(config), json.dumps(sorted(hidden)), time.time()),
                )
            else:
                db.execute("DELETE FROM locks WHERE owner=?", (owner,))

    def lock(self, owner: str) -> tuple[dict, frozenset[str]] | None:
        with self._connect() as db:
            row = db.execute("SELECT config, hidden FROM locks WHERE owner=?", (owner,)).fetchone()
        return (json.loads(row[0]), frozenset(json.loads(row[1]))) if row else None
