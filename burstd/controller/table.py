"""The controller's job table: every job and worker transition, with no I/O.

Like h11's state machine, this module states its rules first, then holds every transition in one
table with what it changes: jobs in ``TRANSITIONS``, workers in ``WORKER_TRANSITIONS``. Nothing
here reads a clock, touches a socket or imports trio, so tests drive it directly with any
sequence of calls.

Rules (the promises of the design, section 5):

1. No accepted job is lost. A job is always in exactly one place: the queue (QUEUED), the lease
   set of exactly one registered worker (LEASED, RUNNING), an orphan lease waiting out a lease
   TTL (``orphans``: restored after a restart, or held by a worker process that another of its
   id replaced), or a terminal state.
2. A terminal state is final. A result is accepted only for the job's current lease, named by the
   worker and the attempt number; the attempt grows by one at every lease, so a superseded attempt
   can never overwrite a newer one. A duplicate report is acknowledged and changes nothing.
3. The table knows which worker holds each leased job: ``Job.worker_id`` and the worker's
   ``leases`` always agree; a lease set changes only beside a job's transition (``_hold``,
   ``_release``).
4. A job runs again only when its lease was lost (worker expired, re-registered without it, or
   told us it no longer has it) or when it failed and asked for retries. A job whose workers were
   lost ``crash_limit`` times (its own ``Job.crash_limit``, else the table's) fails with reason
   ``worker_lost``. A failed job is retried only for the exit codes of its ``retry_on_exit``
   (when it names any); with a ``retry_delay`` it waits (WAITING, DEFER) no less than that
   delay times 2 to the power of its retries so far, times 1 to 1.5 at random (jitter, so
   that a batch failed at once does not come back at once), until ``Job.retry_at``, and is
   queued (RELEASE) by ``expire`` once due; a restart keeps that time.
5. Capacity cannot drift: a worker's load is counted in CPUs, one per lease it holds plus what
   the leases of jobs asking for more (``Job.request``, burstd/resources.py) add in
   ``Worker.extra``, which changes only beside its lease set (``_hold``, ``_release``). A job is
   leased only to a worker whose CPU load stays within its capacity (CPUs of leases held,
   running or waiting for CPUs there), whose CPUs (``slots``) are as many as it asks for, and
   whose other resources (``Worker.offer``) cover it beside every lease the worker holds: never
   over-committed.
6. Bad input changes nothing: every operation validates before it mutates.
7. With a store (``track_changes``), every submitted job and every change to a job is
   recorded (``take_changes``), so the store can persist exactly what changed. A submitted job
   is queued and routed at once, but it counts as accepted only once stored: a worker hears of
   it (and the client of its id) only after the commit that holds it, so one commit covers a
   job's submission and its first lease. If that commit fails, ``withdraw`` takes the job back
   as if it had never been submitted (its id is not reused). A large submission is stored
   first and queued after (``new_jobs``, then ``enqueue(stored=True)``), holding its ``room``
   meanwhile. After a restart ``restore`` takes back the live jobs, and leases whose worker
   has not re-registered (orphans) go back to the queue once the lease TTL has passed; the
   queued ones may come later (``restore_queued``), into a backlog routed before the queue,
   counted as queued meanwhile (``unloaded``).
8. A job enters, changes state and leaves only through ``TRANSITIONS``, which also says what
   each event does beside the state (``Step``); the counts per state, the queue and the
   records of changes for the store are private and change only there. Likewise a worker
   changes state only through ``WORKER_TRANSITIONS``.
9. With ``track_events``, every job transition a user sees (submitted, leased, stolen, started,
   retried, lost, fenced, ended) and every worker transition is recorded as an event
   (``take_events``: kind, job, worker, attempt, detail), in the order taken, for the stored
   event log; each names the worker as it is after the transition (the thief of a steal).
10. Every job has an owner (the user that submitted it) and a priority (-1000 to 1000), and
    the queue is one FIFO per owner and priority (a ``Lane``). Submissions past the owner's
    quota (``burstd.policies.quotas``: ``max_queued``, ``submit_rate``) are refused whole, as a
    full queue is; both count WAITING jobs as queued ones (``_pending_start``): they are
    accepted jobs that have not run, and will be queued without asking for room. An owner
    with ``max_running`` jobs leased or running is out of the rotation of owners that free
    slots go to until one of them ends, so it holds no other owner's jobs back, at no cost per
    queued job. Free slots go to the highest priority with queued jobs,
    and within it round the owners that have some, one worker's batch at a time (with one
    owner and one priority: plain FIFO).
11. Resources (rule 5) keep each lane FIFO: a job that fits no worker now stays at the
   head of its lane, and that lane waits while the others are served (lower priorities
   too: backfill). The worker
   that could hold it with the least load is then reserved for it (``_reserved``): it leaves
   the router and takes no other job until that one fits it, so a stream of small jobs never
   starves a large one, and the other workers keep taking small jobs meanwhile (backfill). A
   job no registered worker could ever hold (its request beyond their totals) leaves its lane
   for ``_unfit`` (still queued and counted, ``waiting`` says why) until a worker registers.
   On the worker, the oldest job waiting for CPUs keeps them draining for it too (no smaller
   job passes it), and while it fits, a larger one behind it that fits starts first, at most
   ``MAX_PASSED`` times (best fit, burstd/worker/queue.py, rule 7): the CPUs a large job frees
   go to the next large one, where the CPUs drained for large jobs were most of the idle time.
12. A job submitted with dependencies (``Job.after``: ids of jobs or submissions known when
    it was submitted; a submission stands for every job of it) waits (WAITING: not queued,
    held by no worker) until each has ended: succeeded, or ended in any way with
    ``after_any``. Then it is queued (RELEASE, at the back of its lane). One that failed or
    was cancelled ends it at once (DEPENDENCY_FAILED: failed, reason ``dependency_failed``),
    and so on down the chain, in one call, however long the chain. The dependents of each job
    that has not ended are indexed by its id, and those of each submission by its number
    (``_dependents``), so an end costs two dict look-ups, and its dependents one step each. A
    submission has ended once its counts say so, with every job of a previous life counted
    (``unloaded``: ``restored`` settles what waited meanwhile).
13. Every job belongs to one submission (``Job.submission``: the number of its first job),
    whose jobs are counted per state (``Submission.counts``) beside the table's counts, in the
    same steps: a submission's status costs nothing per job. A submission leaves when its last
    job does (forgotten or withdrawn). A submission with a ``max_fails`` (``Job.max_fails``,
    the same in all its jobs) is halted by the failure that makes that many of its jobs
    failed: each of its jobs in memory that has not ended is cancelled in the same call (as a
    user's cancel, ``error_message`` naming the limit).
Steals (``transfer``) move a lease from one worker to another without losing it, and without two
workers holding it under one attempt: the victim asks the table before it hands jobs over; each
moved lease gets a new attempt (fencing the victim's copy) and remembers the thief's steal round.
The thief's heartbeats say up to which round its steals have ended (``steal_round_done``): a
stolen lease of an ended round that the heartbeat does not list never arrived and goes back to the
queue, and a transfer for an ended round, or for a thief process that is gone (``instance``), is
refused. A transfer never gives the thief more than it has room for (rule 5), nor anything to a
reserved thief (rule 11).
An admin's drain (``drain``) outlives the worker's process: its id stays drained (``drained``,
stored with the jobs) and a registration of it is drained at once, until an admin undrains it.
A worker id is held by one process at a time (``Worker.instance``): a registration of another
process replaces the one registered, whose calls are refused from then on (``check_process``,
``WorkerReplaced``) and whose leases are fenced: orphans until its lease TTL has passed since it
was last heard from, by when it has stopped their jobs (burstd/leases.py), then queued again.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
import operator
import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from burstd import resources, wire
from burstd.leases import StopReason
from burstd.policies.quotas import Quota, QuotaExceeded, Quotas, TokenBucket, check_submission
from burstd.policies.routers import Router, make_router
from burstd.policies.steal import thief_takes


class JobState(enum.StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Event(enum.Enum):
    ENQUEUE = "enqueue"  # a submitted job enters the table
    ADMIT = "admit"  # a submitted job the store holds already (a staged submission) enters
    RESTORE = "restore"  # a job of a previous life enters again, in the state it was stored in
    LEASE = "lease"  # a router gave the job to a worker
    STEAL = "steal"  # the lease moved to another worker (still not started)
    START = "start"  # the worker started its process
    SUCCEED = "succeed"  # exit code 0
    FAIL = "fail"  # failed, no retry left
    RETRY = "retry"  # failed, a retry left: queued again
    LOSE = "lose"  # the lease was lost (worker gone, handed back, never claimed): queued again
    CRASH_LIMIT = "crash_limit"  # lost once too often
    CANCEL = "cancel"  # a user cancelled it
    FENCE = "fence"  # its worker's process was replaced: it waits out that process's lease TTL
    WITHDRAW = "withdraw"  # its submission could not be stored: it leaves, as never submitted
    FORGET = "forget"  # past its retention (or forgotten by a user): it leaves
    AWAIT = "await"  # a submitted job with dependencies enters, waiting for them
    ADMIT_AWAIT = "admit_await"  # as AWAIT, for one the store holds already
    RELEASE = "release"  # its dependencies ended as it needs: queued
    DEPENDENCY_FAILED = "dependency_failed"  # one of its dependencies failed or was cancelled
    DEFER = "defer"  # failed, a retry left, to be queued after its retry delay (RELEASE)

    # Members are singletons: identity hashing is C code, where Enum's own hash runs Python on
    # every TRANSITIONS lookup (two per job).
    __hash__ = object.__hash__


# The events of the log (rule 9): a job event's kind and detail (ended: the outcome, as the
# metrics' label), and a worker event's kind. A transition missing here records none.
JOB_EVENTS: dict[Event, tuple[str, str]] = {
    Event.ENQUEUE: ("submitted", ""),
    Event.ADMIT: ("submitted", ""),
    Event.LEASE: ("leased", ""),
    Event.STEAL: ("stolen", ""),
    Event.START: ("started", ""),
    Event.RETRY: ("retried", ""),
    Event.LOSE: ("lost", ""),
    Event.FENCE: ("fenced", ""),
    Event.SUCCEED: ("ended", "succeeded"),
    Event.FAIL: ("ended", "failed"),
    Event.CRASH_LIMIT: ("ended", "worker_lost"),
    Event.CANCEL: ("ended", "cancelled"),
    Event.AWAIT: ("submitted", ""),
    Event.ADMIT_AWAIT: ("submitted", ""),
    Event.RELEASE: ("queued", ""),  # its dependencies ended, or its retry delay
    Event.DEPENDENCY_FAILED: ("ended", "dependency_failed"),
    Event.DEFER: ("retried", ""),
}


class Place(enum.Enum):
    """Where a job waits after a transition, beside its lease (if any)."""

    STAYS = "stays"  # where it was
    BACK = "back"  # at the back of the queue
    FRONT = "front"  # at the front of the backlog, or the queue: it waited already (lost, retried)
    # At the back of the backlog: the queued jobs of a previous life, drawn before the queue.
    BACKLOG = "backlog"
    ORPHAN = "orphan"  # its lease waits out a lease TTL (``orphans``), held by no worker
    OUT = "out"  # out of the table (and the queue): it no longer counts


class Record(enum.Enum):
    """What the store is told of a transition (``take_changes``)."""

    NOTHING = "nothing"  # it holds the job as it is already
    NEW = "new"  # insert it
    LEASED = "leased"  # only state, attempt and worker changed (unless it changed otherwise too)
    CHANGED = "changed"  # rewrite what may change
    DROPPED = "dropped"  # never store it: forget what was recorded


@dataclass(frozen=True, slots=True)
class Step:
    """A transition's new state and everything it changes in the job and the table.

    Every step also moves the job from its state's count to the new one's (in ``counts``), and
    a step to a terminal state stamps ``finished_at`` and appends the job to ``finished_log``.
    """

    to: JobState | None  # None: the job leaves the table
    place: Place = Place.STAYS
    record: Record = Record.CHANGED
    attempt: bool = False  # a new attempt: fences every earlier holder's reports
    undelivered: bool = False  # not handed over to a worker (lease_seq and steal_round reset)
    starts: bool = False  # stamps started_at
    retried: bool = False  # uses up one of the job's retries; its attempt's files are kept
    ends: bool = False  # a terminal state: finished_at, finished_log, finished_seq


_W, _Q, _L, _R = JobState.WAITING, JobState.QUEUED, JobState.LEASED, JobState.RUNNING
_S, _F, _C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
_IN_LEASE = (_L, _R)
# What an owner's place in the rotation depends on: its queued jobs and its jobs on workers.
_ROTATION_GROUP = {_W: 2, _Q: 0, _L: 1, _R: 1, _S: 2, _F: 2, _C: 2}

#: Every legal job transition, keyed by (state, event), with what it changes. ENQUEUE and ADMIT
#: enter from None (no state yet); RESTORE is keyed by the state the job was stored in, which
#: it re-enters. Anything else is a bug in the caller, raised as InvariantError.
TRANSITIONS: dict[tuple[JobState | None, Event], Step] = {
    # in: counted from now on
    (None, Event.ENQUEUE): Step(_Q, Place.BACK, Record.NEW),
    (None, Event.ADMIT): Step(_Q, Place.BACK, Record.NOTHING),
    (None, Event.AWAIT): Step(_W, record=Record.NEW),
    (None, Event.ADMIT_AWAIT): Step(_W, record=Record.NOTHING),
    (_W, Event.RESTORE): Step(_W, record=Record.NOTHING),
    # dependencies settled (a release changes the job's state alone)
    (_W, Event.RELEASE): Step(_Q, Place.BACK, Record.LEASED),
    (_W, Event.DEPENDENCY_FAILED): Step(_F, ends=True),
    (_Q, Event.RESTORE): Step(_Q, Place.BACKLOG, Record.NOTHING),
    **{
        (s, Event.RESTORE): Step(s, Place.ORPHAN, Record.NOTHING, undelivered=True)
        for s in _IN_LEASE
    },
    **{(s, Event.RESTORE): Step(s, record=Record.NOTHING) for s in TERMINAL},
    # leased, moved, started
    (_Q, Event.LEASE): Step(_L, record=Record.LEASED, attempt=True, undelivered=True),
    (_L, Event.STEAL): Step(_L, attempt=True),
    (_L, Event.START): Step(_R, starts=True),
    # back to the queue
    **{(s, Event.RETRY): Step(_Q, Place.FRONT, retried=True, undelivered=True) for s in _IN_LEASE},
    **{(s, Event.DEFER): Step(_W, retried=True, undelivered=True) for s in _IN_LEASE},
    **{(s, Event.LOSE): Step(_Q, Place.FRONT, undelivered=True) for s in _IN_LEASE},
    **{(s, Event.FENCE): Step(s, Place.ORPHAN) for s in _IN_LEASE},
    # ended
    **{(s, Event.SUCCEED): Step(_S, ends=True) for s in _IN_LEASE},
    **{(s, Event.FAIL): Step(_F, ends=True) for s in _IN_LEASE},
    **{(s, Event.CRASH_LIMIT): Step(_F, ends=True) for s in _IN_LEASE},
    **{(s, Event.CANCEL): Step(_C, ends=True) for s in (_W, _Q, *_IN_LEASE)},
    # out: no longer counted
    **{(s, Event.WITHDRAW): Step(None, Place.OUT, Record.DROPPED) for s in JobState},
    **{(s, Event.FORGET): Step(None, Place.OUT, Record.NOTHING) for s in TERMINAL},
}


class WorkerState(enum.StrEnum):
    REGISTERED = "registered"  # gets work as the router decides
    DRAINING = "draining"  # shutting down: keeps its leases, gets no new work
    LOST = "lost"  # silent for longer than its lease TTL: its leases were lost
    GONE = "gone"  # removed: its leases were lost


class WorkerEvent(enum.Enum):
    REGISTER = "register"  # a worker registers (a known one: again, perhaps a new process)
    DRAIN = "drain"  # it handed a job back (it is shutting down), or an admin drains it
    EXPIRE = "expire"  # silent for longer than its lease TTL
    REMOVE = "remove"  # removed from the cluster
    RESUME = "resume"  # an admin undrains it: it gets work again

    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class WorkerStep:
    """A worker transition's new state and what it changes in the table."""

    to: WorkerState
    # The router hears of its load from now on; False: it leaves the router, and the jobs
    # routed to it but not handed over go back to the queue.
    routed: bool
    # It leaves the registry: every lease it holds is lost (see ``JobTable._lose``).
    leaves: bool = False


