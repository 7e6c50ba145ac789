"""The controller's durable store without processes: the SQLite store on a tmp dir, the job table's
restart (restore, orphans), and the group-committing writer under the service (pytest-trio).

The disk-full cases wrap ``Store.write`` so it raises what SQLite raises on a full disk
(``sqlite3.OperationalError: database or disk is full``); the real full disk is in
tests/test_durability_integration.py.
"""

from __future__ import annotations

import operator
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from burstd import transport, wire
from burstd.auth import Caller, Role
from burstd.config import ControllerConfig
from burstd.controller import daemon as daemon_module
from burstd.controller import service as service_module
from burstd.controller import store as store_module
from burstd.controller import writer as writer_module
from burstd.controller.service import WAIT_UPDATE_INTERVAL, ControllerService
from burstd.controller.store import (
    DB_NAME,
    SCHEMA_VERSION,
    Commit,
    Store,
    StoredEvent,
    StoreError,
    Writes,
    changed_row,
    inserts,
    leased_row,
    row,
)
from burstd.controller.table import (
    Changes,
    Held,
    Job,
    JobState,
    JobTable,
    NewJob,
    QueueFull,
    ReportOutcome,
    Result,
    StoredCount,
)
from burstd.controller.writer import StoreUnavailable, StoreWriter
from proto.burst.v1 import job_pb2, worker_pb2

T = TypeVar("T")

SPEC = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true")).SerializeToString()

# The caller of the client calls here: an admin sees every job.
ADMIN = Caller("admin", Role.ADMIN, "token-admin")


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    s = Store(state_dir)
    try:
        yield s
    finally:
        s.close()


def persist(target: Store | Writes, table: JobTable, changes: Changes | None = None) -> None:
    """What the writer does in one commit: the new jobs, every changed one, the id counter
    (``changes``: those taken already). Written as the store process writes them, here
    in-process (no event loop needed)."""
    new, changed, leased = changes or table.take_changes()
    writes = target if isinstance(target, Writes) else Writes.open(target.path)
    rows, runs = inserts(new)
    try:
        writes.write(
            rows,
            [changed_row(job) for job in changed],
            [leased_row(job) for job in leased],
            table.next_id,
            new_runs=runs,
        )
    finally:
        if writes is not target:
            writes.close()


def submit(store: Store, table: JobTable, n: int, now: float = 0.0) -> list[str]:
    """A durable submission: queued, then stored in one commit (as the service does it)."""
    ids = table.submit([NewJob(SPEC, 0, f"j{i}") for i in range(n)], now)
    persist(store, table)
    return ids


def report(table: JobTable, job_id: str, code: int = 0, now: float = 0.0) -> ReportOutcome:
    job = table.jobs[job_id]
    return table.report(job.worker_id, Result(job_id, job.attempt, code), now)


# -- the store on disk ------------------------------------------------------------------------


