"""The controller's tokens: each a user, a role, dates and optional worker ids, kept as hashes.

Only the SHA-256 of a token is kept (a token is 256 random bits: no salt or slow hash is
needed). Every token lives in memory, which the guard reads on each call; with a durable store
they are also in the ``tokens`` table of the state directory's database (written on its own
connection: token changes are rare and small, and the store process carries the job writes).
With ``store = "memory"`` they live as long as the controller, and each start makes new
bootstrap tokens.

Bootstrap (:meth:`Tokens.bootstrap`): at each start, ``admin.token`` and ``worker.token`` in the
state directory hold a valid token of their role, or are (re)written with a new one. Revoking
one and restarting the controller is how a bootstrap token is rotated.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

from loguru import logger

from burstd import credentials
from burstd.auth import Caller, Grant, Role, digest, new_secret

__all__ = ["Token", "TokenError", "Tokens", "parse_duration"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    sha256 BLOB NOT NULL UNIQUE,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL NOT NULL,
    worker_ids TEXT NOT NULL
)
"""
_COLUMNS = "id, sha256, user, role, created_at, expires_at, revoked_at, worker_ids"
# A token's store connection waits this long for the store process's commit under way.
BUSY_TIMEOUT = 10.0
_USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TokenOptions(TypedDict, total=False):
    expires_in: float  # seconds from now; 0 (the default): never
    worker_ids: Iterable[str]  # a worker token acts only as these workers; none: any


