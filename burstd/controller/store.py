"""The controller's durable store: every job, in SQLite (WAL mode) in the state directory.

Reads are plain synchronous code (the controller calls them from a worker thread). Writes are
awaited: ``Writes`` carries them out in the store process (``burstd.controller.store_child``),
one transaction per group commit (see ``burstd.controller.writer``). What it promises:

- A write returns only when it is on disk (``synchronous=FULL``): what was acknowledged after it
  survives a crash of the controller or of the machine.
- The job id counter never goes back: ``next_id`` is stored with the jobs that used it.
- A directory that is not a burst state directory, or a damaged database, is refused with a
  ``StoreError`` naming the path; nothing is ever reset silently.
- One controller at a time: the directory is locked while a store is open (and while its store
  process may still write).
"""

from __future__ import annotations

import fcntl
import json
import operator
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from burstd import wire
from burstd.controller.table import Job, JobState, StoredCount
from burstd.credentials import private_dir, private_file
from burstd.resources_proto import request_of_spec

if TYPE_CHECKING:
    from burstd.controller.store_process import StoreProcess

# 2: the staged table; 3: jobs.earlier_outputs; 4: the drained table; 5: the events table; 6: the
# jobs' owners; 7: their failure policy; 8: their dependencies; 9: their submissions and
# resource usage; 10: their priorities and retry delays; 11: their submissions' max_fails
# (older versions are migrated when opened)
SCHEMA_VERSION = 11
APPLICATION_ID = 0x42555253  # "BURS": marks the file as ours (PRAGMA application_id)
DB_NAME = "burst.db"
LOCK_NAME = "burst.lock"
CACHE_KIB = 32 * 1024
LOCK_WAIT = 1.0  # seconds: see lock_state_dir

_COLUMNS = (
    "num",
    "spec",
    "retries",
    "name",
    "submitted_at",
    "owner",
    "retry_on_exit",
    "crash_limit",
    "after",
    "after_any",
    "submission",
    "priority",
    "retry_delay",
    "max_fails",
    "state",
    "attempt",
    "worker_id",
    "started_at",
    "finished_at",
    "exit_code",
    "signal",
    "reason",
    "error_message",
    "stdout_path",
    "stderr_path",
    "lost_count",
    "retried",
    "stolen",
    "earlier_outputs",
    "user_cpu",
    "system_cpu",
    "max_rss_kib",
    "retry_at",
)
# Set at submission and never changed: those before it.
_FIRST_MUTABLE = _COLUMNS.index("state")
_MUTABLE = _COLUMNS[_FIRST_MUTABLE:]
# What a store made before jobs had owners gets (see ``Store._check``).
_OWNER_COLUMN = "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
# Large submissions being stored a slice per commit (``StoreWriter.stage``): the numbers from
# ``first`` to ``stop`` (excluded) are not accepted yet, and a start deletes them.
_STAGED = "CREATE TABLE staged (first INTEGER PRIMARY KEY, stop INTEGER NOT NULL);"
_ADD_EARLIER_OUTPUTS = "ALTER TABLE jobs ADD COLUMN earlier_outputs TEXT NOT NULL DEFAULT ''"
_ADD_POLICY = (
    "ALTER TABLE jobs ADD COLUMN retry_on_exit TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN crash_limit INTEGER NOT NULL DEFAULT 0",
)
_ADD_AFTER = (
    "ALTER TABLE jobs ADD COLUMN after TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN after_any INTEGER NOT NULL DEFAULT 0",
)
# The worker ids an admin drained (``JobTable.drained``).
_DRAINED = "CREATE TABLE drained (worker_id TEXT PRIMARY KEY);"
# The event log (``JobTable.take_events``), numbered from 1 in order; the oldest are deleted
# beyond the configured bound (``events_max``).
_EVENTS = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    detail TEXT NOT NULL
);"""
_EVENT_COLUMNS = "seq, time, kind, job_id, worker_id, attempt, detail"
# What a store made before jobs had submissions gets: each job is a submission of its own.
_SUBMISSION_COLUMNS = (
    "ALTER TABLE jobs ADD COLUMN submission INTEGER NOT NULL DEFAULT 0",
    "UPDATE jobs SET submission = num",
    "ALTER TABLE jobs ADD COLUMN user_cpu REAL NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN system_cpu REAL NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN max_rss_kib INTEGER NOT NULL DEFAULT 0",
)
_ADD_PRIORITY = (
    "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN retry_delay REAL NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN retry_at REAL NOT NULL DEFAULT 0",
)
_ADD_MAX_FAILS = "ALTER TABLE jobs ADD COLUMN max_fails INTEGER NOT NULL DEFAULT 0"
# One transaction: a crash while the first start creates it leaves an empty database (which the
# next start fills), never half a schema (which it would refuse as a foreign file).
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE jobs (
    num INTEGER PRIMARY KEY,
    spec BLOB NOT NULL,
    retries INTEGER NOT NULL,
    name TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    owner TEXT NOT NULL,
    retry_on_exit TEXT NOT NULL,
    crash_limit INTEGER NOT NULL,
    after TEXT NOT NULL,
    after_any INTEGER NOT NULL,
    submission INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    retry_delay REAL NOT NULL DEFAULT 0,
    max_fails INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    exit_code INTEGER,
    signal INTEGER NOT NULL,
    reason TEXT NOT NULL,
    error_message TEXT NOT NULL,
    stdout_path TEXT NOT NULL,
    stderr_path TEXT NOT NULL,
    lost_count INTEGER NOT NULL,
    retried INTEGER NOT NULL,
    stolen INTEGER NOT NULL,
    earlier_outputs TEXT NOT NULL DEFAULT '',
    user_cpu REAL NOT NULL DEFAULT 0,
    system_cpu REAL NOT NULL DEFAULT 0,
    max_rss_kib INTEGER NOT NULL DEFAULT 0,
    retry_at REAL NOT NULL DEFAULT 0
);
{_STAGED}
{_DRAINED}
{_EVENTS}
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('next_id', 1);
PRAGMA application_id = {APPLICATION_ID};
COMMIT;
"""
# A new job has only been submitted, and perhaps leased: its other columns are as in any new
# Job, and go into the statement as constants rather than as parameters bound row by row (which
# halves the insert's cost). A new job changed otherwise before its commit is updated after it.
_NEW = _COLUMNS[: _FIRST_MUTABLE + 3]
_FRESH = Job(job_id="", num=0, spec=b"", retries=0, name="", submitted_at=0.0)


