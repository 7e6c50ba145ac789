"""Pauses between retries of a client whose server is away: growing, capped and jittered.

Promises:

1. The pauses double from ``first`` up to the cap the caller names at each retry (a cap may
   change between retries: a worker's is its heartbeat interval, which the controller sets).
2. Each pause is drawn at random from the upper half of its step (``[step / 2, step]``): never
   longer than the cap, and clients that lost their server at the same moment (a controller
   restart, a network cut) come back spread out over time instead of all in the same instant.
3. :meth:`Backoff.reset` starts again from ``first``, once the server answered.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """The pauses of one client (see the module's promises)."""

    def __init__(self, first: float, rng: random.Random | None = None) -> None:
        if not first > 0:
            raise ValueError(f"the first pause must be positive, not {first!r}")
        self.first = first
        self._step = first
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._step = self.first

    def pause(self, cap: float) -> float:
        """The next pause, in seconds, at most ``cap``."""
        step = min(self._step, cap)
        self._step = min(self._step * 2, cap)
        return self._rng.uniform(step / 2, step)