class TokenError(ValueError):
    """A token request that makes no sense (a bad user name, an unknown role, no such id)."""


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` (a bare number: seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise TokenError(f"expires: expected a duration such as 12h or 30d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(slots=True)
class Token:
    """One token as the controller keeps it (never the token itself)."""

    id: str
    sha256: bytes
    user: str
    role: Role
    created_at: float
    expires_at: float = 0.0  # 0: never
    revoked_at: float = 0.0  # 0: not revoked
    worker_ids: tuple[str, ...] = ()
    grant: Grant = field(init=False)

    def __post_init__(self) -> None:
        caller = Caller(self.user, self.role, self.id, frozenset(self.worker_ids))
        self.grant = Grant(self.sha256, caller, self.expires_at, bool(self.revoked_at))

    def valid(self, now: float) -> bool:
        return not self.revoked_at and not (self.expires_at and now >= self.expires_at)

    def row(self) -> tuple[object, ...]:
        return (
            self.id,
            self.sha256,
            self.user,
            self.role.value,
            self.created_at,
            self.expires_at,
            self.revoked_at,
            json.dumps(list(self.worker_ids)),
        )


class Tokens:
    """Every token of one controller; ``find`` is the guard's source (``auth.TokenSource``).

    ``db`` is the state directory's database (tokens kept across restarts) or None (in memory
    only). Writes are synchronous: the service runs them in a thread (``save``), the offline
    ``burstd token`` commands directly.
    """

    def __init__(self, db: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # Numbers the list of worker tokens (``workers``), which workers check thieves against:
        # it changes with every worker token added or revoked. It starts at random, so that a
        # worker that knew an earlier controller's list is not mistaken for up to date.
        self.version = secrets.randbits(48) | 1
        self._by_id: dict[str, Token] = {}
        self._by_digest: dict[bytes, Token] = {}
        self._db: sqlite3.Connection | None = None
        if db is not None:
            self._db = sqlite3.connect(
                db, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM tokens"):
                self._add(_token(row))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def find(self, sha256: bytes) -> Grant | None:
        token = self._by_digest.get(sha256)
        return token.grant if token is not None else None

    def get(self, token_id: str) -> Token | None:
        return self._by_id.get(token_id)

    def all(self) -> list[Token]:
        """Every token, oldest first."""
        return sorted(self._by_id.values(), key=lambda t: (t.created_at, t.id))

    def workers(self) -> list[Token]:
        """The worker tokens valid now: what a peer port accepts (as of ``version``)."""
        now = self.clock()
        return [t for t in self._by_id.values() if t.role is Role.WORKER and t.valid(now)]

    def new(
        self, user: str, role: Role | str, **options: Unpack[TokenOptions]
    ) -> tuple[Token, str]:
        """A new token and its secret (shown once; only its digest is kept), not stored yet."""
        expires_in = options.get("expires_in", 0.0)
        worker_ids = options.get("worker_ids", ())
        if not _USER.fullmatch(user):
            raise TokenError(f"user: expected 1-64 letters, digits or _.@-, got {user!r}")
        try:
            role = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise TokenError(f"role: expected one of {roles}, got {role!r}") from None
        bound = tuple(sorted(set(worker_ids)))
        if bound and role is not Role.WORKER:
            raise TokenError("worker_ids: only a worker token is bound to workers")
        if any(not w.strip() for w in bound):
            raise TokenError("worker_ids: a worker id cannot be empty")
        if expires_in < 0:
            raise TokenError("expires: must be in the future")
        secret = new_secret()
        token_id = f"tok-{secrets.token_hex(4)}"
        while token_id in self._by_id:
            token_id = f"tok-{secrets.token_hex(4)}"
        now = self.clock()
        token = Token(
            token_id,
            digest(secret),
            user,
            role,
            created_at=now,
            expires_at=now + expires_in if expires_in else 0.0,
            worker_ids=bound,
        )
        return token, secret

    def save(self, token: Token) -> None:
        """Store a new or revoked token (blocking: a small SQLite commit)."""
        if self._db is not None:
            self._db.execute(
                f"INSERT OR REPLACE INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                token.row(),
            )

    def add(self, token: Token) -> None:
        """Make a saved token usable."""
        self._add(token)

    def revoked(self, token_id: str) -> Token:
        """A copy of the token, revoked now, for :meth:`save` then :meth:`add`."""
        token = self._by_id.get(token_id)
        if token is None:
            raise TokenError(f"token_id: no token {token_id!r}")
        return dataclasses.replace(token, revoked_at=token.revoked_at or self.clock())

    def create(
        self, user: str, role: Role | str, **options: Unpack[TokenOptions]
    ) -> tuple[Token, str]:
        """:meth:`new`, :meth:`save` and :meth:`add` in one (for code off the event loop)."""
        token, secret = self.new(user, role, **options)
        self.save(token)
        self.add(token)
        return token, secret

    def revoke(self, token_id: str) -> Token:
        """Revoke a token now (for code off the event loop)."""
        token = self.revoked(token_id)
        self.save(token)
        self.add(token)
        return token

    def _add(self, token: Token) -> None:
        old = self._by_id.get(token.id)
        if old is not None:
            # A guard may remember the old grant by its header: it must see the revocation.
            old.grant.revoked = token.grant.revoked
        self._by_id[token.id] = token
        self._by_digest[token.sha256] = token
        if token.role is Role.WORKER:
            self.version += 1

    def bootstrap(self, state_dir: Path) -> list[Path]:
        """Make sure ``admin.token`` and ``worker.token`` in ``state_dir`` hold valid tokens of
        their roles, writing new ones where they do not; returns the files written."""
        written = []
        user = local_user()
        for role, name in (
            (Role.ADMIN, credentials.ADMIN_TOKEN),
            (Role.WORKER, credentials.WORKER_TOKEN),
        ):
            path = state_dir / name
            try:
                secret = credentials.read_token(path)
            except (OSError, ValueError):
                secret = ""
            token = self._by_digest.get(digest(secret)) if secret else None
            if token is not None and token.role is role and token.valid(self.clock()):
                credentials.private_file(path)
                continue
            token, secret = self.create(user, role)
            credentials.write_token(path, secret)
            written.append(path)
            logger.info("new {} token {} written to {}", role.value, token.id, path)
        return written


def local_user() -> str:
    """The user of the tokens a controller's first start writes (and the owner of the jobs of a
    store made before jobs had owners): the user running it, if a valid token user name."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "local"
    return name if _USER.fullmatch(name) else "local"


def _token(row: tuple[Any, ...]) -> Token:
    token_id, sha256, user, role, created_at, expires_at, revoked_at, worker_ids = row
    return Token(
        token_id,
        bytes(sha256),
        user,
        Role(role),
        created_at,
        expires_at,
        revoked_at,
        tuple(json.loads(worker_ids)),
    )