def test_fresh_state_dir_is_created_in_wal_mode(state_dir: Path) -> None:
    store = Store(state_dir)
    try:
        assert (state_dir / DB_NAME).is_file()
        assert store.next_id() == 1
        assert list(store.live_jobs()) == []
        assert store.counts() == {}
        assert store.get("job-00000001") is None
        assert store.get("not-a-job") is None
        assert store.get_many(["job-00000001", "not-a-job"]) == []
    finally:
        store.close()
    with sqlite3.connect(state_dir / DB_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_reopen_keeps_jobs_and_the_id_counter(state_dir: Path) -> None:
    store = Store(state_dir)
    table = JobTable()
    ids = submit(store, table, 3, now=10.0)
    table.register("w1", slots=1, capacity=1, now=11.0)
    table.lease("w1", 1, 11.0)
    assert report(table, ids[0], code=3, now=12.0) is ReportOutcome.ACCEPTED
    persist(store, table)
    # Ids handed out to a submission that was then withdrawn are never used again either.
    table.submit([NewJob(SPEC)] * 5, 13.0)
    table.withdraw(table.take_changes()[0])
    persist(store, table)
    store.close()

    store = Store(state_dir)
    try:
        assert store.next_id() == 9
        live = {job.job_id: job.state for job in store.live_jobs()}
        assert live == {ids[1]: JobState.LEASED, ids[2]: JobState.QUEUED}
        failed = store.get(ids[0])
        many = store.get_many([ids[2], "job-00000099", "job-x", ids[0]])
        assert {(job.job_id, job.state) for job in many} == {
            (ids[0], JobState.FAILED), (ids[2], JobState.QUEUED),
        }  # fmt: skip
        assert failed is not None
        assert (failed.state, failed.exit_code, failed.attempt, failed.worker_id) == (
            JobState.FAILED, 3, 1, "w1",
        )  # fmt: skip
        assert (failed.spec, failed.name, failed.submitted_at) == (SPEC, "j0", 10.0)
        assert failed.finished_at == 12.0
        assert store.counts() == {("", "failed"): 1, ("", "leased"): 1, ("", "queued"): 1}
        assert [job.job_id for job in store.list(None, "", 10)] == ids
        assert [job.job_id for job in store.list("queued", "", 10)] == [ids[2]]
        assert [job.job_id for job in store.list(None, ids[0], 1)] == [ids[1]]
    finally:
        store.close()


def test_rows_hold_plain_values(store: Store, state_dir: Path) -> None:
    """Rows are read off the jobs as they are: the state as its text, ``stolen`` as 0 or 1."""
    table = JobTable()
    first, second = submit(store, table, 2)
    table.jobs[second].stolen = True
    table._changed(table.jobs[second])
    persist(store, table)
    with sqlite3.connect(state_dir / DB_NAME) as db:
        rows = db.execute(
            "SELECT num, state, typeof(state), stolen, typeof(stolen) FROM jobs ORDER BY num"
        ).fetchall()
    assert rows == [
        (wire.job_number(first), "queued", "text", 0, "integer"),
        (wire.job_number(second), "queued", "text", 1, "integer"),
    ]


def test_a_lease_alone_rewrites_only_its_columns(state_dir: Path) -> None:
    store = Store(state_dir)
    table = JobTable()
    first, second = submit(store, table, 2, now=5.0)
    table.register("w1", slots=2, capacity=2, now=6.0)
    statements: list[str] = []
    # What the store process runs, here in-process so its statements can be traced.
    writes = Writes.open(store.path)
    writes._db.set_trace_callback(statements.append)
    persist(writes, table)
    writes.close()
    assert [s for s in statements if s.startswith("UPDATE jobs")] == [
        f"UPDATE jobs SET state = 'leased', attempt = 1, worker_id = 'w1' WHERE num = {num}"
        for num in (wire.job_number(first), wire.job_number(second))
    ]
    store.close()
    reopened = Store(state_dir)
    try:
        stored = {job.job_id: job for job in reopened.live_jobs()}
        assert [(j.state, j.attempt, j.worker_id) for j in stored.values()] == [
            (JobState.LEASED, 1, "w1"),
        ] * 2
        assert (stored[first].spec, stored[first].name, stored[first].submitted_at) == (
            SPEC,
            "j0",
            5.0,
        )
    finally:
        reopened.close()


def test_a_lease_after_another_change_in_one_commit_is_stored_whole(state_dir: Path) -> None:
    """A job lost and leased again before a commit has more than its lease to store."""
    store = Store(state_dir)
    table = JobTable()
    (job_id,) = submit(store, table, 1)
    table.register("w1", slots=1, capacity=1, now=1.0)
    table.lease("w1", 1, 1.0)
    persist(store, table)
    table.remove_worker("w1", 2.0)  # a lost attempt: back to the queue
    table.register("w2", slots=1, capacity=1, now=2.0)  # and leased again at once
    assert table.take_changes().leased == []
    table.remove_worker("w2", 3.0)
    table.register("w3", slots=1, capacity=1, now=3.0)
    persist(store, table)
    store.close()
    reopened = Store(state_dir)
    try:
        job = reopened.get(job_id)
        assert job is not None
        assert (job.state, job.attempt, job.worker_id, job.lost_count) == (
            JobState.LEASED,
            3,
            "w3",
            1,
        )
    finally:
        reopened.close()


def test_a_job_changed_before_its_first_commit_is_stored_whole(state_dir: Path) -> None:
    """A new job is inserted with the columns a submission and a lease set; one that changed
    otherwise before its first commit (cancelled here) is stored with every column."""
    store = Store(state_dir)
    table = JobTable()
    leased, cancelled = table.submit([NewJob(SPEC, 2, "a"), NewJob(SPEC, 0, "b")], 5.0)
    table.register("w1", slots=1, capacity=1, now=5.0)
    table.cancel(cancelled, 6.0)
    persist(store, table)
    try:
        stored = {job.job_id: job for job in store.get_many([leased, cancelled])}
        columns = operator.attrgetter(*store_module._COLUMNS)
        assert columns(stored[leased]) == columns(table.jobs[leased])
        assert stored[leased].state is JobState.LEASED
        assert columns(stored[cancelled]) == columns(table.jobs[cancelled])
        assert stored[cancelled].state is JobState.CANCELLED
        assert stored[cancelled].finished_at == 6.0 and stored[cancelled].error_message
    finally:
        store.close()


def test_new_jobs_as_submitted_are_inserted_in_runs_of_their_submission(state_dir: Path) -> None:
    """New jobs still as submitted go in runs (one statement each) of consecutive numbers of
    one submission; a job leased or cancelled before its commit breaks its run and goes as a
    row. Whichever way, every stored column is the job's."""
    store = Store(state_dir)
    table = JobTable()
    specs = [SPEC + bytes([i]) for i in range(6)]
    first = table.submit([NewJob(spec, 1, "array") for spec in specs], 5.0)
    second = table.submit([NewJob(SPEC, 0, "x"), NewJob(SPEC, 0, "y")], 6.0)
    third = table.submit([NewJob(SPEC, 0, "y"), NewJob(SPEC, 0, "y")], 6.0, "bob")
    fourth = table.submit([NewJob(SPEC, 0, "y", retry_on_exit="3,4", crash_limit=2)], 6.0, "bob")
    table.cancel(first[3], 6.0)
    table.register("w1", slots=1, capacity=1, now=6.0)  # leases the first job
    urgent = [NewJob(SPEC, 0, "y", priority=5, retry_delay=2.5, max_fails=3)] * 2
    fifth = table.submit(urgent, 6.0, "bob")  # queued: the worker is full
    changes = table.take_changes()
    rows, runs = inserts(changes.new)
    assert [r[0] for r in rows] == [table.jobs[first[0]].num, table.jobs[first[3]].num]
    every = [*first, *second, *third, *fourth, *fifth]
    nums = [table.jobs[job_id].num for job_id in every]
    assert runs == [
        (nums[1], 5.0, 1, "array", "", "", 0, nums[0], 0, 0.0, 0, specs[1:3]),
        (nums[4], 5.0, 1, "array", "", "", 0, nums[0], 0, 0.0, 0, specs[4:]),
        (nums[6], 6.0, 0, "x", "", "", 0, nums[6], 0, 0.0, 0, [SPEC]),
        (nums[7], 6.0, 0, "y", "", "", 0, nums[6], 0, 0.0, 0, [SPEC]),
        # another owner (and submission): another run
        (nums[8], 6.0, 0, "y", "bob", "", 0, nums[8], 0, 0.0, 0, [SPEC, SPEC]),
        # another failure policy (and submission): another run
        (nums[10], 6.0, 0, "y", "bob", "3,4", 2, nums[10], 0, 0.0, 0, [SPEC]),
        # another priority and retry delay (and submission): another run
        (nums[11], 6.0, 0, "y", "bob", "", 0, nums[11], 5, 2.5, 3, [SPEC, SPEC]),
    ]
    persist(store, table, changes)
    try:
        columns = operator.attrgetter(*store_module._COLUMNS)
        stored = store.get_many(every)
        assert [columns(job) for job in stored] == [columns(table.jobs[job_id]) for job_id in every]
        assert [job.owner for job in stored[-6:-3]] == ["", "bob", "bob"]
        assert (stored[-3].retry_on_exit, stored[-3].crash_limit) == ("3,4", 2)
        assert (stored[-1].priority, stored[-1].retry_delay, stored[-1].max_fails) == (5, 2.5, 3)
        assert [job.spec for job in stored[:6]] == specs
    finally:
        store.close()


def test_no_index_moves_with_every_lease_or_result_and_old_ones_are_dropped(
    state_dir: Path,
) -> None:
    """A lease, start or result rewrites one row and no index: the live state index of older
    stores (which doubled the CPU per job) and their end time index (a third of a result's
    update; pruning reads a range of job numbers instead) go at the next start."""
    store = Store(state_dir)
    ids = submit(store, JobTable(), 2)
    store.close()

    def indexes() -> set[str]:
        with sqlite3.connect(state_dir / DB_NAME) as db:
            rows = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchall()
        db.close()
        return {name for (name,) in rows}

    assert indexes() == set()
    with sqlite3.connect(state_dir / DB_NAME) as db:  # as the first schemas made them
        db.execute(
            "CREATE INDEX jobs_live ON jobs (state) WHERE state IN ('queued', 'leased', 'running')"
        )
        db.execute("CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at > 0")
    db.close()
    assert indexes() == {"jobs_live", "jobs_finished"}
    store = Store(state_dir)
    try:
        assert [job.job_id for job in store.live_jobs()] == ids
    finally:
        store.close()
    assert indexes() == set()


def test_a_first_start_cut_short_leaves_a_store_the_next_start_creates(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the schema is one transaction: a start that dies midway leaves no half schema
    (which would be refused as a foreign file), and the next start creates it."""
    good = store_module._SCHEMA
    monkeypatch.setattr(store_module, "_SCHEMA", good.replace("COMMIT;", "NOT SQL;"))
    with pytest.raises(StoreError):
        Store(state_dir)
    assert (state_dir / DB_NAME).exists()
    monkeypatch.setattr(store_module, "_SCHEMA", good)
    store = Store(state_dir)
    try:
        assert store.next_id() == 1 and list(store.live_jobs()) == []
    finally:
        store.close()


def test_foreign_sqlite_file_is_refused_naming_it(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / DB_NAME
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        db.execute("INSERT INTO accounts VALUES (1, 'alice')")
    db.close()
    with pytest.raises(StoreError, match="foreign") as error:
        Store(state_dir)
    assert str(path) in str(error.value)
    # nothing was changed, and the directory lock was let go
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT owner FROM accounts").fetchall() == [("alice",)]
    db.close()
    path.unlink()
    Store(state_dir).close()


def test_garbage_database_is_refused_naming_it(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / DB_NAME
    garbage = b"\x13\x37 this is not a database " * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as error:
        Store(state_dir)
    assert str(path) in str(error.value)
    assert path.read_bytes() == garbage  # never reset


def test_other_schema_version_is_refused(state_dir: Path) -> None:
    Store(state_dir).close()
    with sqlite3.connect(state_dir / DB_NAME) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(state_dir)


@pytest.mark.parametrize("old", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
def test_a_store_of_an_older_schema_is_taken_on(state_dir: Path, old: int) -> None:
    """1 had no staged table, 2 no jobs.earlier_outputs, 3 no drained table, 4 no events table,
    5 no owners: the jobs of such a store become the owner's the controller names (its admin
    user); 6 no failure policy (none), 7 no dependencies (none); 8 no submissions and resource
    usage: each job becomes a submission of its own; 9 no priorities and retry delays (0); 10
    no max_fails (0)."""
    store = Store(state_dir)
    table = JobTable()
    ids = submit(store, table, 2)
    table.cancel(ids[1], 3.0)
    persist(store, table)
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN max_fails")
        if old <= 9:
            for column in ("priority", "retry_delay", "retry_at"):
                db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        if old <= 8:
            for column in ("submission", "user_cpu", "system_cpu", "max_rss_kib"):
                db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        if old <= 7:
            db.execute("ALTER TABLE jobs DROP COLUMN after")
            db.execute("ALTER TABLE jobs DROP COLUMN after_any")
        if old <= 6:
            db.execute("ALTER TABLE jobs DROP COLUMN retry_on_exit")
            db.execute("ALTER TABLE jobs DROP COLUMN crash_limit")
        if old <= 5:
            db.execute("ALTER TABLE jobs DROP COLUMN owner")
        if old <= 4:
            db.execute("DROP TABLE events")
        if old <= 3:
            db.execute("DROP TABLE drained")
        if old <= 2:
            db.execute("ALTER TABLE jobs DROP COLUMN earlier_outputs")
        if old == 1:
            db.execute("DROP TABLE staged")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (old,))
    db.close()
    owner = "admin" if old <= 5 else ""
    store = Store(state_dir, first_owner="admin")
    try:
        assert [
            (
                job.job_id,
                job.owner,
                job.earlier_outputs,
                job.retry_on_exit,
                job.after,
                job.submission,
                job.priority,
                job.retry_delay,
                job.max_fails,
            )
            for job in store.live_jobs()
        ] == [(ids[0], owner, "", "", "", wire.job_number(ids[0]), 0, 0.0, 0)]
        assert store.counts() == {(owner, "queued"): 1, (owner, "cancelled"): 1}
        writes = Writes.open(store.path)
        writes.write([], [], [], 3, begun=[(3, 5)])  # the staged table is there
        writes.write([], [], [], 3, drains=[("w1", True)])  # and the drained one
        event = StoredEvent(1, 5.0, "registered", "", "w1", 0, "")
        writes.write([], [], [], 3, events=[event])  # and the events one
        writes.close()
        assert store.drained() == {"w1"}
        assert store.events(0, "", "w1", 10) == [event]
    finally:
        store.close()
    with sqlite3.connect(state_dir / DB_NAME) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == SCHEMA_VERSION == 11


def test_a_staged_submission_is_kept_only_once_its_last_rows_are_stored(state_dir: Path) -> None:
    """Rows of a submission stored a slice per commit are not accepted until the commit that
    ends its stage: a start after one cut short deletes them, and only them."""
    store = Store(state_dir)
    table = JobTable()
    (accepted,) = submit(store, table, 1)
    jobs = JobTable.new_jobs(table.number(4), [NewJob(SPEC)] * 4, 0.0)
    cut = JobTable.new_jobs(table.number(3), [NewJob(SPEC)] * 3, 0.0)
    writes = Writes.open(store.path)
    writes.write([row(job) for job in jobs[:2]], [], [], table.next_id, begun=[(2, 6)])
    writes.write([row(job) for job in cut[:2]], [], [], table.next_id, begun=[(6, 9)])
    writes.write([row(job) for job in jobs[2:]], [], [], table.next_id, ended=[(2, 6)])
    writes.close()
    store.close()
    store = Store(state_dir)
    try:
        assert [job.job_id for job in store.live_jobs()] == [accepted, *(j.job_id for j in jobs)]
        assert store.next_id() == 9  # the numbers of the one cut short are not used again
    finally:
        store.close()


def test_reads_leave_out_a_submission_still_being_staged(store: Store) -> None:
    """Status and list read a staged submission's rows only once its last slice is stored: until
    then it is not accepted (a restart would delete it), and its client has no ids yet."""
    table = JobTable()
    (accepted,) = submit(store, table, 1)
    jobs = JobTable.new_jobs(table.number(3), [NewJob(SPEC)] * 3, 0.0)
    ids = [job.job_id for job in jobs]
    writes = Writes.open(store.path)
    try:
        writes.write([row(job) for job in jobs[:2]], [], [], table.next_id, begun=[(2, 5)])
        assert [job.job_id for job in store.list(None, "", 10)] == [accepted]
        assert [job.job_id for job in store.list("queued", "", 10)] == [accepted]
        assert [job.job_id for job in store.get_many([accepted, *ids])] == [accepted]
        writes.write([row(jobs[2])], [], [], table.next_id, ended=[(2, 5)])
    finally:
        writes.close()
    assert [job.job_id for job in store.list(None, "", 10)] == [accepted, *ids]
    assert [job.job_id for job in store.get_many(ids)] == ids


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError, match=str(not_a_dir)):
        Store(not_a_dir)


def test_second_store_on_the_same_dir_is_refused(store: Store, state_dir: Path) -> None:
    with pytest.raises(StoreError, match="in use") as error:
        Store(state_dir)
    assert str(state_dir) in str(error.value)
    store.close()
    Store(state_dir).close()  # free again once the first one closed
    store.__init__(state_dir)  # type: ignore[misc]  # (the fixture closes it)


async def test_forget_never_deletes_live_jobs_and_counts_by_state(store: Store) -> None:
    table = JobTable(max_queued=100)
    ids = submit(store, table, 8)
    table.register("w1", slots=3, capacity=3, now=1.0)
    table.lease("w1", 3, 1.0)
    running, done = ids[1], ids[2]  # (ids[0] stays leased)
    table.started("w1", Held(running, 1, True), 1.0)
    assert report(table, done, 0, now=5.0) is ReportOutcome.ACCEPTED  # w1 takes ids[3]
    table.lease("w1", 3, 5.0)
    assert report(table, ids[3], 1, now=6.0) is ReportOutcome.ACCEPTED
    table.cancel(ids[4], 7.0)  # leased to w1, never handed over: cancelled at once
    table.cancel(ids[7], 8.0)  # queued
    persist(store, table)
    states = {job_id: table.jobs[job_id].state.value for job_id in ids}
    assert Counter(states.values()) == {
        "leased": 2, "running": 1, "queued": 1, "succeeded": 1, "failed": 1, "cancelled": 2,
    }  # fmt: skip

    # forget_finished: only what ended before the time given
    sub = wire.job_number(ids[0])  # one submission
    assert await store.forget_finished(5.5) == Counter({("", sub, "succeeded"): 1})
    assert store.get(done) is None
    # forget by id: the live ones named are kept
    forgotten = await store.forget([*ids, "job-99999999"])
    assert forgotten == Counter({("", sub, "failed"): 1, ("", sub, "cancelled"): 2})
    assert await store.forget(ids) == Counter()
    left = {job.job_id: job.state.value for job in store.list(None, "", 100)}
    assert left == {
        job_id: s for job_id, s in states.items() if s in ("queued", "leased", "running")
    }
    assert {job.job_id for job in store.live_jobs()} == set(left)
    assert await store.forget_finished(1e12) == Counter()


NOT_IDS = ["", "job-", "nonsense", "job-99999999999999999999", "job-\u0661", "job--1", "1"]


def test_jobs_are_listed_and_counted_by_submission_and_name_with_their_usage(
    store: Store,
) -> None:
    table = JobTable(max_queued=100)
    first = submit(store, table, 3)
    second = submit(store, table, 2)
    one, two = (wire.job_number(ids[0]) for ids in (first, second))
    table.register("w1", slots=1, capacity=1, now=1.0)
    table.lease("w1", 1, 1.0)
    used = Result(first[0], 1, 0, user_cpu=0.5, system_cpu=0.125, max_rss_kib=4096)
    assert table.report("w1", used, 2.0) is ReportOutcome.ACCEPTED
    persist(store, table)
    listed = store.list(None, "", 100, submission=(two, two + 1))
    assert [job.job_id for job in listed] == second
    assert [job.job_id for job in store.list(None, "", 100, name="j1")] == [first[1], second[1]]
    both = store.list(None, "", 100, submission=(one, one + 2), name="j1")
    assert [job.job_id for job in both] == [first[1]]
    (done,) = store.list("succeeded", "", 100)
    assert (done.submission, done.user_cpu, done.system_cpu, done.max_rss_kib) == (
        one, 0.5, 0.125, 4096,
    )  # fmt: skip
    with closing(store.snapshot()) as snapshot:
        counts = snapshot.counts()
    assert sorted(counts) == [
        StoredCount("", one, JobState.LEASED, 1, one + 1, 0.0),
        StoredCount("", one, JobState.QUEUED, 1, one + 2, 0.0),
        StoredCount("", one, JobState.SUCCEEDED, 1, one, 0.0),
        StoredCount("", two, JobState.QUEUED, 2, two + 1, 0.0),
    ]


async def test_strings_that_are_no_job_id_name_no_job(store: Store) -> None:
    """Found by tests/test_fuzz.py: such ids raised (ValueError, OverflowError) out of reads
    and forgets, which answered INTERNAL."""
    table = JobTable(max_queued=100)
    (job_id,) = submit(store, table, 1)
    table.cancel(job_id, 2.0)
    persist(store, table)
    for not_id in NOT_IDS:
        with pytest.raises(ValueError):
            wire.job_number(not_id)
        assert store.get(not_id) is None
    assert [job.job_id for job in store.get_many([*NOT_IDS, job_id])] == [job_id]
    assert await store.forget(NOT_IDS) == Counter()
    sub = wire.job_number(job_id)
    assert await store.forget([*NOT_IDS, job_id]) == Counter({("", sub, "cancelled"): 1})


async def test_prune_takes_the_jobs_due_also_past_an_older_live_one(store: Store) -> None:
    """Pruning reads the rows submitted before the time given (a range of job numbers): a job
    submitted earlier that still runs neither stops it nor goes."""
    table = JobTable(max_queued=100)
    table.register("w1", slots=1, capacity=1, now=0.0)
    (running,) = submit(store, table, 1, now=1.0)  # leased to w1, never reported
    table.register("w2", slots=3, capacity=3, now=0.0)
    early, late, leased = submit(store, table, 3, now=2.0)
    newest = submit(store, table, 1, now=7.0)[0]
    table.lease("w1", 1, 2.0)
    table.lease("w2", 3, 2.0)
    assert report(table, early, now=3.0) is ReportOutcome.ACCEPTED
    assert report(table, late, now=6.0) is ReportOutcome.ACCEPTED
    table.lease("w2", 3, 7.0)
    assert report(table, newest, now=8.0) is ReportOutcome.ACCEPTED
    persist(store, table)
    sub = wire.job_number(early)
    assert await store.forget_finished(7.5) == Counter({("", sub, "succeeded"): 2})
    left = {job.job_id for job in store.list(None, "", 100)}
    assert left == {running, leased, newest}
    sub = wire.job_number(newest)
    assert await store.forget_finished(100.0) == Counter({("", sub, "succeeded"): 1})


# -- restart: restore and orphans -------------------------------------------------------------


def test_orphan_leases_get_a_full_ttl_from_when_the_controller_serves() -> None:
    table = JobTable(lease_ttl=2.0)
    table.register("w1", slots=1, capacity=1, now=0.0)
    (job_id,) = table.submit([NewJob(SPEC)], 0.0)
    table.lease("w1", 1, 0.0)
    restored = JobTable(lease_ttl=2.0)
    restored.restore([table.jobs[job_id]], table.next_id, 10.0)
    # Restoring a big store took 5 s before the controller listened: the clock starts then.
    restored.start_orphan_clock(15.0)
    restored.expire(16.5)
    assert job_id in restored.orphans
    restored.expire(17.5)
    assert job_id not in restored.orphans and restored.jobs[job_id].lost_count == 1


def test_restore_queues_again_lets_workers_claim_leases_and_continues_ids(state_dir: Path) -> None:
    # First life: 6 jobs; w1 (capacity 2) has one running and one leased, w2 one leased.
    store = Store(state_dir)
    table = JobTable(lease_ttl=2.0)
    table.register("w1", slots=2, capacity=2, now=0.0)
    table.register("w2", slots=1, capacity=1, now=0.0)
    ids = submit(store, table, 6)
    table.lease("w1", 2, 0.0)
    table.lease("w2", 1, 0.0)
    by_worker = {w: sorted(table.workers[w].leases) for w in ("w1", "w2")}
    run_w1, leased_w1 = by_worker["w1"]
    (leased_w2,) = by_worker["w2"]
    table.started("w1", Held(run_w1, 1, True), 0.5)
    persist(store, table)
    store.close()  # kill -9: nothing else is written

    # Second life.
    store = Store(state_dir)
    try:
        table = JobTable(lease_ttl=2.0)
        table.restore(store.live_jobs(), store.next_id(), 100.0)
        assert table.counts[JobState.QUEUED] == 3
        assert table.counts[JobState.LEASED] == 2 and table.counts[JobState.RUNNING] == 1
        assert table.orphans == dict.fromkeys((run_w1, leased_w1, leased_w2), 102.0)
        # the id counter continues
        (new_id,) = table.submit([NewJob(SPEC)], 100.0)
        assert wire.job_number(new_id) == wire.job_number(ids[-1]) + 1

        # w1 comes back holding its running job under the same attempt (it lost the leased one);
        # a stranger claims w2's lease, and w2 comes back with a stale attempt: both dropped.
        drop = table.register(
            "w1", slots=2, capacity=2, now=100.5, held=[Held(run_w1, 1, True)], lease_seq=1
        )
        assert drop == []
        assert run_w1 in table.workers["w1"].leases and run_w1 not in table.orphans
        assert table.jobs[run_w1].state is JobState.RUNNING
        stranger = table.register("w3", slots=1, capacity=1, now=100.5, held=[Held(leased_w2, 1)])
        assert stranger == [Held(leased_w2, 1)]
        assert table.register(
            "w2", slots=1, capacity=1, now=100.5, held=[Held(leased_w2, 7)], lease_seq=1
        ) == [Held(leased_w2, 7)]
        assert set(table.orphans) == {leased_w1, leased_w2}

        # the claimed job's result is accepted: it does not run again
        result = Result(run_w1, 1, 0)
        assert table.report("w1", result, 101.0) is ReportOutcome.ACCEPTED
        assert table.jobs[run_w1].state is JobState.SUCCEEDED

        # within the TTL the unclaimed leases wait...
        table.expire(101.9)
        assert set(table.orphans) == {leased_w1, leased_w2}
        # ...after it they go back to the queue, one lost attempt each, and run again.
        for worker_id in ("w1", "w2", "w3"):
            table.heartbeat(worker_id, [], 0, 102.5)
        table.expire(103.0)
        assert table.orphans == {}
        for job_id in (leased_w1, leased_w2):
            job = table.jobs[job_id]
            assert job.lost_count == 1
            assert job.state in (JobState.QUEUED, JobState.LEASED)
            if job.state is JobState.LEASED:
                assert job.attempt == 2
        assert sum(table.counts[s] for s in (JobState.QUEUED, JobState.LEASED)) == 6
    finally:
        store.close()


async def test_a_restart_serves_before_its_queue_is_read_back(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted controller takes its leases back at once and the rest of its store in the
    background (``load_restored``). Meanwhile a job not read back yet is read from the store
    (status, list), taken early by a cancel (and not queued again when the loader reaches
    it), the queue's room counts it, and new jobs wait behind it; in the end every job queued
    before the restart runs once, in order, before the new ones."""
    store = Store(state_dir)
    table = JobTable()
    (done,) = submit(store, table, 1)
    table.register("w0", slots=1, capacity=1, now=0.0)
    table.lease("w0", 1, 0.0)
    table.report("w0", Result(done, 1, 0), 0.0)
    table.remove_worker("w0", 0.0)
    old = submit(store, table, 12)  # then persisted, as the first job's end
    store.close()

    monkeypatch.setattr(daemon_module, "LOAD_SLICE", 5)
    config = ControllerConfig(submission_buffer_capacity=14)
    store = Store(state_dir)
    snapshot = store.snapshot()
    try:
        service = daemon_module.build_service(config, store, snapshot)
        table = service.table
        assert service.writer is not None
        assert not table.jobs and table.unloaded == 13  # the finished one is not counted yet
        assert table.counts[JobState.QUEUED] == 13
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.writer.run)
            status = await service.get_job_status(
                job_pb2.GetJobStatusRequest(job_id=old[-1]), ADMIN
            )
            assert status.state == "queued"
            listing = await service.list_jobs(job_pb2.ListJobsRequest(all_users=True), ADMIN)
            assert [info.job_id for info in listing.jobs] == [done, *old]
            cancelled = await service.cancel_jobs(
                job_pb2.CancelJobsRequest(job_ids=[old[5]]), ADMIN
            )
            assert list(cancelled.states) == ["cancelled"] and table.unloaded == 12
            (new,) = table.submit([NewJob(SPEC)], 1.0)
            with pytest.raises(QueueFull):
                table.submit([NewJob(SPEC)] * 2, 1.0)  # 12 to read back, 1 new, room for 1
            await service.writer.durable()  # the cancel's commit: the job leaves memory

            await daemon_module.load_restored(service, snapshot)
            assert table.unloaded == 0 and old[5] not in table.jobs
            assert dict(table.counts) == {
                **dict.fromkeys(JobState, 0),
                JobState.QUEUED: 12,
                JobState.SUCCEEDED: 1,
                JobState.CANCELLED: 1,
            }
            table.register("w1", slots=20, capacity=20, now=2.0)
            _, jobs = table.lease("w1", 20, 2.0)
            assert [job.job_id for job in jobs] == [*old[:5], *old[6:], new]
            assert all(job.attempt == 1 for job in jobs)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_restored_terminal_jobs_are_not_orphans(state_dir: Path) -> None:
    store = Store(state_dir)
    table = JobTable()
    table.register("w1", slots=1, capacity=1, now=0.0)
    (job_id,) = submit(store, table, 1)
    table.lease("w1", 1, 0.0)
    report(table, job_id, 0, 1.0)
    persist(store, table)
    store.close()
    store = Store(state_dir)
    try:
        table = JobTable()
        table.restore(store.live_jobs(), store.next_id(), 5.0)
        assert table.jobs == {} and table.orphans == {}
        assert table.next_id == wire.job_number(job_id) + 1
    finally:
        store.close()


