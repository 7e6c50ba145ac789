"""What the tasks of one worker share, and how they wait for it to change.

Every task of the worker's tree (lease loop, runners, reporter, heartbeat, steal client and
server) runs on the trio thread and reads this one object: no locks. A task waits with
``wait_until(condition)``; whatever can make a condition true wakes the waiters itself: the
local queue after each of its changes (its ``on_change``), and the methods below after theirs.
No caller announces a change by hand.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio
from loguru import logger

from burstd import resources
from burstd.auth import PeerTokens
from burstd.config import WorkerConfig
from burstd.leases import StopReason
from burstd.worker.deadline import LeaseDeadline
from burstd.worker.queue import LocalJob, LocalQueue
from proto.burst.v1 import job_pb2, worker_pb2

__all__ = ["Running", "WorkerState"]


@dataclass(eq=False)
class Running:
    """A job whose process runs here; its scope is the job's lifetime."""

    scope: trio.CancelScope
    # Why the scope was cancelled (None: it was not): a user's cancel, a lease no longer this
    # worker's, or a shutdown.
    why: StopReason | None = None


@dataclass
class WorkerState:
    """What the tasks of one worker share (all on the trio thread: no locks)."""

    config: WorkerConfig
    local: LocalQueue
    # Sent with every call, to the controller and to peers (see burstd/auth.py).
    token: str = ""
    # Connections to the controller and to peers are TLS with this context (burstd/tlsconfig.py).
    tls: ssl.SSLContext | None = None
    # The worker tokens a thief may show on this worker's peer port (from the controller).
    peer_tokens: PeerTokens = field(default_factory=lambda: PeerTokens(time.time))
    # The jobs running here, by the job (not its id: two attempts of one job may both be here,
    # one stopping while the other starts).
    running: dict[LocalJob, Running] = field(default_factory=dict)
    # The ids of the running jobs: another attempt of one of them waits until it has stopped.
    running_ids: set[str] = field(default_factory=set)
    draining: bool = False
    # This process among all lives of this worker id: steals to an earlier one are refused.
    instance: int = field(default_factory=lambda: secrets.randbits(63) | 1)
    # When the lease loop's current request for work was sent (trio time); None: none waits.
    poll_since: float | None = None
    # A call that may bring leases (a poll, or a report that asks for work) is under way. One at
    # a time: batches then arrive in the order the controller numbered them, and a heartbeat,
    # which acknowledges the highest seen, never disowns one still on its way.
    leasing: bool = False
    # Stealing: every steal round up to steal_done has ended; peers as the controller listed them.
    steals: bool = False
    steal_done: int = 0
    peers: list[worker_pb2.PeerInfo] | None = None
    # The clock of the leases (``LeaseDeadline``): the system's monotonic one, which the job
    # guard reads too.
    clock: Callable[[], float] = time.monotonic
    # What the worker offers the controller (burstd/worker/detect.py: ``offer_of``) and its
    # GPUs' ids; unset: its slots as CPUs and nothing else. Its jobs take them from ``pool``.
    offer: dict[str, int] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)
    # Tasks blocked in wait_until, with the condition each waits for.
    _waiters: dict[trio.Event, Callable[[], bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.offer:
            self.offer = {resources.CPUS: self.config.slots}
        others = {k: v for k, v in self.offer.items() if k not in (resources.CPUS, resources.GPUS)}
        self.pool = resources.Pool(range(self.offer[resources.CPUS]), self.gpus, others)
        self.local.on_change = self._wake
        self.local.fits = self._fits
        self.lease = LeaseDeadline(self.config.kill_grace_s)
        self.log = logger.bind(worker_id=self.config.worker_id)

    def runs(self, job_id: str, attempt: int) -> bool:
        """Whether that attempt of the job runs here now."""
        return job_id in self.running_ids and any(
            job.job_id == job_id and job.attempt == attempt for job in self.running
        )

    def may_start(self) -> bool:
        """A runner may start the next queued job (cheap: runners ask at every change)."""
        return (
            not self.draining
            and self.local.can_start(self.running_ids)
            and self.lease.may_start(self.clock())
        )

    # -- waiting -----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Something changed: wake the tasks whose condition now holds, and only those. Waking
        every task instead cost each job's start and end a task switch per runner, reporter,
        lease loop and steal client."""
        if not self._waiters:
            return
        for event, ready in list(self._waiters.items()):
            if ready():
                del self._waiters[event]
                event.set()

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` holds (always through a checkpoint). ``ready`` is called now
        and after every change to this state or its queue: it must be cheap, and read nothing
        else that changes."""
        if ready():
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._waiters[event] = ready
        try:
            await event.wait()
        finally:
            self._waiters.pop(event, None)

    # -- changes -----------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Take no more work: the lease loop and the runners stop, the steal client too."""
        self.draining = True
        self._wake()

    @contextmanager
    def leasing_call(self) -> Iterator[None]:
        """Around a call that may bring leases (see ``leasing``)."""
        self.leasing = True
        try:
            yield
        finally:
            self.leasing = False
            self._wake()

    @contextmanager
    def run(self, job: LocalJob) -> Iterator[Running]:
        """Around a job's run: it is listed in ``running`` meanwhile."""
        grant = self.pool.grant(job.request)
        if grant is None:  # the queue starts only a job that fits (``_fits``)
            raise AssertionError(f"{job.job_id} started without its resources free")
        job.grant = grant
        running = self.running[job] = Running(trio.CancelScope())
        self.running_ids.add(job.job_id)
        try:
            yield running
        finally:
            del self.running[job]
            self.running_ids.discard(job.job_id)
            self.pool.release(grant)
            job.grant = None
            self._wake()

    def _fits(self, job: LocalJob) -> bool:
        return self.pool.fits(job.request)

    def stop(self, job: LocalJob, why: StopReason) -> None:
        """Stop a job's run, if it runs here and was not stopped already."""
        running = self.running.get(job)
        if running is not None and running.why is None:
            running.why = why
            running.scope.cancel()

    def stop_all(self, why: StopReason) -> None:
        for job in list(self.running):
            self.stop(job, why)

    def take_leases(self, jobs: Iterable[job_pb2.AssignedJob], lease_seq: int) -> int:
        """Take leased jobs (see ``LocalQueue.add``); returns how many were new. A newer
        attempt of a job running here supersedes it: the controller moved on (the lease was
        lost, or the job stolen, meanwhile), so the running one is stopped with no report, and
        the new one waits until it has ended."""
        added = self.local.add(jobs, lease_seq)
        if added:
            for job, running in list(self.running.items()):
                if running.why is None and self.local.jobs.get(job.job_id) is not job:
                    self.log.bind(job_id=job.job_id).warning(
                        "attempt {} is superseded by a newer lease while it runs: stopping it",
                        job.attempt,
                    )
                    self.stop(job, StopReason.DROPPED)
        return added

    def confirmed(self, sent: float) -> None:
        """The controller answered a heartbeat or registration sent at ``sent`` (monotonic
        time), and what it no longer assigns to this worker was dropped."""
        if self.lease.confirmed(sent):
            self.log.info("the controller confirmed this worker's leases: starting jobs again")
            self._wake()

    def lapse(self) -> None:
        """The leases lapsed: the running jobs are no longer this worker's to run. Stop them and
        forget them, with no report (the controller takes them back, or has already)."""
        for job in list(self.running):
            if self.local.drop(job.job_id, job.attempt) is not None:
                self.stop(job, StopReason.DROPPED)

    def drop(self, held: Iterable[worker_pb2.HeldJob]) -> None:
        """These leases are no longer this worker's: stop and forget them, with no report."""
        for h in held:
            job = self.local.drop(h.job_id, h.attempt)
            if job is not None:
                self.stop(job, StopReason.DROPPED)

    def apply_notices(
        self, cancel: Iterable[worker_pb2.HeldJob], drop: Iterable[worker_pb2.HeldJob]
    ) -> None:
        """The controller's notices: jobs a user cancelled, leases no longer this worker's."""
        for h in cancel:
            job = self.local.cancel(h.job_id, h.attempt, time.time())
            if job is not None:
                self.stop(job, StopReason.CANCELLED)
        self.drop(drop)
