"""The controller's RPC handlers: decode a request, call the job table, encode the answer.

No job state lives here. What this layer adds is waiting: long-polls park on a per-worker event
until the table routes work (or a cancel notice) to that worker, and waiters on many jobs park on
an event that is replaced whenever any job ends.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import math
import operator
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

import trio
from loguru import logger

from burstd import resources, resources_proto, transport, wire
from burstd.auth import Caller, Guard
from burstd.controller import admission
from burstd.controller.admission import Limits, SpecError
from burstd.controller.output import OutputRelay
from burstd.controller.store import StoredEvent
from burstd.controller.table import (
    TERMINAL,
    Attempt,
    Held,
    Job,
    JobState,
    JobTable,
    NewJob,
    QueueFull,
    ReportOutcome,
    Result,
    Submission,
    TransferRefused,
    UnknownWorker,
    Worker,
    WorkerReplaced,
    earlier_attempts,
    last_attempt,
)
from burstd.controller.tokens import Token, TokenError, Tokens
from burstd.controller.writer import STAGE_SLICE, StoreUnavailable, StoreWriter
from burstd.policies.steal import MAX_STEAL, spare
from proto.burst.v1 import job_pb2, output_pb2, peer_pb2, token_pb2, worker_pb2

MAX_WAIT_MS = 60_000
MAX_LIST = 10_000
# A waiter on many jobs gets at most this many updates a second: finishing 10,000 jobs a second
# must not cost 10,000 messages to every `burst wait`.
WAIT_UPDATE_INTERVAL = 0.05
# Peers listed in a registration or heartbeat reply: the most loaded ones are what thieves need.
MAX_PEERS = 64
# Loads in peer lists are hints (the victim decides what to give): one list, made at most this
# often, serves every reply, so that a thousand registrations or idle heartbeats do not each go
# through every worker.
PEER_LIST_AGE = 0.1
# Above any lease batch number a controller hands out (one per batch, from 1).
MAX_LEASE_SEQ = 2**62
# Jobs of a submission built per pass of the event loop, a pass short enough for the calls
# served in between (docs/benchmarks.md): see ``_new_jobs``.
SUBMIT_SLICE = 2_000
# A submission sent in pieces is discarded when its next piece does not come within this many
# seconds: its client went away (a piece takes well under a second to send).
SUBMISSION_IDLE = 60.0
# `burst top`'s latest failures: how many by default, among how many of the newest ended jobs.
OVERVIEW_FAILURES = 10
OVERVIEW_SCAN = 10_000
MAX_EVENTS = 10_000  # events in one ListEvents answer
# The fields of Result that ReportJobResultRequest has under their names (the rest are in its
# usage).
_REPORTED = frozenset(job_pb2.ReportJobResultRequest.DESCRIPTOR.fields_by_name)
# A result's fields, read in one C call: protobuf's attribute access is most of what reading
# them one by one costs (docs/benchmarks.md).
_RESULT_FIELDS = operator.attrgetter(*(f.name for f in fields(Result) if f.name in _REPORTED))
Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(eq=False)
class _Pieces:
    """A submission being sent in pieces (``ControllerService._submit_piece``)."""

    submission_id: str
    owner: str  # the user sending it: to anyone else it does not exist
    room: contextlib.ExitStack  # the room in the queue each piece holds
    jobs: list[Job] = field(default_factory=list)
    stages: list[tuple[int, int]] = field(default_factory=list)  # its pieces' kept stages
    busy: bool = False  # a piece is under way
    # The jobs its pieces wait for, and the states of those only the store holds.
    after: set[str] = field(default_factory=set)
    known: dict[str, JobState] = field(default_factory=dict)
    deadline: float = math.inf  # discarded if no piece comes by then (its client went away)


def _owner_filter(caller: Caller, all_users: bool) -> str | None:
    """Whose jobs a listing, a wait or a forget of every job covers: the caller's own, or with
    ``all_users`` (admins only) everyone's (None)."""
    if not all_users:
        return caller.user
    if not caller.is_admin:
        raise transport.PermissionDenied("all_users: only an admin acts on every user's jobs")
    return None


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    limits: Limits = field(default_factory=Limits)
    # A request no registered worker could hold is refused (config: fixed_cluster).
    fixed_cluster: bool = False


def job_info(job: Job, waiting: str = "", *, details: bool = False) -> job_pb2.JobInfo:
    """What status shows of a job; ``waiting``: why it waits beyond its turn
    (``JobTable.waiting``); ``details``: also what it runs (decoded from its spec, which a
    waiter's updates need not pay for)."""
    info = job_pb2.JobInfo(
        job_id=job.job_id,
        state=job.state,  # a JobState is a str: no enum lookup per listed job
        signal=job.signal,
        attempt=job.attempt,
        worker_id=job.worker_id,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error_message=job.error_message,
        stdout_path=job.stdout_path,
        stderr_path=job.stderr_path,
        reason=job.reason,
        stolen=job.stolen,
        name=job.name,
        lost_count=job.lost_count,
        retried=job.retried,
        owner=job.owner,
        waiting=waiting,
        submission_id=wire.submission_id(job.submission),
        priority=job.priority,
    )
    if job.request is not None:
        info.resources.CopyFrom(resources_proto.to_message(job.request))
    if job.exit_code is not None:
        info.exit_code = job.exit_code
    for kept in _attempts(job):
        one = info.attempts.add(
            attempt=kept.attempt,
            worker_id=kept.worker_id,
            stdout_path=kept.stdout_path,
            stderr_path=kept.stderr_path,
            started_at=kept.started_at,
            finished_at=kept.finished_at,
            signal=kept.signal,
            reason=kept.reason,
        )
        if kept.exit_code is not None:
            one.exit_code = kept.exit_code
        if _measured(kept):
            one.usage.user_cpu_seconds = kept.user_cpu
            one.usage.system_cpu_seconds = kept.system_cpu
            one.usage.max_rss_kib = kept.max_rss_kib
    if details:
        _describe_spec(info, job.spec)
        if job.after:
            info.after.extend(job.after.split(","))
            info.after_any = job.after_any
    return info


def _attempts(job: Job) -> list[Attempt]:
    """The job's attempts that started, in order: the earlier ones kept, then the current one
    unless it went to those already (retried, lost)."""
    attempts = earlier_attempts(job) if job.earlier_outputs else []
    kept_already = bool(attempts) and attempts[-1].attempt == job.attempt
    if job.attempt and not kept_already and job.state is not JobState.QUEUED:
        attempts.append(last_attempt(job, job.finished_at))
    return attempts


def _measured(attempt: Attempt) -> bool:
    """Whether the attempt's worker measured what it used (JobInfo: its usage is set)."""
    return bool(attempt.user_cpu or attempt.system_cpu or attempt.max_rss_kib)


def _last_usage(job: Job) -> Attempt | None:
    """The job's last attempt, if its worker measured what it used."""
    attempts = _attempts(job)
    return attempts[-1] if attempts and _measured(attempts[-1]) else None


def _usage(job: Job) -> job_pb2.Usage:
    last = _last_usage(job)
    if last is None:
        return job_pb2.Usage()
    return job_pb2.Usage(
        user_cpu_seconds=last.user_cpu,
        system_cpu_seconds=last.system_cpu,
        max_rss_kib=last.max_rss_kib,
    )


def _command(spec: job_pb2.JobSpec) -> list[str]:
    """What a job runs: the program and its arguments (a python job's entry point, a docker
    job's image first)."""
    kind = spec.WhichOneof("type")
    if kind == "process":
        return [spec.process.command, *spec.process.args]
    if kind == "python":
        return [spec.python.entry_point, *spec.python.args]
    if kind == "docker":
        return [spec.docker.image, *spec.docker.command, *spec.docker.args]
    return []


def _describe_spec(info: job_pb2.JobInfo, spec_bytes: bytes) -> None:
    """What the job runs, from its spec: kind, command, working directory, variable names."""
    spec = job_pb2.JobSpec.FromString(spec_bytes)
    info.kind = spec.WhichOneof("type") or ""
    info.command.extend(_command(spec))
    info.cwd = spec.cwd
    info.env_names.extend(sorted(spec.env))


