"""When a worker's leases lapse, by its own monotonic clock (the rule is in burstd/leases.py).

No I/O and no clock of its own: every method takes the time, so tests drive it with any.

Rules:

1. Until a registration named the lease TTL, nothing lapses (a controller that names none, as
   the prototype's, is never out of touch as far as this worker can tell).
2. A call the controller answered was heard no earlier than it was sent: ``heard(sent)``
   renews the leases from the send time of the latest such call.
3. The jobs must be dead at ``kill_at`` (``LEASE_MARGIN`` of the TTL before the controller may
   lease them elsewhere); they are stopped at ``stop_at``, their grace before.
4. Once the time is past ``stop_at`` the leases have lapsed, and stay lapsed (whatever answer to
   an older call arrives) until an answer to a heartbeat or a registration sent after the lapse
   was noticed has told the worker which of its jobs are still its own (``confirmed``).
   Meanwhile nothing starts (``may_start``).
"""

from __future__ import annotations

import math

from burstd.leases import LAPSE_GRACE, LEASE_MARGIN

__all__ = ["LeaseDeadline"]


class LeaseDeadline:
    """One worker's leases as its own clock sees them (see the module's rules)."""

    def __init__(self, kill_grace: float) -> None:
        self.kill_grace = kill_grace
        self.ttl: float | None = None  # seconds; None: not known (rule 1)
        self.heard_at = -math.inf
        # When the lapse was noticed; None: the leases hold.
        self.lapsed_at: float | None = None

    def set_ttl(self, lease_ttl: float, pace: float) -> None:
        """The controller's lease TTL for this worker: ``lease_ttl`` (0: none) times ``pace``,
        the factor by which it stretched this worker's heartbeat interval."""
        self.ttl = lease_ttl * max(pace, 1.0) if lease_ttl > 0 else None

    @property
    def kill_at(self) -> float:
        if self.ttl is None:
            return math.inf
        return self.heard_at + self.ttl * (1 - LEASE_MARGIN)

    @property
    def grace(self) -> float:
        """Between SIGTERM and SIGKILL for jobs stopped by a lapse."""
        return 0.0 if self.ttl is None else min(self.kill_grace, self.ttl * LAPSE_GRACE)

    @property
    def stop_at(self) -> float:
        return self.kill_at - self.grace

    def heard(self, sent: float) -> None:
        """The controller answered a call sent at ``sent`` (rule 2)."""
        self.heard_at = max(self.heard_at, sent)

    def lapsed(self, now: float) -> bool:
        """Whether the leases have lapsed (rule 4); notices a lapse that is due."""
        if self.lapsed_at is None and now >= self.stop_at:
            self.lapsed_at = now
        return self.lapsed_at is not None

    def may_start(self, now: float) -> bool:
        return not self.lapsed(now)

    def confirmed(self, sent: float) -> bool:
        """The controller answered a heartbeat or registration sent at ``sent``, and the jobs it
        no longer assigns to this worker were dropped. Returns whether this ended a lapse."""
        self.heard(sent)
        if self.lapsed_at is not None and sent >= self.lapsed_at:
            self.lapsed_at = None
            return True
        return False