_WR, _WD = WorkerState.REGISTERED, WorkerState.DRAINING

WORKER_EVENTS: dict[WorkerEvent, str] = {
    WorkerEvent.REGISTER: "registered",
    WorkerEvent.DRAIN: "drained",
    WorkerEvent.EXPIRE: "lost",
    WorkerEvent.REMOVE: "removed",
    WorkerEvent.RESUME: "undrained",
}

#: Every legal worker transition, keyed by (state, event); None: not registered. A worker that
#: left (LOST, GONE) is never seen again: registering again makes a new one.
WORKER_TRANSITIONS: dict[tuple[WorkerState | None, WorkerEvent], WorkerStep] = {
    **{(s, WorkerEvent.REGISTER): WorkerStep(_WR, routed=True) for s in (None, _WR, _WD)},
    (_WR, WorkerEvent.DRAIN): WorkerStep(_WD, routed=False),
    (_WD, WorkerEvent.RESUME): WorkerStep(_WR, routed=True),
    **{
        (s, WorkerEvent.EXPIRE): WorkerStep(WorkerState.LOST, False, leaves=True)
        for s in (_WR, _WD)
    },
    **{
        (s, WorkerEvent.REMOVE): WorkerStep(WorkerState.GONE, False, leaves=True)
        for s in (_WR, _WD)
    },
}

# The transitions of jobs in the table (neither in nor out) for ``JobTable._move``: the new
# state (typed), the step, whether it records a lease only, and when it may change the owner's
# lanes' places in the rotation (rule 10): a job leaving the queue (True) or leaving a worker
# or WAITING (False, perhaps into the queue) may, others never (None). A step that ends a job
# or starts it changes nothing else in the job, so that the hot path tests little.
_MOVES: dict[tuple[JobState, Event], tuple[JobState, Step, bool, bool | None]] = {
    (state, event): (
        step.to,
        step,
        step.record is Record.LEASED,
        None if _ROTATION_GROUP[state] == _ROTATION_GROUP[step.to] else state is _Q,
    )
    for (state, event), step in TRANSITIONS.items()
    if state is not None and step.to is not None and event is not Event.RESTORE
}


class Attempt(NamedTuple):
    """One attempt of a job as it ended: where it ran, how it ended, what it used."""

    attempt: int
    worker_id: str
    stdout_path: str = ""
    stderr_path: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    user_cpu: float = 0.0
    system_cpu: float = 0.0
    max_rss_kib: int = 0


def _keep_attempt(job: Job, now: float) -> None:
    """The attempt just ended (its result recorded, or its worker lost) moves to
    ``earlier_outputs``: the job's own fields are the next attempt's from now on."""
    kept = earlier_attempts(job)
    kept.append(last_attempt(job, now))
    job.earlier_outputs = json.dumps(kept)
    job.stdout_path = job.stderr_path = ""
    job.user_cpu = job.system_cpu = 0.0
    job.max_rss_kib = 0


def last_attempt(job: Job, finished_at: float) -> Attempt:
    """The job's current (or last) attempt, as its own fields have it."""
    return Attempt(
        job.attempt, job.worker_id, job.stdout_path, job.stderr_path, job.started_at,
        finished_at, job.exit_code, job.signal, job.reason, job.user_cpu, job.system_cpu,
        job.max_rss_kib,
    )  # fmt: skip


def earlier_attempts(job: Job) -> list[Attempt]:
    """Each attempt before the current one that ended with a result or a lost worker, in
    order (stores made before attempts were recorded have those that named output files)."""
    entries = json.loads(job.earlier_outputs or "[]")
    return [Attempt(*entry) for entry in entries]


def _step(state: JobState | None, event: Event, what: str) -> Step:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise InvariantError(f"{what}: no transition {state} --{event.value}-->") from None


class ReportOutcome(enum.IntEnum):
    """What became of a reported result (numbers match burst.v1.ReportOutcome)."""

    ACCEPTED = 1
    DUPLICATE = 2
    STALE = 3
    UNKNOWN_JOB = 4


class TableError(Exception):
    """A request the table refuses; nothing was changed."""


class QueueFull(TableError):
    pass


class OverQuota(QueueFull):
    """A submission past one of its owner's limits (``limit``: the key; ``retry_after``: the
    seconds after which it would be accepted, for ``submit_rate``)."""

    def __init__(self, exceeded: QuotaExceeded) -> None:
        super().__init__(str(exceeded))
        self.limit = exceeded.limit
        self.retry_after = exceeded.retry_after


class UnknownWorker(TableError):
    pass


class WorkerReplaced(TableError):
    """A call or registration of a worker process that another of its worker id replaced."""


class UnknownDependency(TableError):
    """A dependency names no job the table or the store knows (``job_id``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class TransferRefused(TableError):
    """A steal the table will not carry out (thief unknown, gone, or given up on it)."""


FINISHED_LOG_SIZE = 100_000
NO_QUOTAS = Quotas()


class InvariantError(AssertionError):
    """A transition not in TRANSITIONS was attempted: a bug, never a client's mistake."""


@dataclass(slots=True, eq=False)
class Job:
    job_id: str
    num: int  # the number in job_id: the store's key
    spec: bytes  # the encoded JobSpec: opaque here, decoded only by the RPC layer
    retries: int
    name: str
    submitted_at: float
    state: JobState = JobState.QUEUED
    attempt: int = 0
    worker_id: str = ""  # the worker holding the lease, or the last one that did
    lease_seq: int = 0  # the lease batch that delivered it to worker_id; 0: not delivered yet
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    error_message: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    lost_count: int = 0
    retried: int = 0
    stolen: bool = False
    # The output files of the attempts before the last that reported them (a retry keeps them),
    # as the JSON text of [[attempt, worker_id, stdout_path, stderr_path], ...]; "": none. Text,
    # as the store keeps it: only status reads it (``earlier_outputs``), and most jobs have none.
    earlier_outputs: str = ""
    # Non-zero: the lease reached worker_id through this steal round of it, not through a poll.
    steal_round: int = 0
    # The user that submitted it (its token's user); the store keeps it, it never changes.
    owner: str = ""
    # What it asks for; None: one CPU and nothing else (burstd/resources.py).
    request: resources.Request | None = None
    # Failure policy, set at submission and never changed: the exit codes a failure is
    # retried for, comma-separated ("": any failure but a cancel), and the times its workers
    # may be lost before it fails (0: the table's crash limit).
    retry_on_exit: str = ""
    crash_limit: int = 0
    # The ids of the jobs it waits for (rule 12), comma-separated as the store keeps them (most
    # jobs have none); set at submission, never changed.
    after: str = ""
    after_any: bool = False  # waits for their ends whatever they are, not for their success
    unmet: int = 0  # while WAITING: its dependencies that have not ended
    # Its submission: the number of the submission's first job (rule 13); never changes.
    submission: int = 0
    # Higher leases first (rule 10); set at submission, never changed.
    priority: int = 0
    # Seconds before its first retry (rule 4; 0: none), set at submission; and when its last
    # retry with a delay was due (0: none yet). A job WAITING with one waits out that delay:
    # dependencies are waited for only before the first attempt.
    retry_delay: float = 0.0
    retry_at: float = 0.0
    # Its submission is halted at this many failed jobs (rule 13; 0: never); never changes.
    max_fails: int = 0
    # What the current (or last) attempt's process used, as its worker reported.
    user_cpu: float = 0.0
    system_cpu: float = 0.0
    max_rss_kib: int = 0