# A JobColumns field's value for one job, for every field (``job_columns``).
_COLUMN_VALUES: dict[str, Callable[[Job], object]] = {
    "job_id": operator.attrgetter("job_id"),
    "state": operator.attrgetter("state"),
    "exit_code": lambda job: job.exit_code or 0,
    "signal": operator.attrgetter("signal"),
    "attempt": operator.attrgetter("attempt"),
    "worker_id": operator.attrgetter("worker_id"),
    "submitted_at": operator.attrgetter("submitted_at"),
    "started_at": operator.attrgetter("started_at"),
    "finished_at": operator.attrgetter("finished_at"),
    "reason": operator.attrgetter("reason"),
    "name": operator.attrgetter("name"),
    "owner": operator.attrgetter("owner"),
    "submission_id": lambda job: wire.submission_id(job.submission),
    "command": lambda job: job_pb2.Argv(args=_command(job_pb2.JobSpec.FromString(job.spec))),
    "priority": operator.attrgetter("priority"),
    "has_exit_code": lambda job: job.exit_code is not None,
    "usage": _usage,
    "has_usage": lambda job: _last_usage(job) is not None,
}


def _check_columns(names: Iterable[str]) -> None:
    """SpecError naming the first of ``names`` that is no JobColumns field."""
    for name in names:
        if name not in _COLUMN_VALUES:
            valid = ", ".join(_COLUMN_VALUES)
            raise SpecError(f"columns: no job column {name!r} (columns: {valid})")


def job_columns(jobs: Sequence[Job], names: Iterable[str]) -> job_pb2.JobColumns:
    """The jobs as JobColumns with the fields ``names`` filled (each a JobColumns field; one
    named twice is filled once)."""
    columns = job_pb2.JobColumns()
    for name in dict.fromkeys(names):
        getattr(columns, name).extend(map(_COLUMN_VALUES[name], jobs))
    return columns


_POLL_JOB_TAG = b"\x0a"  # PollJobResponse.job: field 1, length-delimited
_POLL_JOBS_TAG = b"\x1a"  # PollJobResponse.jobs: field 3, length-delimited
_REPORT_JOBS_TAG = b"\x12"  # ReportJobResultsResponse.jobs: field 2, length-delimited


def _assigned_jobs(tag: bytes, jobs: Iterable[Job]) -> bytes:
    """The jobs as AssignedJob messages under ``tag`` (a field of PollJobResponse or of
    ReportJobResultsResponse), encoded.

    The stored spec is an encoded JobSpec already: it is embedded as it is, where decoding it
    into a message and encoding that again cost most of a lease.
    """
    varint = admission.varint
    parts = []
    for job in jobs:
        job_id = job.job_id.encode()
        spec = job.spec
        # AssignedJob: job_id = 1 (length-delimited), spec = 2 (length-delimited), attempt = 3.
        body = b"\x0a%b%b\x12%b%b\x18%b" % (
            varint(len(job_id)),
            job_id,
            varint(len(spec)),
            spec,
            varint(job.attempt),
        )
        parts.append(b"%b%b%b" % (tag, varint(len(body)), body))
    return b"".join(parts)


def _held(items: object) -> list[Held]:
    return [Held(h.job_id, h.attempt, h.running) for h in items]  # type: ignore[attr-defined]


def _held_pb(items: list[Held]) -> list[worker_pb2.HeldJob]:
    return [worker_pb2.HeldJob(job_id=h.job_id, attempt=h.attempt) for h in items]


def worker_info(worker: Worker, now: float) -> job_pb2.WorkerInfo:
    """A registered worker as ``burst workers`` shows it."""
    return job_pb2.WorkerInfo(
        worker_id=worker.worker_id,
        hostname=worker.hostname,
        slots=worker.slots,
        queue_capacity=worker.capacity,
        leased=len(worker.leases),
        running=worker.running,
        peer_addr=worker.peer_addr,
        last_seen_ago=max(0.0, now - worker.last_seen),
        state="draining" if worker.draining else "alive",
        jobs_ended=worker.ended,
    )


