"""Group commit: the task that makes the job table's changes durable.

Every caller waits for the commit that holds its change (``durable``) before anyone hears of
it: a client learns its job ids, a worker its leases, a worker that its results are recorded,
only once they are on disk, so nothing is handed out and then forgotten by a restart. Every
change that arrives while a commit is running goes into the next one: under load one fsync covers
thousands of jobs, and a job submitted and leased before its commit is written once.

A submission larger than STAGE_SLICE is staged instead (``stage``): stored a slice per commit
before it is queued, so that no commit holds every report up for the whole submission; a
restart deletes a stage cut short, so a submission is stored whole or not at all. A submission
sent in pieces keeps each piece staged (``stage(keep=True)``) until one commit accepts them all
(``accept``), or deletes them (``drop``).

When the disk is full (or any write fails), every caller waiting at that moment gets
``StoreUnavailable``, and the submitted jobs not stored yet are withdrawn from the table (their
clients are refused); other changes stay in memory (running jobs continue) and the writer
retries them with a back-off, logging the outage once and its end once (``Outage``). Deletions
(``forget``) go through the writer too, so that ``failing`` tells readers whether the store
holds what memory holds.
"""

from __future__ import annotations

import collections
import itertools
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import NamedTuple

import trio

from burstd.controller.events import EventLog
from burstd.controller.outage import Outage
from burstd.controller.store import Commit, Store, StoredEvent, changed_row, inserts, leased_row
from burstd.controller.table import TERMINAL, Job, JobTable

# Jobs of a staged submission stored per commit, a commit short enough for the reports waiting
# behind it (docs/benchmarks.md): see ``stage``.
STAGE_SLICE = 5_000


class _Sent(NamedTuple):
    """The changes of the commit sent last, and the generation it makes durable."""

    number: int  # commits are numbered from 1, in the order they are sent
    generation: int
    new: list[Job]
    changed: list[Job]
    leased: list[Job]
    dropped: list[tuple[int, int]]  # staged submissions whose rows it deletes
    # The jobs it stores as ended: they leave memory once it is written. Taken when it is sent,
    # not when written: a job that ended while this commit was under way has its end in the
    # next commit, already sent by then, and must stay in memory until that one is written.
    finished: list[Job]
    sent_at: float = 0.0  # time.perf_counter() when it was sent
    rows: int = 0  # rows inserted or updated
    drains: Sequence[tuple[str, bool]] = ()
    events: Sequence[StoredEvent] = ()


@dataclass(eq=False)
class _Stage:
    """A large submission being stored a slice per commit (``StoreWriter.stage``)."""

    jobs: list[Job]
    keep: bool = False  # stays staged once stored, until ``accept`` or ``drop``
    sent: int = 0  # how many of its jobs went to the store so far
    last_commit: int = 0  # the commit with its last slice, once that is sent
    failed: str = ""  # why it was refused

    @property
    def numbers(self) -> tuple[int, int]:
        return self.jobs[0].num, self.jobs[-1].num + 1


class StoreUnavailable(Exception):
    """A write failed (e.g. disk full): the change is not durable."""