# -- the writer: group commit, failures -------------------------------------------------------


class FlakyWrites:
    """Wraps a store's ``send`` and ``written``: counts the commits, fails them as a full disk
    does when told, runs ``before`` a commit is sent (to make it slow), ``writing`` before the
    store process gets it (the writer has sent it: a slow write) and ``after`` it is written
    (to record it)."""

    def __init__(self, store: Store) -> None:
        self._send, self._written = store.send, store.written
        store.send, store.written = self.send, self.written  # type: ignore[method-assign]
        self.before: Callable[[Commit], Awaitable[None]] = _nothing_before
        self.writing: Callable[[Commit], Awaitable[None]] = _nothing_before
        self.after: Callable[[Commit], None] = lambda commit: None
        self.calls = 0
        self.rows = 0
        self.full = False
        self._commit: Commit | None = None

    async def send(self, commit: Commit) -> None:
        self.calls += 1
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        await self.before(commit)
        self._commit = commit

    async def written(self) -> None:
        # Sent to the store process only now: it writes nothing while ``writing`` runs.
        assert self._commit is not None
        await self.writing(self._commit)
        await self._send(self._commit)
        await self._written()
        self.rows += self._commit.inserted
        self.after(self._commit)


async def _nothing_before(commit: Commit) -> None:
    pass


