"""Who may call what: roles, the caller of a call, and the one table of methods and roles.

Every call to the controller or to a worker's peer port carries a bearer token (gRPC metadata
``authorization: Bearer <token>``), except ``grpc.health.v1.Health/Check``. The rules:

1. No token, or one the server does not know (or revoked, or expired): UNAUTHENTICATED, before
   anything else is looked at, so a refusal never says whether a job or worker exists.
2. A known token whose role :data:`RULES` does not list for the method: PERMISSION_DENIED.
3. A worker token bound to worker ids acts only as those workers: the request field that names
   the worker (``Rule.worker_field``) must be one of them, else PERMISSION_DENIED.

Roles: ``client`` (its own jobs), ``worker`` (leases, reports, steals), ``admin`` (everything,
every owner's jobs, workers and tokens). :class:`Guard` applies the rules to a call from its
metadata; the table of tokens behind it is the caller's (``burstd.controller.tokens`` on the
controller, the verifiers the controller hands to workers on a peer port). No trio here.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from burstd import transport, wire
from burstd.credentials import METADATA_KEY, SCHEME, bearer

__all__ = [
    "RULES",
    "Caller",
    "Guard",
    "PeerTokens",
    "Role",
    "Rule",
    "bearer",
    "digest",
    "new_secret",
]

# 32 random bytes (256 bits) as URL-safe text, after a prefix that says what it is.
_PREFIX = "burst_"
_SECRET_BYTES = 32


class Role(enum.Enum):
    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: what its token says. Handlers get it as their second argument."""

    user: str
    role: Role
    token_id: str
    # The workers a worker token may act as; empty: any (an unbound token, or another role).
    worker_ids: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, owner: str) -> bool:
        """Whether the caller may see (wait for, cancel, forget, read the output of) a job of
        ``owner``: its own, or any as an admin. To a client another user's job does not exist."""
        return self.is_admin or owner == self.user

    def may_act_as(self, worker_id: str) -> bool:
        return not self.worker_ids or worker_id in self.worker_ids


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method, and which request field names the worker it acts as."""

    roles: frozenset[Role]
    worker_field: str = ""


_CLIENTS = frozenset({Role.CLIENT, Role.ADMIN})
_WORKERS = frozenset({Role.WORKER, Role.ADMIN})
_ANYONE = frozenset(Role)
_ADMINS = frozenset({Role.ADMIN})

_CONTROLLER = f"/{wire.CONTROLLER_SERVICE}/"
_PEER = f"/{wire.PEER_SERVICE}/"

RULES: Mapping[str, Rule] = {
    # clients: their own jobs (admins: everyone's)
    _CONTROLLER + "SubmitJob": Rule(_CLIENTS),
    _CONTROLLER + "SubmitJobs": Rule(_CLIENTS),
    _CONTROLLER + "GetJobStatus": Rule(_CLIENTS),
    _CONTROLLER + "CancelJobs": Rule(_CLIENTS),
    _CONTROLLER + "ListJobs": Rule(_CLIENTS),
    _CONTROLLER + "WaitJobs": Rule(_CLIENTS),
    _CONTROLLER + "ForgetJobs": Rule(_CLIENTS),
    _CONTROLLER + "ReadOutput": Rule(_CLIENTS),
    # `burst events`: clients the events of jobs, admins of workers too
    _CONTROLLER + "ListEvents": Rule(_CLIENTS),
    _CONTROLLER + "GetSubmission": Rule(_CLIENTS),
    _CONTROLLER + "ResubmitJobs": Rule(_CLIENTS),
    # `burst workers`, and an idle worker's steal client asking where the spare jobs are
    _CONTROLLER + "ListWorkers": Rule(_ANYONE),
    # workers: the leases they hold, as the worker their token is bound to
    _CONTROLLER + "RegisterWorker": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "PollJob": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "ReportJobResult": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "ReportJobResults": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "Heartbeat": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "TransferJobs": Rule(_WORKERS, "victim_id"),
    # workers: reads of their jobs' output (burstd/controller/output.py)
    _CONTROLLER + "TakeOutputReads": Rule(_WORKERS, "worker_id"),
    _CONTROLLER + "SendOutput": Rule(_WORKERS, "worker_id"),
    # tokens
    _CONTROLLER + "CreateToken": Rule(_ADMINS),
    _CONTROLLER + "ListTokens": Rule(_ADMINS),
    _CONTROLLER + "RevokeToken": Rule(_ADMINS),
    # `burst drain WORKER`, `burst undrain WORKER`
    _CONTROLLER + "DrainWorker": Rule(_ADMINS),
    # `burst top`: every user's jobs and every worker
    _CONTROLLER + "GetOverview": Rule(_ADMINS),
    # a worker's peer port: only workers steal (the victim knows worker tokens alone)
    _PEER + "StealJobs": Rule(frozenset({Role.WORKER}), "thief_worker_id"),
}
"""Every method of every guarded service and the roles allowed to call it; a method missing here
is refused to everyone (tests check that every served method is listed)."""


def new_secret() -> str:
    """A new token: 256 random bits, as text."""
    return _PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def digest(secret: str) -> bytes:
    """What a store keeps of a token: its SHA-256 (a token is random, so no salt is needed)."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(slots=True)