@dataclass(slots=True, eq=False)
class Submission:
    """The jobs submitted together (rule 13): counted per state, those only the store holds
    included."""

    number: int  # its first job's number: its id (``wire.submission_id``)
    owner: str
    submitted_at: float
    last: int  # its highest job number: its jobs are numbered from ``number`` to it
    counts: dict[JobState, int] = field(default_factory=lambda: dict.fromkeys(JobState, 0))
    max_fails: int = 0  # its jobs' ``Job.max_fails``, as known from those in memory

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def pending(self) -> int:
        """Its jobs that have not ended."""
        return sum(n for state, n in self.counts.items() if state not in TERMINAL)


@dataclass(slots=True, eq=False)
class Lane:
    """One owner's queued jobs of one priority (rule 10), in the order they lease: those of a
    previous life (``JobTable.restore``) first, as they were submitted before any since.
    Entries that left QUEUED stay until popped, and are skipped then."""

    owner: str
    priority: int
    backlog: deque[Job] = field(default_factory=deque)
    queue: deque[Job] = field(default_factory=deque)
    queued: int = 0  # its jobs in QUEUED (those in ``JobTable._unfit`` too)
    # In the rotation of its priority: it has queued jobs and its owner may be leased one more.
    ready: bool = False


@dataclass(slots=True, eq=False)
class Owner:
    """One user's jobs in the table (rule 10): its lanes, its counts per state (those only the
    store holds included) and the state of its quota."""

    name: str
    quota: Quota
    # Its queued jobs, by priority.
    lanes: dict[int, Lane] = field(default_factory=dict)
    counts: dict[JobState, int] = field(default_factory=lambda: dict.fromkeys(JobState, 0))
    # Room held for its submissions not queued yet (``JobTable.room``).
    held_room: int = 0
    bucket: TokenBucket | None = None
    # Below its max_running when its lanes were last put in the rotation or out (``_rotate``).
    may_lease: bool = True

    def lane(self, priority: int) -> Lane:
        lane = self.lanes.get(priority)
        if lane is None:
            lane = self.lanes[priority] = Lane(self.name, priority)
        return lane

    @property
    def active(self) -> int:
        """Its jobs on workers (leased or running): what ``max_running`` bounds."""
        return self.counts[JobState.LEASED] + self.counts[JobState.RUNNING]


# An event of the log (rule 9): kind, job id ("" for a worker's), worker id, attempt, detail.
EventRecord = tuple[str, str, str, int, str]


_SUBMISSION_OF = operator.attrgetter("submission")


def _pending_start(counts: Mapping[JobState, int]) -> int:
    """The jobs that queue limits count (rule 10): queued, and waiting to be queued."""
    return counts[JobState.QUEUED] + counts[JobState.WAITING]


_PRIORITY_OF = operator.attrgetter("priority")


class StoredCount(NamedTuple):
    """Jobs of a previous life that only the store holds, of one owner, submission and state
    (``JobTable.restore_counts``): how many, the highest number, the submission's time."""

    owner: str
    submission: int
    state: JobState
    jobs: int
    last: int
    submitted_at: float


class Changes(NamedTuple):
    """The jobs to persist, from ``JobTable.take_changes``."""

    # Submitted: the columns a submission and a first lease set (the rest are as in a new Job).
    new: list[Job]
    # Changed otherwise: every column that may change (new jobs too, stored after their insert).
    changed: list[Job]
    # Leased from the queue and not changed otherwise since they were last stored (or taken
    # for storing): only state, attempt and worker_id differ from what is stored.
    leased: list[Job]


@dataclass(slots=True)
class NewJob:
    spec: bytes
    retries: int = 0
    name: str = ""
    request: resources.Request | None = None
    retry_on_exit: str = ""  # see Job.retry_on_exit
    crash_limit: int = 0
    after: str = ""  # see Job.after
    after_any: bool = False
    priority: int = 0
    retry_delay: float = 0.0
    max_fails: int = 0


@dataclass(slots=True)
class Result:
    """A worker's report of how one attempt ended."""

    job_id: str
    attempt: int  # 0: the prototype's reports, meaning the worker's current lease
    exit_code: int | None
    signal: int = 0
    reason: str = "exit"
    error_message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    stdout_path: str = ""
    stderr_path: str = ""
    user_cpu: float = 0.0
    system_cpu: float = 0.0
    max_rss_kib: int = 0

    @property
    def succeeded(self) -> bool:
        return self.reason == "exit" and self.exit_code == 0


@dataclass(slots=True)
class Held:
    """A job as a worker says it holds it."""

    job_id: str
    attempt: int
    running: bool = False