async def slow_commit(seconds: float) -> None:
    """A commit that takes ``seconds`` in the store process: the writer waits for it shielded,
    and the event loop serves calls meanwhile."""
    with trio.CancelScope(shield=True):
        await trio.sleep(seconds)


@asynccontextmanager
async def running_writer(
    store: Store, table: JobTable
) -> AsyncIterator[tuple[StoreWriter, FlakyWrites]]:
    """A writer over ``store`` whose writes go through FlakyWrites."""
    flaky = FlakyWrites(store)
    writer = StoreWriter(store, table)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        yield writer, flaky
        nursery.cancel_scope.cancel()


async def test_concurrent_inserts_are_group_committed(store: Store, state_dir: Path) -> None:
    table = JobTable()
    acknowledged: list[str] = []

    async def submitter() -> None:
        (job_id,) = table.submit([NewJob(SPEC)], trio.current_time())
        await writer.durable()
        acknowledged.append(job_id)

    async with running_writer(store, table) as (writer, flaky), trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(submitter)
    assert len(acknowledged) == 1000
    assert flaky.rows == 1000
    print(f"1000 concurrent inserts in {flaky.calls} commits")
    assert flaky.calls <= 50
    # all of them are on disk, under the ids they were acknowledged with
    store.close()
    store.__init__(state_dir)  # type: ignore[misc]
    assert sorted(job.job_id for job in store.live_jobs()) == sorted(acknowledged)
    assert store.next_id() == 1001