def _literals(columns: Sequence[str]) -> str:
    """The columns of a new ``Job`` as SQL constants."""

    def literal(value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return str(int(value) if isinstance(value, bool) else value)

    return ", ".join(literal(getattr(_FRESH, column)) for column in columns)


_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_NEW))}, "
    f"{_literals(_COLUMNS[len(_NEW) :])})"
)
# A run of new jobs as they were submitted (queued, never leased), numbered one after the
# other, of one submission (an array, usually): one statement for the run, whose rows SQLite
# makes itself, the specs read through ``run_spec`` (a Python function over the run's list).
# That costs SQLite less than a row of ``_INSERT``'s 8 bound values (docs/benchmarks.md), and
# spares the event loop building a tuple a job (``inserts``).
_INSERT_RUN = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) SELECT ? + i, run_spec(i), ?, ?, ?, ?, ?, ?, "
    "'', 0, ?, ?, ?, ?, "
    f"{_literals(_COLUMNS[_FIRST_MUTABLE:])} FROM n"
)
_UPDATE = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _MUTABLE)} WHERE num = ?"
_LEASED = ("state", "attempt", "worker_id")
_UPDATE_LEASED = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _LEASED)} WHERE num = ?"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
# Reads leave out the rows of a submission still being staged: it is not accepted yet.
_ACCEPTED = "NOT EXISTS (SELECT 1 FROM staged WHERE num >= first AND num < stop)"
_LIVE = ("waiting", "queued", "leased", "running")
# A stored state's JobState: a dict lookup, where calling the enum costs a listing ~10% more.
_STATES = {state.value: state for state in JobState}


Run = tuple[int, float, int, str, str, str, int, int, int, float, int, list[bytes]]
"""New jobs as they were submitted, one after the other: (first number, submitted_at, retries,
name, owner, retry_on_exit, crash_limit, submission, priority, retry_delay, max_fails, specs);
see ``inserts``."""


