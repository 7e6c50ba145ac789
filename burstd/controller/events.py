"""The controller's event log: what happened to each job and worker, stored, read and followed.

The job table records events as it takes transitions (rule 9 of burstd/controller/table.py).
The store writer numbers and stamps them as it takes a commit's changes (``number``), and stores
them in that same commit, a row each; a commit that fails sends them again with the next. Once
a commit is written its events join ``recent`` (the newest RECENT) and wake the followers
(``written``). ``read`` serves from ``recent`` when it reaches back far enough, else from the
store, which keeps the newest ``keep`` events (each commit deletes those beyond).

What it promises: events are numbered from 1 in the order the table took them, with no gap and
never twice; a reader sees an event only once the store holds it (as a client hears of a job),
and a reader that passes back the ``through`` of its last read misses none and sees none twice.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence

import trio

from burstd.controller.store import Store, StoredEvent
from burstd.controller.table import EventRecord

# Events kept in memory for readers that follow (older ones are read from the store).
RECENT = 10_000


class EventLog:
    def __init__(self, store: Store, keep: int) -> None:
        self.store = store
        self.keep = keep
        self.last = store.last_event()  # the last number handed out
        self.stored = self.last  # the last number the store holds
        self.recent: deque[StoredEvent] = deque(maxlen=RECENT)
        self._new = trio.Event()

    def number(self, records: Sequence[EventRecord], now: float) -> list[StoredEvent]:
        """Number and stamp the table's events for the commit being built."""
        first = self.last + 1
        self.last += len(records)
        return [
            StoredEvent(seq, now, *record)
            for seq, record in zip(itertools.count(first), records, strict=False)
        ]

    @property
    def delete_below(self) -> int:
        """The number below which the store deletes its events (0: none yet)."""
        return max(0, self.last + 1 - self.keep)

    def written(self, events: Sequence[StoredEvent]) -> None:
        """A commit holding these events is on disk: readers may see them."""
        if events:
            self.recent.extend(events)
            self.stored = events[-1].seq
            self._new.set()
            self._new = trio.Event()

    async def wait(self) -> None:
        """Return once more events are stored."""
        await self._new.wait()

    async def read(
        self,
        after: int,
        limit: int,
        *,
        job_id: str = "",
        worker_id: str = "",
        visible: Callable[[StoredEvent], bool] = lambda event: True,
    ) -> tuple[list[StoredEvent], int]:
        """Up to ``limit`` stored events numbered above ``after``, of this job and worker (empty:
        any) that ``visible`` lets through; and the number read through (pass it as ``after``
        next time)."""

        def wanted(event: StoredEvent) -> bool:
            return (
                (not job_id or event.job_id == job_id)
                and (not worker_id or event.worker_id == worker_id)
                and visible(event)
            )

        stored = self.stored
        if after >= stored:
            # Caught up: nothing to read, in memory or in the store (whose integers, signed
            # 64-bit, could not even hold a larger ``after``).
            return [], after
        recent = self.recent
        if recent and recent[0].seq <= after + 1:
            found = []
            through = stored
            for event in itertools.islice(recent, after + 1 - recent[0].seq, None):
                if wanted(event):
                    found.append(event)
                    if len(found) == limit:
                        through = event.seq
                        break
            return found, max(through, after)
        rows = await trio.to_thread.run_sync(self.store.events, after, job_id, worker_id, limit)
        through = rows[-1].seq if len(rows) == limit else max(stored, rows[-1].seq if rows else 0)
        return [row for row in rows if visible(row)], max(through, after)