async def test_changes_made_during_a_commit_are_sent_before_its_waiters_are_told(
    store: Store,
) -> None:
    """Once a commit is on disk, the store process gets the changes made meanwhile at once;
    telling the first commit's waiters (a pass of the event loop) comes after that."""
    table = JobTable()
    events: list[str] = []
    release, sending = trio.Event(), trio.Event()
    async with running_writer(store, table) as (writer, flaky):

        async def held(commit: Commit) -> None:
            events.append(f"send {commit.inserted}")
            if len(events) == 1:
                sending.set()
                await release.wait()

        flaky.before = held

        async def submit(count: int) -> None:
            table.submit([NewJob(SPEC)] * count, 0.0)
            await writer.durable()
            events.append(f"told {count}")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, 1)
                await sending.wait()  # its commit is under way...
                nursery.start_soon(submit, 2)  # ...while more changes come
                await trio.testing.wait_all_tasks_blocked()
                release.set()
    # When the second commit is quick, both waiters wake in one pass of the event loop, in
    # the order trio's scheduler picks (it shuffles on purpose): only the sends are ordered.
    assert events[:3] == ["send 1", "send 2", "told 1"] or events == [
        "send 1",
        "send 2",
        "told 2",
        "told 1",
    ]
    assert len(list(store.live_jobs())) == 3


async def test_durable_waits_for_the_commit_of_changes(store: Store) -> None:
    table = JobTable()
    async with running_writer(store, table) as (writer, _):
        (job_id,) = table.submit([NewJob(SPEC)], 0.0)
        await writer.durable()
        table.cancel(job_id, 1.0)
        await writer.durable()
        stored = store.get(job_id)
        assert stored is not None and stored.state is JobState.CANCELLED
        # a finished job leaves memory once stored
        await writer.durable()
        assert table.get(job_id) is None


async def test_insert_fails_clearly_when_the_disk_is_full(store: Store) -> None:
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        flaky.full = True
        (refused,) = table.submit([NewJob(SPEC)], 0.0)
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await writer.durable()
        assert table.get(refused) is None  # withdrawn: never acknowledged, never run
        flaky.full = False
        with trio.fail_after(10):
            (later,) = table.submit([NewJob(SPEC)], 0.0)
            await writer.durable()
        assert store.get(later) is not None
        assert store.get(refused) is None


def _submit_request() -> job_pb2.SubmitJobRequest:
    return job_pb2.SubmitJobRequest(
        spec=job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
    )


async def _submit(service: ControllerService) -> str:
    response = await service.submit_job(_submit_request(), ADMIN)
    return str(response.job_id)


async def _once_writable(
    call: Callable[[], Awaitable[T]], refused: type[transport.RpcError] = transport.Unavailable
) -> T:
    """Call until the store takes it (the writer retries a failed commit with a back-off)."""
    with trio.fail_after(15):
        while True:
            try:
                return await call()
            except refused:
                await trio.sleep(0.05)


async def _submit_once_writable(service: ControllerService) -> str:
    return await _once_writable(lambda: _submit(service), transport.ResourceExhausted)


async def test_service_refuses_submissions_while_the_disk_is_full_and_recovers(
    store: Store,
) -> None:
    table = JobTable(max_queued=10)
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        first = await _submit(service)
        flaky.full = True
        with pytest.raises(transport.ResourceExhausted) as error:
            await _submit(service)
        assert "disk is full" in error.value.message
        with pytest.raises(transport.ResourceExhausted):
            await service.submit_jobs(
                job_pb2.SubmitJobsRequest(specs=[_submit_request().spec] * 9), ADMIN
            )
        # the refused jobs were withdrawn: they hold no room in the queue and are nowhere
        assert table.counts[JobState.QUEUED] == 1 and list(table.jobs) == [first]
        status = await service.get_job_status(
            job_pb2.GetJobStatusRequest(job_id="job-00000002"), ADMIN
        )
        assert status.state == "unknown"

        flaky.full = False
        later = await _submit_once_writable(service)
        # ids are never reused, and the queue has room for 9 more
        assert wire.job_number(later) >= 12
        await service.submit_jobs(
            job_pb2.SubmitJobsRequest(specs=[_submit_request().spec] * 8), ADMIN
        )
        assert table.counts[JobState.QUEUED] == 10
    assert store.next_id() == wire.job_number(later) + 9
    assert {job.job_id for job in store.live_jobs()} == set(table.jobs)


def _record_commits(
    flaky: FlakyWrites, commits: list[tuple[int, int]], first_delay: float = 0.0
) -> None:
    """Record each commit's row counts (inserted, updated); the first one takes ``first_delay``
    seconds."""

    async def slow_first(commit: Commit) -> None:
        await slow_commit(first_delay if not commits else 0.0)

    def recorded(commit: Commit) -> None:
        commits.append((commit.inserted, len(commit.changed_rows) + len(commit.leased_rows)))

    flaky.before, flaky.after = slow_first, recorded


async def _one_worker(service: ControllerService, slots: int = 1) -> job_pb2.PollJobRequest:
    """Register worker w1 (``slots`` slots, as many jobs held); its long poll for that many."""
    register = worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=slots, queue_capacity=slots)
    await service.register_worker(register, ADMIN)
    return job_pb2.PollJobRequest(worker_id="w1", max_jobs=slots, wait_ms=10_000, batch=True)


@asynccontextmanager
async def _recorded_service(
    store: Store, slots: int = 1
) -> AsyncIterator[
    tuple[JobTable, StoreWriter, ControllerService, job_pb2.PollJobRequest, list[tuple[int, int]]]
]:
    """A service over a running writer whose commits are recorded (see _record_commits), with
    worker w1 registered (``slots``): the table, writer, service, w1's poll and the commits."""
    table = JobTable()
    commits: list[tuple[int, int]] = []
    async with running_writer(store, table) as (writer, flaky):
        _record_commits(flaky, commits)
        service = ControllerService(table, writer=writer)
        yield table, writer, service, await _one_worker(service, slots), commits


async def test_a_job_submitted_and_leased_before_its_commit_is_written_once(store: Store) -> None:
    """Submission and first lease share a commit (one fsync, one row write on the idle path),
    and neither the client nor the worker hears of the job before that commit is done."""
    table = JobTable()
    commits: list[tuple[int, int]] = []
    async with running_writer(store, table) as (writer, flaky):
        _record_commits(flaky, commits, first_delay=0.2)
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service)
        polled: list[job_pb2.PollJobResponse] = []
        submitted: list[str] = []

        async def poll_once() -> None:
            polled.append(await service.poll_job(poll, ADMIN))

        async def submit_once() -> None:
            submitted.append(await _submit(service))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.durable)  # a slow commit is under way...
                await trio.sleep(0.05)
                nursery.start_soon(poll_once)  # ...while a job is submitted and leased
                nursery.start_soon(submit_once)
                await trio.sleep(0.05)
                assert polled == [] and submitted == []  # nobody heard of it yet
    assert commits == [(0, 0), (1, 0)]
    [job_id] = submitted
    assert [job.job_id for job in polled[0].jobs] == [job_id]
    stored = store.get(job_id)
    assert stored is not None and (stored.state, stored.attempt, stored.worker_id) == (
        JobState.LEASED, 1, "w1",
    )  # fmt: skip


async def test_on_an_idle_controller_a_job_is_stored_with_its_lease_and_the_worker_hears_first(
    store: Store,
) -> None:
    """A submission that wakes a waiting poll: the writer lets the poll lease the job before it
    commits (one commit, not two), and the poll's answer goes before the client's, as the
    job's start waits for it. trio runs tasks woken together in random order: 20 rounds."""
    async with _recorded_service(store) as (table, writer, service, poll, commits):
        answered: list[str] = []

        async def poll_once() -> None:
            response = await service.poll_job(poll, ADMIN)
            answered.append("worker")
            table.report("w1", Result(response.jobs[0].job_id, 1, 0), 0.0)

        async def submit_once() -> None:
            await _submit(service)
            answered.append("client")

        for _ in range(20):
            answered.clear()
            commits.clear()
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll_once)
                    await trio.sleep(0.01)  # the poll waits for work
                    nursery.start_soon(submit_once)
                await writer.durable()  # the result
            assert answered == ["worker", "client"]
            assert commits[0] == (1, 0)  # the job, already leased: one row, one commit
            assert len(commits) == 2  # and then the result