class ControllerService:
    """Serves burst.v1.ControllerRpc over one JobTable."""

    def __init__(
        self,
        table: JobTable,
        settings: ServiceSettings = ServiceSettings(),
        clock: Callable[[], float] = time.time,
        writer: StoreWriter | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self.table = table
        # Without tokens of its own, a service knows none: every call is refused.
        self.tokens = tokens if tokens is not None else Tokens(None)
        self.guard = Guard(self.tokens, clock)
        self._verifier_list: tuple[int, list[worker_pb2.PeerVerifier]] = (0, [])
        self.settings = settings
        self.clock = clock
        # With a store, finished jobs leave memory once stored; lookups fall back to it.
        self.writer = writer
        self.store = writer.store if writer is not None else None
        self._worker_events: dict[str, trio.Event] = {}
        self._finished = trio.Event()
        self._finished_seq = table.finished_seq
        self._peer_list: list[worker_pb2.PeerInfo] = []
        self._peer_list_until = -math.inf
        self._pieces: dict[str, _Pieces] = {}  # submissions being sent in pieces, by id
        self.output = OutputRelay(self.lookup, table.workers)

    # -- wake-ups ----------------------------------------------------------------------------

    def _after_change(self) -> None:
        for worker_id in self.table.take_wakeups():
            event = self._worker_events.pop(worker_id, None)
            if event is not None:
                event.set()
        if self.table.finished_seq != self._finished_seq:
            self._finished_seq = self.table.finished_seq
            self._finished.set()
            self._finished = trio.Event()

    def restore_queued(self, jobs: list[Job], *, through: int) -> None:
        """Queued jobs of the previous life read back (``JobTable.restore_queued``): the
        workers waiting for work hear of those routed to them."""
        self.table.restore_queued(jobs, through=through)
        self._after_change()

    async def _load(self, job_ids: Iterable[str]) -> None:
        """Take back early the queued jobs of the previous life among these that the restart's
        loader has not read back yet: a call that changes them (cancel) needs them in memory."""
        missing = [job_id for job_id in job_ids if not self.table.loaded(job_id)]
        if missing and self.store is not None:
            stored = await trio.to_thread.run_sync(self.store.get_many, missing)
            queued = [
                job
                for job in stored
                if job.state is JobState.QUEUED and not self.table.loaded(job.job_id)
            ]
            if queued:
                self.table.restore_queued(queued)
                self._after_change()

    def expire_workers(self) -> list[str]:
        lost = self.table.expire(self.clock())
        for worker_id in lost:
            logger.bind(worker_id=worker_id).warning(
                "worker silent for over its lease TTL ({:.1f} s or more): declared lost, its jobs"
                " go back to the queue",
                self.table.lease_ttl,
            )
        self._after_change()
        return lost

    # -- clients -----------------------------------------------------------------------------

    async def submit_job(
        self, request: job_pb2.SubmitJobRequest, caller: Caller
    ) -> job_pb2.SubmitJobResponse:
        new = admission.admit_one(
            request.spec if request.HasField("spec") else None, self.settings.limits
        )
        after = admission.dependencies([request.spec])
        (job_id,) = await self._submit([new], caller, after)
        return job_pb2.SubmitJobResponse(job_id=job_id, submission_id=wire.alone(job_id))

    async def submit_jobs(
        self, request: job_pb2.SubmitJobsRequest, caller: Caller
    ) -> job_pb2.SubmitJobsResponse:
        if request.submission_id or request.more:
            return await self._submit_piece(request, caller)
        new = admission.admit_batch(request, self.settings.limits)
        after = admission.dependencies([*request.specs, request.template])
        return _submitted(await self._submit(new, caller, after))

    def _dependencies(
        self, after: AbstractSet[str], caller: Caller, known: dict[str, JobState] | None = None
    ) -> dict[str, JobState]:
        """The states of the jobs in ``after`` that only the store holds (finished ones, or
        queued ones of a previous life not read back yet), added to ``known``; NotFound names
        one that is no job the caller sees, or a submission id that names none it sees (the
        table knows every submission). Reads the store in the event loop, and only for
        ids not in memory (a few, once): its answer and the table's agree when the jobs are
        queued right after, with no checkpoint between."""
        known = {} if known is None else known
        missing = []
        for job_id in sorted(after):
            if job_id.startswith(wire.SUBMISSION_ID_PREFIX):
                self._submission(job_id, caller, "after")
                continue
            job = self.table.jobs.get(job_id)
            if job is None:
                if job_id not in known:
                    missing.append(job_id)
            elif not caller.sees(job.owner):
                missing.append(job_id)
        stored = self.store.get_many(missing) if missing and self.store is not None else []
        found = {job.job_id: job for job in stored if caller.sees(job.owner)}
        for job_id in missing:
            if job_id not in found:
                raise transport.NotFound(f"after: no job {job_id!r}")
            known[job_id] = found[job_id].state
        return known

    def _room(self, count: int, owner: str) -> contextlib.AbstractContextManager[None]:
        """``JobTable.room``, refusals as RESOURCE_EXHAUSTED naming the limit (and for the
        rate, when to retry)."""
        try:
            return self.table.room(count, owner, self.clock())
        except QueueFull as error:
            raise transport.ResourceExhausted(str(error)) from None

    async def _new_jobs(self, new: Sequence[NewJob], owner: str, submission: int = 0) -> list[Job]:
        """Number and build the jobs, a slice at a time, other calls served in between (built
        at once, a large array is one long pass that every worker waits behind), for the
        submission numbered ``submission`` (0: a new one, numbered as its first job)."""
        table, now = self.table, self.clock()
        first = table.number(len(new))
        submission = submission or first
        jobs = table.new_jobs(first, new[:SUBMIT_SLICE], now, owner, submission)
        for start in range(SUBMIT_SLICE, len(new), SUBMIT_SLICE):
            # Not a cancellation point: a stopping controller answers "stopping".
            await trio.lowlevel.cancel_shielded_checkpoint()
            jobs += table.new_jobs(
                first + start, new[start : start + SUBMIT_SLICE], now, owner, submission
            )
        return jobs

    def _check_fits(self, new: Sequence[NewJob]) -> None:
        """With a fixed cluster, refuse a request no registered worker could ever hold."""
        if not self.settings.fixed_cluster:
            return
        for request in admission.requests(new):
            if not self.table.could_fit(request):
                raise transport.FailedPrecondition(
                    f"resources: no registered worker has {resources.describe(request)}"
                    " (the cluster is fixed: controller.fixed_cluster)"
                )

    async def _submit(
        self, new: Sequence[NewJob], caller: Caller, after: AbstractSet[str] = frozenset()
    ) -> list[str]:
        table, owner = self.table, caller.user
        self._check_fits(new)
        known = self._dependencies(after, caller) if after else {}
        try:
            with self._room(len(new), owner):
                jobs = await self._new_jobs(new, owner)
                staged = self.writer is not None and len(jobs) > STAGE_SLICE
                if staged:
                    await self._stage(jobs)
            if after:  # those that ended and left memory meanwhile
                self._dependencies(after, caller, known)
            ids = table.enqueue(jobs, stored=staged, known=known, now=self.clock())
        except QueueFull as error:
            raise transport.ResourceExhausted(str(error)) from None
        self._after_change()
        if self.writer is not None and not staged:
            try:
                # Shielded, so that a controller that stops answers "stopping", not a reset.
                with trio.CancelScope(shield=True):
                    await self.writer.durable()
                    # A poll that leased these jobs resumes with us: its answer goes out first,
                    # as the job's start waits for it and the client's ids can wait a moment.
                    await trio.lowlevel.cancel_shielded_checkpoint()
            except StoreUnavailable as error:
                # The jobs were withdrawn. The controller answered: its store is full or cannot
                # be written (UNAVAILABLE reads as "cannot reach the controller", and clients
                # say so).
                raise transport.ResourceExhausted(str(error)) from None
        return ids

    async def _stage(self, jobs: list[Job], *, keep: bool = False) -> None:
        """Store a large submission before it is queued, a slice per commit: its insert does
        not hold every worker's report up (in one commit, a large array's did)."""
        assert self.writer is not None
        try:
            with trio.CancelScope(shield=True):  # as for the commit of a small submission
                await self.writer.stage(jobs, keep=keep)
        except StoreUnavailable as error:
            raise transport.ResourceExhausted(str(error)) from None

    async def _submit_piece(
        self, request: job_pb2.SubmitJobsRequest, caller: Caller
    ) -> job_pb2.SubmitJobsResponse:
        """A piece of a submission sent in pieces: held (numbered, stored as a kept stage, its
        room in the queue held) until the last piece accepts them all at once, or refused with
        every piece before it (see SubmitJobsRequest)."""
        owner = caller.user
        if request.submission_id:
            held = self._pieces.get(request.submission_id)
            if held is None or held.owner != owner:
                raise transport.NotFound(
                    f"submission_id: no submission {request.submission_id!r} is being sent in"
                    " pieces here (refused, discarded after"
                    f" {SUBMISSION_IDLE:g} s without a piece, or the controller restarted):"
                    " nothing of it was queued"
                )
            if held.busy:
                raise transport.FailedPrecondition(
                    f"submission_id: a piece of {held.submission_id} is under way: send the"
                    " next one once it is answered"
                )
        else:
            # Its id comes with its first job's number, below.
            held = _Pieces("", owner, contextlib.ExitStack())
        held.busy = True
        accepted = False
        try:
            new = admission.admit_batch(request, self.settings.limits)
            after = admission.dependencies([*request.specs, request.template])
            held.after |= after
            known = self._dependencies(after, caller, held.known) if after else held.known
            self._check_fits(new)
            total, limit = len(held.jobs) + len(new), self.settings.limits.max_batch
            if total > limit:  # a call's limit, whether the submission comes in one or pieces
                raise SpecError(
                    f"specs: {total} jobs, more than the limit of {limit} per submission"
                )
            held.room.enter_context(self._room(len(new), owner))
            number = wire.submission_number(held.submission_id) if held.submission_id else 0
            jobs = await self._new_jobs(new, owner, number)
            if not held.submission_id:
                held.submission_id = wire.submission_id(jobs[0].num)
                self._pieces[held.submission_id] = held
            if self.writer is not None:
                await self._stage(jobs, keep=True)
                held.stages.append((jobs[0].num, jobs[-1].num + 1))
            held.jobs += jobs
            if not request.more:
                if self.writer is not None:
                    try:
                        with trio.CancelScope(shield=True):
                            await self.writer.accept(held.stages)
                    except StoreUnavailable as error:
                        raise transport.ResourceExhausted(str(error)) from None
                held.room.close()
                if held.after:  # those that ended and left memory meanwhile
                    self._dependencies(held.after, caller, known)
                self.table.enqueue(held.jobs, stored=True, known=known, now=self.clock())
                self._after_change()
            accepted = True
        except QueueFull as error:
            raise transport.ResourceExhausted(str(error)) from None
        finally:
            held.busy = False
            if not accepted or not request.more:
                self._discard(held, stored=accepted)
        held.deadline = self.clock() + SUBMISSION_IDLE
        return job_pb2.SubmitJobsResponse(
            job_ids=[job.job_id for job in jobs], submission_id=held.submission_id
        )

    def _discard(self, held: _Pieces, *, stored: bool = False) -> None:
        """Forget a submission sent in pieces: accepted (``stored``), or refused with what it
        stored and the room it held."""
        self._pieces.pop(held.submission_id, None)
        held.room.close()
        if not stored and held.stages and self.writer is not None:
            self.writer.drop(held.stages)

    def expire_submissions(self) -> None:
        """Discard the submissions sent in pieces whose next piece is overdue (their client
        went away): nothing of them is queued, and their room is free again."""
        now = self.clock()
        for held in list(self._pieces.values()):
            if not held.busy and held.deadline < now:
                logger.info(
                    "submission {}: no piece for {:g} s, discarded ({} jobs held)",
                    held.submission_id,
                    SUBMISSION_IDLE,
                    len(held.jobs),
                )
                self._discard(held)

    async def _durable(
        self,
        jobs: Sequence[Job] | None = None,
        *,
        refuse: Callable[[str], transport.RpcError] = transport.Unavailable,
    ) -> None:
        """Wait until what the table holds now is stored, or with ``jobs`` only their latest
        changes (no-op without a store). A store that cannot be written is answered with
        ``refuse``: UNAVAILABLE for workers (their link registers again and retries), and
        RESOURCE_EXHAUSTED for clients, which read UNAVAILABLE as "cannot reach the controller"
        where the controller answered."""
        if self.writer is not None:
            try:
                if jobs is None:
                    await self.writer.durable()
                else:
                    await self.writer.stored(jobs)
            except StoreUnavailable as error:
                raise refuse(str(error)) from None

    def _store_error(self) -> str:
        """Why the store cannot be written ("": it can)."""
        return self.writer.failing if self.writer is not None else ""

    async def _settled(self) -> str:
        """Before a read of the store: wait until what the table holds now is stored, so that
        the store's answer has it. On a failing store (``StoreWriter.failing``, returned) the
        read goes ahead at once: the store holds the table as of its last commit."""
        if self.writer is not None and not self.writer.failing:
            with contextlib.suppress(StoreUnavailable):
                await self.writer.durable()
        return self._store_error()

    async def lookup(self, job_id: str) -> Job | None:
        """A job from memory, or from the store once it has finished and left memory."""
        job = self.table.get(job_id)
        if job is None and self.store is not None:
            job = await trio.to_thread.run_sync(self.store.get, job_id)
        return job

    async def _lookup_many(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """Jobs by id from memory, the others from the store in one thread hop (not one each)."""
        found: dict[str, Job] = {}
        missing: list[str] = []
        for job_id in job_ids:
            job = self.table.get(job_id)
            if job is None:
                missing.append(job_id)
            else:
                found[job_id] = job
        if missing and self.store is not None:
            for job in await trio.to_thread.run_sync(self.store.get_many, missing):
                found[job.job_id] = job
        return found

    async def get_job_status(
        self, request: job_pb2.GetJobStatusRequest, caller: Caller
    ) -> job_pb2.GetJobStatusResponse:
        job = await self.lookup(request.job_id)
        if job is None or not caller.sees(job.owner):
            # The prototype's answer for an unknown id, which its scripts rely on.
            return job_pb2.GetJobStatusResponse(
                job_id=request.job_id,
                state="unknown",
                info=job_pb2.JobInfo(job_id=request.job_id, state="unknown"),
            )
        return job_pb2.GetJobStatusResponse(
            job_id=job.job_id,
            state=job.state.value,
            info=job_info(job, self.table.waiting(job), details=True),
        )

    async def cancel_jobs(
        self, request: job_pb2.CancelJobsRequest, caller: Caller
    ) -> job_pb2.CancelJobsResponse:
        ids = admission.job_ids(request.job_ids)
        await self._load(ids)
        now = self.clock()
        cancelled = 0
        if request.submission_id or request.all or request.state:
            for unfinished in await self._unfinished(request, caller):
                if self.table.cancel(unfinished.job_id, now) is JobState.CANCELLED:
                    cancelled += 1
        states = []
        for job_id in ids:
            job = await self.lookup(job_id)
            if job is None or not caller.sees(job.owner):
                states.append("unknown")
                continue
            # None: it left memory meanwhile, ended.
            state = self.table.cancel(job_id, now) or job.state
            states.append(state.value)
        self._after_change()
        await self._durable(refuse=transport.ResourceExhausted)
        return job_pb2.CancelJobsResponse(states=states, cancelled=cancelled)

    async def _unfinished(self, request: job_pb2.CancelJobsRequest, caller: Caller) -> list[Job]:
        """The caller's unfinished jobs that a cancel's submission_id, all and state name
        (each narrows the others)."""
        state = _live_state(request.state) if request.state else None
        if self.table.unloaded:
            # Every queued job of the previous life in memory first: they are to cancel too.
            await self._load_all()
        if request.submission_id:
            submission = self._submission(request.submission_id, caller)
            jobs: Iterable[Job] = self.table.submission_jobs(submission)
        else:
            jobs = self.table.jobs.values()
        # Beyond a submission the caller may see, a client acts on its own jobs only.
        owner = None if request.submission_id else caller.user
        return [
            job
            for job in jobs
            if job.state not in TERMINAL
            and (state is None or job.state is state)
            and (owner is None or job.owner == owner)
        ]

    async def _load_all(self) -> None:
        """Wait until the restart's loader has read every queued job back."""
        while self.table.unloaded:
            await trio.sleep(0.05)

    def _submission(
        self, submission_id: str, caller: Caller, field: str = "submission_id"
    ) -> Submission:
        """The submission, if the caller may see it; NOT_FOUND naming it (and the request's
        ``field``) otherwise."""
        try:
            number = wire.submission_number(submission_id)
        except ValueError:
            raise SpecError(f"{field}: not a submission id: {submission_id!r}") from None
        submission = self.table.submissions.get(number)
        if submission is None or not caller.sees(submission.owner):
            raise transport.NotFound(f"{field}: unknown submission {submission_id!r}")
        return submission

    async def get_submission(
        self, request: job_pb2.GetSubmissionRequest, caller: Caller
    ) -> job_pb2.SubmissionInfo:
        return _submission_info(self._submission(request.submission_id, caller))

    async def resubmit_jobs(
        self, request: job_pb2.ResubmitJobsRequest, caller: Caller
    ) -> job_pb2.SubmitJobsResponse:
        """A new submission of the failed jobs of one, with their specs (the caller's own)."""
        if not request.failed:
            raise SpecError("failed: say which jobs to submit again (only failed ones so far)")
        submission = self._submission(request.submission_id, caller)
        size = submission.last - submission.number + 1
        failed, _ = await self._listed(JobState.FAILED, None, size, submission=submission)
        if not failed:
            raise transport.FailedPrecondition(
                f"submission_id: {request.submission_id} has no failed job"
            )
        specs = [job_pb2.JobSpec.FromString(job.spec) for job in failed]
        new = [admission.admit_one(spec, self.settings.limits) for spec in specs]
        return _submitted(await self._submit(new, caller, admission.dependencies(specs)))

    async def list_jobs(
        self, request: job_pb2.ListJobsRequest, caller: Caller
    ) -> job_pb2.ListJobsResponse:
        state = None
        if request.state:
            try:
                state = JobState(request.state)
            except ValueError:
                valid = ", ".join(s.value for s in JobState)
                raise SpecError(
                    f"state: unknown state {request.state!r} (valid: {valid})"
                ) from None
        if request.after and not _is_job_id(request.after):
            raise SpecError(f"after: not a job id: {request.after!r}")
        _check_columns(request.columns)
        owner = _owner_filter(caller, request.all_users)
        submission = None
        if request.submission_id:
            submission = self._submission(request.submission_id, caller)
        limit = min(request.limit or 100, MAX_LIST)
        listed, store_error = await self._listed(
            state,
            owner,
            limit,
            after=request.after,
            submission=submission,
            name=request.name or None,
        )
        next_after = listed[-1].job_id if len(listed) == limit else ""
        if request.columns:
            return job_pb2.ListJobsResponse(
                columns=job_columns(listed, request.columns),
                next_after=next_after,
                store_error=store_error,
            )
        details = not request.brief
        jobs = [job_info(job, details=details) for job in listed]
        return job_pb2.ListJobsResponse(jobs=jobs, next_after=next_after, store_error=store_error)

    async def _listed(
        self,
        state: JobState | None,
        owner: str | None,
        limit: int,
        *,
        after: str = "",
        submission: Submission | None = None,
        name: str | None = None,
    ) -> tuple[list[Job], str]:
        """Up to ``limit`` jobs after ``after`` in id order, of a state, an owner, a
        submission and a name (None: any), and why the store is failing ("": it is not)."""
        if self.store is None:
            jobs: Iterable[Job] = (
                self.table.submission_jobs(submission, after)
                if submission is not None
                else self.table.iter_jobs(state, after)
            )
            matching = (
                job
                for job in jobs
                if (state is None or job.state is state)
                and (owner is None or job.owner == owner)
                and (name is None or job.name == name)
            )
            return list(itertools.islice(matching, limit)), ""
        # Without a state, the table's copy of each job it holds is taken, and a job leaves the
        # table only once stored: the store lacks nothing such a listing owes (the jobs of a
        # submission not answered yet need not show), so it waits for no commit (after a large
        # submission, the next one stores an event a job).
        store_error = await self._settled() if state is not None else self._store_error()
        stored = await trio.to_thread.run_sync(
            functools.partial(
                self.store.list,
                state and state.value,
                after,
                limit,
                owner,
                submission=None if submission is None else (submission.number, submission.last),
                name=name,
                # Live jobs may have moved on since the commit: memory has the newest word. With
                # a state, as stored (one read, one moment), not as in memory now: a job queued
                # when the listing was taken may be leased by now, and listed so it would defy
                # the filter.
                newer=self.table.get if state is None else None,
            )
        )
        return stored, store_error

    async def drain_worker(
        self, request: job_pb2.DrainWorkerRequest, caller: Caller
    ) -> job_pb2.DrainWorkerResponse:
        """Drain a worker, or end its drain; answered once the store holds the change."""
        log = logger.bind(worker_id=request.worker_id)
        worker: Worker | None
        try:
            if request.undrain:
                worker = self.table.undrain(request.worker_id)
            else:
                worker = self.table.drain(request.worker_id)
        except UnknownWorker:
            what = "drained" if request.undrain else "registered"
            raise transport.NotFound(f"worker_id: no {what} worker {request.worker_id!r}") from None
        self._after_change()
        if self.writer is not None:
            try:
                await self.writer.durable()
            except StoreUnavailable as error:
                # In memory it holds: the writer stores it with its next commit.
                raise transport.ResourceExhausted(str(error)) from None
        if request.undrain:
            log.info("undrained by {}: it gets work again", caller.user)
        else:
            assert worker is not None
            log.info("drained by {}: no new work, {} jobs held", caller.user, len(worker.leases))
        if worker is None:
            return job_pb2.DrainWorkerResponse()
        return job_pb2.DrainWorkerResponse(worker=worker_info(worker, self.clock()))

    async def list_workers(
        self, request: job_pb2.ListWorkersRequest, caller: Caller
    ) -> job_pb2.ListWorkersResponse:
        now = self.clock()
        return job_pb2.ListWorkersResponse(
            workers=[worker_info(w, now) for w in self.table.workers.values()]
        )

    async def list_events(
        self, request: job_pb2.ListEventsRequest, caller: Caller
    ) -> job_pb2.ListEventsResponse:
        """The stored events after ``after`` (a client sees its own jobs' events, an admin every
        job's and the workers' too), waiting up to ``wait_ms`` for one when there is none yet."""
        events = self.writer.events if self.writer is not None else None
        if events is None:
            raise transport.FailedPrecondition(
                "the event log is off: it needs the durable store and events_max above 0"
            )
        limit = min(request.limit or MAX_EVENTS, MAX_EVENTS)

        def visible(event: StoredEvent) -> bool:
            return caller.is_admin or bool(event.job_id)

        async def read(after: int) -> tuple[list[StoredEvent], int]:
            while True:
                found, through = await events.read(
                    after,
                    limit,
                    job_id=request.job_id,
                    worker_id=request.worker_id,
                    visible=visible,
                )
                if caller.is_admin or not found:
                    return found, through
                # Events carry no owner: the jobs' owners decide (one lookup a page). A page
                # of other users' events is read past, not answered empty, so that an empty
                # answer still means "nothing more yet".
                jobs = await self._lookup_many({event.job_id for event in found})
                found = [
                    event
                    for event in found
                    if event.job_id in jobs and caller.sees(jobs[event.job_id].owner)
                ]
                if found:
                    return found, through
                after = through

        found, through = await read(request.after)
        if not found and request.wait_ms:
            with trio.move_on_after(min(request.wait_ms, MAX_WAIT_MS) / 1000):
                while not found:
                    await events.wait()
                    found, through = await read(through)
        return job_pb2.ListEventsResponse(
            events=[job_pb2.ClusterEvent(**event._asdict()) for event in found],
            next_after=through,
        )

    async def get_overview(
        self, request: job_pb2.GetOverviewRequest, caller: Caller
    ) -> job_pb2.GetOverviewResponse:
        """``burst top``: jobs by state, the workers, the jobs ended so far, the latest failures
        (among the newest OVERVIEW_SCAN jobs that ended: a second's refresh reads no more)."""
        now = self.clock()
        table = self.table
        wanted = request.failures or OVERVIEW_FAILURES
        failures = []
        for job in itertools.islice(reversed(table.finished_log), OVERVIEW_SCAN):
            if job.state is JobState.FAILED:
                failures.append(job_info(job))
                if len(failures) == wanted:
                    break
        return job_pb2.GetOverviewResponse(
            jobs={state.value: count for state, count in table.counts.items()},
            workers=[worker_info(w, now) for w in table.workers.values()],
            jobs_ended=table.finished_seq,
            failures=failures,
            now=now,
        )

    async def wait_jobs(
        self, request: job_pb2.WaitJobsRequest, caller: Caller
    ) -> AsyncIterator[job_pb2.WaitJobsUpdate]:
        """Progress until every waited job has ended; the first update comes at once."""
        if request.submission_id:
            submission = self._submission(request.submission_id, caller)
            async for update in self._wait_counts(lambda: submission.counts, submission):
                yield update
            return
        if request.all:
            owner = _owner_filter(caller, request.all_users)
            table = self.table

            def owned() -> Mapping[JobState, int]:
                return table.counts if owner is None else table.owner_counts(owner)

            async for update in self._wait_counts(owned):
                yield update
            return
        ids = admission.job_ids(request.job_ids)
        if not ids:
            raise SpecError("job_ids: name at least one job, or set all")
        known = await self._lookup_many(ids)
        for job_id in ids:
            if job_id not in known or not caller.sees(known[job_id].owner):
                raise transport.NotFound(f"job_ids: unknown job {job_id!r}")
        pending = set(ids)
        first_submitted_at = min(job.submitted_at for job in known.values())
        counts = dict.fromkeys(TERMINAL, 0)
        cursor = 0
        first = True
        while True:
            finished_event = self._finished
            finished = []
            # Look at the jobs that ended since the last look, unless that is more work than
            # looking at every pending job (or the log no longer reaches back that far).
            recent = None if first else self.table.finished_since(cursor)
            cursor = self.table.finished_seq
            if recent is None or len(recent) > len(pending):
                ended = [
                    job for job in (await self._lookup_many(pending)).values()
                    if job.state in TERMINAL
                ]  # fmt: skip
            else:
                # From the log itself: no store read for jobs that have left memory.
                ended = [job for job in recent if job.job_id in pending]
            for job in ended:
                pending.discard(job.job_id)
                counts[job.state] += 1
                finished.append(job_info(job))
            if finished or first:
                yield job_pb2.WaitJobsUpdate(
                    total=len(ids),
                    pending=len(pending),
                    succeeded=counts[JobState.SUCCEEDED],
                    failed=counts[JobState.FAILED],
                    cancelled=counts[JobState.CANCELLED],
                    finished=finished,
                    sent_at=self.clock(),
                    first_submitted_at=first_submitted_at,
                )
            first = False
            if not pending:
                return
            looked = trio.current_time()
            await finished_event.wait()
            # At most one update per interval, except the last one: a waiter on a few short jobs
            # hears that they ended at once, not an interval later.
            recent = self.table.finished_since(cursor)
            if (
                recent is None
                or len(recent) < len(pending)
                or not pending.issubset(job.job_id for job in recent)
            ):
                await trio.sleep_until(looked + WAIT_UPDATE_INTERVAL)

    async def _wait_counts(
        self, counts_now: Callable[[], Mapping[JobState, int]], submission: Submission | None = None
    ) -> AsyncIterator[job_pb2.WaitJobsUpdate]:
        """Progress of the jobs that ``counts_now`` counts (every job, an owner's, a
        submission's) until none is pending; a submission's updates name its jobs that failed
        or were cancelled (those before the wait in the first)."""
        first_submitted_at = submission.submitted_at if submission is not None else 0.0
        cursor = -1  # the first look reads every failure so far
        told: set[str] = set()
        while True:
            finished_event = self._finished
            seq = self.table.finished_seq
            failures = await self._failures(submission, cursor, told)
            cursor = seq
            counts = counts_now()
            pending = sum(n for state, n in counts.items() if state not in TERMINAL)
            yield job_pb2.WaitJobsUpdate(
                finished=[job_info(job) for job in failures],
                total=sum(counts.values()),
                pending=pending,
                succeeded=counts[JobState.SUCCEEDED],
                failed=counts[JobState.FAILED],
                cancelled=counts[JobState.CANCELLED],
                sent_at=self.clock(),
                first_submitted_at=first_submitted_at,
            )
            if not pending:
                return
            await finished_event.wait()
            await trio.sleep(WAIT_UPDATE_INTERVAL)

    async def _failures(
        self, submission: Submission | None, cursor: int, told: set[str]
    ) -> list[Job]:
        """The submission's jobs that failed or were cancelled since ``finished_seq`` was
        ``cursor`` and are not in ``told`` (added to it); with ``cursor`` -1, or when the log
        no longer reaches back that far, every one so far (up to ``MAX_LIST`` of each)."""
        if submission is None:
            return []
        ended: Iterable[Job] | None = None
        if cursor >= 0:
            ended = self.table.finished_since(cursor)
        if ended is None:
            ended = []
            for state in (JobState.FAILED, JobState.CANCELLED):
                ended += (await self._listed(state, None, MAX_LIST, submission=submission))[0]
        failures = [
            job
            for job in ended
            if job.submission == submission.number
            and job.state in (JobState.FAILED, JobState.CANCELLED)
            and job.job_id not in told
        ]
        told.update(job.job_id for job in failures)
        return failures

    async def forget_jobs(
        self, request: job_pb2.ForgetJobsRequest, caller: Caller
    ) -> job_pb2.ForgetJobsResponse:
        if request.all_finished:
            if request.job_ids:
                raise SpecError("job_ids: cannot be combined with all_finished")
            if not request.older_than_seconds >= 0:
                raise SpecError("older_than_seconds: must be a number >= 0")
            owner = _owner_filter(caller, request.all_users)
            forget = functools.partial(self.prune, self.clock() - request.older_than_seconds, owner)
        else:
            ids = admission.job_ids(request.job_ids)
            if not ids:
                raise SpecError("job_ids: name at least one job, or set all_finished")
            known = await self._lookup_many(ids)
            mine = [job_id for job_id, job in known.items() if caller.sees(job.owner)]
            forget = functools.partial(self._forget, mine, None)
        try:
            forgotten = await forget()
        except StoreUnavailable as error:
            raise transport.ResourceExhausted(str(error)) from None
        return job_pb2.ForgetJobsResponse(forgotten=forgotten)

    async def prune(self, finished_before: float, owner: str | None = None) -> int:
        """Forget every job (of ``owner``; None: of everyone) that finished before the given
        time (the retention period). Raises ``StoreUnavailable`` when the store cannot be
        written."""
        ids = self.table.finished_before(finished_before, owner)
        return await self._forget(ids, finished_before, owner)

    async def _forget(
        self, ids: list[str], finished_before: float | None, owner: str | None = None
    ) -> int:
        if self.writer is None:
            return len(self.table.forget(ids))
        by_state = await self.writer.forget(ids, finished_before=finished_before, owner=owner)
        # Counts cover stored jobs too (for `wait --all`): take the deleted ones off.
        self.table.forgotten(
            {
                (user, submission, JobState(state)): n
                for (user, submission, state), n in by_state.items()
            },
            ids,
        )
        return sum(by_state.values())

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(
        self, request: worker_pb2.RegisterWorkerRequest, caller: Caller
    ) -> worker_pb2.RegisterWorkerResponse:
        worker_id = admission.require(request.worker_id, "worker_id")
        if request.lease_seq > MAX_LEASE_SEQ:
            # The controller numbers the worker's next batches above it: a number near the
            # top of uint64 would leave none to hand out.
            raise SpecError(f"lease_seq: {request.lease_seq} is no batch number of a controller")
        offer = resources_proto.offer_of(request.resources)
        # The CPUs it offers are its slots (older workers send slots alone).
        slots = max(offer.get(resources.CPUS, 0) or request.slots, 1)
        try:
            drop = self.table.register(
                worker_id,
                slots=slots,
                # The prototype's first workers did not send a capacity: one job per slot.
                capacity=request.queue_capacity or slots,
                now=self.clock(),
                peer_addr=request.peer_addr,
                hostname=request.hostname,
                held=_held(request.held),
                lease_seq=request.lease_seq,
                instance=request.instance,
                offer=offer,
            )
        except WorkerReplaced as error:
            logger.bind(worker_id=worker_id).warning("registration refused: {}", error)
            raise transport.FailedPrecondition(str(error)) from None
        finally:
            self._after_change()
        logger.bind(worker_id=worker_id).info(
            "worker registered: {}, capacity {}, {} held jobs kept",
            resources.describe({**offer, resources.CPUS: slots}),
            request.queue_capacity or slots,
            len(request.held) - len(drop),
        )
        return worker_pb2.RegisterWorkerResponse(
            verifiers=self._verifiers(),
            verifiers_version=self.tokens.version,
            accepted=True,
            lease_ttl_ms=int(self.table.lease_ttl * 1000),
            heartbeat_interval_ms=int(self.table.heartbeat_interval * 1000),
            drop=_held_pb(drop),
            peers=self._peers(worker_id),
            paced_heartbeat_ms=self._paced_heartbeat_ms(worker_id),
        )

    def _paced_heartbeat_ms(self, worker_id: str) -> int:
        return int(self.table.heartbeat_interval * self.table.pace(worker_id) * 1000)

    def _unknown_worker(self, error: UnknownWorker) -> transport.RpcError:
        return transport.FailedPrecondition(f"{error}: register again")

    async def poll_job(
        self, request: job_pb2.PollJobRequest, caller: Caller
    ) -> job_pb2.PollJobResponse:
        worker_id = request.worker_id
        max_jobs = request.max_jobs if request.batch else 1
        deadline = trio.current_time() + min(request.wait_ms, MAX_WAIT_MS) / 1000
        while True:
            try:
                # At every wake-up: the jobs of a worker id never go to a replaced process.
                self.table.check_process(worker_id, request.instance)
                seq, jobs = self.table.lease(worker_id, max_jobs, self.clock())
            except UnknownWorker as error:
                raise self._unknown_worker(error) from None
            except WorkerReplaced as error:
                raise transport.FailedPrecondition(str(error)) from None
            cancel = self.table.take_cancel_notices(worker_id)
            if jobs or cancel or trio.current_time() >= deadline:
                break
            event = self._worker_events.setdefault(worker_id, trio.Event())
            with trio.move_on_at(deadline):
                await event.wait()
        if jobs:
            await self._hand_over(worker_id, jobs, alone=True)
        response = job_pb2.PollJobResponse(lease_seq=seq, cancel=_held_pb(cancel))
        if request.batch:
            response.MergeFromString(_assigned_jobs(_POLL_JOBS_TAG, jobs))
        elif jobs:
            response.MergeFromString(_assigned_jobs(_POLL_JOB_TAG, jobs[:1]))
        else:
            response.empty.SetInParent()
        return response

    async def _hand_over(self, worker_id: str, jobs: Sequence[Job], *, alone: bool) -> None:
        """Wait until the leases of ``jobs`` are stored (``alone``), or with them every change
        made so far: the new attempt numbers must survive a restart before a worker runs them."""
        try:
            await self._durable(jobs if alone else None)
        except BaseException:
            # Not handed over: they wait for the next poll (re-leasing them would count a lost
            # attempt at each try, and fail them past the crash limit).
            self.table.unlease(worker_id, jobs)
            raise

    @staticmethod
    def _result(item: job_pb2.ReportJobResultRequest) -> Result:
        (job_id, attempt, exit_code, signal, reason, error_message, started_at, finished_at,
         stdout_path, stderr_path) = _RESULT_FIELDS(item)  # fmt: skip
        if reason in ("", "exit"):
            reason = "exit"
        else:
            exit_code = None
        result = Result(
            job_id, attempt, exit_code, signal, reason, error_message, started_at, finished_at,
            stdout_path, stderr_path,
        )  # fmt: skip
        if item.HasField("usage"):
            usage = item.usage
            result.user_cpu = usage.user_cpu_seconds
            result.system_cpu = usage.system_cpu_seconds
            result.max_rss_kib = usage.max_rss_kib
        return result

    async def _settle_unknown(
        self, worker_id: str, item: job_pb2.ReportJobResultRequest, outcome: ReportOutcome
    ) -> ReportOutcome:
        """A finished job may have left memory for the store: a report of it is then a duplicate
        (its last worker and attempt) or stale, exactly as while it was in memory."""
        if outcome is not ReportOutcome.UNKNOWN_JOB or self.store is None:
            return outcome
        job = await self.lookup(item.job_id)
        if job is None:
            return outcome
        return self.table.ended_outcome(job, worker_id, item.attempt or job.attempt)

    async def report_job_result(
        self, request: job_pb2.ReportJobResultRequest, caller: Caller
    ) -> job_pb2.ReportJobResultResponse:
        try:
            outcome = self.table.report(request.worker_id, self._result(request), self.clock())
        except UnknownWorker as error:
            raise self._unknown_worker(error) from None
        finally:
            self._after_change()
        await self._durable()
        outcome = await self._settle_unknown(request.worker_id, request, outcome)
        if outcome is ReportOutcome.UNKNOWN_JOB:
            raise transport.NotFound(f"job_id: unknown job {request.job_id!r}")
        if outcome is ReportOutcome.STALE:
            raise transport.FailedPrecondition(
                f"job {request.job_id} attempt {request.attempt or '(current)'} is no longer "
                f"leased to worker {request.worker_id}: result not recorded"
            )
        return job_pb2.ReportJobResultResponse(accepted=True)

    async def report_job_results(
        self, request: job_pb2.ReportJobResultsRequest, caller: Caller
    ) -> job_pb2.ReportJobResultsResponse:
        worker_id = request.worker_id
        now = self.clock()
        try:
            self.table.check_process(worker_id, request.instance)
            for held in _held(request.started):
                self.table.started(worker_id, held, now)
            results = [self._result(item) for item in request.results]
            outcomes = self.table.report_many(worker_id, results, now)
            # What the results freed is leased before anyone else runs, so the worker's
            # waiting polls, woken below, find nothing more for it.
            seq, jobs = self.table.lease(worker_id, request.max_jobs, now)
        except UnknownWorker as error:
            raise self._unknown_worker(error) from None
        except WorkerReplaced as error:
            raise transport.FailedPrecondition(str(error)) from None
        finally:
            self._after_change()
        # A result is acknowledged only once it is stored: the worker forgets it afterwards.
        # The same commit stores the new leases.
        await self._hand_over(worker_id, jobs, alone=False)
        for i, outcome in enumerate(outcomes):
            if outcome is ReportOutcome.UNKNOWN_JOB:  # rare: not worth a coroutine per result
                outcomes[i] = await self._settle_unknown(worker_id, request.results[i], outcome)
        # A batch number only with a batch: a plain report may cross a poll whose batch this
        # number names, and a worker that echoed it would disown that batch's jobs.
        response = job_pb2.ReportJobResultsResponse(lease_seq=seq if jobs else 0)
        response.outcomes.extend(cast(list[Any], outcomes))
        response.MergeFromString(_assigned_jobs(_REPORT_JOBS_TAG, jobs))
        return response

    async def heartbeat(
        self, request: worker_pb2.HeartbeatRequest, caller: Caller
    ) -> worker_pb2.HeartbeatResponse:
        try:
            self.table.check_process(request.worker_id, request.instance)
            cancel, drop = self.table.heartbeat(
                request.worker_id,
                _held(request.held),
                request.lease_seq,
                self.clock(),
                steal_round_done=request.steal_round_done,
            )
        except UnknownWorker:
            return worker_pb2.HeartbeatResponse(ok=False, reregister=True)
        except WorkerReplaced as error:
            raise transport.FailedPrecondition(str(error)) from None
        finally:
            self._after_change()
        response = worker_pb2.HeartbeatResponse(
            ok=True,
            cancel=_held_pb(cancel),
            drop=_held_pb(drop),
            peers=self._peers(request.worker_id) if request.want_peers else [],
            paced_heartbeat_ms=self._paced_heartbeat_ms(request.worker_id),
        )
        if request.verifiers_version != self.tokens.version:
            response.verifiers.extend(self._verifiers())
            response.verifiers_version = self.tokens.version
        return response

    def _verifiers(self) -> list[worker_pb2.PeerVerifier]:
        """The valid worker tokens, as workers check thieves against them (made once a
        version: registrations and heartbeats share the list)."""
        if self._verifier_list[0] != self.tokens.version:
            self._verifier_list = (
                self.tokens.version,
                [
                    worker_pb2.PeerVerifier(
                        token_sha256=t.sha256, worker_ids=t.worker_ids, expires_at=t.expires_at
                    )
                    for t in self.tokens.workers()
                ],
            )
        return self._verifier_list[1]

    def _peers(self, exclude: str) -> list[worker_pb2.PeerInfo]:
        """Workers that serve StealJobs, other than ``exclude``, most spare jobs first (at most
        MAX_PEERS, as they were up to PEER_LIST_AGE ago): a thief learns where to steal without
        asking every peer."""
        now = trio.current_time()
        if now >= self._peer_list_until:
            self._peer_list_until = now + PEER_LIST_AGE
            loads = []
            for w in self.table.workers.values():
                if not w.peer_addr or w.draining:
                    continue
                running = w.running
                loads.append((spare(len(w.leases) - running, w.slots - running), running, w))
            # One more than listed: the asking worker is left out of its own list.
            top = heapq.nlargest(MAX_PEERS + 1, loads, key=lambda load: load[0])
            self._peer_list = [
                worker_pb2.PeerInfo(
                    worker_id=w.worker_id,
                    peer_addr=w.peer_addr,
                    slots=w.slots,
                    capacity=w.capacity,
                    leased=len(w.leases),
                    running=running,
                )
                for _, running, w in top
            ]
        return [p for p in self._peer_list if p.worker_id != exclude][:MAX_PEERS]

    async def transfer_jobs(
        self, request: peer_pb2.TransferJobsRequest, caller: Caller
    ) -> peer_pb2.TransferJobsResponse:
        """A victim of a steal asks to move its leases to the thief before handing them over.

        Refusals (thief unknown, restarted, shutting down, or given up on the steal) are answers
        with ``refused`` set, not errors: the victim just keeps its jobs. An unknown victim is
        FAILED_PRECONDITION (register again).
        """
        victim_id = admission.require(request.victim_id, "victim_id")
        thief_id = admission.require(request.thief_id, "thief_id")
        if len(request.jobs) > MAX_STEAL:
            raise SpecError(f"jobs: more than {MAX_STEAL} in one steal")
        log = logger.bind(worker_id=victim_id)
        try:
            self.table.check_process(victim_id, request.victim_instance)
            moved = self.table.transfer(
                victim_id,
                thief_id,
                _held(request.jobs),
                thief_instance=request.thief_instance,
                steal_round=request.steal_round,
                now=self.clock(),
            )
        except UnknownWorker as error:
            raise self._unknown_worker(error) from None
        except WorkerReplaced as error:
            raise transport.FailedPrecondition(str(error)) from None
        except TransferRefused as error:
            log.debug("steal by {} refused: {}", thief_id, error)
            return peer_pb2.TransferJobsResponse(refused=str(error))
        finally:
            self._after_change()
        if moved:
            # The thief's new attempts must survive a restart before it runs them. If this
            # fails the victim keeps its (now fenced) copies and the thief never gets the jobs:
            # the thief's next heartbeat ends the steal round and they go back to the queue.
            await self._durable()
        log.debug(
            "steal by {} (round {}): {} of {} jobs moved",
            thief_id,
            request.steal_round,
            len(moved),
            len(request.jobs),
        )
        return peer_pb2.TransferJobsResponse(
            moved=[worker_pb2.HeldJob(job_id=j.job_id, attempt=j.attempt) for j in moved]
        )

    # -- tokens (admins) ---------------------------------------------------------------------

    async def create_token(
        self, request: token_pb2.CreateTokenRequest, caller: Caller
    ) -> token_pb2.CreateTokenResponse:
        try:
            token, secret = self.tokens.new(
                request.user,
                request.role,
                expires_in=request.expires_in_seconds,
                worker_ids=request.worker_ids,
            )
        except TokenError as error:
            raise SpecError(str(error)) from None
        await self._save_token(token)
        logger.info(
            "token {} created by {} for {} ({})",
            token.id,
            caller.user,
            token.user,
            token.role.value,
        )
        return token_pb2.CreateTokenResponse(info=token_info(token), token=secret)

    async def list_tokens(
        self, request: token_pb2.ListTokensRequest, caller: Caller
    ) -> token_pb2.ListTokensResponse:
        return token_pb2.ListTokensResponse(tokens=[token_info(t) for t in self.tokens.all()])

    async def revoke_token(
        self, request: token_pb2.RevokeTokenRequest, caller: Caller
    ) -> token_pb2.RevokeTokenResponse:
        token_id = admission.require(request.token_id, "token_id")
        if self.tokens.get(token_id) is None:
            raise transport.NotFound(f"token_id: no token {token_id!r}")
        token = self.tokens.revoked(token_id)
        await self._save_token(token)
        logger.info("token {} of {} revoked by {}", token.id, token.user, caller.user)
        return token_pb2.RevokeTokenResponse(info=token_info(token))

    async def _save_token(self, token: Token) -> None:
        """Store the token (in a thread: the commit may wait for the store process's), then
        apply it: a revoked token is refused from the next call on, on every connection."""
        try:
            await trio.to_thread.run_sync(self.tokens.save, token)
        except sqlite3.Error as error:
            raise transport.Unavailable(f"the token could not be stored: {error}") from None
        self.tokens.add(token)

    # -- registration with the transport -----------------------------------------------------

    def serving(self) -> bool:
        """The health check's answer (SERVING or NOT_SERVING): false while the store cannot be
        written (``StoreWriter.failing``: submissions are refused then), true without a store."""
        return self.writer is None or not self.writer.failing

    def rpc_service(self) -> transport.Service:
        """The service, every call checked by the guard (``burstd.auth``) before it is decoded,
        and against the worker its token is bound to once it is."""
        service = transport.Service(wire.CONTROLLER_SERVICE, self.guard.authorize)
        unary: list[tuple[str, type[Any], Callable[[Any, Caller], Awaitable[Any]]]] = [
            ("SubmitJob", job_pb2.SubmitJobRequest, self.submit_job),
            ("SubmitJobs", job_pb2.SubmitJobsRequest, self.submit_jobs),
            ("GetJobStatus", job_pb2.GetJobStatusRequest, self.get_job_status),
            ("CancelJobs", job_pb2.CancelJobsRequest, self.cancel_jobs),
            ("ListJobs", job_pb2.ListJobsRequest, self.list_jobs),
            ("ListWorkers", job_pb2.ListWorkersRequest, self.list_workers),
            ("GetOverview", job_pb2.GetOverviewRequest, self.get_overview),
            ("ListEvents", job_pb2.ListEventsRequest, self.list_events),
            ("ForgetJobs", job_pb2.ForgetJobsRequest, self.forget_jobs),
            ("RegisterWorker", worker_pb2.RegisterWorkerRequest, self.register_worker),
            ("PollJob", job_pb2.PollJobRequest, self.poll_job),
            ("ReportJobResult", job_pb2.ReportJobResultRequest, self.report_job_result),
            ("ReportJobResults", job_pb2.ReportJobResultsRequest, self.report_job_results),
            ("Heartbeat", worker_pb2.HeartbeatRequest, self.heartbeat),
            ("TransferJobs", peer_pb2.TransferJobsRequest, self.transfer_jobs),
            ("CreateToken", token_pb2.CreateTokenRequest, self.create_token),
            ("ListTokens", token_pb2.ListTokensRequest, self.list_tokens),
            ("RevokeToken", token_pb2.RevokeTokenRequest, self.revoke_token),
            ("DrainWorker", job_pb2.DrainWorkerRequest, self.drain_worker),
            ("GetSubmission", job_pb2.GetSubmissionRequest, self.get_submission),
            ("ResubmitJobs", job_pb2.ResubmitJobsRequest, self.resubmit_jobs),
            ("TakeOutputReads", output_pb2.TakeOutputReadsRequest, self.output.take_output_reads),
            ("SendOutput", output_pb2.SendOutputRequest, self.output.send_output),
        ]
        for name, request_type, handler in unary:
            service.unary(
                name, request_type, _checked(f"/{wire.CONTROLLER_SERVICE}/{name}", handler)
            )
        service.server_stream(
            "WaitJobs",
            job_pb2.WaitJobsRequest,
            _checked_stream(f"/{wire.CONTROLLER_SERVICE}/WaitJobs", self.wait_jobs),
        )
        service.server_stream(
            "ReadOutput",
            output_pb2.ReadOutputRequest,
            _checked_stream(f"/{wire.CONTROLLER_SERVICE}/ReadOutput", self.output.read_output),
        )
        return service


def _submitted(job_ids: list[str]) -> job_pb2.SubmitJobsResponse:
    """The answer to a submission made whole, in one call: its jobs and its id."""
    return job_pb2.SubmitJobsResponse(job_ids=job_ids, submission_id=wire.alone(job_ids[0]))


def _live_state(text: str) -> JobState:
    """A state a cancel may name (one a job has not ended in); SpecError naming it otherwise."""
    live = [state for state in JobState if state not in TERMINAL]
    if text not in live:
        names = ", ".join(state.value for state in live)
        raise SpecError(f"state: {text!r} is not a state a job can be cancelled in ({names})")
    return JobState(text)


def _submission_info(submission: Submission) -> job_pb2.SubmissionInfo:
    counts = submission.counts
    return job_pb2.SubmissionInfo(
        submission_id=wire.submission_id(submission.number),
        owner=submission.owner,
        submitted_at=submission.submitted_at,
        total=submission.total,
        queued=counts[JobState.QUEUED],
        leased=counts[JobState.LEASED],
        running=counts[JobState.RUNNING],
        succeeded=counts[JobState.SUCCEEDED],
        failed=counts[JobState.FAILED],
        cancelled=counts[JobState.CANCELLED],
        waiting=counts[JobState.WAITING],
        max_fails=submission.max_fails,
    )


def _is_job_id(text: str) -> bool:
    try:
        wire.job_number(text)
    except ValueError:
        return False
    return True


def token_info(token: Token) -> token_pb2.TokenInfo:
    return token_pb2.TokenInfo(
        token_id=token.id,
        user=token.user,
        role=token.role.value,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        worker_ids=token.worker_ids,
    )


def _checked(
    path: str, handler: Callable[[Req, Caller], Awaitable[Resp]]
) -> Callable[[Req, Caller], Awaitable[Resp]]:
    """The handler, for a caller whose token may act as the worker the request names
    (``Guard.check_worker``); refused input reaches the client as INVALID_ARGUMENT naming the
    field."""

    async def handle(request: Req, caller: Caller) -> Resp:
        Guard.check_worker(path, caller, request)
        try:
            return await handler(request, caller)
        except SpecError as error:
            raise transport.InvalidArgument(str(error)) from None

    return handle


def _checked_stream(
    path: str, handler: Callable[[Req, Caller], AsyncIterator[Resp]]
) -> Callable[[Req, Caller], AsyncIterator[Resp]]:
    async def handle(request: Req, caller: Caller) -> AsyncIterator[Resp]:
        Guard.check_worker(path, caller, request)
        try:
            async for item in handler(request, caller):
                yield item
        except SpecError as error:
            raise transport.InvalidArgument(str(error)) from None

    return handle