class Grant:
    """A token as a guard knows it: its digest, its caller, its end (0: none), revocation."""

    sha256: bytes
    caller: Caller
    expires_at: float = 0.0
    revoked: bool = False


class TokenSource(Protocol):
    def find(self, sha256: bytes) -> Grant | None:
        """The grant of a token by its digest, or None."""
        ...


@dataclass
class Guard:
    """Applies :data:`RULES` to calls: ``authorize`` is a service's hook (see
    ``transport.Service``), ``check_worker`` the binding check once the request is decoded.

    Known tokens are remembered by their header (a dict lookup per call, no hashing); an unknown
    one is hashed and looked up in ``source`` (a few microseconds), and never remembered, so
    wrong tokens cannot fill memory. Revocation and expiry are read on every call.
    """

    source: TokenSource
    clock: Callable[[], float]
    _known: dict[str, Grant] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop what is remembered (after a revocation: its grant says so anyway)."""
        self._known.clear()

    def authorize(self, path: str, metadata: Mapping[str, str]) -> Caller:
        header = metadata.get(METADATA_KEY, "")
        grant = self._known.get(header)
        if grant is None:
            grant = self._lookup(header)
        if grant.revoked:
            raise transport.Unauthenticated("token revoked")
        if grant.expires_at and self.clock() >= grant.expires_at:
            raise transport.Unauthenticated("token expired")
        rule = RULES.get(path)
        caller = grant.caller
        if rule is None or caller.role not in rule.roles:
            raise transport.PermissionDenied(f"a {caller.role.value} token may not call {path}")
        return caller

    def _lookup(self, header: str) -> Grant:
        if not header:
            raise transport.Unauthenticated(
                f"no token: send metadata '{METADATA_KEY}: {SCHEME}<token>'"
            )
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != SCHEME.strip().lower() or not secret:
            raise transport.Unauthenticated(f"{METADATA_KEY} metadata: expected '{SCHEME}<token>'")
        wanted = digest(secret.strip())
        grant = self.source.find(wanted)
        # The lookup was by digest; the comparison that decides is constant-time all the same.
        if grant is None or not secrets.compare_digest(grant.sha256, wanted):
            raise transport.Unauthenticated("unknown token")
        if len(self._known) < _MAX_KNOWN:
            self._known[header] = grant
        return grant

    @staticmethod
    def check_worker(path: str, caller: Caller, request: object) -> None:
        """Refuse a worker token bound to other workers than the one the request names."""
        rule = RULES.get(path)
        if rule is None or not rule.worker_field or not caller.worker_ids:
            return
        worker_id = getattr(request, rule.worker_field)
        if not caller.may_act_as(worker_id):
            raise transport.PermissionDenied(
                f"{rule.worker_field}: this token may act only as worker "
                f"{', '.join(sorted(caller.worker_ids))}"
            )


# Headers of known tokens remembered (a token sent in odd spellings cannot grow it past this).
_MAX_KNOWN = 4096


class Verifier(Protocol):
    """A worker token as the controller sends it to workers (``worker_pb2.PeerVerifier``)."""

    @property
    def token_sha256(self) -> bytes: ...
    @property
    def worker_ids(self) -> Iterable[str]: ...
    @property
    def expires_at(self) -> float: ...


class PeerTokens:
    """The tokens a worker's peer port accepts: the valid worker tokens, as the controller last
    listed them (at registration, then in a heartbeat reply when they changed). A thief shows
    its own token; the victim checks it here, with no call to the controller. ``guard`` applies
    :data:`RULES` with them (``auth.TokenSource``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.version = 0
        self._grants: dict[bytes, Grant] = {}
        self.guard = Guard(self, clock)

    def find(self, sha256: bytes) -> Grant | None:
        return self._grants.get(sha256)

    def update(self, version: int, verifiers: Iterable[Verifier]) -> None:
        """Replace the list with the controller's ``version`` of it (0: none sent)."""
        if not version or version == self.version:
            return
        self._grants = {
            v.token_sha256: Grant(
                v.token_sha256,
                Caller("", Role.WORKER, "", frozenset(v.worker_ids)),
                v.expires_at,
            )
            for v in verifiers
        }
        self.version = version
        # A token remembered by its header may be gone from the new list (revoked).
        self.guard.forget()