async def test_a_poll_waits_for_the_commit_that_took_its_leases_not_for_the_next(
    store: Store,
) -> None:
    """A report frees the worker's slot and the next job is leased to it at once; the report's
    commit stores that lease. The worker's next poll hands the job over without waiting for
    another commit, even with other changes pending: nothing of its job is left to store."""
    async with _recorded_service(store) as (table, writer, service, poll, commits):
        first, second = await _submit(service), await _submit(service)
        (job,) = (await service.poll_job(poll, ADMIN)).jobs
        assert job.job_id == first
        await service.report_job_results(_success(first), ADMIN)  # stored with `second`'s lease
        assert table.jobs[second].state is JobState.LEASED
        commits.clear()
        table.submit([NewJob(SPEC)], 0.0)  # somebody else's change, not stored yet
        (job,) = (await service.poll_job(poll, ADMIN)).jobs
        assert job.job_id == second
        assert commits == []
        table.cancel(second, 1.0)  # a change of its own does wait for a commit
        await writer.stored([table.jobs[second]])
        assert commits == [(1, 1)]


async def test_a_poll_for_leases_a_finished_commit_stored_does_not_wait_for_the_one_under_way(
    store: Store,
) -> None:
    """The report's commit stored the next job's lease: the worker's poll hands it over even
    while a later commit (of other changes) is under way, instead of waiting for that one."""
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service)
        first, second = await _submit(service), await _submit(service)
        (job,) = (await service.poll_job(poll, ADMIN)).jobs
        await service.report_job_results(_success(first), ADMIN)  # stored with `second`'s lease
        release = trio.Event()

        async def held(commit: Commit) -> None:
            await release.wait()

        flaky.before = held
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                table.submit([NewJob(SPEC)], 0.0)  # somebody else's change...
                nursery.start_soon(writer.durable)  # ...in a commit that waits
                await trio.sleep(0.05)
                (job,) = (await service.poll_job(poll, ADMIN)).jobs
                assert job.job_id == second
                release.set()


async def test_a_report_that_asks_for_work_gets_it_stored_in_the_commit_of_its_results(
    store: Store,
) -> None:
    """The room the results free is filled by the same call: the jobs come back in the report's
    answer once one commit stored both the results and the leases (a report and then a poll
    would take two calls and two commits), and no poll hands them over again."""
    async with _recorded_service(store, slots=2) as (_, writer, service, poll, commits):
        ids = [await _submit(service) for _ in range(4)]
        polled = await service.poll_job(poll, ADMIN)
        assert [job.job_id for job in polled.jobs] == ids[:2]
        await writer.durable()
        commits.clear()
        request = _success(ids[0])
        request.results.add(job_id=ids[1], attempt=1)
        request.max_jobs = 2
        response = await service.report_job_results(request, ADMIN)
        assert list(response.outcomes) == [job_pb2.REPORT_OUTCOME_ACCEPTED] * 2
        assert [(job.job_id, job.attempt) for job in response.jobs] == [(ids[2], 1), (ids[3], 1)]
        assert response.jobs[0].spec == _submit_request().spec
        assert response.lease_seq > polled.lease_seq
        assert len(commits) == 1
        now = job_pb2.PollJobRequest(worker_id="w1", max_jobs=2, batch=True)
        assert not (await service.poll_job(now, ADMIN)).jobs
    for job_id in ids[2:]:
        stored = store.get(job_id)
        assert stored is not None and stored.state is JobState.LEASED
        assert (stored.worker_id, stored.attempt) == ("w1", 1)


async def test_a_report_whose_commit_fails_hands_over_no_jobs(store: Store) -> None:
    """The worker hears nothing of the jobs (it retries the report); they wait for its next
    call under the same attempt, as a lease that never left."""
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service, slots=2)
        first, second = await _submit(service), await _submit(service)
        assert [job.job_id for job in (await service.poll_job(poll, ADMIN)).jobs] == [first, second]
        third = await _submit(service)
        request = _success(first)
        request.max_jobs = 1
        flaky.full = True
        with pytest.raises(transport.Unavailable, match="disk is full"):
            await service.report_job_results(request, ADMIN)
        assert table.jobs[third].lease_seq == 0  # not handed over
        flaky.full = False
        response = await _once_writable(lambda: service.report_job_results(request, ADMIN))
        assert [(job.job_id, job.attempt) for job in response.jobs] == [(third, 1)]


async def test_a_plain_report_echoes_no_lease_batch(store: Store) -> None:
    """A report that asks for no work answers lease_seq 0, never the number of a batch that a
    poll may still be carrying: a worker echoing it in a heartbeat would disown that batch."""
    async with _recorded_service(store, slots=2) as (_, _, service, poll, _):
        first = await _submit(service)
        await _submit(service)
        polled = await service.poll_job(poll, ADMIN)
        assert polled.lease_seq > 0 and len(polled.jobs) == 2
        response = await service.report_job_results(_success(first), ADMIN)
        assert response.lease_seq == 0 and not response.jobs


def _array(count: int) -> job_pb2.SubmitJobsRequest:
    return job_pb2.SubmitJobsRequest(template=_submit_request().spec, array_count=count)


async def test_a_large_submission_is_stored_a_slice_per_commit_beside_the_reports(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission larger than a stage slice goes to the store a slice per commit, beside the
    other changes: a worker's report made meanwhile is answered once its result is stored,
    before the submission's last slice. Its jobs are queued only once all are stored."""
    monkeypatch.setattr(writer_module, "STAGE_SLICE", 3)
    monkeypatch.setattr(service_module, "STAGE_SLICE", 3)
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service)
        first = await _submit(service)
        assert [job.job_id for job in (await service.poll_job(poll, ADMIN)).jobs] == [first]
        commits: list[tuple[int, int]] = []
        _record_commits(flaky, commits)

        async def slow(commit: Commit) -> None:
            await slow_commit(0.05)

        flaky.before = slow
        answered: list[str] = []
        ids: list[str] = []

        async def submit_array() -> None:
            ids.extend((await service.submit_jobs(_array(7), ADMIN)).job_ids)
            answered.append("submission")

        async def report_meanwhile() -> None:
            await trio.sleep(0.02)  # while the first slice is being written
            assert list(table.jobs) == [first]  # nothing of the submission is queued yet
            await service.report_job_results(_success(first), ADMIN)
            answered.append("report")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_array)
            nursery.start_soon(report_meanwhile)
        await writer.durable()
    assert answered == ["report", "submission"]
    assert [new for new, _ in commits if new] == [3, 3, 1]
    assert ids == [wire.job_id(n) for n in range(2, 9)]
    assert [job.job_id for job in store.live_jobs()] == ids
    stored = store.get(first)
    assert stored is not None and stored.state is JobState.SUCCEEDED