@dataclass(slots=True, eq=False)
class Worker:
    worker_id: str
    slots: int
    capacity: int
    peer_addr: str
    hostname: str
    last_seen: float
    leases: dict[str, Job] = field(default_factory=dict)
    # Leased to this worker but not handed over yet (they count in `leases` already).
    outbox: deque[Job] = field(default_factory=deque)
    lease_seq: int = 0
    cancel_notices: dict[str, int] = field(default_factory=dict)
    # The worker process (RegisterWorkerRequest.instance) and the highest of its steal rounds
    # known to have ended: transfers to another process or for an ended round are refused.
    instance: int = 0
    # Earlier processes of this worker id that a later one replaced: refused for good.
    replaced: set[int] = field(default_factory=set)
    steal_done: int = 0
    state: WorkerState | None = None  # None: not registered yet (see WORKER_TRANSITIONS)
    # The factor by which the heartbeat interval last handed to this worker was stretched
    # (JobTable.pace): the worker is declared lost only after the lease TTL times as much.
    pace: float = 1.0
    # Its results that ended an attempt (a job's end or a retry): ``burst top``'s jobs/s.
    ended: int = 0
    # Its resources beside CPUs (mem, gpus, named), and what its leases use beyond one CPU
    # each (rule 5).
    offer: Mapping[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def load(self) -> int:
        """The CPUs of the leases it holds (running or waiting for CPUs there)."""
        return len(self.leases) + self.extra.get(resources.CPUS, 0)

    def totals(self) -> dict[str, int]:
        """Everything it has: its CPUs and its offer."""
        return {**self.offer, resources.CPUS: self.slots}

    def free(self) -> dict[str, int]:
        """What jobs may still take here: CPUs within its capacity, and what its offer has
        left beside its leases (a job asking for more CPUs than ``slots`` never fits)."""
        free = {name: amount - self.extra.get(name, 0) for name, amount in self.offer.items()}
        free[resources.CPUS] = self.capacity - self.load
        return free

    @property
    def running(self) -> int:
        return sum(1 for job in self.leases.values() if job.state is JobState.RUNNING)

    @property
    def draining(self) -> bool:
        """It handed a job back: it is shutting down and gets no new work until it registers."""
        return self.state is WorkerState.DRAINING


class JobTable:
    """All jobs and workers of one controller, and the only code that changes them.

    Every method takes the current time as ``now`` (seconds) instead of reading a clock. After a
    mutation, ``take_wakeups()`` names the workers that have new jobs or cancel notices waiting,
    and ``finished_seq`` counts terminal transitions so waiters can tell when to look again.
    """

    def __init__(
        self,
        *,
        router: str | Router = "roundrobin",
        max_queued: int = 1_000_000,
        lease_ttl: float = 10.0,
        crash_limit: int = 5,
        first_id: int = 1,
        track_changes: bool = True,
        track_events: bool = False,
        heartbeat_interval: float = 1.0,
        heartbeat_budget: float = 100.0,
        quotas: Quotas = NO_QUOTAS,
    ) -> None:
        self.router = make_router(router) if isinstance(router, str) else router
        self.quotas = quotas
        self.max_queued = max_queued
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_budget = heartbeat_budget
        self.crash_limit = crash_limit
        self.jobs: dict[str, Job] = {}
        self.workers: dict[str, Worker] = {}
        self.next_id = first_id
        # Lease batch numbers, one sequence for all workers: a worker declared lost and registered
        # again keeps echoing the highest number it received, so its new batches must be higher.
        self.lease_seq = 0
        # Jobs per state, also those only the store holds (finished ones evicted from memory).
        self._counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        # Transitions taken in this process's life, by (state, event) as in TRANSITIONS, for the
        # metrics (read at scrape time: a dict increment is all a transition pays).
        self.moves: dict[tuple[JobState | None, Event], int] = dict.fromkeys(TRANSITIONS, 0)
        self.worker_events: dict[WorkerEvent, int] = dict.fromkeys(WorkerEvent, 0)
        # Every owner seen, and by priority the lanes in the rotation (queued jobs, their
        # owner below max_running), by owner in the order free slots go to them (rule 10).
        self._owners: dict[str, Owner] = {}
        # Every submission with a job in the table or the store, by number (rule 13).
        self.submissions: dict[int, Submission] = {}
        self._rotation: dict[int, dict[str, Lane]] = {}
        self._served: Lane | None = None  # the lane that had the last batch
        # Queued jobs of a previous life still only in the store, and the number up to which
        # every one of them is in memory: a restart serves before its whole queue is read back
        # (``restore_queued``).
        self.unloaded = 0
        self.loaded_through = 0
        # Those taken back early, by a call that needed them: the loader skips them, even once
        # they ended and left memory.
        self._early: set[str] = set()
        self._wakeups: set[str] = set()
        # Job ids in the order they reached a terminal state, for waiters; only the newest
        # FINISHED_LOG_SIZE are kept, so memory does not grow with finished jobs.
        # The jobs themselves, not their ids: a waiter reads what it reports from here, also
        # once a job has left ``jobs`` for the store.
        self.finished_log: deque[Job] = deque(maxlen=FINISHED_LOG_SIZE)
        self.finished_seq = 0
        # For the store (see take_changes); without one, nothing is recorded.
        self.track_changes = track_changes
        self._new: dict[str, Job] = {}
        self._dirty: dict[str, Job] = {}
        # Jobs whose lease from the queue is their only change: the store need not rewrite the
        # columns a lease leaves alone (most jobs are leased in another commit than their insert).
        self._leased: dict[str, Job] = {}
        # Queue room held for submissions not queued yet (``room``).
        self.held_room = 0
        # Leases held by no worker until a deadline (Place.ORPHAN): restored after a restart and
        # not claimed yet, or fenced by a worker process's replacement: job -> deadline.
        self.orphans: dict[str, float] = {}
        # Worker ids an admin drained (``drain``): registered again, they are drained at once,
        # until ``undrain``. The changes not handed to the store yet (``take_drains``): id ->
        # drained.
        self.drained: set[str] = set()
        self._drains: dict[str, bool] = {}
        # For the event log (rule 9; see take_events); without one, nothing is recorded.
        self.track_events = track_events
        self._events: list[EventRecord] = []
        # Rule 11: workers reserved for the job that fits no worker now (worker id -> job), and
        # queued jobs that fit no registered worker, out of their owners' queues.
        self._reserved: dict[str, Job] = {}
        self._unfit: dict[str, Job] = {}
        # Rule 12: the jobs waiting for each job that has not ended, by its id (a waiting job
        # cancelled meanwhile stays listed, and is skipped); the ends whose dependents are
        # being settled, and whether that is under way (a chain is settled in a loop, not in
        # a recursion as deep as the chain).
        self._dependents: dict[str | int, list[Job]] = {}
        self._ended: list[tuple[str | int, Job | None]] = []
        self._settling = False
        # Retries waiting out their delay (rule 4): (due, job number, job), soonest first.
        self._deferred: list[tuple[float, int, Job]] = []
        self.rng = random.Random()

    # -- transitions -------------------------------------------------------------------------

    @property
    def counts(self) -> Mapping[JobState, int]:
        """Jobs per state, those only the store holds included (finished ones, and queued ones
        not read back yet after a restart: ``unloaded``); read-only."""
        if not self.unloaded:
            return MappingProxyType(self._counts)
        counts = dict(self._counts)
        counts[JobState.QUEUED] += self.unloaded
        return MappingProxyType(counts)

    def owner_counts(self, owner: str) -> Mapping[JobState, int]:
        """An owner's jobs per state, as ``counts`` (all 0 for a user with no job)."""
        known = self._owners.get(owner)
        return MappingProxyType(known.counts if known else dict.fromkeys(JobState, 0))

    def _owner(self, name: str) -> Owner:
        owner = self._owners.get(name)
        if owner is None:
            owner = self._owners[name] = Owner(name, self.quotas.of(name))
        return owner

    def _count(self, job: Job, state: JobState, by: int) -> Owner:
        """Count ``by`` more (or fewer) of the job's owner's and submission's jobs in
        ``state``."""
        owner = self._owner(job.owner)
        owner.counts[state] += by
        self._counts[state] += by
        submission = self._submission(
            job.submission, job.owner, job.submitted_at, job.num, job.max_fails
        )
        submission.counts[state] += by
        return owner

    def _submission(
        self, number: int, owner: str, submitted_at: float, last: int, max_fails: int = 0
    ) -> Submission:
        """The submission ``number``, made if new, its ``last`` job number raised to ``last``
        (and its ``max_fails`` set, when given)."""
        known = self.submissions.get(number)
        if known is None:
            known = self.submissions[number] = Submission(number, owner, submitted_at, last)
        elif known.last < last:
            known.last = last
        if max_fails:
            known.max_fails = max_fails
        return known

    def _rotate(self, owner: Owner, lane: Lane | None = None) -> None:
        """Put the owner's lanes in the rotation, or take them out, as its counts now say
        (rule 10); ``lane``: the only one whose queued jobs may have changed."""
        counts, limit = owner.counts, owner.quota.max_running
        # Owner.active and Quota.may_lease, inline: this runs at every lease and end.
        may = not limit or counts[_L] + counts[_R] < limit
        if may is owner.may_lease and lane is not None:
            lanes: Iterable[Lane] = (lane,)
        else:
            owner.may_lease = may
            lanes = owner.lanes.values()
        for lane in lanes:
            ready = may and lane.queued > 0
            if ready is not lane.ready:
                lane.ready = ready
                if ready:
                    self._rotation.setdefault(lane.priority, {})[owner.name] = lane
                else:
                    level = self._rotation[lane.priority]
                    del level[owner.name]
                    if not level:
                        del self._rotation[lane.priority]

    def _move(self, job: Job, event: Event, now: float = 0.0, until: float = 0.0) -> None:
        """Take the transition of ``event`` for a job in the table (not one in or out);
        ``until``: when an orphan lease (``Place.ORPHAN``) is due."""
        move = (job.state, event)
        try:
            to, step, leased, rotate_if = _MOVES[move]
        except KeyError:
            raise InvariantError(
                f"{job.job_id}: no transition {job.state} --{event.value}-->"
            ) from None
        counts = self._counts
        counts[job.state] -= 1
        counts[to] += 1
        owner = self._owners[job.owner]
        owner_counts = owner.counts
        owner_counts[job.state] -= 1
        owner_counts[to] += 1
        submission = self.submissions[job.submission]
        submission_counts = submission.counts
        submission_counts[job.state] -= 1
        submission_counts[to] += 1
        halts = False
        job.state = to
        self.moves[move] += 1
        if rotate_if is not None:
            # Into or out of the queue: its lane counts it. A job ending leaves every lane as
            # it was while its owner may lease already.
            if rotate_if:
                lane = owner.lanes[job.priority]
                lane.queued -= 1
                self._rotate(owner, lane)
            elif to is _Q:
                lane = owner.lane(job.priority)
                lane.queued += 1
                self._rotate(owner, lane)
            elif not owner.may_lease:
                self._rotate(owner)
        # The hot path (a lease, a start, an end, once a job each) tests only what its step
        # may change: see _MOVES.
        if step.ends:
            job.finished_at = now
            self.finished_log.append(job)
            self.finished_seq += 1
            dependents = self._dependents
            if dependents:
                if job.job_id in dependents:
                    self._ended.append((job.job_id, job))
                # A submission waited for: its end, or a failure (rule 12).
                if job.submission in dependents and (to is not _S or not submission.pending):
                    self._ended.append((job.submission, job))
                if self._ended and not self._settling:
                    self._settle(now)
            # The failure that makes max_fails of its submission's jobs failed (rule 13).
            halts = to is _F and submission_counts[_F] == submission.max_fails
        elif step.starts:
            job.started_at = now
        else:
            if step.attempt:
                job.attempt += 1
            if step.undelivered:
                job.lease_seq = 0
                job.steal_round = 0
            if step.retried:
                job.retried += 1
                _keep_attempt(job, now)
            if step.place is Place.FRONT:
                lane = owner.lanes[job.priority]
                (lane.backlog or lane.queue).appendleft(job)
            elif step.place is Place.BACK:
                owner.lanes[job.priority].queue.append(job)
            elif step.place is Place.ORPHAN:
                self.orphans[job.job_id] = until
        if self.track_events:
            kind, detail = JOB_EVENTS[event]
            self._events.append((kind, job.job_id, job.worker_id, job.attempt, detail))
        if self.track_changes:
            if leased:
                self._leased[job.job_id] = job
            else:
                self._dirty[job.job_id] = job
        if halts:
            self._halt(submission, now)

    def _halt(self, submission: Submission, now: float) -> None:
        """Cancel every job of the submission in memory that has not ended (rule 13)."""
        message = (
            f"cancelled: {submission.max_fails} jobs of its submission failed"
            f" (max_fails {submission.max_fails})"
        )
        for job in list(self.submission_jobs(submission)):
            if job.state not in TERMINAL:
                self._cancel(job, now, message)

    def _restore(self, job: Job, now: float) -> None:
        """A job of a previous life enters the table again, in the state the store holds."""
        step = _step(job.state, Event.RESTORE, job.job_id)
        self.jobs[job.job_id] = job
        owner = self._count(job, job.state, 1)
        if step.undelivered:
            job.lease_seq = 0
            job.steal_round = 0
        if step.place is Place.BACKLOG:
            lane = owner.lane(job.priority)
            lane.backlog.append(job)
            lane.queued += 1
            self._rotate(owner, lane)
        elif step.place is Place.ORPHAN:
            self.orphans[job.job_id] = now + self.lease_ttl

    def _enter_queued(self, jobs: list[Job], event: Event) -> list[str]:
        """Queued jobs enter the table by ENQUEUE (submitted), ADMIT (stored already) or
        RESTORE (of a previous life), all at once: a submission's hot path."""
        step = _step(JobState.QUEUED if event is Event.RESTORE else None, event, "queued jobs")
        assert step.to is JobState.QUEUED
        ids = [job.job_id for job in jobs]
        self.jobs.update(zip(ids, jobs, strict=True))
        if self.track_changes and step.record is Record.NEW:
            self._new.update(zip(ids, jobs, strict=True))
        lanes = {(job.owner, job.priority) for job in jobs}
        for name, priority in lanes:
            # One submission's jobs have one owner, and mostly one priority: its lane takes
            # them in one C call.
            owned = (
                jobs
                if len(lanes) == 1
                else [job for job in jobs if job.owner == name and job.priority == priority]
            )
            owner = self._owner(name)
            lane = owner.lane(priority)
            (lane.backlog if step.place is Place.BACKLOG else lane.queue).extend(owned)
            lane.queued += len(owned)
            owner.counts[JobState.QUEUED] += len(owned)
            self._counts[JobState.QUEUED] += len(owned)
            self._rotate(owner, lane)
        # One submission's jobs follow each other: a look-up per submission, not per job.
        for number, group in itertools.groupby(jobs, _SUBMISSION_OF):
            run = list(group)
            first = run[0]
            submission = self._submission(
                number, first.owner, first.submitted_at, run[-1].num, first.max_fails
            )
            submission.counts[JobState.QUEUED] += len(run)
        self.moves[JobState.QUEUED if event is Event.RESTORE else None, event] += len(jobs)
        if self.track_events and event in JOB_EVENTS:
            kind, detail = JOB_EVENTS[event]
            self._events.extend((kind, job_id, "", 0, detail) for job_id in ids)
        return ids

    def _enter_waiting(
        self, jobs: list[Job], event: Event, known: Mapping[str, JobState], now: float
    ) -> None:
        """Jobs with dependencies enter the table by AWAIT (submitted) or ADMIT_AWAIT (stored
        already), each then queued or failed at once if its dependencies say so (rule 12)."""
        step = _step(None, event, "waiting jobs")
        for job in jobs:
            job.state = _W
            self.jobs[job.job_id] = job
            if self.track_changes and step.record is Record.NEW:
                self._new[job.job_id] = job
            self._count(job, _W, 1)
        self.moves[None, event] += len(jobs)
        if self.track_events:
            kind, detail = JOB_EVENTS[event]
            self._events.extend((kind, job.job_id, "", 0, detail) for job in jobs)
        for job in jobs:
            if job.state is _W:  # not cancelled meanwhile (its submission halted: rule 13)
                self._wait_on(job, known, now)

    def _wait_on(self, job: Job, known: Mapping[str, JobState], now: float) -> None:
        """A WAITING job waits for those of its dependencies that have not ended, or is queued
        or fails at once. A dependency not in memory is in ``known`` (the store's state of it);
        one in neither is gone, as a failed one."""
        unmet = 0
        failed: tuple[str, str] | None = None
        for dep_id in job.after.split(",") if job.after else ():
            key: str | int = dep_id
            if dep_id.startswith(wire.SUBMISSION_ID_PREFIX):
                key = wire.submission_number(dep_id)
                state, how = self._submission_state(key, job.after_any)
            else:
                dep = self.jobs.get(dep_id)
                state = dep.state if dep is not None else known.get(dep_id)
                how = state.value if state is not None else "is gone"
            if state is None or state in TERMINAL:
                if state is not _S and not job.after_any and failed is None:
                    failed = (dep_id, how)
            else:
                unmet += 1
                self._dependents.setdefault(key, []).append(job)
        job.unmet = unmet
        if failed is not None:
            self._fail_dependent(job, *failed, now)
        elif not unmet:
            self._move(job, Event.RELEASE)

    def _submission_state(self, number: int, after_any: bool) -> tuple[JobState | None, str]:
        """A submission as a dependency (rule 12): failed (as soon as one of its jobs failed or
        was cancelled, unless ``after_any``), QUEUED while it has not ended (its jobs of a
        previous life not all counted yet included), SUCCEEDED once every job did, None if it is
        gone; and how it ended."""
        submission = self.submissions.get(number)
        if submission is None:
            return (_Q, "") if self.unloaded else (None, "is gone")
        counts = submission.counts
        bad = counts[_F] + counts[_C]
        if bad and (not after_any or not (submission.pending or self.unloaded)):
            return _F, f"has {bad} failed or cancelled jobs"
        if submission.pending or self.unloaded:
            return _Q, ""
        return _S, ""

    def _settle(self, now: float) -> None:
        """The dependents of the jobs and submissions that just ended (``_ended``) take their
        next step, and theirs after them, down every chain (rule 12)."""
        self._settling = True
        try:
            while self._ended:
                key, ended = self._ended.pop()
                state: JobState | None
                if isinstance(key, str):
                    assert ended is not None
                    dep_id, state, how = key, ended.state, ended.state.value
                    fails = state is not _S
                else:
                    # A submission fails those that need its success as soon as one of its
                    # jobs failed, and the others once it has ended.
                    dep_id = wire.submission_id(key)
                    state, how = self._submission_state(key, after_any=True)
                    failing, how_failing = self._submission_state(key, after_any=False)
                    fails = failing is not _Q and failing is not _S
                    if ended is not None and ended.state is not _S:
                        how = f"has a job that {ended.state.value} ({ended.job_id})"
                    elif fails and state is _Q:
                        how = how_failing
                final = state is not _Q
                dependents = (
                    self._dependents.pop(key, ()) if final else self._dependents.get(key, ())
                )
                for job in dependents:
                    if job.state is not _W or self.jobs.get(job.job_id) is not job:
                        continue  # cancelled, failed by another dependency, or withdrawn
                    if final and (state is _S or job.after_any):
                        job.unmet -= 1
                        if not job.unmet:
                            self._move(job, Event.RELEASE)
                    elif fails and not job.after_any:
                        self._fail_dependent(job, dep_id, how, now)
        finally:
            self._settling = False

    def _fail_dependent(self, job: Job, dep_id: str, how: str, now: float) -> None:
        job.reason = StopReason.DEPENDENCY_FAILED.value
        job.error_message = f"its dependency {dep_id} {how}"
        self._move(job, Event.DEPENDENCY_FAILED, now)

    def _check_after(self, jobs: Iterable[Job | NewJob], known: Mapping[str, JobState]) -> None:
        """Raise UnknownDependency for the first dependency neither in memory nor in
        ``known``, or naming no known submission."""
        for job in jobs:
            for dep_id in job.after.split(",") if job.after else ():
                if dep_id.startswith(wire.SUBMISSION_ID_PREFIX):
                    try:
                        known_submission = wire.submission_number(dep_id) in self.submissions
                    except ValueError:
                        known_submission = False
                    if not known_submission:
                        raise UnknownDependency(dep_id)
                elif dep_id not in self.jobs and dep_id not in known:
                    raise UnknownDependency(dep_id)

    def _leave(self, job: Job, event: Event) -> None:
        """A job leaves the table by ``event`` (WITHDRAW, FORGET): it is no longer counted.
        A queued one stays in the queue's deque until the caller rebuilds it."""
        step = _step(job.state, event, job.job_id)
        assert step.place is Place.OUT
        owner = self._count(job, job.state, -1)
        if job.state is _Q:
            owner.lanes[job.priority].queued -= 1
        self._rotate(owner)
        self.moves[job.state, event] += 1
        del self.jobs[job.job_id]
        self._left(job.submission)
        if step.record is Record.DROPPED:
            self._new.pop(job.job_id, None)
            self._dirty.pop(job.job_id, None)
            self._leased.pop(job.job_id, None)

    def _left(self, number: int) -> None:
        """A job of submission ``number`` left the table: so does the submission, if it was
        its last."""
        submission = self.submissions.get(number)
        if submission is not None and not submission.total:
            del self.submissions[number]

    def _changed(self, job: Job) -> None:
        """A job changed beside its state (a worker confirmed it stopped a cancelled job)."""
        if self.track_changes:
            self._dirty[job.job_id] = job

    def _worker_move(self, worker: Worker, event: WorkerEvent, now: float = 0.0) -> None:
        """Take the transition of ``event`` for a worker (see WORKER_TRANSITIONS). A worker
        that registers again has its leases settled by the caller first."""
        try:
            step = WORKER_TRANSITIONS[worker.state, event]
        except KeyError:
            raise InvariantError(
                f"worker {worker.worker_id}: no transition {worker.state} --{event.value}-->"
            ) from None
        was_routed = worker.state is WorkerState.REGISTERED
        self.worker_events[event] += 1
        if self.track_events:
            self._events.append((WORKER_EVENTS[event], "", worker.worker_id, 0, ""))
        if worker.state is None:
            self.workers[worker.worker_id] = worker
        worker.state = step.to
        if not step.routed:
            self._unreserve(worker.worker_id)
        if step.routed:
            self._route(worker)
            self._unpark()  # a job that fit no worker may fit this one
        elif was_routed:
            self.router.remove(worker.worker_id)
        if step.leaves:
            del self.workers[worker.worker_id]
            # A lost attempt for those handed over; the others were never started.
            for job in list(worker.leases.values()):
                self._lose(worker, job, now, counted=job.lease_seq != 0)
        elif not step.routed:
            # Routed here but not handed over: back to the queue, for another worker.
            for job in list(worker.outbox):
                if worker.leases.get(job.job_id) is job and job.lease_seq == 0:
                    self._release(worker, job)
                    self._move(job, Event.LOSE)
            worker.outbox.clear()

    def finished_since(self, seq: int) -> list[Job] | None:
        """The jobs that ended after ``finished_seq`` was ``seq``; None if no longer known."""
        missed = self.finished_seq - seq
        if missed > len(self.finished_log):
            return None
        # From the newest end: a deque walks from the end it is asked for, so this reads only
        # the jobs missed, not the whole log.
        ended = list(itertools.islice(reversed(self.finished_log), missed))
        ended.reverse()
        return ended

    def take_changes(self) -> Changes:
        """What changed since the last call, for the store to persist, with each job's state as
        it is now: see ``Changes``. A job is in one list, or in ``new`` and ``changed``."""
        new, self._new = self._new, {}
        dirty, self._dirty = self._dirty, {}
        leased, self._leased = self._leased, {}
        return Changes(
            list(new.values()),
            list(dirty.values()),
            [job for job_id, job in leased.items() if job_id not in new and job_id not in dirty],
        )

    def pending(self, job_id: str) -> bool:
        """Whether the job has a change that ``take_changes`` has not handed out yet."""
        return job_id in self._new or job_id in self._dirty or job_id in self._leased

    def not_stored(self, jobs: Iterable[Job]) -> None:
        """Changes handed out by ``take_changes`` that the store failed to write: they go with
        the next commit (their jobs as they are by then)."""
        if self.track_changes:
            for job in jobs:
                self._dirty.setdefault(job.job_id, job)

    def withdraw_unstored(self, jobs: Iterable[Job] = ()) -> None:
        """``withdraw`` these jobs and every submitted job not handed to the store yet."""
        self.withdraw([*jobs, *self._new.values()])

    def take_events(self) -> list[EventRecord]:
        """The events since the last call, in order (rule 9)."""
        events, self._events = self._events, []
        return events

    def take_wakeups(self) -> set[str]:
        """Workers with new jobs in their outbox or new cancel notices since the last call."""
        woken, self._wakeups = self._wakeups, set()
        return woken

    # -- clients -----------------------------------------------------------------------------

    def submit(self, new_jobs: Sequence[NewJob], now: float, owner: str = "") -> list[str]:
        """Queue every job or none (QueueFull when they do not all fit, OverQuota past the
        owner's quota); returns their ids.

        With a store, the jobs are accepted once stored (see rule 7 and ``withdraw``).
        Dependencies must be in memory (UnknownDependency).
        """
        self._check_after(new_jobs, {})
        with self.room(len(new_jobs), owner, now):
            jobs = self.new_jobs(self.number(len(new_jobs)), new_jobs, now, owner)
        return self.enqueue(jobs, now=now)

    def check_room(self, count: int) -> None:
        """Raise QueueFull unless ``count`` more jobs fit in the queue (beside the room held;
        WAITING jobs count as queued: rule 10)."""
        queued = _pending_start(self._counts) + self.unloaded
        if queued + self.held_room + count > self.max_queued:
            being = f" and {self.held_room} being submitted" if self.held_room else ""
            raise QueueFull(
                f"queue is full: {queued} queued or waiting{being}, "
                f"{count} more would exceed the limit of {self.max_queued}"
            )

    @contextmanager
    def room(self, count: int, owner: str = "", now: float = 0.0) -> Iterator[None]:
        """Hold room in the queue for ``count`` jobs of ``owner`` until the block ends: a
        submission being stored before it is queued (a staged one) keeps it.

        Raises QueueFull if the queue has no room, OverQuota past the owner's ``max_queued``
        (its queued jobs and its room held count) or ``submit_rate`` (whose tokens are taken
        here, once the rest fits)."""
        self.check_room(count)
        user = self._owner(owner)
        if user.bucket is None and user.quota.submit_rate:
            user.bucket = TokenBucket.full(user.quota, now)
        try:
            check_submission(
                owner,
                user.quota,
                count,
                _pending_start(user.counts) + user.held_room,
                user.bucket,
                now,
            )
        except QuotaExceeded as exceeded:
            raise OverQuota(exceeded) from None
        self.held_room += count
        user.held_room += count
        try:
            yield
        finally:
            self.held_room -= count
            user.held_room -= count

    def number(self, count: int) -> int:
        """Take the numbers of ``count`` new jobs; returns the first. A number is never used
        again, also when its job is not queued after all."""
        first = self.next_id
        self.next_id += count
        return first

    @staticmethod
    def new_jobs(
        first: int, new_jobs: Sequence[NewJob], now: float, owner: str = "", submission: int = 0
    ) -> list[Job]:
        """The jobs of ``owner`` numbered from ``first`` (see ``number``) for these
        submissions, of the submission numbered ``submission`` (0: ``first``, a new one).
        Nothing changes until ``enqueue`` takes them: a large submission may be built in
        slices."""
        stop = first + len(new_jobs)
        submission = submission or first
        return [
            Job(
                job_id,
                num,
                new.spec,
                new.retries,
                new.name,
                now,
                owner=owner,
                request=new.request,
                retry_on_exit=new.retry_on_exit,
                crash_limit=new.crash_limit,
                after=new.after,
                after_any=new.after_any,
                submission=submission,
                priority=new.priority,
                retry_delay=new.retry_delay,
                max_fails=new.max_fails,
            )
            for job_id, num, new in zip(
                wire.job_ids(first, stop), range(first, stop), new_jobs, strict=True
            )
        ]

    def enqueue(
        self,
        jobs: list[Job],
        *,
        stored: bool = False,
        known: Mapping[str, JobState] = MappingProxyType({}),
        now: float = 0.0,
    ) -> list[str]:
        """Queue jobs from ``new_jobs``, every one or none (QueueFull); returns their ids.
        ``stored``: the store holds them already (a staged submission, whose ``room`` was held
        while it was stored), as they are now: they are queued whatever the queue holds now,
        as a refusal would leave them stored, and back after a restart. (Jobs going back to
        the queue, lost or retried, do not ask for room, so the queue may have filled.)

        Jobs with dependencies wait for them (rule 12); ``known`` has the states of those not
        in memory (finished ones only the store holds). UnknownDependency (nothing changed)
        names one in neither."""
        if not stored:
            # The owner's quota was checked when its room was (``room``).
            self.check_room(len(jobs))
        waiting = [job for job in jobs if job.after]
        if not waiting:
            ids = self._enter_queued(jobs, Event.ADMIT if stored else Event.ENQUEUE)
        else:
            self._check_after(waiting, known)
            ids = [job.job_id for job in jobs]
            queued = [job for job in jobs if not job.after]
            if queued:
                self._enter_queued(queued, Event.ADMIT if stored else Event.ENQUEUE)
            event = Event.ADMIT_AWAIT if stored else Event.AWAIT
            self._enter_waiting(waiting, event, known, now)
        self._dispatch()
        return ids

    def withdraw(self, jobs: Iterable[Job]) -> None:
        """Submitted jobs that could not be stored leave as if never submitted (ids not reused).

        None of them reached a worker (a worker hears of a job only after the commit that
        stores it), so a lease they got is simply released.
        """
        gone = set()
        owners = set()
        for job in jobs:
            if self.jobs.get(job.job_id) is not job:
                continue
            self._leave(job, Event.WITHDRAW)
            worker = self.workers.get(job.worker_id)
            if worker is not None and worker.leases.get(job.job_id) is job:
                self._release(worker, job)  # its outbox entry is skipped when popped
            gone.add(job.job_id)
            owners.add(job.owner)
            self._unfit.pop(job.job_id, None)
        for name in owners:
            for lane in self._owners[name].lanes.values():
                lane.queue = deque(job for job in lane.queue if job.job_id not in gone)
        if gone:
            self._dispatch()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str, now: float) -> JobState | None:
        """Cancel a job that has not ended; returns its state afterwards (None: unknown id).

        A job already handed to a worker stays in that worker's lease set until the worker says
        it stopped it, so the worker's load keeps counting the process that is still running.
        """
        job = self.jobs.get(job_id)
        if job is None or job.state in TERMINAL:
            return None if job is None else job.state
        self._cancel(job, now, "cancelled by user")
        # Its slot may be free for the next queued job, or its owner below max_running again.
        self._dispatch()
        return job.state

    def _cancel(self, job: Job, now: float, message: str) -> None:
        """Cancel a job that has not ended (see ``cancel``), without routing the room it
        frees."""
        job_id = job.job_id
        leased_to = self.workers.get(job.worker_id) if job.state in _IN_LEASE else None
        if leased_to is not None and leased_to.leases.get(job_id) is not job:
            leased_to = None  # an orphan lease: no worker holds it
        job.reason = StopReason.CANCELLED.value
        job.error_message = message
        self._move(job, Event.CANCEL, now)
        self._unfit.pop(job_id, None)
        if leased_to is not None:
            if job.lease_seq == 0:
                self._release(leased_to, job)  # never handed over: nothing to stop
            else:
                leased_to.cancel_notices[job_id] = job.attempt
                self._wakeups.add(leased_to.worker_id)

    def submission_jobs(self, submission: Submission, after: str = "") -> Iterator[Job]:
        """The jobs of a submission in memory, in id order, after the given id."""
        start = max(submission.number, wire.job_number(after) + 1 if after else 0)
        for number in range(start, submission.last + 1):
            job = self.jobs.get(wire.job_id(number))
            if job is not None and job.submission == submission.number:
                yield job

    def iter_jobs(self, state: JobState | None = None, after: str = "") -> Iterator[Job]:
        """Jobs in id (= submission) order, after the given id, optionally of one state."""
        start = wire.job_number(after) + 1 if after else 0
        for number in range(start, self.next_id):
            job = self.jobs.get(wire.job_id(number))
            if job is not None and (state is None or job.state is state):
                yield job

    # -- workers -----------------------------------------------------------------------------

    def _worker(self, worker_id: str, now: float) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise UnknownWorker(f"worker {worker_id!r} is not registered")
        worker.last_seen = now
        return worker

    def register(
        self,
        worker_id: str,
        *,
        slots: int,
        capacity: int,
        now: float,
        peer_addr: str = "",
        hostname: str = "",
        held: Iterable[Held] = (),
        instance: int = 0,
        lease_seq: int = 0,
        offer: Mapping[str, int] | None = None,
    ) -> list[Held]:
        """Add a worker, or refresh one that registers again; returns held jobs it must drop.

        A worker that registers again keeps the leases it still holds; leases it no longer holds
        were lost with its previous life and go back to the queue. After a controller restart, a
        held job whose restored lease names this worker and attempt (an orphan) is its again.
        Held jobs that are not its lease are returned: the worker stops and forgets them
        without reporting. ``lease_seq`` is the highest lease batch the worker has seen: new
        batches are numbered above it. ``offer``: its resources beside its ``slots`` CPUs (mem,
        gpus, named ones; rule 5).

        Another process (``instance``; 0, the prototype's workers, is never told apart) replaces
        the registered one: the leases handed to that one and not held by this one are fenced
        (orphans until the replaced process's lease TTL has passed since it was last heard
        from: it may still be running them), and it is refused from now on (WorkerReplaced,
        also raised for a registration of a replaced process).
        """
        held = list(held)
        worker = self.workers.get(worker_id)
        if worker is not None and instance in worker.replaced:
            raise WorkerReplaced(self._replaced_message(worker_id))
        if worker is None:
            worker = Worker(worker_id, slots, max(capacity, slots), peer_addr, hostname, now)
            worker.offer = self._offer(offer)
            worker.lease_seq = lease_seq
            for h in held:
                job = self.jobs.get(h.job_id)
                if (
                    h.job_id in self.orphans
                    and job is not None
                    and job.worker_id == worker_id
                    and job.attempt == h.attempt
                ):
                    del self.orphans[h.job_id]
                    job.lease_seq = lease_seq  # delivered: the worker has acknowledged it
                    self._hold(worker, job)
        else:
            # The replaced process's leases are its own until its TTL, from when it was last
            # heard from (its later calls are refused), has passed.
            fenced_until = worker.last_seen + self.lease_ttl * worker.pace
            worker.lease_seq = max(worker.lease_seq, lease_seq)
            worker.slots, worker.capacity = slots, max(capacity, slots)
            worker.offer = self._offer(offer)
            worker.peer_addr, worker.hostname, worker.last_seen = peer_addr, hostname, now
            kept = {h.job_id for h in held if self._holds(worker, h)}
            # Stolen leases still on their way to this same process are not lost (yet): its
            # heartbeats settle them once the steal has ended.
            fresh = worker.instance != instance
            replacing = fresh and worker.instance != 0 and instance != 0
            if replacing:
                worker.replaced.add(worker.instance)
            for job in list(worker.leases.values()):
                # Undelivered jobs wait in the outbox for the next poll.
                if (
                    job.job_id not in kept
                    and job.lease_seq != 0
                    and (fresh or not self._steal_in_flight(worker, job))
                ):
                    if replacing and job.state not in TERMINAL:
                        self._release(worker, job)
                        self._move(job, Event.FENCE, now, until=fenced_until)
                    else:
                        self._lose(worker, job, now, counted=True)
        drop = [h for h in held if not self._holds(worker, h)]
        if worker.instance != instance:
            # A new process: steals addressed to the previous one are refused from now on.
            worker.instance, worker.steal_done = instance, 0
        for h in held:
            if h.running and self._holds(worker, h):
                self._mark_started(worker.leases[h.job_id], now)
        self._worker_move(worker, WorkerEvent.REGISTER)
        if worker_id in self.drained:
            self._worker_move(worker, WorkerEvent.DRAIN)
        self._dispatch()
        return drop

    @staticmethod
    def _offer(offer: Mapping[str, int] | None) -> dict[str, int]:
        return {k: v for k, v in (offer or {}).items() if k != resources.CPUS and v > 0}

    def check_process(self, worker_id: str, instance: int) -> None:
        """Raise WorkerReplaced if ``instance`` is not the registered process of this worker id
        (0 on either side: not told apart)."""
        worker = self.workers.get(worker_id)
        if worker is not None and instance and worker.instance and instance != worker.instance:
            raise WorkerReplaced(self._replaced_message(worker_id))

    @staticmethod
    def _replaced_message(worker_id: str) -> str:
        return (
            f"worker id {worker_id!r} is held by another worker process, which registered"
            " after this one: a worker id names one live process at a time"
        )

    @staticmethod
    def _holds(worker: Worker, held: Held) -> bool:
        job = worker.leases.get(held.job_id)
        return job is not None and job.attempt == held.attempt

    def drain(self, worker_id: str) -> Worker:
        """An admin drains a registered worker: no new work is routed to it, the jobs routed
        to it but not handed over go back to the queue, and those it holds stay its own. Its
        id stays drained (also when it registers again) until ``undrain``.
        Raises UnknownWorker if no such worker is registered; draining twice changes nothing."""
        worker = self.workers.get(worker_id)
        if worker is None:
            raise UnknownWorker(worker_id)
        if worker.state is WorkerState.REGISTERED:
            self._worker_move(worker, WorkerEvent.DRAIN)
        if worker_id not in self.drained:
            self.drained.add(worker_id)
            self._drain_changed(worker_id, True)
        return worker

    def undrain(self, worker_id: str) -> Worker | None:
        """An admin ends the drain of a worker id: registered, it gets work again. Returns the
        worker if it is registered. Raises UnknownWorker if the id is not drained."""
        if worker_id not in self.drained:
            raise UnknownWorker(worker_id)
        self.drained.remove(worker_id)
        self._drain_changed(worker_id, False)
        worker = self.workers.get(worker_id)
        if worker is not None and worker.state is WorkerState.DRAINING:
            self._worker_move(worker, WorkerEvent.RESUME)
            self._dispatch()
        return worker

    def _drain_changed(self, worker_id: str, drained: bool) -> None:
        if self.track_changes:
            self._drains[worker_id] = drained

    def take_drains(self) -> list[tuple[str, bool]]:
        """The worker ids drained (True) or undrained since the last call, for the store."""
        drains, self._drains = self._drains, {}
        return list(drains.items())

    def drains_not_stored(self, drains: Iterable[tuple[str, bool]]) -> None:
        """Drains from ``take_drains`` that the store failed to write: they go with the next
        commit, unless changed since."""
        for worker_id, drained in drains:
            self._drains.setdefault(worker_id, drained)

    def lease(self, worker_id: str, max_jobs: int, now: float) -> tuple[int, list[Job]]:
        """Hand over up to ``max_jobs`` jobs already routed to this worker.

        Returns the batch's sequence number (echoed by the worker's heartbeats, so the table can
        tell a lease lost on the way from one still in flight) and the jobs.
        """
        worker = self._worker(worker_id, now)
        batch: list[Job] = []
        while worker.outbox and len(batch) < max_jobs:
            job = worker.outbox.popleft()
            if worker.leases.get(job.job_id) is job and job.lease_seq == 0:
                batch.append(job)
        if not batch:
            return worker.lease_seq, batch
        # Above anything this worker has seen (it may have told us at registration).
        self.lease_seq = max(self.lease_seq, worker.lease_seq) + 1
        worker.lease_seq = self.lease_seq
        for job in batch:
            job.lease_seq = worker.lease_seq
        return worker.lease_seq, batch

    def unlease(self, worker_id: str, jobs: Sequence[Job]) -> None:
        """A batch from ``lease`` was not handed over after all (it could not be stored, or the
        poll was cancelled): its jobs still leased to the worker wait for its next poll, under
        the same attempt, as if never delivered."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        for job in reversed(jobs):
            if (
                worker.leases.get(job.job_id) is job
                and job.lease_seq != 0
                and job.state is JobState.LEASED
            ):
                job.lease_seq = 0
                worker.outbox.appendleft(job)

    def take_cancel_notices(self, worker_id: str) -> list[Held]:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.cancel_notices:
            return []
        notices = [Held(job_id, attempt) for job_id, attempt in worker.cancel_notices.items()]
        worker.cancel_notices.clear()
        return notices

    def started(self, worker_id: str, held: Held, now: float) -> None:
        """The worker started a job's process (ignored when the lease is not current)."""
        worker = self._worker(worker_id, now)
        if self._holds(worker, held):
            self._mark_started(worker.leases[held.job_id], now)

    def _mark_started(self, job: Job, now: float) -> None:
        if job.state is JobState.LEASED:
            self._move(job, Event.START, now)

    def report(self, worker_id: str, result: Result, now: float) -> ReportOutcome:
        """Record how an attempt ended; only the current lease's result changes anything."""
        (outcome,) = self.report_many(worker_id, [result], now)
        return outcome

    def report_many(
        self, worker_id: str, results: Iterable[Result], now: float
    ) -> list[ReportOutcome]:
        """``report`` of each result in turn; the room they free is routed once, at the end."""
        worker = self._worker(worker_id, now)
        outcomes = [self._report(worker, result, now) for result in results]
        self._route(worker)
        self._dispatch()
        return outcomes

    def _report(self, worker: Worker, result: Result, now: float) -> ReportOutcome:
        worker_id = worker.worker_id
        job = self.jobs.get(result.job_id)
        if job is None:
            return ReportOutcome.UNKNOWN_JOB
        attempt = result.attempt or job.attempt
        if job.state in TERMINAL:
            outcome = self.ended_outcome(job, worker_id, attempt)
            if outcome is ReportOutcome.DUPLICATE and worker.leases.get(job.job_id) is job:
                # The worker confirming it stopped a cancelled job.
                self._record(job, result)
                self._changed(job)
                self._release(worker, job, route=False)
            return outcome
        if job.worker_id != worker_id or job.attempt != attempt:
            return ReportOutcome.STALE
        if worker.leases.get(job.job_id) is not job or job.lease_seq == 0:
            # Not this worker's lease, or never handed over: the result is of an older run.
            return ReportOutcome.STALE
        self._release(worker, job, route=False)
        if result.reason == StopReason.RETURNED:
            self._move(job, Event.LOSE)
            if worker.state is WorkerState.REGISTERED:
                self._worker_move(worker, WorkerEvent.DRAIN)
        else:
            worker.ended += 1
            self._record(job, result)
            if result.succeeded:
                self._move(job, Event.SUCCEED, now)
            elif job.retried < job.retries and self._retryable(job, result):
                if job.retry_delay:
                    jitter = 1 + self.rng.random() / 2
                    job.retry_at = now + job.retry_delay * 2**job.retried * jitter
                    self._move(job, Event.DEFER, now)
                    self._defer(job)
                else:
                    self._move(job, Event.RETRY, now)
            else:
                self._move(job, Event.FAIL, now)
        return ReportOutcome.ACCEPTED

    @staticmethod
    def _retryable(job: Job, result: Result) -> bool:
        """Whether a failed attempt is one its job is retried for (it has retries left)."""
        if result.reason == StopReason.CANCELLED:
            return False
        if not job.retry_on_exit:
            return True
        return result.reason == "exit" and str(result.exit_code) in job.retry_on_exit.split(",")

    @staticmethod
    def ended_outcome(job: Job, worker_id: str, attempt: int) -> ReportOutcome:
        """The answer to a report of a job that has ended: a duplicate of the report that ended
        it (acknowledged, changes nothing), or stale: another worker's or attempt's, or of the
        attempt whose lost lease made the job fail at the crash limit."""
        if (
            job.worker_id == worker_id
            and job.attempt == attempt
            and job.reason != StopReason.WORKER_LOST
        ):
            return ReportOutcome.DUPLICATE
        return ReportOutcome.STALE

    @staticmethod
    def _record(job: Job, result: Result) -> None:
        if job.state is JobState.CANCELLED and job.exit_code is not None:
            return
        job.exit_code = result.exit_code
        job.signal = result.signal
        job.user_cpu, job.system_cpu = result.user_cpu, result.system_cpu
        job.max_rss_kib = result.max_rss_kib
        job.stdout_path, job.stderr_path = result.stdout_path, result.stderr_path
        if result.started_at:
            job.started_at = result.started_at
        if job.state is not JobState.CANCELLED:
            job.reason, job.error_message = result.reason, result.error_message

    def heartbeat(
        self,
        worker_id: str,
        held: Iterable[Held],
        acked_seq: int,
        now: float,
        steal_round_done: int = 0,
    ) -> tuple[list[Held], list[Held]]:
        """Reconcile what the worker holds with its leases; returns (cancel, drop).

        ``held`` lists every job the worker has (queued, running, or finished and not yet
        acknowledged). A lease delivered in a batch the worker has acknowledged (``acked_seq``),
        or stolen in a steal round that had ended (``steal_round_done``), but missing from
        ``held`` was lost on the way and goes back to the queue; a held job that is not the
        worker's lease is dropped; a held job a user cancelled is cancelled.
        """
        worker = self._worker(worker_id, now)
        # Only for refusing late transfers: the check below must pair this request's ``held``
        # with this request's own round (a late heartbeat may carry an older one).
        worker.steal_done = max(worker.steal_done, steal_round_done)
        held_by_id = {h.job_id: h for h in held}
        drop = [h for h in held_by_id.values() if not self._holds(worker, h)]
        cancel: list[Held] = []
        for job in list(worker.leases.values()):
            h = held_by_id.get(job.job_id)
            if h is None:
                if job.steal_round:
                    arrived_or_never = job.steal_round <= steal_round_done
                else:
                    arrived_or_never = 0 < job.lease_seq <= acked_seq
                if arrived_or_never:
                    self._lose(worker, job, now, counted=False)
            elif job.attempt == h.attempt:
                if job.state is JobState.CANCELLED:
                    cancel.append(h)
                elif h.running:
                    self._mark_started(job, now)
        self._dispatch()
        return cancel, drop

    def transfer(
        self,
        victim_id: str,
        thief_id: str,
        jobs: Iterable[Held],
        *,
        thief_instance: int,
        steal_round: int,
        now: float,
    ) -> list[Job]:
        """Move the victim's leases of ``jobs`` to the thief; returns the jobs moved.

        Only leases that are still the victim's under the named attempt, handed over and not
        started (LEASED) move, and no more than the thief has room for; the rest stay the
        victim's. Each moved job gets a new attempt (the victim's copy is fenced: its result would
        be stale), ``stolen`` set and ``steal_round`` recorded, and counts in the thief's capacity
        at once. The victim hands the jobs over only after this returned.

        Raises UnknownWorker for an unregistered victim and TransferRefused (nothing changed)
        when the thief is unknown, is the victim, is another process than the one that asked
        (``thief_instance``), or has said that this steal round ended.
        """
        victim = self._worker(victim_id, now)
        thief = self.workers.get(thief_id)
        if thief is None or thief is victim:
            raise TransferRefused(f"thief {thief_id!r} is not another registered worker")
        if thief.draining:
            raise TransferRefused(f"thief {thief_id!r} is shutting down")
        if not thief_instance or thief_instance != thief.instance:
            raise TransferRefused(f"thief {thief_id!r} has restarted since it asked")
        if steal_round <= 0 or steal_round <= thief.steal_done:
            raise TransferRefused(f"thief {thief_id!r} gave up on steal round {steal_round}")
        free = {} if thief_id in self._reserved else thief.free()
        moved: dict[str, Job] = {}
        for h in jobs:
            job = victim.leases.get(h.job_id)
            if (
                job is not None
                and job.attempt == h.attempt
                and job.state is JobState.LEASED
                and job.lease_seq != 0
                and thief_takes(job.request, free, thief.slots)
            ):
                moved[job.job_id] = job
        if not moved:
            return []
        # A fresh batch number marks them handed over (the thief's poll acknowledgements do not
        # apply to them: steal_round does).
        self.lease_seq += 1
        for job in moved.values():
            self._release(victim, job, route=False)
            job.worker_id = thief.worker_id  # its event names the thief
            self._move(job, Event.STEAL)
            job.stolen = True
            job.lease_seq = self.lease_seq
            job.steal_round = steal_round
            self._hold(thief, job)
        self._route(victim)
        self._route(thief)
        self._dispatch()  # the victim has room again
        return list(moved.values())

    @staticmethod
    def _steal_in_flight(worker: Worker, job: Job) -> bool:
        """A lease stolen for this worker whose steal round has not ended yet."""
        return job.steal_round > worker.steal_done

    def pace(self, worker_id: str) -> float:
        """The factor (>= 1) by which the heartbeat interval handed to this worker now stretches,
        so that all registered workers together send at most about ``heartbeat_budget``
        heartbeats a second; the worker's lease TTL stretches by the same factor from now on.

        The worker must heartbeat within the stretched interval (a paced worker re-reads it
        at least every ``heartbeat_interval``, so a shorter one handed at registration counts at
        once); one that ignores it keeps the unstretched one, which is shorter still.
        """
        worker = self.workers[worker_id]
        beats_per_interval = self.heartbeat_budget * self.heartbeat_interval
        worker.pace = max(1.0, len(self.workers) / beats_per_interval)
        return worker.pace

    def expire(self, now: float) -> list[str]:
        """Declare lost every worker silent for longer than its lease TTL (``lease_ttl`` times
        its ``pace``); returns their ids."""
        lost = [w for w in self.workers.values() if now - w.last_seen > self.lease_ttl * w.pace]
        for worker in lost:
            self._worker_move(worker, WorkerEvent.EXPIRE, now)
        unclaimed = [job_id for job_id, deadline in self.orphans.items() if deadline < now]
        for job_id in unclaimed:
            del self.orphans[job_id]
            job = self.jobs.get(job_id)  # a cancelled one may have left already
            if job is not None and job.state not in TERMINAL:
                self._lose_unleased(job, now)
        deferred, due = self._deferred, False
        while deferred and deferred[0][0] <= now:
            when, _, job = heapq.heappop(deferred)
            if job.state is _W and job.retry_at == when and self.jobs.get(job.job_id) is job:
                self._move(job, Event.RELEASE)
                due = True
        if lost or unclaimed or due:
            self._dispatch()
        return [w.worker_id for w in lost]

    def _defer(self, job: Job) -> None:
        """A retry waits out its delay, until ``retry_at`` (rule 4)."""
        heapq.heappush(self._deferred, (job.retry_at, job.num, job))

    # -- restart, retention ------------------------------------------------------------------

    def restore(
        self,
        jobs: Iterable[Job],
        next_id: int,
        now: float,
        unloaded: int = 0,
        known: Mapping[str, JobState] = MappingProxyType({}),
    ) -> None:
        """Take back the live jobs of a previous life (in id order) after a restart; the store
        holds ``unloaded`` more, queued or finished, that ``restore_counts`` and
        ``restore_queued`` take back later. Until the counts come they all count as queued:
        the queue's room and the jobs pending are not underestimated meanwhile.

        Queued jobs join the backlog, routed before anything queued since; leased and running
        ones become orphans: their worker may re-register and claim them within the lease
        TTL, else they go back to the queue. Waiting ones wait again for their dependencies
        (``known``: the stored states of those not among ``jobs``).
        """
        self.next_id = max(self.next_id, next_id)
        jobs = list(jobs)
        for job in jobs:
            self._restore(job, now)
        # Before the waiting ones look at their submissions (rule 12).
        self.unloaded = unloaded
        for job in jobs:
            if job.state is _W:
                if job.retry_at:
                    self._defer(job)
                else:
                    self._wait_on(job, known, now)
        self._dispatch()

    def restore_counts(self, stored: Iterable[StoredCount]) -> None:
        """Count the finished jobs of the previous life (per owner, submission and state),
        which stay in the store; ``restore`` counted them as queued ones not read back yet.
        Every submission of the store is known from now on (its live jobs count as they
        enter)."""
        for owner, number, state, count, last, submitted_at in stored:
            submission = self._submission(number, owner, submitted_at, last)
            submission.submitted_at = min(submission.submitted_at, submitted_at)
            if state not in TERMINAL:
                continue
            _step(state, Event.RESTORE, f"{count} stored jobs")
            self._owner(owner).counts[state] += count
            submission.counts[state] += count
            self._counts[state] += count
            self.unloaded -= count

    def restore_queued(self, jobs: list[Job], *, through: int | None = None) -> None:
        """Queued jobs of a previous life that ``restore`` left in the store join the backlog,
        in id order. ``through``: every such job numbered up to it is in memory now. A job
        read back early (a call needed it, see ``loaded``) is skipped when it comes again."""
        early = self._early
        fresh = [job for job in jobs if job.job_id not in self.jobs and job.job_id not in early]
        self._enter_queued(fresh, Event.RESTORE)
        self.unloaded -= len(fresh)
        if through is None:
            early.update(job.job_id for job in fresh)
        else:
            self.loaded_through = through
        self._dispatch()

    def restored(self, now: float = 0.0) -> None:
        """Every queued job of a previous life is back (the store holds no more of them): the
        submissions waited for meanwhile are counted whole, and their dependents take their
        next step (rule 12)."""
        self.unloaded = 0
        self._early.clear()
        waited = [key for key in self._dependents if isinstance(key, int)]
        if waited:
            self._ended.extend((key, None) for key in waited)
            self._settle(now)
            self._dispatch()

    def loaded(self, job_id: str) -> bool:
        """Whether the job is in memory if it is live: not a queued job of a previous life that
        only the store holds yet (which ``restore_queued`` takes)."""
        if not self.unloaded or job_id in self.jobs or job_id in self._early:
            return True
        try:
            return wire.job_number(job_id) <= self.loaded_through
        except ValueError:
            return True  # no job id: no job

    def start_orphan_clock(self, now: float) -> None:
        """Give restored leases a full lease TTL from now, when workers can reach us again.

        Restoring a large store takes time before the controller listens; counting the TTL from
        then would re-run jobs whose workers were simply waiting to reconnect.
        """
        for job_id in self.orphans:
            self.orphans[job_id] = now + self.lease_ttl

    def evict(self, jobs: Iterable[Job]) -> None:
        """Drop finished jobs from memory once they are stored (their details live there).

        A job changed since the commit that stored it (dirty) stays until its change is stored
        too: a job that finished while the commit of its running state was under way would
        otherwise be read back from the store as running, and a waiter would miss its end. A
        cancelled job whose worker has not confirmed the stop yet stays: it still holds room.
        """
        for job in jobs:
            if self._evictable(job):
                del self.jobs[job.job_id]

    def _evictable(self, job: Job) -> bool:
        if (
            job.state not in TERMINAL
            or self.jobs.get(job.job_id) is not job
            or job.job_id in self._dirty
        ):
            return False
        worker = self.workers.get(job.worker_id)
        return worker is None or worker.leases.get(job.job_id) is not job

    def forget(self, job_ids: Iterable[str]) -> list[str]:
        """Remove finished jobs from memory (without a store); returns the ids removed (live
        ones never are, nor those ``evict`` would keep)."""
        removed = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and self._evictable(job):
                self._leave(job, Event.FORGET)
                removed.append(job_id)
        return removed

    def forgotten(
        self, by_state: Mapping[tuple[str, int, JobState], int], job_ids: Iterable[str]
    ) -> None:
        """The store deleted finished jobs (``by_state`` counts them per owner, submission
        and state, ``job_ids`` names those that may be in memory): they no longer count, and
        leave memory as ``evict`` allows."""
        for (owner, number, state), count in by_state.items():
            _step(state, Event.FORGET, f"{count} stored jobs")
            self._owner(owner).counts[state] -= count
            self._counts[state] -= count
            submission = self.submissions.get(number)
            if submission is not None:
                submission.counts[state] -= count
                self._left(number)
        self.evict(job for job_id in job_ids if (job := self.jobs.get(job_id)) is not None)

    def finished_before(self, when: float, owner: str | None = None) -> list[str]:
        """Ids of finished jobs in memory (of ``owner``; None: of anyone) that ended before
        ``when``."""
        return [
            job.job_id
            for job in self.jobs.values()
            if job.state in TERMINAL
            and 0 < job.finished_at < when
            and (owner is None or job.owner == owner)
        ]

    def remove_worker(self, worker_id: str, now: float) -> None:
        """Forget a worker; its leases go back to the queue (a lost attempt for delivered ones)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        self._worker_move(worker, WorkerEvent.REMOVE, now)
        self._dispatch()

    # -- lease bookkeeping -------------------------------------------------------------------

    def _release(self, worker: Worker, job: Job, *, route: bool = True) -> None:
        """The worker no longer holds the job; ``route=False``: the caller tells the router of
        the worker's load itself (``_route``), before anything is routed."""
        del worker.leases[job.job_id]
        if job.request is not None:
            resources.charge(worker.extra, job.request, -1)
        worker.cancel_notices.pop(job.job_id, None)
        if route:
            self._route(worker)

    def _route(self, worker: Worker) -> None:
        """Tell the router the worker's load, unless it is out of routing (draining, gone,
        reserved: rule 11)."""
        if worker.state is WorkerState.REGISTERED and worker.worker_id not in self._reserved:
            self.router.update(worker.worker_id, worker.load, worker.capacity)

    @staticmethod
    def _hold(worker: Worker, job: Job) -> None:
        """The worker holds the job's lease (the job entered or stayed LEASED or RUNNING)."""
        job.worker_id = worker.worker_id
        worker.leases[job.job_id] = job
        if job.request is not None:
            resources.charge(worker.extra, job.request, 1)

    def _lose(self, worker: Worker, job: Job, now: float, *, counted: bool) -> None:
        """The worker no longer has this job: re-queue it (or fail it past the crash limit)."""
        self._release(worker, job)
        if job.state in TERMINAL:
            return
        if counted:
            self._lose_unleased(job, now)
        else:
            self._move(job, Event.LOSE)

    def _lose_unleased(self, job: Job, now: float) -> None:
        """A started attempt was lost with its worker: re-queue, or fail past the crash limit."""
        job.lost_count += 1
        limit = job.crash_limit or self.crash_limit
        if job.lost_count >= limit:
            job.reason = StopReason.WORKER_LOST.value
            job.error_message = f"its worker was lost {job.lost_count} times (crash limit {limit})"
            self._move(job, Event.CRASH_LIMIT, now)
        else:
            kept = earlier_attempts(job)
            started_at = job.started_at if job.state is JobState.RUNNING else 0.0
            reason = StopReason.WORKER_LOST.value
            kept.append(Attempt(job.attempt, job.worker_id, "", "", started_at, now, reason=reason))
            job.earlier_outputs = json.dumps(kept)
            self._move(job, Event.LOSE)

    def _dispatch(self) -> None:
        """Route queued jobs to workers with room, as the router decides.

        The worker the router picks takes one job per idle slot it has (at least one job, never
        beyond its capacity): they start there at once, as they would on any other idle slot,
        and one poll and one report carry them all instead of one each per worker. A job asking
        for resources goes where it fits (``_place``, rule 11).
        """
        rotation = self._rotation
        if self._reserved:
            self._serve_reservations()
        stuck: set[Lane] = set()  # lanes whose next job fits no worker now
        while rotation:
            worker_id = self.router.pick()
            if worker_id is None:
                if self._place_heads(stuck):
                    continue  # a reservation changes what the router may pick
                return
            worker = self.workers[worker_id]
            take = max(1, min(worker.slots, worker.capacity) - worker.load)
            while take > 0 and rotation:
                lane = self._next_lane(stuck)
                if lane is None:
                    break
                while take > 0 and lane.ready:
                    queue = lane.backlog or lane.queue
                    if not queue:  # its queued jobs fit no worker (``_unfit``)
                        stuck.add(lane)
                        break
                    job = queue.popleft()
                    if job.state is not JobState.QUEUED:
                        continue
                    if job.request is not None:
                        placed = self._place(job, worker, queue)
                        if placed is None and job.job_id in self._unfit:
                            continue
                        if placed is None:
                            stuck.add(lane)
                            break
                        if placed is worker:
                            take -= job.request.get(resources.CPUS, 1)
                        if worker_id in self._reserved:
                            take = 0
                        continue
                    take -= 1
                    job.worker_id = worker_id  # _hold, inline on the hot path (before the event)
                    self._move(job, Event.LEASE)
                    worker.leases[job.job_id] = job
                    worker.outbox.append(job)
            self._route(worker)
            self._wakeups.add(worker_id)
            if stuck and self._next_lane(stuck, serve=False) is None:
                return

    def _next_lane(self, stuck: set[Lane], *, serve: bool = True) -> Lane | None:
        """The lane that fills the next batch (rule 10): of the highest priority in the
        rotation with a lane not ``stuck`` (lower ones backfill behind a stuck one: rule 11),
        the first lane, unless it had the last batch (it then waits for the others' turns
        first). None: every lane is stuck. ``serve``: it takes the batch."""
        rotation = self._rotation
        if not stuck:
            level = rotation[max(rotation)] if len(rotation) > 1 else next(iter(rotation.values()))
        else:
            for priority in sorted(rotation, reverse=True):
                level = rotation[priority]
                if any(lane not in stuck for lane in level.values()):
                    break
            else:
                return None
        lane = next(iter(level.values()))
        if not serve:
            return lane
        if lane is self._served and len(level) > 1:
            del level[lane.owner]
            level[lane.owner] = lane
            lane = next(iter(level.values()))
        if stuck and lane in stuck:
            lane = next(free for free in level.values() if free not in stuck)
        self._served = lane
        return lane

    def _place_heads(self, stuck: set[Lane]) -> bool:
        """No worker the router would pick has room: the jobs asking for resources at the head
        of their lanes may still fit another (the router counts CPUs only). Returns whether
        one was leased or a worker reserved: what the router may pick changed."""
        changed = False
        lanes = [lane for level in self._rotation.values() for lane in level.values()]
        for lane in sorted(lanes, key=_PRIORITY_OF, reverse=True):
            while lane.ready and lane not in stuck:
                queue = lane.backlog or lane.queue
                if not queue:
                    break
                job = queue[0]
                if job.state is not JobState.QUEUED:
                    queue.popleft()
                    continue
                if job.request is None:
                    break
                queue.popleft()
                reserved = len(self._reserved)
                if self._place(job, None, queue) is not None:
                    changed = True
                elif job.job_id not in self._unfit:
                    changed = changed or len(self._reserved) > reserved
                    break
        return changed

    def _fits(self, worker: Worker, request: resources.Request) -> bool:
        """Whether the worker has room for the request now (rule 5)."""
        return request.get(resources.CPUS, 1) <= worker.slots and resources.fits(
            request, worker.free()
        )

    def _place(self, job: Job, worker: Worker | None, queue: deque[Job]) -> Worker | None:
        """Lease a job that asks for resources to the worker the router picked, or else to
        another with room for it; returns the worker. None: it fits none now and is back at the
        head of ``queue``, with a worker reserved for it if one is free to be, or it fits no
        registered worker at all and waits in ``_unfit`` (rule 11)."""
        request = job.request
        assert request is not None
        target = worker if worker is not None and self._fits(worker, request) else None
        if target is None:
            target = next(
                (
                    w
                    for w in self.workers.values()
                    if w.state is WorkerState.REGISTERED
                    and w.worker_id not in self._reserved
                    and self._fits(w, request)
                ),
                None,
            )
        if target is not None:
            for reserved_by, reserved in list(self._reserved.items()):
                if reserved is job:  # it fits elsewhere first
                    self._unreserve(reserved_by)
            self._lease(job, target)
            if target is not worker:
                self._route(target)
            return target
        could = [
            w
            for w in self.workers.values()
            if w.state is WorkerState.REGISTERED and resources.fits(request, w.totals())
        ]
        if not could:
            self._unfit[job.job_id] = job
            return None
        queue.appendleft(job)
        if all(held is not job for held in self._reserved.values()):
            free = [w for w in could if w.worker_id not in self._reserved]
            if free:
                chosen = min(free, key=lambda w: w.load)
                self._reserved[chosen.worker_id] = job
                self.router.remove(chosen.worker_id)
        return None

    def _lease(self, job: Job, worker: Worker) -> None:
        job.worker_id = worker.worker_id  # the lease's event names it
        self._move(job, Event.LEASE)
        self._hold(worker, job)
        worker.outbox.append(job)
        self._wakeups.add(worker.worker_id)

    def _serve_reservations(self) -> None:
        """Lease each reserved worker its job once it fits there; a reservation whose job left
        the queue otherwise ends (rule 11)."""
        for worker_id, job in list(self._reserved.items()):
            worker = self.workers[worker_id]
            request = job.request
            if (
                job.state is not JobState.QUEUED
                or self.jobs.get(job.job_id) is not job
                or request is None
                or not resources.fits(request, worker.totals())
            ):
                self._unreserve(worker_id)
            elif self._fits(worker, request):
                lane = self._owners[job.owner].lanes[job.priority]
                # It waits at the head of its lane (rule 11), unless a job lost or retried
                # went back in front of it meanwhile.
                for queue in (lane.backlog, lane.queue):
                    if queue and queue[0] is job:
                        queue.popleft()
                        break
                else:
                    (lane.backlog if job in lane.backlog else lane.queue).remove(job)
                self._lease(job, worker)
                self._unreserve(worker_id)

    def _unreserve(self, worker_id: str) -> None:
        """The worker is no longer reserved: back in the router if it is routed."""
        if self._reserved.pop(worker_id, None) is not None:
            self._route(self.workers[worker_id])

    def _unpark(self) -> None:
        """Jobs that fit no worker go back to the head of their queues, to be tried again."""
        for job in reversed(list(self._unfit.values())):
            if job.state is JobState.QUEUED and self.jobs.get(job.job_id) is job:
                lane = self._owners[job.owner].lanes[job.priority]
                (lane.backlog or lane.queue).appendleft(job)
        self._unfit.clear()

    def waiting(self, job: Job) -> str:
        """Why a queued job waits beyond its turn, as status shows it; "" when it does not."""
        if job.state is not JobState.QUEUED or job.request is None:
            return ""
        if job.job_id in self._unfit:
            return f"no registered worker has {resources.describe(job.request)}"
        for worker_id, reserved in self._reserved.items():
            if reserved is job:
                return f"waiting for {resources.describe(job.request)} on {worker_id} (reserved)"
        return ""

    def could_fit(self, request: resources.Request) -> bool:
        """Whether a registered worker has as much as ``request`` in all (free or not)."""
        return any(
            w.state is WorkerState.REGISTERED and resources.fits(request, w.totals())
            for w in self.workers.values()
        )
