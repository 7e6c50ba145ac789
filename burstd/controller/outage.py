"""Back-off and log-once for a controller task that the state store may fail.

A full disk fails every write until room comes back: a task that retries must neither flood
the log (one line per attempt) nor hammer the disk, and must say when it works again. On a
nearly full disk some writes still fit (a small commit) while others fail: an outage ends only
once the task's attempts have worked for a while, not at the first one that fits.
"""

from __future__ import annotations

import time

from loguru import logger

# The longest pause between two attempts of a failing task.
MAX_BACKOFF = 5.0


class Outage:
    """One task's trouble with the store: logged when the first attempt fails and when it
    ends, once each however many attempts fail or work between; ``failed`` paces the retries
    (doubling from ``first_delay`` up to ``max_delay``). It ends at an attempt that works
    ``max_delay`` or more after the last that failed."""

    def __init__(
        self, task: str, *, first_delay: float = 0.05, max_delay: float = MAX_BACKOFF
    ) -> None:
        self.task = task
        self.first_delay = first_delay
        self.max_delay = max(max_delay, first_delay)
        self._delay = first_delay
        self._since: float | None = None
        self._last_failure = 0.0
        self._attempts = 0
        self.error = ""  # what the last failed attempt raised, while failing

    def failed(self, error: BaseException | str) -> float:
        """Note a failed attempt; returns how long to wait before the next."""
        self.error = str(error)
        self._attempts += 1
        self._last_failure = time.monotonic()
        if self._since is None:
            self._since = self._last_failure
            self._delay = self.first_delay
            logger.error(
                "{} failed: {}; retrying with a back-off (up to {:g} s), logged again once it"
                " works",
                self.task,
                error,
                self.max_delay,
            )
        else:
            logger.debug("{} failed again: {}", self.task, error)
        delay, self._delay = self._delay, min(self._delay * 2, self.max_delay)
        return delay

    def succeeded(self) -> None:
        """Note an attempt that worked: the end of the outage once it is settled."""
        if self._since is None:
            return
        if time.monotonic() - self._last_failure >= self.max_delay:
            logger.info(
                "{} works again ({} attempts failed over {:.1f} s)",
                self.task,
                self._attempts,
                self._last_failure - self._since,
            )
            self._since, self._attempts, self.error = None, 0, ""