async def test_a_submission_staged_when_the_writer_stops_is_refused_and_gone_after_a_restart(
    store: Store, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller that stops after the first slice of a staged submission was stored refuses
    the client, and its next start deletes that slice: the submission was never accepted."""
    monkeypatch.setattr(writer_module, "STAGE_SLICE", 3)
    monkeypatch.setattr(service_module, "STAGE_SLICE", 3)
    table = JobTable()
    sliced = trio.Event()
    refused: list[str] = []

    async def submit(service: ControllerService) -> None:
        with pytest.raises(transport.ResourceExhausted) as error:
            await service.submit_jobs(_array(7), ADMIN)
        refused.append(error.value.message)

    async with trio.open_nursery() as clients, running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        accepted = await _submit(service)

        async def hold_after_the_first(commit: Commit) -> None:
            if sliced.is_set():
                await trio.sleep_forever()  # the controller stops meanwhile

        def first_slice(commit: Commit) -> None:
            if commit.inserted == 3:
                sliced.set()

        flaky.before, flaky.after = hold_after_the_first, first_slice
        clients.start_soon(submit, service)
        await sliced.wait()
    assert refused == ["the controller is stopping: not stored"]
    assert list(table.jobs) == [accepted]
    store.close()
    store.__init__(state_dir)  # type: ignore[misc]
    assert [job.job_id for job in store.live_jobs()] == [accepted]


async def test_a_staged_submission_whose_commit_fails_is_refused_whole(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing, also a slice at a time: when a commit fails after the first slice was
    stored, the client is refused, nothing was queued, and a later commit deletes the slice."""
    monkeypatch.setattr(writer_module, "STAGE_SLICE", 3)
    monkeypatch.setattr(service_module, "STAGE_SLICE", 3)
    table = JobTable(max_queued=10)
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        slices: list[int] = []

        def full_after_the_first(commit: Commit) -> None:
            slices.append(commit.inserted)
            flaky.full = True

        flaky.after = full_after_the_first
        with pytest.raises(transport.ResourceExhausted, match="disk is full"):
            await service.submit_jobs(_array(7), ADMIN)
        assert slices == [3]
        assert not table.jobs and table.counts[JobState.QUEUED] == 0
        flaky.full, flaky.after = False, lambda commit: None
        later = await _submit_once_writable(service)
        # the room it held is free again: the queue takes 9 more
        await service.submit_jobs(_array(9), ADMIN)
    live = [job.job_id for job in store.live_jobs()]
    assert live[0] == later and len(live) == 10  # none of the refused submission's jobs
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM staged").fetchone() == (0,)
    db.close()


async def test_a_submission_in_pieces_whose_accepting_commit_fails_is_refused_whole(
    store: Store, state_dir: Path
) -> None:
    """The pieces are stored as they come but accepted by one commit: when it fails, the
    client is refused, nothing is queued, the pieces' rows are deleted, and a restart finds
    none of them."""
    table = JobTable(max_queued=10)
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        first = _array(4)
        first.more = True
        reply = await service.submit_jobs(first, ADMIN)
        assert store.get(reply.job_ids[0]) is None  # stored, but not accepted
        flaky.full = True
        last = _array(3)
        last.submission_id = reply.submission_id
        with pytest.raises(transport.ResourceExhausted, match="disk is full"):
            await service.submit_jobs(last, ADMIN)
        assert not table.jobs and table.counts[JobState.QUEUED] == 0
        flaky.full = False
        # The room both pieces held is free again: the queue takes 10.
        later = await _submit_once_writable(service)
        await service.submit_jobs(_array(9), ADMIN)
    live = [job.job_id for job in store.live_jobs()]
    assert live[0] == later and len(live) == 10
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM staged").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (10,)
    db.close()


async def test_a_restart_between_pieces_deletes_them(store: Store, state_dir: Path) -> None:
    table = JobTable()
    async with running_writer(store, table) as (writer, _):
        first = _array(4)
        first.more = True
        await ControllerService(table, writer=writer).submit_jobs(first, ADMIN)
    store.close()
    store.__init__(state_dir)  # type: ignore[misc]
    assert list(store.live_jobs()) == []
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    db.close()


async def test_a_state_filter_lists_the_jobs_in_that_state_when_the_listing_was_taken(
    store: Store,
) -> None:
    """Issue 17, defect 7: ``burst list --state queued`` printed a leased job under load. A job
    leased while the store was read is listed as it was read (queued), not as it is now."""
    table = JobTable()
    async with running_writer(store, table) as (writer, _):
        service = ControllerService(table, writer=writer)
        ids = [await _submit(service) for _ in range(3)]
        reading, leased = threading.Event(), threading.Event()
        read = store.list

        def slow_read(
            state: str | None, after: str, limit: int, owner: str | None, **filters: Any
        ) -> list[Job]:
            found = read(state, after, limit, owner, **filters)
            reading.set()
            leased.wait(10)
            return found

        store.list = slow_read  # type: ignore[method-assign]
        listings: list[job_pb2.ListJobsResponse] = []

        async def list_queued() -> None:
            listings.append(
                await service.list_jobs(
                    job_pb2.ListJobsRequest(state="queued", all_users=True), ADMIN
                )
            )

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(list_queued)
                while not reading.is_set():
                    await trio.sleep(0.01)
                await _one_worker(service)  # it takes the first job
                assert table.jobs[ids[0]].state is JobState.LEASED
                leased.set()
    assert [(info.job_id, info.state) for info in listings[0].jobs] == [
        (job_id, "queued") for job_id in ids
    ]


def _success(job_id: str) -> job_pb2.ReportJobResultsRequest:
    """Worker w1's report that the first attempt of the job exited 0."""
    result = job_pb2.ReportJobResultRequest(job_id=job_id, attempt=1)
    return job_pb2.ReportJobResultsRequest(worker_id="w1", results=[result])


async def test_a_waiter_hears_of_jobs_that_left_memory_without_reading_them_back(
    store: Store,
) -> None:
    """A job leaves memory once its end is stored; WaitJobs reports it from the table's log of
    finished jobs, not by reading each one back from the store."""
    async with _recorded_service(store) as (table, writer, service, poll, _):
        ids = [await _submit(service), await _submit(service)]  # w1 has one slot
        reads: list[list[str]] = []
        get_many = store.get_many

        def counted(job_ids: list[str]) -> list[Job]:
            reads.append(list(job_ids))
            return get_many(job_ids)

        store.get_many = counted  # type: ignore[method-assign]
        finished: list[str] = []

        async def waiter() -> None:
            async for update in service.wait_jobs(job_pb2.WaitJobsRequest(job_ids=ids), ADMIN):
                finished.extend(info.job_id for info in update.finished)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                for job_id in ids:
                    (job,) = (await service.poll_job(poll, ADMIN)).jobs
                    assert job.job_id == job_id
                    await service.report_job_results(_success(job_id), ADMIN)
                    await writer.durable()
                    assert table.get(job_id) is None  # stored, so out of memory
                    await trio.sleep(2 * WAIT_UPDATE_INTERVAL)  # the waiter looks meanwhile
        assert finished == ids
        assert reads == []


async def test_waiters_hear_every_end_while_jobs_end_during_the_commits_of_their_starts(
    store: Store,
) -> None:
    """Stress (issue 17, defect 9): a worker reports its jobs' starts and, while those commits
    are under way, their ends, in waves, round after round, with the store taking a few
    milliseconds per commit; waiters on the whole round, on its halves and on single jobs, as
    ``burst wait`` and bench/e2e.py wait. Every waiter must hear every end: none may go silent
    (a job that left memory before its end was stored was read back as running)."""
    rng = random.Random(17)
    rounds, per_round = 15, 40
    async with running_writer(store, JobTable()) as (writer, flaky):
        table = writer.table

        async def slow(commit: Commit) -> None:
            await slow_commit(rng.uniform(0.0, 0.01))

        flaky.writing = slow
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service, per_round)
        template = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
        for round_number in range(rounds):
            request = job_pb2.SubmitJobsRequest(template=template, array_count=per_round)
            ids = list((await service.submit_jobs(request, ADMIN)).job_ids)
            groups = [ids, ids[: per_round // 2], ids[per_round // 2 :], *([i] for i in ids[::7])]
            silent: list[list[str]] = list(groups)

            async def waiter(group: list[str], silent: list[list[str]]) -> None:
                wait = job_pb2.WaitJobsRequest(job_ids=group)
                async for update in service.wait_jobs(wait, ADMIN):
                    if update.pending == 0:
                        silent.remove(group)

            async def report(request: job_pb2.ReportJobResultsRequest) -> None:
                await service.report_job_results(request, ADMIN)

            with trio.move_on_after(3):
                async with trio.open_nursery() as nursery:
                    for group in groups:
                        nursery.start_soon(waiter, group, silent)
                    jobs = list((await service.poll_job(poll, ADMIN)).jobs)
                    rng.shuffle(jobs)
                    while jobs:
                        size = rng.randint(1, 10)
                        wave, jobs = jobs[:size], jobs[size:]
                        held = [
                            worker_pb2.HeldJob(job_id=j.job_id, attempt=j.attempt) for j in wave
                        ]
                        nursery.start_soon(
                            report, job_pb2.ReportJobResultsRequest(worker_id="w1", started=held)
                        )
                        await trio.sleep(rng.uniform(0.0, 0.01))
                        results = [
                            job_pb2.ReportJobResultRequest(job_id=j.job_id, attempt=j.attempt)
                            for j in wave
                        ]
                        nursery.start_soon(
                            report, job_pb2.ReportJobResultsRequest(worker_id="w1", results=results)
                        )
                        await trio.sleep(rng.uniform(0.0, 0.03))
            assert not silent, f"round {round_number}: waiters on {silent} heard no end"
        assert table.counts[JobState.SUCCEEDED] == rounds * per_round


async def test_a_failed_commit_withdraws_a_job_leased_before_it(store: Store) -> None:
    """The client is refused, the poll that leased the job fails, and the job is nowhere: not in
    memory, not in the worker's load, never handed over later."""
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        poll = await _one_worker(service)
        flaky.full = True
        outcomes: list[object] = []

        async def poll_once() -> None:
            try:
                outcomes.append(await service.poll_job(poll, ADMIN))
            except transport.RpcError as error:
                outcomes.append(error)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll_once)
                await trio.sleep(0.01)
                with pytest.raises(transport.ResourceExhausted, match="disk is full"):
                    await _submit(service)
        assert isinstance(outcomes[0], transport.Unavailable)
        assert table.jobs == {} and table.workers["w1"].leases == {}
        assert table.counts == dict.fromkeys(JobState, 0)
        flaky.full = False
        later = await _submit_once_writable(service)
        response = await service.poll_job(poll, ADMIN)
    assert [job.job_id for job in response.jobs] == [later]
    assert store.get("job-00000001") is None


async def test_a_job_cancelled_before_its_first_commit_leaves_memory_once_stored(
    store: Store,
) -> None:
    table = JobTable()
    async with running_writer(store, table) as (writer, _):
        (job_id,) = table.submit([NewJob(SPEC)], 0.0)
        table.cancel(job_id, 1.0)
        await writer.durable()
        assert table.get(job_id) is None
    stored = store.get(job_id)
    assert stored is not None and stored.state is JobState.CANCELLED


async def test_a_failed_commit_leaves_no_change_of_a_job_it_withdraws(store: Store) -> None:
    """A submission refused by a full disk leaves nothing to store later, also of a job that
    changed after its submission (cancelled here) before the commit that failed."""
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):
        flaky.full = True
        (job_id,) = table.submit([NewJob(SPEC)], 0.0)
        table.cancel(job_id, 1.0)
        with pytest.raises(StoreUnavailable):
            await writer.durable()
        assert job_id not in table.jobs and not table.pending(job_id)
        flaky.full = False
        calls = flaky.calls
        await writer.durable()
        assert flaky.calls == calls + 1 and flaky.rows == 0
    assert store.get(job_id) is None


