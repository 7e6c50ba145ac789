"""Per-user limits (the ``[quotas]`` section): how many jobs a user may have queued and on
workers, and how fast the user may submit.

Plain synchronous stdlib code, like the routers: no clock of its own (every call takes ``now``),
no I/O. The job table keeps each owner's counts and asks here whether a submission fits
(`check_submission`) and whether the owner may be given one more lease (`Quota.may_lease`).

Rules:

1. A limit of 0 means no limit; the defaults limit nothing. ``[quotas.users.NAME]`` replaces,
   key by key, the defaults for that user (`Quotas.of`).
2. ``max_queued`` bounds the user's jobs waiting in the queue (the new submission included); a
   submission over it is refused whole, as when the controller's own queue is full.
3. ``max_running`` bounds the user's jobs on workers (leased or running). It is never a refusal:
   the user's queued jobs wait while other users' jobs are leased past them.
4. ``submit_rate`` is a token bucket of jobs per second that holds one second of submissions
   (at least one job). A submission takes a token per job. It is accepted when the bucket holds
   as many tokens as it has jobs, or is full: a submission larger than the bucket then takes
   the bucket into debt, which later ones wait for, so that over time the user submits no more
   than ``submit_rate`` jobs a second whatever the sizes of the submissions. A refusal says
   when to retry (`QuotaExceeded.retry_after`) and takes no token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "LIMITS",
    "Quota",
    "QuotaExceeded",
    "Quotas",
    "TokenBucket",
    "check_submission",
]

LIMITS: tuple[str, ...] = ("max_queued", "max_running", "submit_rate")
"""The keys of a quota, as in the config's ``[quotas]`` section."""


class QuotaExceeded(Exception):
    """A submission past one of its owner's limits; nothing was changed.

    ``limit`` is the key exceeded (``max_queued`` or ``submit_rate``), ``retry_after`` the
    seconds until the same submission would be accepted (``submit_rate`` only, else None).
    """

    def __init__(self, user: str, limit: str, message: str, retry_after: float | None = None):
        self.user = user
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Quota:
    """One user's limits; 0 is no limit."""

    max_queued: int = 0
    max_running: int = 0
    submit_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.max_queued < 0 or self.max_running < 0:
            raise ValueError("limits must be >= 0")
        if not (math.isfinite(self.submit_rate) and self.submit_rate >= 0):
            raise ValueError("submit_rate must be a finite number >= 0")

    @property
    def burst(self) -> float:
        """Tokens the submission bucket holds when full: one second of submissions, at least
        one job."""
        return max(self.submit_rate, 1.0)

    def may_lease(self, active: int) -> bool:
        """Whether a user with ``active`` jobs on workers may be leased one more."""
        return not self.max_running or active < self.max_running


@dataclass(frozen=True, slots=True)
class Quotas:
    """The configured limits: ``default`` for everyone, ``users`` overriding keys per user."""

    default: Quota = Quota()
    # Only the keys a user's section sets; the others come from ``default``.
    users: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for user, keys in self.users.items():
            unknown = set(keys) - set(LIMITS)
            if unknown:
                raise ValueError(f"users.{user}: unknown keys {sorted(unknown)}")
            self.of(user)  # a bad value is an error now, not at the user's first submission

    def of(self, user: str) -> Quota:
        keys = self.users.get(user)
        if not keys:
            return self.default
        d = self.default
        return Quota(
            max_queued=int(keys.get("max_queued", d.max_queued)),
            max_running=int(keys.get("max_running", d.max_running)),
            submit_rate=float(keys.get("submit_rate", d.submit_rate)),
        )


@dataclass(slots=True)
class TokenBucket:
    """A user's submission bucket (rule 4); ``full`` makes one."""

    quota: Quota
    tokens: float
    updated: float

    # Seconds of wait too short to refuse for: float rounding must not refuse a client that
    # retried exactly when it was told to.
    _SLACK = 1e-6

    @classmethod
    def full(cls, quota: Quota, now: float) -> TokenBucket:
        return cls(quota, quota.burst, now)

    def wait(self, count: int, now: float) -> float:
        """Seconds until a submission of ``count`` jobs is accepted (0: now)."""
        rate = self.quota.submit_rate
        # A clock that went back refills nothing (the table is given wall-clock times).
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.quota.burst, self.tokens + elapsed * rate)
        self.updated = max(self.updated, now)
        wait = (min(float(count), self.quota.burst) - self.tokens) / rate
        return wait if wait > self._SLACK else 0.0

    def take(self, count: int) -> None:
        """Take ``count`` tokens (after ``wait`` said 0), into debt if need be."""
        self.tokens -= count


def check_submission(
    user: str, quota: Quota, count: int, queued: int, bucket: TokenBucket | None, now: float
) -> None:
    """Raise QuotaExceeded if ``user``, with ``queued`` jobs queued, may not submit ``count``
    more now; otherwise take the submission's tokens from ``bucket`` (None without a rate).

    Checks the queue before the rate, so that a refused submission takes no token.
    """
    if quota.max_queued and queued + count > quota.max_queued:
        raise QuotaExceeded(
            user,
            "max_queued",
            f"quota max_queued of user {user!r} exceeded: {queued} queued or waiting, "
            f"{count} more would exceed the limit of {quota.max_queued}",
        )
    if bucket is None or not quota.submit_rate:
        return
    wait = bucket.wait(count, now)
    if wait > 0:
        # In milliseconds, rounded up (but not for float noise), so that a client retrying
        # after the hint is accepted.
        retry_after = math.ceil(wait * 1000 - 1e-6) / 1000
        raise QuotaExceeded(
            user,
            "submit_rate",
            f"quota submit_rate of user {user!r} exceeded ({quota.submit_rate:g} jobs/s): "
            f"retry after {retry_after:.3f} s",
            retry_after,
        )
    bucket.take(count)