class Commit(NamedTuple):
    """What one group commit writes (see ``Writes.write``)."""

    new_rows: list[tuple[object, ...]]
    changed_rows: list[tuple[object, ...]]
    leased_rows: list[tuple[object, ...]]
    next_id: int
    # Staged submissions (first, stop): begun in this commit, ended by it (their last rows are
    # in ``new_rows``), and dropped (their rows deleted: the submission was refused).
    begun: Sequence[tuple[int, int]] = ()
    ended: Sequence[tuple[int, int]] = ()
    dropped: Sequence[tuple[int, int]] = ()
    # New jobs as they were submitted, in runs (see ``inserts``): with ``new_rows``, every job
    # the commit inserts.
    new_runs: Sequence[Run] = ()
    # Worker ids drained (True) or undrained by an admin (``JobTable.take_drains``).
    drains: Sequence[tuple[str, bool]] = ()
    # Events to insert (``StoredEvent``'s fields), and the number below which the stored ones
    # are deleted (0: none).
    events: Sequence[tuple[object, ...]] = ()
    events_before: int = 0

    @property
    def inserted(self) -> int:
        """How many jobs the commit inserts."""
        return len(self.new_rows) + sum(len(run[-1]) for run in self.new_runs)


class StoredEvent(NamedTuple):
    """One event of the log, as stored."""

    seq: int
    time: float
    kind: str
    job_id: str
    worker_id: str
    attempt: int
    detail: str


class StoreError(Exception):
    """The state directory cannot be used; the message names it and says why."""


# The columns are named as the job's attributes: a row is read off a job in one C call (building
# rows was a tenth of the event loop's time under load when each was a Python function).
#
# Python 3.11's sqlite3 binds an int, float or str at once, but any other value (bytes, bool,
# None, a str subclass) only after it looked for an adapter, and that look raises and clears an
# AttributeError when none is registered: about as much CPU as building the row. So the state
# goes in as its plain str (``_value_``), and bool and bytes get adapters that return what
# sqlite3 would bind anyway (an int, the bytes), which skips the failing look.
_FIELDS = tuple("state._value_" if column == "state" else column for column in _COLUMNS)
sqlite3.register_adapter(bool, int)
sqlite3.register_adapter(bytes, bytes)
row: Callable[[Job], tuple[object, ...]] = operator.attrgetter(*_FIELDS[: len(_NEW)])
"""A new job's parameters for ``_INSERT``: what its submission and a first lease set."""
changed_row: Callable[[Job], tuple[object, ...]] = operator.attrgetter(
    *_FIELDS[_FIRST_MUTABLE:], "num"
)
"""A changed job's parameters for ``_UPDATE``: its mutable columns, then its number."""
leased_row: Callable[[Job], tuple[object, ...]] = operator.attrgetter(
    *_FIELDS[_FIRST_MUTABLE : _FIRST_MUTABLE + len(_LEASED)], "num"
)
"""A job's parameters for ``_UPDATE_LEASED``, when a lease is its only change (``Changes``)."""


def inserts(jobs: Iterable[Job]) -> tuple[list[tuple[object, ...]], list[Run]]:
    """How ``Writes.write`` inserts these new jobs: a ``row`` each for those leased (or changed
    otherwise) since their submission, and runs (``Run``) of those still as submitted that
    follow each other in one submission (those with dependencies go as rows)."""
    rows: list[tuple[object, ...]] = []
    runs: list[Run] = []
    specs: list[bytes] = []
    stop, submitted_at, retries, name, owner, on_exit, crashes = -1, 0.0, 0, "", "", "", 0
    submission, priority, delay, max_fails = -1, 0, 0.0, 0
    for job in jobs:
        # A lease is what sets the attempt first, and it never goes back to 0.
        if job.attempt or job.state is not JobState.QUEUED or job.after:
            rows.append(row(job))
        elif (
            job.num == stop
            and job.submitted_at == submitted_at
            and job.retries == retries
            and job.name == name
            and job.owner == owner
            and job.retry_on_exit == on_exit
            and job.crash_limit == crashes
            and job.submission == submission
            and job.priority == priority
            and job.retry_delay == delay
            and job.max_fails == max_fails
        ):
            specs.append(job.spec)
            stop += 1
        else:
            specs = [job.spec]
            stop, submitted_at, retries = job.num + 1, job.submitted_at, job.retries
            name, owner = job.name, job.owner
            on_exit, crashes, submission = job.retry_on_exit, job.crash_limit, job.submission
            priority, delay, max_fails = job.priority, job.retry_delay, job.max_fails
            runs.append(
                (job.num, submitted_at, retries, name, owner, on_exit, crashes, submission,
                 priority, delay, max_fails, specs)
            )  # fmt: skip
    return rows, runs