class StoreWriter:
    def __init__(self, store: Store, table: JobTable, events: EventLog | None = None) -> None:
        self.store = store
        self.table = table
        # The event log: the table's events go with the commit of its changes.
        self.events = events
        self._unsent_events: list[StoredEvent] = []  # those of a commit that failed
        self._wake = trio.Event()
        # Generation of changes: a caller waits until `committed` reaches the generation that
        # was current when it made its change.
        self._generation = 0
        self._committed = 0
        self._taken = 0  # the generation of the changes the last commit took
        # The ids of the jobs that commit stores: built when a poll first asks, as most commits
        # are never asked (building it for each cost as much as a job's row).
        self._taking: set[str] | None = None
        self._sent = _Sent(0, 0, [], [], [], [], [])
        self._sends = 0
        self._finished = 0  # the last commit written or failed
        # Staged submissions waiting for their slices, then those whose last slice is sent.
        self._stages: collections.deque[_Stage] = collections.deque()
        self._ending: list[_Stage] = []
        # Staged submissions refused (their rows may be stored in part): the next commit
        # deletes them.
        self._dropped: list[tuple[int, int]] = []
        # Kept stages to accept (``accept``): the next commit ends them all at once.
        self._accepting: list[tuple[int, int]] = []
        self._failed: tuple[int, str] | None = None
        self.outage = Outage("writing the state store")
        self._done = trio.Event()
        self._stopped = False
        # One write at a time: commits and deletions (forget) never interleave.
        self.lock = trio.Lock()
        # Told of each commit written: its latency (sent to on disk, seconds) and rows.
        self.on_commit: Callable[[float, int], None] | None = None

    def _bump(self) -> int:
        self._generation += 1
        self._wake.set()
        return self._generation

    async def _until(self, generation: int) -> None:
        while self._committed < generation:
            if self._failed is not None and self._failed[0] >= generation:
                raise StoreUnavailable(self._failed[1])
            if self._stopped:
                raise StoreUnavailable("the controller is stopping: not stored")
            await self._done.wait()

    async def durable(self) -> None:
        """Return once every change made to the table so far is stored."""
        await self._until(self._bump())

    async def stored(self, jobs: Sequence[Job]) -> None:
        """Return once the latest change of each of these jobs is stored. When a commit under
        way took them, that one is enough; when a finished one did, there is nothing to wait
        for (a worker's poll for the leases its report's commit stored answers at once)."""
        if any(self.table.pending(job.job_id) for job in jobs):
            await self.durable()
        elif self._committed < self._taken and any(job.job_id in self._taken_ids() for job in jobs):
            await self._until(self._taken)
        else:
            await trio.lowlevel.checkpoint()

    async def stage(self, jobs: list[Job], *, keep: bool = False) -> None:
        """Store a large submission's jobs, not yet in the table, a slice per commit beside the
        other changes: no commit holds everyone up for a whole large submission. Returns once
        all are stored; until then a restart deletes them (the ``staged`` table), so a
        submission is stored whole or not at all. Raises ``StoreUnavailable`` if a commit fails
        meanwhile (a later commit deletes what was stored) or the writer stops. With ``keep``
        they stay staged (not accepted, deleted by a restart) until ``accept`` or ``drop``."""
        stage = _Stage(jobs, keep)
        self._stages.append(stage)
        self._wake.set()
        while not stage.failed and not 0 < stage.last_commit <= self._finished:
            if self._stopped:
                raise StoreUnavailable("the controller is stopping: not stored")
            await self._done.wait()
        if stage.failed:
            raise StoreUnavailable(stage.failed)

    async def accept(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Accept kept stages (their first and stop numbers) in one commit, all or none; raises
        ``StoreUnavailable`` as ``durable`` does (the caller then drops them)."""
        self._accepting.extend(ranges)
        await self.durable()

    @property
    def failing(self) -> str:
        """Why the last write failed, while the store cannot be written; else empty."""
        return self.outage.error

    async def forget(
        self,
        job_ids: Sequence[str] = (),
        *,
        finished_before: float | None = None,
        owner: str | None = None,
    ) -> collections.Counter[tuple[str, int, str]]:
        """Delete finished jobs from the store, by id or those (of ``owner``; None: of
        everyone) that ended before ``finished_before``, once every change made so far is
        stored; returns how many, by owner, submission and state. Raises ``StoreUnavailable``
        if the store cannot be written."""
        await self.durable()
        async with self.lock:
            try:
                if finished_before is None:
                    deleted = await self.store.forget(job_ids)
                else:
                    deleted = await self.store.forget_finished(finished_before, owner)
            except sqlite3.Error as error:
                self.outage.failed(error)
                raise StoreUnavailable(
                    f"the state store cannot be written ({error}): nothing forgotten"
                ) from None
        self.outage.succeeded()
        return deleted

    def drop(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Have the next commit delete kept stages (a submission refused or abandoned)."""
        self._dropped.extend(ranges)
        self._wake.set()

    def _taken_ids(self) -> set[str]:
        if self._taking is None:
            sent = self._sent
            self._taking = {
                job.job_id for jobs in (sent.new, sent.changed, sent.leased) for job in jobs
            }
        return self._taking

    async def run(self) -> None:
        # The first commit would otherwise wait for the store process's Python to start.
        self.store.start_writes()
        try:
            await self._run()
        finally:
            # Nobody waits for a commit that will not come (callers may wait shielded), and
            # submissions that will not be stored are refused.
            self._stopped = True
            self.table.withdraw_unstored()
            self._signal()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let the tasks woken with us act first: a poll woken by the submission that woke us
            # leases the new job now, and one commit stores both (else a second commit follows).
            await trio.lowlevel.cancel_shielded_checkpoint()
            try:
                async with self.lock:
                    await self._write()
            except sqlite3.Error as error:
                message = f"the state store cannot be written ({error}): not accepted"
                delay = self.outage.failed(error)
                # Everyone waiting hears of it, as no promise can be kept for them before the
                # retry. Submissions not stored are refused: their jobs leave the table.
                self._failed = (self._generation, message)
                sent = self._sent
                new, changed, leased, dropped = sent.new, sent.changed, sent.leased, sent.dropped
                self._finished = self._sends
                # Staged submissions are refused too; what they stored goes with a later commit.
                self._dropped[:0] = dropped
                for stage in (*self._ending, *self._stages):
                    stage.failed = message
                    if stage.sent:
                        self._dropped.append(stage.numbers)
                self._ending.clear()
                self._stages.clear()
                self._accepting.clear()  # their callers are refused, and drop them
                self.table.not_stored((*changed, *leased))
                self.table.drains_not_stored(sent.drains)
                self._unsent_events[:0] = sent.events
                # After the line above: a withdrawn job (new, perhaps changed too) is not dirty.
                self.table.withdraw_unstored(new)
                self._signal()
                await trio.sleep(delay)
                self._wake.set()
                continue

    async def _write(self) -> None:
        """Commit the changes, and those made meanwhile, until there are none left (or somebody
        waits for the lock, or the writer is stopping). Each next commit goes to the store
        process as soon as the last is on disk, before that one's waiters are told (which takes
        a pass of the event loop, while the store process would sit idle)."""
        await self._send()
        while True:
            await self.store.written()
            done = self._sent
            if (
                self._wake.is_set()
                and self.lock.statistics().tasks_waiting == 0
                and trio.current_effective_deadline() != -math.inf
            ):
                try:
                    await self._send()
                finally:
                    self._written(done)
            else:
                self._written(done)
                return

    async def _send(self) -> None:
        self._wake = trio.Event()
        generation = self._taken = self._generation
        new, changed, leased = self.table.take_changes()
        self._taking = None
        self._sends += 1
        dropped, self._dropped = self._dropped, []
        finished = [job for job in changed if job.state in TERMINAL]
        # Rows are built before the first await, so the store never sees a job half-changed.
        begun, ended = [], []
        part: list[Job] = []
        if self._stages:
            stage = self._stages[0]
            if not stage.sent:
                begun.append(stage.numbers)
            part = stage.jobs[stage.sent : stage.sent + STAGE_SLICE]
            stage.sent += len(part)
            if stage.sent == len(stage.jobs):
                if not stage.keep:
                    ended.append(stage.numbers)
                stage.last_commit = self._sends
                self._ending.append(self._stages.popleft())
            if self._stages:
                self._wake.set()  # the next slice goes in the next commit
        ended += self._accepting
        self._accepting = []
        rows, runs = inserts(itertools.chain(new, part))
        drains = self.table.take_drains()
        events, delete_below = self._unsent_events, 0
        if self.events is not None:
            events += self.events.number(self.table.take_events(), time.time())
            delete_below = self.events.delete_below
        self._unsent_events = []
        count = len(new) + len(part) + len(changed) + len(leased) + len(drains) + len(events)
        self._sent = _Sent(
            self._sends,
            generation,
            new,
            changed,
            leased,
            dropped,
            finished,
            perf_counter(),
            count,
            drains,
            events,
        )
        await self.store.send(
            Commit(
                rows,
                [changed_row(job) for job in changed],
                [leased_row(job) for job in leased],
                self.table.next_id,
                begun,
                ended,
                dropped,
                runs,
                drains,
                # Plain tuples: the store process is sent marshal data.
                [tuple(event) for event in events],
                delete_below,
            )
        )

    def _written(self, sent: _Sent) -> None:
        if self.on_commit is not None:
            self.on_commit(perf_counter() - sent.sent_at, sent.rows)
        self._failed = None
        self.outage.succeeded()
        self._committed = sent.generation
        self._finished = sent.number
        self._ending = [stage for stage in self._ending if stage.last_commit > sent.number]
        self._signal()
        if self.events is not None:
            self.events.written(sent.events)
        # A new job that ended before its first commit is among the changed ones too.
        self.table.evict(sent.finished)

    def _signal(self) -> None:
        self._done.set()
        self._done = trio.Event()
