"""The worker's local job set: what it holds, what runs, what is still to report. No I/O.

Rules:

1. A job is held from the moment its lease arrives until the controller acknowledged its result
   (or told the worker to drop it). Heartbeats list every held job, so the controller never takes
   back a job whose result is still on its way.
2. Held jobs never exceed the capacity the worker registered (``room()`` is what the lease loop may
   ask for), so the controller's count and the worker's agree.
3. Every job that ends gets exactly one result, kept until acknowledged; a dropped job gets none.
4. A job is QUEUED (waiting for a slot), RUNNING, or DONE (result not acknowledged yet).
5. A queued job offered to a thief (``offer``) is *leaving*: still held (heartbeats list it), never
   started, until the controller's answer says whether it moved (``handed_over``): a moved job is
   forgotten, the others wait for a slot again.
6. Every change is announced: each method that changes what is held, what waits for a slot or
   what is to report calls ``on_change`` once it is done, so the worker's tasks waiting on the
   queue wake without anyone telling them.
7. The oldest waiting job (the head) starts once what it asks for is free (``fits``), and
   nothing starts while it does not fit: a large job is never passed by smaller ones, the CPUs
   drain for it. When the head fits, a later job asking for more CPUs that fits too starts
   first (the first of the largest: best fit), so that the CPUs a large job frees go to the
   next large job at once, instead of being split among small ones and drained again for it.
   A head is passed over so at most ``MAX_PASSED`` times, then starts: no job waits behind more
   than that many larger ones (the table's rule 11 and docs/architecture.md, "Large requests are
   not starved").
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

from burstd import resources
from burstd.leases import StopReason
from burstd.resources_proto import request_of
from proto.burst.v1 import job_pb2, worker_pb2

# How many later, larger jobs may start before the oldest waiting one while it fits (rule 7).
MAX_PASSED = 2


class LocalState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(slots=True, eq=False)
class LocalJob:
    job_id: str
    attempt: int
    spec: job_pb2.JobSpec
    state: LocalState = LocalState.QUEUED
    result: job_pb2.ReportJobResultRequest | None = None
    # Set when the controller cancelled the job: it is stopped and reported as cancelled.
    cancelled: bool = False
    # Offered to a thief; the controller has not answered yet: not startable.
    leaving: bool = False
    # What it asks for (None: one CPU), and what it holds of the worker while it runs.
    request: resources.Request | None = None
    grant: resources.Grant | None = None
    # Times a larger job started before it while it was the oldest waiting one (rule 7).
    passed: int = 0

    @property
    def cpus(self) -> int:
        return 1 if self.request is None else self.request.get(resources.CPUS, 1)


def stopped_result(
    job: LocalJob, reason: StopReason, started_at: float, finished_at: float
) -> job_pb2.ReportJobResultRequest:
    """The result of a job the worker stopped (``started_at`` set) or never started: cancelled
    or returned."""
    if reason is StopReason.CANCELLED:
        message = "cancelled by user"
    elif started_at:
        message = "stopped by a worker shutdown"
    else:
        message = "handed back by a worker shutting down"
    return job_pb2.ReportJobResultRequest(
        job_id=job.job_id,
        attempt=job.attempt,
        exit_code=-1,
        reason=reason,
        error_message=message,
        started_at=started_at,
        finished_at=finished_at,
    )


def _nothing() -> None:
    pass


def _always(job: LocalJob) -> bool:
    return True


class LocalQueue:
    """Jobs held by one worker. ``on_change`` is called after every change (rule 6)."""

    def __init__(
        self,
        capacity: int,
        on_change: Callable[[], None] = _nothing,
        fits: Callable[[LocalJob], bool] = _always,
    ) -> None:
        self.capacity = capacity
        self.on_change = on_change
        # Whether the worker has what a job asks for free now: the oldest job waits for it,
        # and the others behind it (rule 7: a large job is never passed by smaller ones).
        self.fits = fits
        self.jobs: dict[str, LocalJob] = {}
        self._queued: deque[LocalJob] = deque()
        # Whether a waiting job may ask for resources (set when one arrives, cleared when a look
        # finds none): only then is a larger job looked for behind the head (rule 7), so plain
        # jobs start without a walk of the queue.
        self._sized = False
        self._started: list[LocalJob] = []
        # Finished jobs whose result is not acknowledged yet, in the order they ended.
        self._done: dict[str, LocalJob] = {}
        self.lease_seq = 0  # highest lease batch received: heartbeats acknowledge it

    def room(self) -> int:
        return max(0, self.capacity - len(self.jobs))

    def held(self) -> list[worker_pb2.HeldJob]:
        return [
            worker_pb2.HeldJob(
                job_id=j.job_id, attempt=j.attempt, running=j.state is LocalState.RUNNING
            )
            for j in self.jobs.values()
        ]

    def add(self, jobs: Iterable[job_pb2.AssignedJob], lease_seq: int) -> int:
        """Take leased jobs; a job already held under the same attempt is ignored. Returns count."""
        added = 0
        for assigned in jobs:
            current = self.jobs.get(assigned.job_id)
            if current is not None and current.attempt >= assigned.attempt:
                continue
            job = LocalJob(assigned.job_id, assigned.attempt, assigned.spec)
            if assigned.spec.HasField("resources"):
                job.request = request_of(assigned.spec.resources)
                self._sized = self._sized or job.request is not None
            if current is not None:
                self._done.pop(job.job_id, None)  # a newer attempt replaces the old one
            self.jobs[job.job_id] = job
            self._queued.append(job)
            added += 1
        self.lease_seq = max(self.lease_seq, lease_seq)
        if added:
            self.on_change()
        return added

    def waiting(self) -> int:
        """Jobs waiting for a slot (an upper bound: dropped or taken ones leave lazily)."""
        return len(self._queued)

    def queued_count(self) -> int:
        """Jobs waiting for a slot that could be handed to a thief (not cancelled, not leaving)."""
        return sum(1 for job in self._queued if self._stealable(job))

    def has_stealable(self) -> bool:
        """``queued_count() > 0``, usually without walking the whole queue."""
        return any(self._stealable(job) for job in self._queued)

    def _stealable(self, job: LocalJob) -> bool:
        return (
            self.jobs.get(job.job_id) is job
            and job.state is LocalState.QUEUED
            and not job.cancelled
            and not job.leaving
        )

    def offer(self, count: int, takes: Callable[[LocalJob], bool] | None = None) -> list[LocalJob]:
        """Up to ``count`` jobs from the tail of the queue (the last a slot would start), now
        leaving: held but not startable until ``handed_over``. Oldest first. ``takes``: only
        jobs it accepts, asked from the tail on (it may count what it accepted)."""
        if count <= 0:
            return []
        offered: list[LocalJob] = []
        for job in reversed(self._queued):
            if len(offered) == count:
                break
            if self._stealable(job) and (takes is None or takes(job)):
                offered.append(job)
        if offered:
            leaving = {id(job) for job in offered}
            for job in offered:
                job.leaving = True
            self._queued = deque(job for job in self._queued if id(job) not in leaving)
            self.on_change()
        offered.reverse()
        return offered

    def handed_over(self, offered: Iterable[LocalJob], moved: Container[str]) -> list[LocalJob]:
        """The controller answered a transfer of ``offered``: the ``moved`` ones are no longer
        this worker's and are forgotten (returned, for the thief: also those the controller
        told this worker to drop meanwhile, because they moved); the others wait for a slot
        again."""
        gone: list[LocalJob] = []
        back: list[LocalJob] = []
        for job in offered:
            held = self.jobs.get(job.job_id) is job and job.leaving
            job.leaving = False
            if job.job_id in moved:
                if held:
                    del self.jobs[job.job_id]
                    self._done.pop(job.job_id, None)
                gone.append(job)
            elif held and job.state is LocalState.QUEUED:
                back.append(job)
                self._sized = self._sized or job.request is not None
        self._queued.extend(back)
        self.on_change()
        return gone

    def can_start(self, busy: Container[str] = ()) -> bool:
        """Whether ``next_queued(busy)`` would return a job."""
        self._skip_gone()
        return (
            bool(self._queued) and self._queued[0].job_id not in busy and self.fits(self._queued[0])
        )

    def next_queued(self, busy: Container[str] = ()) -> LocalJob | None:
        """The oldest job waiting for a slot (or a larger one behind it: rule 7), now RUNNING;
        None when there is none, when the oldest does not fit, or when its id is ``busy``
        (another attempt of it still runs here: it waits until that one ended, so that two
        attempts of a job never run at once, also in one worker)."""
        job = self._next_queued(busy)
        if job is not None:
            self.on_change()
        return job

    def _skip_gone(self) -> None:
        """Forget the head entries that no longer wait (dropped, cancelled, taken, replaced)."""
        queued = self._queued
        while queued and not (
            self.jobs.get(queued[0].job_id) is queued[0] and queued[0].state is LocalState.QUEUED
        ):
            queued.popleft()

    def _next_queued(self, busy: Container[str] = (), *, fitting: bool = True) -> LocalJob | None:
        self._skip_gone()
        if not self._queued or self._queued[0].job_id in busy:
            return None
        head = self._queued[0]
        if fitting and not self.fits(head):
            return None
        larger = self._larger(head, busy) if fitting and self._sized else None
        if larger is None:
            job = self._queued.popleft()
        else:
            job = larger
            self._queued.remove(job)
            head.passed += 1
        job.state = LocalState.RUNNING
        self._started.append(job)
        return job

    def _larger(self, head: LocalJob, busy: Container[str]) -> LocalJob | None:
        """The first of the waiting jobs asking for the most CPUs, more than the head, that
        fit now; None when there is none, or the head was passed over often enough (rule 7)."""
        if head.passed >= MAX_PASSED:
            return None
        best, most, sized = None, head.cpus, False
        for job in self._queued:
            if job.request is None:
                continue
            sized = True
            if (
                job.cpus > most
                and self.jobs.get(job.job_id) is job
                and job.state is LocalState.QUEUED
                and job.job_id not in busy
                and self.fits(job)
            ):
                best, most = job, job.cpus
        self._sized = sized
        return best

    def finish(self, job: LocalJob, result: job_pb2.ReportJobResultRequest) -> None:
        """Record how a job ended; ignored if the job was dropped meanwhile."""
        if self.jobs.get(job.job_id) is job and job.state is not LocalState.DONE:
            job.state = LocalState.DONE
            job.result = result
            self._done[job.job_id] = job
            self.on_change()

    def cancel(self, job_id: str, attempt: int, now: float) -> LocalJob | None:
        """A user cancelled this attempt: a queued job ends now, as cancelled (it holds room
        until reported, not until a slot is free); returns the job if it runs (the caller
        stops it, then ``finish``es it as cancelled)."""
        job = self.lookup(job_id, attempt)
        if job is None or job.cancelled:
            return None
        job.cancelled = True
        if job.state is LocalState.QUEUED:
            self.finish(job, stopped_result(job, StopReason.CANCELLED, 0.0, now))
            return None
        return job if job.state is LocalState.RUNNING else None

    def return_unstarted(self) -> list[LocalJob]:
        """For a shutdown: every queued job ends as handed back (re-queued by the controller)."""
        returned = []
        while (job := self._next_queued(fitting=False)) is not None:
            job.state = LocalState.DONE
            job.result = stopped_result(job, StopReason.RETURNED, 0.0, 0.0)
            self._done[job.job_id] = job
            returned.append(job)
        if returned:
            self.on_change()
        return returned

    def take_reports(self) -> tuple[list[worker_pb2.HeldJob], list[LocalJob]]:
        """Start notices not sent yet, and every finished job whose result is unacknowledged."""
        started = [
            worker_pb2.HeldJob(job_id=j.job_id, attempt=j.attempt, running=True)
            for j in self._started
            if self.jobs.get(j.job_id) is j and j.state is LocalState.RUNNING
        ]
        self._started.clear()
        self.on_change()
        return started, list(self._done.values())

    def has_reports(self) -> bool:
        return bool(self._started) or bool(self._done)

    def has_results(self) -> bool:
        """Finished jobs wait for an acknowledgement (not only start notices)."""
        return bool(self._done)

    def acknowledged(self, jobs: Iterable[LocalJob]) -> None:
        """The controller answered for these results (accepted, duplicate or stale): forget them."""
        for job in jobs:
            if self.jobs.get(job.job_id) is job:
                del self.jobs[job.job_id]
                self._done.pop(job.job_id, None)
        self.on_change()

    def lookup(self, job_id: str, attempt: int) -> LocalJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.attempt == attempt else None

    def drop(self, job_id: str, attempt: int) -> LocalJob | None:
        """Forget a job that is no longer this worker's; returns it (the caller stops it)."""
        job = self.lookup(job_id, attempt)
        if job is not None:
            del self.jobs[job_id]
            if self._done.get(job_id) is job:
                del self._done[job_id]
            self.on_change()
        return job

    def take(self, job_ids: Iterable[str]) -> list[LocalJob]:
        """Remove these jobs if they are still queued (not started): for handing them away."""
        taken = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.state is LocalState.QUEUED:
                del self.jobs[job_id]
                taken.append(job)
        return taken