def _job(row: tuple[Any, ...]) -> Job:
    (num, spec, retries, name, submitted_at, owner, retry_on_exit, crash_limit, after, after_any,
     submission, priority, retry_delay, max_fails, state, attempt, worker_id, started_at,
     finished_at, exit_code, signal, reason, error_message, stdout_path, stderr_path, lost_count,
     retried, stolen, earlier_outputs, user_cpu, system_cpu, max_rss_kib,
     retry_at) = row  # fmt: skip
    return Job(
        job_id=wire.job_id(num),
        num=num,
        spec=bytes(spec),
        retries=retries,
        name=name,
        submitted_at=submitted_at,
        state=_STATES[state],
        attempt=attempt,
        worker_id=worker_id,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=exit_code,
        signal=signal,
        reason=reason,
        error_message=error_message,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        lost_count=lost_count,
        retried=retried,
        stolen=bool(stolen),
        earlier_outputs=earlier_outputs,
        owner=owner,
        retry_on_exit=retry_on_exit,
        crash_limit=crash_limit,
        after=after,
        after_any=bool(after_any),
        request=request_of_spec(spec),
        submission=submission,
        user_cpu=user_cpu,
        system_cpu=system_cpu,
        max_rss_kib=max_rss_kib,
        priority=priority,
        retry_delay=retry_delay,
        retry_at=retry_at,
        max_fails=max_fails,
    )


def _numbers(job_ids: Iterable[str]) -> str:
    """The numbers of the job ids, as the JSON array that queries read with ``json_each``
    (strings that are no job id name no job: left out)."""
    numbers = []
    for job_id in job_ids:
        try:
            numbers.append(wire.job_number(job_id))
        except ValueError:
            continue
    return json.dumps(numbers)


def lock_state_dir(state_dir: Path) -> int:
    """Make the state directory (0700, see ``credentials.private_dir``) and lock it for one
    controller; returns the lock's file descriptor (the lock lasts until it is closed).

    The store process of a controller that was just killed holds the lock until its
    transaction under way is done (milliseconds): a restart right after waits for that.
    Raises ``StoreError`` naming the directory."""
    try:
        private_dir(state_dir)
        lock = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreError(f"{state_dir}: cannot use as state directory: {error.strerror}") from None
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except OSError:
            if time.monotonic() > deadline:
                os.close(lock)
                raise StoreError(f"{state_dir}: in use by another controller") from None
            time.sleep(0.02)