@pytest.mark.parametrize("slow_part", ["before", "writing"])
async def test_a_job_that_ends_during_the_commit_of_its_start_stays_in_memory(
    store: Store, slow_part: str
) -> None:
    """A job leaves memory only once its last change is stored: one that finished while the
    commit of its running state was under way must not be read back from the store as running
    (a waiter looking it up then would never hear that it ended). The changes made meanwhile
    go to the store process as soon as that commit is written, before its jobs leave memory:
    the job must stay until that next commit is written too (``writing``: it is slow)."""
    table = JobTable()
    commits: list[int] = []
    async with running_writer(store, table) as (writer, flaky):

        async def slow(commit: Commit) -> None:
            await slow_commit(0.3)

        (job_id,) = table.submit([NewJob(SPEC)], 0.0)
        table.register("w1", slots=1, capacity=1, now=0.0)
        table.lease("w1", 1, 0.0)
        await writer.durable()
        setattr(flaky, slow_part, slow)
        flaky.after = lambda commit: commits.append(len(commit.changed_rows))
        job = table.jobs[job_id]
        table.started("w1", Held(job_id, job.attempt), 1.0)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.durable)  # stores "running", slowly
                await trio.sleep(0.1)
                table.report("w1", Result(job_id, job.attempt, 0), 2.0)
                nursery.start_soon(writer.durable)  # the next commit stores "succeeded"
                while not commits:
                    await trio.sleep(0.01)
                await trio.sleep(0.1)  # the first is written, the next one is under way
                assert commits == [1]
                found = await ControllerService(table, writer=writer).lookup(job_id)
                assert found is not None and found.state is JobState.SUCCEEDED
        assert commits == [1, 1]
        stored = store.get(job_id)
        assert stored is not None and stored.state is JobState.SUCCEEDED
        assert table.get(job_id) is None  # stored at last: it has left memory


async def test_a_full_disk_does_not_cost_queued_jobs_their_attempts(store: Store) -> None:
    """While writes fail, a worker's polls fail (a lease must be stored before it is handed
    over), and the worker registers again after each failure, as its link does. Its jobs must
    wait, not count a lost worker at every round and end failed past the crash limit."""
    table = JobTable(crash_limit=3, lease_ttl=1000.0)
    async with running_writer(store, table) as (writer, flaky):
        service = ControllerService(table, writer=writer)
        job_id = await _submit(service)
        register = worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=1, queue_capacity=1)
        await service.register_worker(register, ADMIN)
        flaky.full = True
        poll = job_pb2.PollJobRequest(worker_id="w1", max_jobs=1, wait_ms=0, batch=True)
        for _ in range(5):
            with pytest.raises(transport.Unavailable):
                await service.poll_job(poll, ADMIN)
            await service.register_worker(register, ADMIN)
        job = table.jobs[job_id]
        assert job.state is not JobState.FAILED, (job.reason, job.error_message)
        assert job.lost_count == 0
        flaky.full = False
        response = await _once_writable(lambda: service.poll_job(poll, ADMIN))
        assert [j.job_id for j in response.jobs] == [job_id]


async def test_a_submission_whose_client_went_away_mid_commit_is_known_to_memory(
    store: Store,
) -> None:
    """The commit may store the jobs of a cancelled submission: memory must then hold them too,
    or they would show as queued and never run until a restart."""
    table = JobTable()
    async with running_writer(store, table) as (writer, flaky):

        async def slow(commit: Commit) -> None:
            await slow_commit(0.3)

        flaky.before = slow
        service = ControllerService(table, writer=writer)
        with trio.move_on_after(0.05):
            await _submit(service)
        await writer.durable()
        stored = {job.job_id for job in store.live_jobs()}
        assert stored == set(table.jobs)
        assert table.counts[JobState.QUEUED] == len(stored)


async def test_waiting_submissions_fail_when_the_writer_stops(store: Store) -> None:
    """Submissions wait for their commit shielded from cancellation: a controller that stops
    mid-commit must still stop, answering them UNAVAILABLE."""
    table = JobTable()
    flaky = FlakyWrites(store)

    async def slow(commit: Commit) -> None:
        await slow_commit(0.3)

    flaky.before = slow
    writer = StoreWriter(store, table)
    service = ControllerService(table, writer=writer)
    answers: list[str | transport.RpcError] = []

    async def submit_one() -> None:
        try:
            answers.append(await _submit(service))
        except transport.RpcError as error:
            answers.append(error)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            nursery.start_soon(submit_one)
            await trio.sleep(0.1)  # the first commit is under way
            nursery.start_soon(submit_one)  # waits for the next one, which never comes
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    # The commit under way finished: its job is stored, and known to memory.
    first, second = answers
    assert first == "job-00000001"
    assert isinstance(second, transport.RpcError) and "stopping" in second.message
    assert {job.job_id for job in store.live_jobs()} == set(table.jobs) == {first}


def test_a_write_that_fails_at_commit_reports_its_own_error(store: Store) -> None:
    """SQLite rolls back by itself when COMMIT fails on a full disk: the store must still
    raise that error, not the "no transaction is active" of a second rollback."""

    class FailingCommit:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                self.db.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

    table = JobTable()
    table.submit([NewJob(SPEC)], 0.0)
    jobs = table.take_changes().new
    writes = Writes.open(store.path)  # what the store process runs, here in-process
    real = writes._db
    writes._db = FailingCommit(real)  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            writes.write([row(job) for job in jobs], [], [], table.next_id)
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            writes.forget_finished(1e12)
    finally:
        writes._db = real
    assert not real.in_transaction
    assert store.get(jobs[0].job_id) is None
    writes.write([row(job) for job in jobs], [], [], table.next_id)  # usable again
    writes.close()
    assert store.get(jobs[0].job_id) is not None


def test_a_listing_takes_the_callers_newer_copy_of_a_job_over_its_row(store: Store) -> None:
    table = JobTable(max_queued=100)
    ids = submit(store, table, 3)
    persist(store, table)
    table.register("w1", slots=1, capacity=1, now=1.0)
    table.lease("w1", 1, 1.0)  # not stored yet: the table's copy is newer
    held = {ids[0]: table.jobs[ids[0]], ids[2]: table.jobs[ids[2]]}
    listed = store.list(None, "", 10, newer=held.get)
    assert [job.job_id for job in listed] == ids
    assert listed[0] is held[ids[0]] and listed[0].state is JobState.LEASED
    assert listed[2] is held[ids[2]]
    assert listed[1] is not table.jobs[ids[1]] and listed[1].state is JobState.QUEUED


def test_a_listing_with_the_callers_copies_reads_the_rows_of_the_others_alone(
    store: Store,
) -> None:
    """Filters and order hold when the rows come in a second read: a page of a state-less
    listing whose jobs the table holds only in part, with an owner filter and a limit."""
    table = JobTable(max_queued=100)
    ids = submit(store, table, 6)
    persist(store, table)
    held = {job_id: table.jobs[job_id] for job_id in ids[1::2]}
    listed = store.list(None, ids[0], 4, "", newer=held.get)
    assert [job.job_id for job in listed] == ids[1:5]
    assert [job is held.get(job.job_id) for job in listed] == [True, False, True, False]
    assert store.list(None, "", 10, "someone-else", newer=held.get) == []


async def test_a_listing_without_a_state_waits_for_no_commit(store: Store) -> None:
    """It takes the table's copy of every job the table holds, and a job leaves the table only
    once stored: nothing the store lacks is owed to it (after a large submission the writer's
    next commit stores an event a job, which a first page waited for)."""
    table = JobTable(track_changes=True)
    async with running_writer(store, table) as (writer, _):
        service = ControllerService(table, writer=writer)
        submitted = await service.submit_jobs(
            job_pb2.SubmitJobsRequest(specs=[job_pb2.JobSpec(process=job_pb2.ProcessSpec(
                command="true"))] * 3), ADMIN
        )  # fmt: skip
        table.register("w1", slots=1, capacity=1, now=1.0)
        async with writer.lock:  # no commit can be written meanwhile
            table.lease("w1", 1, 1.0)
            with trio.fail_after(5):
                listed = await service.list_jobs(job_pb2.ListJobsRequest(brief=True), ADMIN)
        assert [(info.job_id, info.state) for info in listed.jobs] == list(
            zip(submitted.job_ids, ["leased", "queued", "queued"], strict=True)
        )