class Store:
    """One open state directory. Not thread-safe: use it from one thread at a time."""

    def __init__(self, state_dir: Path, *, first_owner: str = "") -> None:
        """Open (or create) the store in ``state_dir``. ``first_owner``: the owner given to
        the jobs of a store made before jobs had owners (the controller's admin user)."""
        self.state_dir = state_dir
        self._first_owner = first_owner
        self.path = state_dir / DB_NAME
        self._lock = lock_state_dir(state_dir)
        try:
            # SQLite gives the -wal and -shm files the database file's mode.
            private_file(self.path)
            self._db = self._open()
            # Reads (status, list) come from the event loop while the store process writes:
            # they get their own connection, which WAL lets read beside the writer.
            self._read = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            os.close(self._lock)
            raise
        # Imported here, not with the module: the store process imports this module for
        # ``Writes``, and starts faster without trio (see ``store_child``).
        from burstd.controller.store_process import StoreProcess

        self._writes: StoreProcess = StoreProcess(self.path, self._lock)

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: cannot open ({error})") from None
        try:
            # A database without a single table is new (or its creation was cut short).
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables == 0 and self._application_id(db) == 0:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            else:
                self._check(db)
                # Stores made before 2026-11-28 index the live states: every lease, start and
                # result moved a row in that index, which doubled the store's CPU per job, and
                # only a restart read it (which scans the table for its counts anyway). Those
                # made before 2026-11-29 index the end times too, which cost each result a
                # third of its update (``Writes.forget_finished`` does without).
                db.execute("DROP INDEX IF EXISTS jobs_live")
                db.execute("DROP INDEX IF EXISTS jobs_finished")
                self._drop_unfinished_stages(db)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as error:
            db.close()  # and with it a half-done creation, rolled back
            raise StoreError(f"{self.path}: not a usable burst state database ({error})") from None
        return db

    @staticmethod
    def _application_id(db: sqlite3.Connection) -> int:
        (app_id,) = db.execute("PRAGMA application_id").fetchone()
        return int(app_id)

    def _check(self, db: sqlite3.Connection) -> None:
        if self._application_id(db) != APPLICATION_ID:
            raise StoreError(f"{self.path}: not a burst state database (foreign file)")
        (result,) = db.execute("PRAGMA quick_check").fetchone()
        if result != "ok":
            raise StoreError(f"{self.path}: damaged database ({result})")
        version = self._meta(db, "schema_version")
        if version in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
            with _transaction(db):
                if version == 1:
                    db.execute(_STAGED)
                if version <= 2:
                    db.execute(_ADD_EARLIER_OUTPUTS)
                if version <= 3:
                    db.execute(_DRAINED)
                if version <= 4:
                    db.execute(_EVENTS)
                if version <= 5:
                    db.execute(_OWNER_COLUMN)
                    db.execute("UPDATE jobs SET owner = ?", (self._first_owner,))
                if version <= 6:
                    for statement in _ADD_POLICY:
                        db.execute(statement)
                if version <= 7:
                    for statement in _ADD_AFTER:
                        db.execute(statement)
                if version <= 8:
                    for statement in _SUBMISSION_COLUMNS:
                        db.execute(statement)
                if version <= 9:
                    for statement in _ADD_PRIORITY:
                        db.execute(statement)
                db.execute(_ADD_MAX_FAILS)
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
                )
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version}, this burst reads {SCHEMA_VERSION}"
            )

    @staticmethod
    def _drop_unfinished_stages(db: sqlite3.Connection) -> None:
        """A large submission whose storing was cut short was never accepted: its rows go."""
        with _transaction(db):
            for first, stop in db.execute("SELECT first, stop FROM staged").fetchall():
                _drop_stage(db, first, stop)

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise sqlite3.DatabaseError(f"meta key {key} missing")
        return int(row[0])

    def close(self) -> None:
        self._writes.close()
        self._read.close()
        self._db.close()
        os.close(self._lock)

    # -- reads -------------------------------------------------------------------------------

    def next_id(self) -> int:
        return self._meta(self._db, "next_id")

    def live_jobs(self) -> list[Job]:
        """Jobs not finished yet, in id order."""
        with closing(self.snapshot()) as snapshot:
            return snapshot.jobs(_LIVE)

    def snapshot(self) -> Snapshot:
        """The store as it is now, for a restart to read back while it serves."""
        return Snapshot(self.path)

    def get(self, job_id: str) -> Job | None:
        found = self.get_many([job_id])
        return found[0] if found else None

    def get_many(self, job_ids: Iterable[str]) -> list[Job]:
        """The stored jobs among these ids (unknown ones are left out), in one query."""
        return self._numbered(_numbers(job_ids))

    def _numbered(self, numbers: str) -> list[Job]:
        """The stored jobs of these numbers (a JSON array), in one query."""
        rows = self._read.execute(
            f"{_SELECT} WHERE num IN (SELECT value FROM json_each(?)) AND {_ACCEPTED}",
            (numbers,),
        )
        return [_job(row) for row in rows]

    def list(
        self,
        state: str | None,
        after: str,
        limit: int,
        owner: str | None = None,
        *,
        submission: tuple[int, int] | None = None,
        name: str | None = None,
        newer: Callable[[str], Job | None] | None = None,
    ) -> list[Job]:
        """Jobs after the one named ``after`` (a job id, or empty: from the first), of one
        state, of one owner, of one name (None: any), and of one submission: (its number, its
        highest job number), the range its jobs are in.

        ``newer``: the caller's own copy of a job by id, if it holds one (its job table's
        lookup, a dict read: safe from this reading thread), taken instead of the stored row,
        which is then not read at all: the numbers are read first, then the rows of the jobs
        the caller does not hold (a listing of queued jobs holds them all, and reading whole
        rows costs ten times reading numbers). A job forgotten between the two reads is left
        out."""
        where = ["num > ?"]
        params: list[object] = [wire.job_number(after) if after else 0]
        if submission is not None:
            where.append("num BETWEEN ? AND ?")
            params += submission
        for column, value in (
            ("state", state),
            ("owner", owner),
            ("submission", submission and submission[0]),
            ("name", name),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        matching = f"WHERE {' AND '.join(where)} AND {_ACCEPTED} ORDER BY num LIMIT ?"
        if newer is None:
            rows = self._read.execute(f"{_SELECT} {matching}", (*params, limit))
            return [_job(row) for row in rows]
        numbers = self._read.execute(f"SELECT num FROM jobs {matching}", (*params, limit))
        held = [(num, newer(wire.job_id(num))) for (num,) in numbers]
        missing = [num for num, job in held if job is None]
        stored = {job.num: job for job in self._numbered(json.dumps(missing))} if missing else {}
        return [job for num, held_job in held if (job := held_job or stored.get(num)) is not None]

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (owner, state)."""
        with closing(self.snapshot()) as snapshot:
            counts: Counter[tuple[str, str]] = Counter()
            for stored in snapshot.counts():
                counts[stored.owner, stored.state.value] += stored.jobs
            return dict(counts)

    def drained(self) -> set[str]:
        """The worker ids an admin drained."""
        return {worker_id for (worker_id,) in self._db.execute("SELECT worker_id FROM drained")}

    def last_event(self) -> int:
        """The number of the newest stored event (0: none)."""
        (seq,) = self._db.execute("SELECT ifnull(max(seq), 0) FROM events").fetchone()
        return int(seq)

    def events(self, after: int, job_id: str, worker_id: str, limit: int) -> Sequence[StoredEvent]:
        """Up to ``limit`` stored events numbered above ``after``, in order, of this job and
        worker (empty: any)."""
        rows = self._read.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ?"
            " AND (? = '' OR job_id = ?) AND (? = '' OR worker_id = ?) ORDER BY seq LIMIT ?",
            (after, job_id, job_id, worker_id, worker_id, limit),
        )
        return [StoredEvent(*row) for row in rows]

    # -- writes: in the store process (``burstd.controller.store_child``) -------------------

    @property
    def process_id(self) -> int | None:
        """The store process's id while it runs."""
        return self._writes.pid

    def start_writes(self) -> None:
        """Start the store process now rather than at the first write (``StoreProcess.start``)."""
        self._writes.start()

    async def send(self, commit: Commit) -> None:
        """Start ``Writes.write`` of the commit's rows in the store process."""
        await self._writes.send("write", *commit)

    async def written(self) -> None:
        """Return once the commit sent last is on disk; raises ``sqlite3.Error`` if it failed."""
        await self._writes.receive()

    async def forget(self, job_ids: Iterable[str]) -> Counter[tuple[str, int, str]]:
        """Delete finished jobs by id (live ones never are); returns how many, by owner,
        submission and state."""
        return Counter(await self._writes.call("forget", _numbers(job_ids)))

    async def forget_finished(
        self, finished_before: float, owner: str | None = None
    ) -> Counter[tuple[str, int, str]]:
        """Delete every finished job (of ``owner``; None: of everyone) that ended before the
        given time; counts by owner, submission and state."""
        return Counter(await self._writes.call("forget_finished", finished_before, owner))


class Snapshot:
    """The store as it was when a restart began, on a connection of its own: one read
    transaction, which no later commit changes (WAL), so that a restart counts and reads back
    the jobs of its previous life in a thread while it serves and stores new ones. Only
    ``total`` is read at once (SQLite counts the rows without reading them)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("BEGIN")
        (self.total,) = self._db.execute("SELECT count(*) FROM jobs").fetchone()

    def jobs(self, states: tuple[str, ...]) -> list[Job]:
        """The jobs in these states, in id order."""
        placeholders = ", ".join("?" * len(states))
        rows = self._db.execute(f"{_SELECT} WHERE state IN ({placeholders}) ORDER BY num", states)
        return [_job(row) for row in rows]

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The states of the stored jobs among these ids."""
        rows = self._db.execute(
            "SELECT num, state FROM jobs WHERE num IN (SELECT value FROM json_each(?))",
            (_numbers(job_ids),),
        )
        return {wire.job_id(num): _STATES[state] for num, state in rows}

    def counts(self) -> list[StoredCount]:
        """Jobs per owner, submission and state (a read of every row: about a second a
        million)."""
        query = (
            "SELECT owner, submission, state, count(*), max(num), min(submitted_at) FROM jobs"
            " GROUP BY owner, submission, state"
        )
        return [
            StoredCount(owner, submission, _STATES[state], n, last, submitted_at)
            for owner, submission, state, n, last, submitted_at in self._db.execute(query)
        ]

    def queued(self, after: int, limit: int) -> list[Job]:
        """Up to ``limit`` queued jobs numbered above ``after``, in id order."""
        rows = self._db.execute(
            f"{_SELECT} WHERE num > ? AND state = 'queued' ORDER BY num LIMIT ?", (after, limit)
        )
        return [_job(row) for row in rows]

    def close(self) -> None:
        self._db.close()


class Writes:
    """Every write of the store, on a connection of its own: what the store process runs."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, path: Path) -> Writes:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        # The rows a commit touches are the newest ones: a cache of the table's tail saves
        # re-reading pages between commits (the default is 2 MiB).
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def write(
        self,
        new_rows: Sequence[tuple[object, ...]],
        changed_rows: Sequence[tuple[object, ...]],
        leased_rows: Sequence[tuple[object, ...]],
        next_id: int,
        begun: Sequence[tuple[int, int]] = (),
        ended: Sequence[tuple[int, int]] = (),
        dropped: Sequence[tuple[int, int]] = (),
        new_runs: Sequence[Run] = (),
        drains: Sequence[tuple[str, bool]] = (),
        events: Sequence[tuple[object, ...]] = (),
        events_before: int = 0,
    ) -> None:
        """One transaction: insert new jobs (``inserts``), update changed ones
        (``changed_row``) and leased ones (``leased_row``), advance the id counter, mark
        staged submissions begun, ended or dropped, workers drained or not, and store events
        and delete the oldest (see ``Commit``). The rows come built: the writer reads them off
        the jobs before it sends them, so none is read half-changed."""
        with self._transaction() as db:
            for first, stop in dropped:
                _drop_stage(db, first, stop)
            db.executemany("INSERT INTO staged VALUES (?, ?)", begun)
            db.executemany(_INSERT, new_rows)
            for first, submitted_at, retries, name, owner, *fixed, specs in new_runs:
                db.create_function("run_spec", 1, specs.__getitem__)
                db.execute(
                    _INSERT_RUN,
                    (len(specs) - 1, first, retries, name, submitted_at, owner, *fixed),
                )
            db.executemany(_UPDATE, changed_rows)
            db.executemany(_UPDATE_LEASED, leased_rows)
            db.executemany("DELETE FROM staged WHERE first = ? AND stop = ?", ended)
            db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'next_id'", (next_id,))
            for worker_id, drained in drains:
                if drained:
                    db.execute("INSERT OR IGNORE INTO drained VALUES (?)", (worker_id,))
                else:
                    db.execute("DELETE FROM drained WHERE worker_id = ?", (worker_id,))
            db.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", events
            )
            if events_before:
                db.execute("DELETE FROM events WHERE seq < ?", (events_before,))

    def forget(self, nums: str) -> dict[tuple[str, int, str], int]:
        """Delete finished jobs by number (``_numbers``: live ones never are); returns how
        many, by owner, submission and state."""
        return self._delete("num IN (SELECT value FROM json_each(?))", (nums,))

    def forget_finished(
        self, finished_before: float, owner: str | None = None
    ) -> dict[tuple[str, int, str], int]:
        """Delete every finished job (of ``owner``; None: of everyone) that ended before the
        given time; counts by owner, submission and state.

        Jobs are numbered in the order they were submitted, and none ends before it was
        submitted: only the numbers below the first one submitted at that time or later can
        qualify, a range of the primary key. So a prune reads the rows that are due, and the
        few older ones still live, without an index on the end time (which cost every result
        an index insert, a third of its update). A job whose end time the wall clock put before
        its submission waits for the time to pass its submission."""
        return self._delete(
            f"num < ifnull((SELECT num FROM jobs WHERE submitted_at >= ? ORDER BY num LIMIT 1),"
            f" {2**63 - 1}) AND finished_at > 0 AND finished_at < ?"
            + ("" if owner is None else " AND owner = ?"),
            (finished_before, finished_before, *(() if owner is None else (owner,))),
        )

    def _delete(self, where: str, params: tuple[object, ...]) -> dict[tuple[str, int, str], int]:
        query = (
            f"DELETE FROM jobs WHERE state NOT IN {_LIVE} AND {where}"
            " RETURNING owner, submission, state"
        )
        with self._transaction() as db:
            return dict(Counter(db.execute(query, params)))

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _transaction(self._db)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (a full disk at COMMIT): a second
        # rollback would fail and hide the error that matters.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _drop_stage(db: sqlite3.Connection, first: int, stop: int) -> None:
    db.execute("DELETE FROM jobs WHERE num >= ? AND num < ?", (first, stop))
    db.execute("DELETE FROM staged WHERE first = ?", (first,))
