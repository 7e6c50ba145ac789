"""The job table keeps the promises of the design (section 5): unit tests, one behaviour each, then
random operation sequences (hypothesis) against a faithfully simulated fleet of workers."""

from __future__ import annotations

import dataclasses
import operator
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from burstd import resources, wire
from burstd.controller import store as store_module
from burstd.controller.table import (
    _MOVES,
    TERMINAL,
    TRANSITIONS,
    WORKER_TRANSITIONS,
    Event,
    Held,
    InvariantError,
    Job,
    JobState,
    JobTable,
    NewJob,
    OverQuota,
    Owner,
    QueueFull,
    ReportOutcome,
    Result,
    StoredCount,
    UnknownDependency,
    UnknownWorker,
    Worker,
    WorkerEvent,
    WorkerReplaced,
    WorkerState,
    earlier_attempts,
)
from burstd.policies.quotas import Quota, Quotas
from burstd.policies.routers import Router, make_router

Q, L, R = JobState.QUEUED, JobState.LEASED, JobState.RUNNING

# -- helpers ----------------------------------------------------------------------------------


def submit(
    table: JobTable, n: int = 1, *, retries: int = 0, now: float = 0.0, owner: str = ""
) -> list[str]:
    return table.submit([NewJob(b"spec", retries, f"j{i}") for i in range(n)], now, owner)


def register(
    table: JobTable,
    worker_id: str = "w1",
    *,
    capacity: int = 4,
    now: float = 0.0,
    held: list[Held] | None = None,
) -> list[Held]:
    return table.register(worker_id, slots=1, capacity=capacity, now=now, held=held or [])


def deliver(table: JobTable, worker_id: str = "w1", *, now: float = 0.0) -> tuple[int, list[Job]]:
    return table.lease(worker_id, 100, now)


def exited(job: Job | str, table: JobTable | None = None, code: int = 0, **kw: Any) -> Result:
    if isinstance(job, str):
        assert table is not None
        job = table.jobs[job]
    return Result(job.job_id, kw.pop("attempt", job.attempt), code, **kw)


def fingerprint(table: JobTable) -> tuple[Any, ...]:
    """Everything a refused or duplicate request must leave alone (not last_seen)."""
    jobs = tuple(
        (
            j.job_id,
            j.state,
            j.attempt,
            j.worker_id,
            j.lease_seq,
            j.exit_code,
            j.signal,
            j.reason,
            j.error_message,
            j.started_at,
            j.finished_at,
            j.lost_count,
            j.retried,
        )
        for j in table.jobs.values()
    )
    workers = tuple(
        (
            w.worker_id,
            w.capacity,
            tuple(w.leases),
            tuple(j.job_id for j in w.outbox),
            w.lease_seq,
            tuple(w.cancel_notices.items()),
        )
        for w in table.workers.values()
    )
    queue = tuple(queued_in_order(table))
    return (
        jobs,
        workers,
        tuple(table.counts.items()),
        tuple(job.job_id for job in table.finished_log),
        table.next_id,
        queue,
    )


def queued_in_order(table: JobTable) -> list[str]:
    """The queued jobs' ids, each owner's lanes in turn (entries that left QUEUED skipped)."""
    in_queues = [j.job_id for o in table._owners.values() for j in lane_jobs(o) if j.state is Q]
    return in_queues + [j.job_id for j in table._unfit.values() if j.state is Q]


def lane_jobs(owner: Owner) -> list[Job]:
    """The entries of an owner's lanes, backlog then queue, highest priority first."""
    return [
        job
        for _, lane in sorted(owner.lanes.items(), reverse=True)
        for job in (*lane.backlog, *lane.queue)
    ]


def finished_ids(table: JobTable) -> list[str]:
    return [job.job_id for job in table.finished_log]


def real_counts(table: JobTable) -> dict[JobState, int]:
    counts = dict.fromkeys(JobState, 0)
    for job in table.jobs.values():
        counts[job.state] += 1
    return counts


# -- the happy path and plain failures ----------------------------------------------------------


def test_a_worker_takes_a_job_per_idle_slot_then_the_queue_is_shared_in_turn() -> None:
    def loads(jobs: int) -> list[int]:
        table = JobTable()
        for worker_id in "ab":
            table.register(worker_id, slots=4, capacity=8, now=0.0, held=[])
        submit(table, jobs)
        assert table.counts[L] == jobs and table.counts[Q] == 0
        return sorted(len(worker.leases) for worker in table.workers.values())

    # The first worker picked fills its 4 idle slots at once; the next one takes the rest.
    assert loads(6) == [2, 4]
    # Beyond the idle slots, one job per pick, in turn: the queues stay even.
    assert loads(10) == [5, 5]
    assert loads(15) == [7, 8]


# -- dependencies (rule 12) --------------------------------------------------------------------


W, F, S = JobState.WAITING, JobState.FAILED, JobState.SUCCEEDED


def test_a_job_waits_for_its_dependencies_to_succeed_then_is_queued() -> None:
    table = JobTable()
    first = submit(table, 2)
    (after,) = table.submit([NewJob(b"r", after=",".join(first))], 0.0)
    (anyway,) = table.submit([NewJob(b"a", after=first[0], after_any=True)], 0.0)
    assert table.jobs[after].state is W and table.counts[W] == 2
    register(table)
    deliver(table)
    table.report("w1", exited(first[0], table, code=3), 1.0)
    # after-any: queued (and leased) at its dependency's end, whatever it was
    assert table.jobs[anyway].state is L
    # the other: failed at once, naming the dependency
    assert table.jobs[after].state is F and table.jobs[after].reason == "dependency_failed"
    assert first[0] in table.jobs[after].error_message and table.counts[W] == 0
    (late,) = table.submit([NewJob(b"l", after=first[1])], 1.0)
    table.report("w1", exited(first[1], table), 2.0)
    assert table.jobs[late].state is L
    assert table._dependents == {}


def test_a_failure_ends_a_chain_of_100000_dependents_at_once() -> None:
    """Settled in a loop, not a recursion as deep as the chain."""
    table = JobTable(max_queued=200_000)
    (previous,) = submit(table)
    chain = []
    for _ in range(100_000):
        (previous,) = table.submit([NewJob(b"c", after=previous)], 0.0)
        chain.append(previous)
    assert table.counts[W] == 100_000
    assert table.cancel(table.jobs[chain[0]].after, 1.0) is JobState.CANCELLED
    assert table.counts[W] == 0 and table.counts[F] == 100_000
    assert table.jobs[chain[-1]].error_message == f"its dependency {chain[-2]} failed"
    assert table._dependents == {}


def test_a_dependency_only_the_store_holds_is_known_or_refused() -> None:
    table = JobTable()
    before = fingerprint(table)
    with pytest.raises(UnknownDependency, match="job-00000042"):
        table.submit([NewJob(b"x", after="job-00000042")], 0.0)
    assert fingerprint(table) == before
    jobs = table.new_jobs(table.number(2), [NewJob(b"x", after="job-00000042")] * 2, 0.0)
    table.enqueue(jobs, known={"job-00000042": S})
    assert [job.state for job in jobs] == [Q, Q]
    jobs = table.new_jobs(table.number(1), [NewJob(b"x", after="job-00000042")], 0.0)
    table.enqueue(jobs, known={"job-00000042": JobState.CANCELLED})
    assert jobs[0].state is F and jobs[0].reason == "dependency_failed"


def test_a_job_after_a_submission_waits_for_every_job_of_it() -> None:
    """Rule 12: a submission id stands for every job of it: released once all succeeded;
    with after_any, once all ended; failed at once by the first that failed."""
    table = JobTable()
    array = table.submit([NewJob(b"a")] * 3, 0.0)
    sub = wire.submission_id(table.jobs[array[0]].submission)
    (after,) = table.submit([NewJob(b"r", after=sub)], 0.0)
    (anyway,) = table.submit([NewJob(b"c", after=sub, after_any=True)], 0.0)
    register(table, capacity=3)
    deliver(table)
    table.report("w1", exited(array[0], table), 1.0)
    table.report("w1", exited(array[1], table), 1.0)
    assert (table.jobs[after].state, table.jobs[after].unmet) == (W, 1)
    table.report("w1", exited(array[2], table), 1.0)
    assert table.jobs[after].state is L and table.jobs[anyway].state is L

    more = table.submit([NewJob(b"a")] * 2, 2.0)
    sub = wire.submission_id(table.jobs[more[0]].submission)
    (after,) = table.submit([NewJob(b"r", after=sub)], 2.0)
    (anyway,) = table.submit([NewJob(b"c", after=sub, after_any=True)], 2.0)
    table.cancel(more[0], 3.0)
    info = table.jobs[after]
    assert (info.state, info.reason) == (F, "dependency_failed")
    assert info.error_message == f"its dependency {sub} has a job that cancelled ({more[0]})"
    assert table.jobs[anyway].state is W  # until the other one ended
    table.cancel(more[1], 3.0)
    assert table.jobs[anyway].state is not W
    with pytest.raises(UnknownDependency, match="sub-00000099"):
        table.submit([NewJob(b"x", after="sub-00000099")], 3.0)


def test_a_submission_waited_for_across_a_restart_is_counted_whole_first() -> None:
    """Rule 12: after a restart, a submission whose jobs only the store holds yet is waited
    for until ``restored``: counted whole, it then releases (or fails) its dependents."""
    table = JobTable()
    array = table.submit([NewJob(b"a")] * 2, 0.0)
    number = table.jobs[array[0]].submission
    (after,) = table.submit([NewJob(b"r", after=wire.submission_id(number))], 0.0)
    again = JobTable()
    again.restore([dataclasses.replace(table.jobs[after])], table.next_id, 5.0, unloaded=2)
    assert again.jobs[after].state is W
    again.restore_counts([StoredCount("", number, S, 2, number + 1, 0.0)])
    again.restored(6.0)
    assert again.jobs[after].state is Q


# -- owners and quotas (rule 10) ---------------------------------------------------------------


def owners_of(table: JobTable, worker_id: str) -> list[str]:
    return sorted(job.owner for job in table.workers[worker_id].leases.values())


def test_an_owner_at_max_running_holds_no_other_owners_jobs_back() -> None:
    table = JobTable(quotas=Quotas(users={"alice": {"max_running": 1}}))
    table.register("w1", slots=4, capacity=4, now=0.0)
    alice = submit(table, 3, owner="alice")
    bob = submit(table, 2, owner="bob")
    # alice's first job runs; her other two wait while bob's jobs take the free slots
    assert owners_of(table, "w1") == ["alice", "bob", "bob"]
    assert [table.jobs[j].state for j in alice] == [L, Q, Q]
    assert table.owner_counts("alice")[Q] == 2 and table.owner_counts("bob")[L] == 2
    # one of alice's ends: the next of hers starts, in her own order
    deliver(table)
    table.report("w1", exited(alice[0], table), 1.0)
    assert [table.jobs[j].state for j in alice] == [JobState.SUCCEEDED, L, Q]
    assert [table.jobs[j].state for j in bob] == [L, L]


def test_free_slots_go_round_the_owners_with_queued_jobs() -> None:
    """One owner's long queue does not keep another's later job waiting behind all of it."""
    table = JobTable()
    table.register("w1", slots=1, capacity=1, now=0.0)
    alice = submit(table, 5, owner="alice")
    (bob,) = submit(table, 1, owner="bob")
    started = [alice[0]]
    for now in range(1, 4):
        deliver(table)
        table.report("w1", exited(started[-1], table), float(now))
        (job,) = table.workers["w1"].leases.values()
        started.append(job.job_id)
    assert started == [alice[0], bob, alice[1], alice[2]]


def test_higher_priorities_start_first_and_share_their_turns_between_owners() -> None:
    """Rule 10: the highest priority with queued jobs goes first, FIFO within one owner, round
    the owners within one priority; a lower one waits, whoever's it is."""
    table = JobTable()
    table.register("w1", slots=1, capacity=1, now=0.0)
    first = submit(table, 1, owner="alice")
    low = table.submit([NewJob(b"low", priority=-3)], 0.0, "bob")
    plain = submit(table, 2, owner="alice")
    urgent = table.submit([NewJob(b"u", priority=5)] * 2, 0.0, "alice")
    bobs = table.submit([NewJob(b"b", priority=5)], 0.0, "bob")
    started = [*first]
    for now in range(1, 7):
        deliver(table)
        table.report("w1", exited(started[-1], table), float(now))
        (job,) = table.workers["w1"].leases.values()
        started.append(job.job_id)
    assert started == [*first, urgent[0], *bobs, urgent[1], *plain, *low]


def test_a_lower_priority_backfills_while_a_higher_ones_job_waits_for_resources() -> None:
    """Rule 11 across priorities: a high-priority job that fits no worker now holds a worker
    reserved, and lower priorities take the other free slots meanwhile."""
    table = JobTable()
    table.register("w1", slots=2, capacity=2, now=0.0)
    table.register("w2", slots=2, capacity=2, now=0.0)
    busy = [*submit(table), *submit(table)]
    assert {table.jobs[j].worker_id for j in busy} == {"w1", "w2"}
    big = resources.make_request(cpus=2)
    (large,) = table.submit([NewJob(b"big", request=big, priority=9)], 0.0)
    assert table.jobs[large].state is Q and "reserved" in table.waiting(table.jobs[large])
    (reserved,) = table._reserved
    small = table.submit([NewJob(b"s")] * 2, 0.0)
    assert [table.jobs[j].state for j in small] == [L, Q]
    assert table.jobs[small[0]].worker_id != reserved
    (held,) = (j for j in busy if table.jobs[j].worker_id == reserved)
    deliver(table, reserved)
    table.report(reserved, exited(held, table), 1.0)
    assert table.jobs[large].state is L and table.jobs[large].worker_id == reserved


def test_max_queued_of_an_owner_refuses_its_submission_whole_and_no_one_elses() -> None:
    table = JobTable(quotas=Quotas(users={"bob": {"max_queued": 3}}))
    submit(table, 2, owner="bob")
    before = fingerprint(table)
    with pytest.raises(OverQuota) as refused:
        submit(table, 2, owner="bob")
    assert refused.value.limit == "max_queued" and "max_queued" in str(refused.value)
    assert fingerprint(table) == before
    submit(table, 1, owner="bob")
    submit(table, 10, owner="alice")
    # room held for a submission being stored counts as queued
    with pytest.raises(OverQuota), table.room(1, "bob"):
        pass
    table.register("w1", slots=1, capacity=1, now=0.0)  # leases one of bob's: room again
    with table.room(1, "bob"), pytest.raises(OverQuota):
        submit(table, 1, owner="bob")


def test_submit_rate_of_an_owner_says_when_to_retry() -> None:
    table = JobTable(quotas=Quotas(Quota(submit_rate=2.0)))
    submit(table, 2, owner="carol", now=10.0)
    with pytest.raises(OverQuota) as refused:
        submit(table, 1, owner="carol", now=10.25)
    assert refused.value.limit == "submit_rate"
    assert refused.value.retry_after == pytest.approx(0.25)
    submit(table, 1, owner="dave", now=10.25)  # a bucket of one's own
    submit(table, 1, owner="carol", now=10.5)


def test_submit_lease_start_report_success() -> None:
    table = JobTable()
    [job_id] = submit(table, now=1.0)
    job = table.jobs[job_id]
    assert job.state is Q and job.attempt == 0 and job.submitted_at == 1.0

    register(table, "w1", now=2.0)
    # Routed at once, but not handed over until the worker polls.
    assert job.state is L and job.worker_id == "w1" and job.attempt == 1 and job.lease_seq == 0
    assert table.take_wakeups() == {"w1"}

    seq, batch = deliver(table, now=3.0)
    assert batch == [job] and seq == 1 and job.lease_seq == 1
    assert deliver(table) == (1, [])  # nothing left to hand over

    table.started("w1", Held(job_id, 1), now=4.0)
    assert job.state is R and job.started_at == 4.0

    outcome = table.report("w1", exited(job, code=0, stdout_path="/o"), now=5.0)
    assert outcome is ReportOutcome.ACCEPTED
    assert job.state is JobState.SUCCEEDED and job.exit_code == 0 and job.finished_at == 5.0
    assert job.stdout_path == "/o"
    assert table.workers["w1"].leases == {}
    assert finished_ids(table) == [job_id]
    assert table.counts[JobState.SUCCEEDED] == 1 and table.counts[R] == 0


def test_finished_since_answers_the_jobs_ended_after_a_count_oldest_first() -> None:
    table = JobTable()
    table.finished_log = deque(maxlen=3)  # FINISHED_LOG_SIZE, made small
    ids = submit(table, 5)
    seq = table.finished_seq
    assert table.finished_since(seq) == []
    for n, job_id in enumerate(ids[:2], 1):
        table.cancel(job_id, 1.0)
        assert [job.job_id for job in table.finished_since(seq) or []] == ids[:n]
    for job_id in ids[2:]:
        table.cancel(job_id, 1.0)
    assert [job.job_id for job in table.finished_since(seq + 2) or []] == ids[2:]
    assert [job.job_id for job in table.finished_since(seq + 4) or []] == ids[4:]
    assert table.finished_since(seq + 1) is None  # one of the four slid out of the log


def test_a_batch_of_results_is_each_result_in_turn_then_one_routing() -> None:
    """``report_many`` answers each result as ``report`` would, and routes the room they freed
    once: the tables end alike."""
    tables = [JobTable(), JobTable()]
    for table in tables:
        register(table, capacity=2)
        submit(table, 4)
        deliver(table)
    a, b, c, d = list(tables[0].jobs)
    results = [
        exited(a, tables[0]),
        exited(a, tables[0]),  # resent
        exited(b, tables[0], attempt=5),  # an attempt it never had
        Result("job-99999999", 1, 0),
        exited(b, tables[0], code=3),
    ]
    outcomes = tables[0].report_many("w1", results, now=1.0)
    assert outcomes == [
        ReportOutcome.ACCEPTED,
        ReportOutcome.DUPLICATE,
        ReportOutcome.STALE,
        ReportOutcome.UNKNOWN_JOB,
        ReportOutcome.ACCEPTED,
    ]
    assert [tables[1].report("w1", result, now=1.0) for result in results] == outcomes
    assert fingerprint(tables[0]) == fingerprint(tables[1])
    assert {job.job_id: job.state for job in tables[0].workers["w1"].leases.values()} == {
        c: L,
        d: L,
    }
    with pytest.raises(UnknownWorker):
        tables[0].report_many("w9", results, now=2.0)


def test_nonzero_exit_fails_and_is_not_retried() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    deliver(table)
    assert table.report("w1", exited(job_id, table, code=3), 1.0) is ReportOutcome.ACCEPTED
    job = table.jobs[job_id]
    assert job.state is JobState.FAILED and job.exit_code == 3 and job.attempt == 1
    assert table.counts[Q] == table.counts[L] == 0
    assert table.workers["w1"].leases == {}


def test_retries_requeue_twice_then_fail_and_attempt_grows() -> None:
    table = JobTable()
    [job_id] = submit(table, retries=2)
    register(table, capacity=1)
    job = table.jobs[job_id]
    for attempt in (1, 2, 3):
        _, batch = deliver(table)
        assert batch == [job] and job.attempt == attempt
        paths = {"stdout_path": f"/o/{attempt}.out", "stderr_path": f"/o/{attempt}.err"}
        assert table.report("w1", exited(job, code=1, **paths), 1.0) is ReportOutcome.ACCEPTED
        if attempt < 3:
            # Re-queued and routed again at once (the worker has room): a new lease, with no
            # output files of its own yet (the last attempt's are kept).
            assert job.state is L and job.retried == attempt and job.attempt == attempt + 1
            assert (job.stdout_path, job.stderr_path) == ("", "")
    assert job.state is JobState.FAILED and job.retried == 2 and job.attempt == 3
    assert finished_ids(table) == [job_id]
    assert [a[:4] for a in earlier_attempts(job)] == [
        (1, "w1", "/o/1.out", "/o/1.err"),
        (2, "w1", "/o/2.out", "/o/2.err"),
    ]
    assert [(a.exit_code, a.reason) for a in earlier_attempts(job)] == [(1, "exit")] * 2
    assert (job.stdout_path, job.stderr_path) == ("/o/3.out", "/o/3.err")


def test_a_submission_counts_its_jobs_per_state_and_leaves_with_its_last() -> None:
    """Rule 13: a submission's counts follow its jobs' transitions, beside the table's."""
    table = JobTable()
    first = submit(table, 3)
    (alone,) = submit(table)
    number = wire.job_number(first[0])
    submission = table.submissions[number]
    assert [table.jobs[job_id].submission for job_id in first] == [number] * 3
    assert table.jobs[alone].submission == wire.job_number(alone) != number
    assert (submission.total, submission.pending, submission.counts[Q]) == (3, 3, 3)
    assert submission.last == wire.job_number(first[-1])
    register(table, capacity=2)
    _, batch = deliver(table)
    assert table.report("w1", exited(batch[0], code=1), 1.0) is ReportOutcome.ACCEPTED
    table.cancel(first[2], 2.0)
    counts = {state: n for state, n in submission.counts.items() if n}
    assert counts == {L: 1, JobState.FAILED: 1, JobState.CANCELLED: 1}
    assert table.submissions[wire.job_number(alone)].counts[L] == 1
    assert table.report("w1", exited(batch[1]), 3.0) is ReportOutcome.ACCEPTED
    assert submission.pending == 0
    table.take_changes()  # stored: they may leave
    table.forget(first[:2])
    assert submission.total == 1
    table.forget(first[2:])
    assert number not in table.submissions  # its last job left


def test_a_submission_in_pieces_is_one_and_stored_counts_restore_it() -> None:
    table = JobTable()
    head = table.new_jobs(table.number(2), [NewJob(b"a"), NewJob(b"b")], 1.0)
    submit(table)  # another submission, numbered between its pieces
    tail = table.new_jobs(table.number(1), [NewJob(b"c")], 1.0, submission=head[0].num)
    table.enqueue([*head, *tail])
    submission = table.submissions[head[0].num]
    assert (submission.total, submission.last) == (3, tail[0].num)
    assert [j.job_id for j in table.submission_jobs(submission)] == [
        *(j.job_id for j in head),
        tail[0].job_id,
    ]

    # after a restart: the store's counts make every submission known, finished ones counted
    restarted = JobTable()
    restarted.restore([], 10, 0.0, unloaded=5)
    restarted.restore_counts(
        [
            StoredCount("", 1, JobState.SUCCEEDED, 3, 4, 1.0),
            StoredCount("", 1, Q, 2, 5, 1.0),
            StoredCount("bob", 7, JobState.FAILED, 1, 7, 2.0),
        ]
    )
    assert {n: (s.total, s.last, s.owner) for n, s in restarted.submissions.items()} == {
        1: (3, 5, ""), 7: (1, 7, "bob"),
    }  # fmt: skip
    restarted.forgotten({("bob", 7, JobState.FAILED): 1}, [])
    assert 7 not in restarted.submissions


def test_each_attempt_keeps_its_worker_times_exit_and_usage() -> None:
    table = JobTable(lease_ttl=10.0)
    [job_id] = submit(table, retries=1)
    job = table.jobs[job_id]
    register(table, "w1", now=0.0)
    deliver(table, "w1")
    table.started("w1", Held(job_id, 1, True), now=1.0)
    table.expire(12.0)  # w1 lost while it ran attempt 1
    register(table, "w2", now=20.0)
    deliver(table, "w2", now=20.0)
    used = {"user_cpu": 1.5, "system_cpu": 0.25, "max_rss_kib": 2048}
    result = exited(job, code=3, started_at=21.0, finished_at=22.0, **used)
    assert table.report("w2", result, 22.5) is ReportOutcome.ACCEPTED  # retried
    deliver(table, "w2", now=23.0)
    assert table.report("w2", exited(job, started_at=24.0, max_rss_kib=10), 25.0)
    kept = earlier_attempts(job)
    assert [(a.attempt, a.worker_id, a.started_at, a.exit_code, a.reason) for a in kept] == [
        (1, "w1", 1.0, None, "worker_lost"),
        (2, "w2", 21.0, 3, "exit"),
    ]
    assert (kept[0].finished_at, kept[1].finished_at) == (12.0, 22.5)
    assert (kept[1].user_cpu, kept[1].system_cpu, kept[1].max_rss_kib) == (1.5, 0.25, 2048)
    assert (job.attempt, job.exit_code, job.max_rss_kib, job.user_cpu) == (3, 0, 10, 0.0)


def test_a_retried_job_goes_before_younger_queued_jobs() -> None:
    table = JobTable()
    first, second = submit(table, 2, retries=1)
    register(table, capacity=1)
    deliver(table)
    table.report("w1", exited(first, table, code=1), 1.0)
    assert table.jobs[first].state is L and table.jobs[second].state is Q


def test_signal_or_error_without_retries_left_fails() -> None:
    table = JobTable()
    [job_id] = submit(table, retries=0)
    register(table)
    deliver(table)
    result = exited(job_id, table, code=None, signal=9, reason="timeout", error_message="too slow")
    assert table.report("w1", result, 1.0) is ReportOutcome.ACCEPTED
    job = table.jobs[job_id]
    assert job.state is JobState.FAILED and job.signal == 9 and job.reason == "timeout"


# -- fencing: duplicates, stale attempts, unknown ids ------------------------------------------


def test_duplicate_report_is_acknowledged_and_changes_nothing() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    deliver(table)
    table.report("w1", exited(job_id, table, code=0), 1.0)
    before = fingerprint(table)
    assert table.report("w1", exited(job_id, table, code=0), 2.0) is ReportOutcome.DUPLICATE
    # Even a different outcome for the same lease cannot overwrite the final one.
    assert table.report("w1", exited(job_id, table, code=7), 3.0) is ReportOutcome.DUPLICATE
    assert fingerprint(table) == before
    assert table.jobs[job_id].exit_code == 0 and finished_ids(table) == [job_id]


def test_report_from_a_superseded_attempt_is_stale() -> None:
    table = JobTable()
    [job_id] = submit(table, retries=1)
    register(table)
    deliver(table)
    table.report("w1", exited(job_id, table, code=1), 1.0)  # attempt 1 failed, retried
    assert table.jobs[job_id].attempt == 2
    before = fingerprint(table)
    stale = exited(job_id, table, code=0, attempt=1)
    assert table.report("w1", stale, 2.0) is ReportOutcome.STALE
    assert fingerprint(table) == before


def test_report_from_a_worker_that_does_not_hold_the_lease_is_stale() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table, "w1")
    register(table, "w2")
    deliver(table, "w1")
    before = fingerprint(table)
    assert table.report("w2", exited(job_id, table), 1.0) is ReportOutcome.STALE
    assert fingerprint(table) == before


def test_prototype_report_cannot_end_a_lease_not_handed_over_yet() -> None:
    # Attempt 0 means "my current lease"; a late result of a lost lease must not end the next one.
    table = JobTable(lease_ttl=10.0)
    register(table, "w1", capacity=1, now=0.0)
    [job_id] = submit(table, retries=1)
    deliver(table)
    table.expire(11.0)
    register(table, "w1", capacity=1, now=12.0)  # leased again (attempt 2), not handed over
    job = table.jobs[job_id]
    assert job.attempt == 2 and job.lease_seq == 0
    before = fingerprint(table)
    assert table.report("w1", Result(job_id, 0, 1), 12.0) is ReportOutcome.STALE
    assert fingerprint(table) == before
    _, batch = deliver(table)
    assert batch == [job]  # handed over once, its retry not used up
    assert table.report("w1", Result(job_id, 0, 0), 13.0) is ReportOutcome.ACCEPTED
    assert job.state is JobState.SUCCEEDED and job.retried == 0


def test_report_for_unknown_job() -> None:
    table = JobTable()
    register(table)
    before = fingerprint(table)
    result = Result("job-99999999", 1, 0)
    assert table.report("w1", result, 1.0) is ReportOutcome.UNKNOWN_JOB
    assert fingerprint(table) == before


def test_unregistered_worker_is_refused_everywhere() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    deliver(table)
    before = fingerprint(table)
    with pytest.raises(UnknownWorker):
        table.report("ghost", exited(job_id, table), 1.0)
    with pytest.raises(UnknownWorker):
        table.lease("ghost", 1, 1.0)
    with pytest.raises(UnknownWorker):
        table.heartbeat("ghost", [], 0, 1.0)
    with pytest.raises(UnknownWorker):
        table.started("ghost", Held(job_id, 1), 1.0)
    assert fingerprint(table) == before


# -- submission ---------------------------------------------------------------------------------


def test_queue_full_is_all_or_nothing() -> None:
    table = JobTable(max_queued=3)
    assert submit(table, 2) == ["job-00000001", "job-00000002"]
    before = fingerprint(table)
    with pytest.raises(QueueFull, match="limit of 3"):
        submit(table, 2)
    assert fingerprint(table) == before and len(table.jobs) == 2
    assert submit(table, 1) == ["job-00000003"]  # no id was used up by the refused batch


def test_a_withdrawn_submission_leaves_no_trace_but_its_ids() -> None:
    """Jobs that could not be stored leave as if never submitted: no count, no lease, no room
    taken in the queue or in a worker, and their ids are not used again."""
    table = JobTable(max_queued=3)
    register(table, capacity=2)
    submit(table)  # leased to w1, handed over and stored
    deliver(table)
    table.take_changes()
    before = fingerprint(table)
    ids = submit(table, 3)  # the first one routed to w1, the other two queued
    assert table.jobs[ids[0]].state is L
    deliver(table)  # handed over by a poll that waits for the commit
    table.cancel(ids[2], 1.0)
    new, changed, leased = table.take_changes()
    assert [job.job_id for job in new] == ids and leased == []
    assert [job.job_id for job in changed] == [ids[2]]  # stored whole after its insert
    table.withdraw(new)
    jobs, workers, counts, _, next_id, queue = fingerprint(table)
    assert (jobs, counts, queue) == (before[0], before[2], before[5])
    assert workers[0][2] == before[1][0][2]  # w1 holds its first job only
    assert next_id == 5 and real_counts(table) == table.counts
    assert table.take_changes() == ([], [], [])
    # the queue has its room back, and w1 its slot: the next job goes to it
    next_ids = submit(table, 3)
    assert next_ids[0] == "job-00000005"
    assert table.jobs[next_ids[0]].state is L and table.jobs[next_ids[0]].worker_id == "w1"


def test_queue_limit_counts_queued_jobs_only() -> None:
    table = JobTable(max_queued=2)
    register(table, capacity=2)
    submit(table, 2)  # both leased at once
    assert submit(table, 2) == ["job-00000003", "job-00000004"]


def test_queue_limits_count_waiting_jobs_as_queued() -> None:
    """Rule 10: a job waiting for its dependencies is accepted and has not run, as a queued
    one: it counts for the owner's max_queued and the controller's queue limit."""
    table = JobTable(max_queued=4, quotas=Quotas(users={"bob": {"max_queued": 2}}))
    (first,) = submit(table, owner="bob")
    table.submit([NewJob(b"w", after=first)], 0.0, "bob")
    with pytest.raises(OverQuota, match="2 queued or waiting"):
        table.submit([NewJob(b"w", after=first)], 0.0, "bob")
    table.submit([NewJob(b"w", after=first)] * 2, 0.0, "alice")
    with pytest.raises(QueueFull, match="4 queued or waiting"):
        table.submit([NewJob(b"w", after=first)], 0.0, "alice")


def test_job_ids_are_sequential_and_never_repeat() -> None:
    table = JobTable()
    ids = submit(table, 3) + submit(table, 2)
    assert ids == [f"job-{n:08d}" for n in range(1, 6)]
    table.cancel(ids[-1], 1.0)
    assert submit(table) == ["job-00000006"]


def test_first_id_sets_the_first_job_id() -> None:
    table = JobTable(first_id=42)
    assert submit(table, 2) == ["job-00000042", "job-00000043"]
    assert [j.job_id for j in table.iter_jobs()] == ["job-00000042", "job-00000043"]


# -- lost workers and the crash limit -----------------------------------------------------------


def test_expire_declares_a_silent_worker_lost_and_requeues_its_jobs() -> None:
    table = JobTable(lease_ttl=10.0)
    [delivered, routed] = submit(table, 2)
    register(table, "w1", now=0.0)
    table.lease("w1", 1, now=0.0)  # hands over `delivered` only
    assert table.expire(10.0) == []  # silent for exactly the TTL: not yet
    assert table.expire(10.5) == ["w1"]
    assert "w1" not in table.workers
    d, r = table.jobs[delivered], table.jobs[routed]
    assert d.state is Q and d.lost_count == 1 and d.attempt == 1
    assert r.state is Q and r.lost_count == 0  # never handed over: not a loss

    register(table, "w2", now=11.0)
    assert d.state is L and d.worker_id == "w2" and d.attempt == 2
    assert r.attempt == 2


def test_a_worker_that_talks_is_not_expired() -> None:
    table = JobTable(lease_ttl=10.0)
    register(table, "w1", now=0.0)
    table.heartbeat("w1", [], 0, now=8.0)
    assert table.expire(15.0) == []
    assert table.expire(18.5) == ["w1"]


def test_pace_stretches_the_heartbeat_interval_and_lease_ttl_beyond_the_budget() -> None:
    # A budget of 2 heartbeats a second at a 1 s interval: 2 workers beat at 1 s, 4 at 2 s.
    table = JobTable(lease_ttl=10.0, heartbeat_interval=1.0, heartbeat_budget=2.0)
    register(table, "w1", now=0.0)
    register(table, "w2", now=0.0)
    assert table.pace("w1") == 1.0
    register(table, "w3", now=0.0)
    register(table, "w4", now=0.0)
    assert table.pace("w2") == 2.0
    # w2 was told to beat every 2 s, so it is lost only after 2 x 10 s; w1 (told 1 s) after 10.
    assert table.expire(15.0) == ["w1", "w3", "w4"]
    assert table.expire(20.0) == []
    assert table.expire(20.5) == ["w2"]


def test_pace_follows_the_workers_down_again() -> None:
    table = JobTable(lease_ttl=10.0, heartbeat_interval=0.5, heartbeat_budget=2.0)
    for n in range(4):
        register(table, f"w{n}", now=0.0)
    assert table.pace("w0") == 4.0
    for n in (1, 2, 3):
        table.remove_worker(f"w{n}", 0.0)
    table.heartbeat("w0", [], 0, now=1.0)
    assert table.pace("w0") == 1.0
    assert table.expire(11.5) == ["w0"]


def test_crash_limit_fails_a_job_that_loses_every_worker() -> None:
    table = JobTable(lease_ttl=10.0, crash_limit=2)
    [job_id] = submit(table)
    job = table.jobs[job_id]
    register(table, "w1", now=0.0)
    deliver(table, "w1")
    table.expire(11.0)
    assert job.state is Q and job.lost_count == 1
    register(table, "w2", now=20.0)
    deliver(table, "w2", now=20.0)
    table.started("w2", Held(job_id, 2), now=20.0)
    table.expire(31.0)
    assert job.state is JobState.FAILED and job.reason == "worker_lost"
    assert "lost 2 times" in job.error_message and "crash limit 2" in job.error_message
    assert job.finished_at == 31.0 and finished_ids(table) == [job_id]
    assert table.counts[JobState.FAILED] == 1 and table.counts[Q] == 0
    # w2 was only cut off: it comes back and reports the run whose lost lease failed the job
    register(table, "w2", now=32.0, held=[Held(job_id, 2, running=True)])
    before = fingerprint(table)
    assert table.report("w2", exited(job_id, table), 33.0) is ReportOutcome.STALE
    assert fingerprint(table) == before


def test_a_jobs_own_crash_limit_overrides_the_tables() -> None:
    table = JobTable(lease_ttl=10.0, crash_limit=5)
    (once,) = table.submit([NewJob(b"x", crash_limit=1)], 0.0)
    (default,) = submit(table)
    register(table, "w1", now=0.0)
    deliver(table, "w1")
    table.expire(11.0)
    assert table.jobs[once].state is JobState.FAILED and table.jobs[once].reason == "worker_lost"
    assert "crash limit 1" in table.jobs[once].error_message
    assert table.jobs[default].state is Q and table.jobs[default].lost_count == 1


def test_retry_on_exit_retries_only_the_codes_it_names() -> None:
    table = JobTable()
    jobs = table.submit([NewJob(b"x", retries=3, retry_on_exit="3,75")] * 3, 0.0)
    register(table, capacity=3)
    deliver(table)
    table.report("w1", exited(jobs[0], table, code=75), 1.0)
    table.report("w1", exited(jobs[1], table, code=1), 1.0)
    table.report("w1", exited(jobs[2], table, code=None, reason="signal", signal=9), 1.0)
    states = [(table.jobs[j].state, table.jobs[j].retried) for j in jobs]
    assert states == [(L, 1), (JobState.FAILED, 0), (JobState.FAILED, 0)]


def test_a_retry_delay_waits_doubling_with_jitter_then_queues() -> None:
    table = JobTable(lease_ttl=100.0)
    (job_id,) = table.submit([NewJob(b"x", retries=2, retry_delay=10.0)], 0.0)
    job = table.jobs[job_id]
    register(table, capacity=1)
    deliver(table)
    table.report("w1", exited(job, code=1), 1.0)
    assert job.state is JobState.WAITING and job.retried == 1
    assert 11.0 <= job.retry_at <= 16.0  # 10 s, stretched by up to half
    table.expire(job.retry_at - 0.01)
    assert job.state is JobState.WAITING
    table.expire(job.retry_at)
    assert job.state is L and job.attempt == 2
    deliver(table, now=job.retry_at)
    table.report("w1", exited(job, code=1), 20.0)
    assert 40.0 <= job.retry_at <= 50.0  # doubled
    assert table.cancel(job_id, 21.0) is JobState.CANCELLED
    table.expire(60.0)
    assert job.state is JobState.CANCELLED


def test_max_fails_cancels_the_rest_of_the_submission_at_its_nth_failure() -> None:
    """Rule 13: the second failure of a submission with max_fails 2 cancels its jobs that have
    not ended, waiting, queued and on a worker (a cancel notice for a delivered one); another
    submission goes on."""
    table = JobTable()
    register(table, capacity=3)
    jobs = table.submit([NewJob(b"x", max_fails=2)] * 5, 0.0)
    (other,) = submit(table)
    (waiting,) = table.submit([NewJob(b"w", after=jobs[2])], 0.0)
    deliver(table)
    table.report("w1", exited(jobs[0], table, code=1), 1.0)
    assert [table.jobs[j].state for j in jobs] == [F, L, L, L, Q]  # jobs[3]: not delivered
    table.report("w1", exited(jobs[1], table, code=1), 2.0)
    states = [table.jobs[j].state for j in jobs]
    assert states == [F, F, JobState.CANCELLED, JobState.CANCELLED, JobState.CANCELLED]
    assert jobs[3] not in table.workers["w1"].leases
    assert (
        table.jobs[jobs[2]].error_message
        == "cancelled: 2 jobs of its submission failed (max_fails 2)"
    )
    assert table.workers["w1"].cancel_notices == {jobs[2]: 1}
    assert table.jobs[waiting].reason == "dependency_failed"  # another submission: its own rules
    assert table.jobs[other].state is L  # the freed slots went to another submission
    assert table.submissions[table.jobs[jobs[0]].submission].max_fails == 2


def test_a_restart_keeps_a_retrys_due_time() -> None:
    """A retry waiting out its delay is restored waiting until the same time (rule 4)."""
    table = JobTable(lease_ttl=100.0)
    (job_id,) = table.submit([NewJob(b"x", retries=1, retry_delay=30.0)], 0.0)
    register(table, capacity=1)
    deliver(table)
    table.report("w1", exited(job_id, table, code=1), 1.0)
    stored = table.jobs[job_id]
    due = stored.retry_at
    again = JobTable(lease_ttl=100.0)
    again.restore([dataclasses.replace(stored)], table.next_id, 2.0)
    job = again.jobs[job_id]
    register(again, capacity=1, now=2.0)
    again.expire(due - 0.01)
    assert job.state is JobState.WAITING
    again.expire(due)
    assert job.state is L


def test_late_report_from_a_lost_worker_is_refused_then_stale() -> None:
    table = JobTable(lease_ttl=10.0)
    [job_id] = submit(table)
    register(table, "w1", now=0.0)
    deliver(table, "w1")
    table.expire(11.0)
    late = exited(job_id, table, code=0)  # attempt 1
    before = fingerprint(table)
    with pytest.raises(UnknownWorker):
        table.report("w1", late, 12.0)
    assert fingerprint(table) == before

    drop = register(table, "w1", now=12.0, held=[Held(job_id, 1, running=True)])
    assert drop == [Held(job_id, 1, running=True)]  # its old lease is gone: stop it
    assert table.jobs[job_id].attempt == 2  # leased again (to w1 itself, under a new attempt)
    before = fingerprint(table)
    assert table.report("w1", late, 13.0) is ReportOutcome.STALE
    assert fingerprint(table) == before


def test_removed_worker_jobs_go_back_to_the_queue() -> None:
    table = JobTable()
    ids = submit(table, 3)
    register(table, "w1", capacity=3)
    table.lease("w1", 2, 0.0)
    table.remove_worker("w1", 1.0)
    assert [table.jobs[i].state for i in ids] == [Q, Q, Q]
    assert [table.jobs[i].lost_count for i in ids] == [1, 1, 0]
    table.remove_worker("w1", 1.0)  # unknown: ignored


# -- heartbeats ---------------------------------------------------------------------------------


def test_heartbeat_requeues_a_delivered_lease_the_worker_does_not_hold() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table, "w1")
    seq, _ = deliver(table)
    cancel, drop = table.heartbeat("w1", [], seq, 1.0)
    assert cancel == drop == []
    job = table.jobs[job_id]
    # Re-queued and routed again (here to w1 itself): a new lease, not handed over yet.
    assert job.attempt == 2 and job.lease_seq == 0 and job.state is L
    assert job.lost_count == 0  # lost on the way, not with a worker: no crash counted


def test_heartbeat_keeps_a_lease_still_in_flight() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table, "w1")
    seq, _ = deliver(table)
    before = fingerprint(table)
    assert table.heartbeat("w1", [], seq - 1, 1.0) == ([], [])
    assert fingerprint(table) == before
    assert table.jobs[job_id].state is L and job_id in table.workers["w1"].leases


def test_lease_in_flight_to_a_worker_registered_again_after_it_was_lost_is_kept() -> None:
    # The worker echoes the highest lease_seq it ever received, also across re-registrations.
    table = JobTable(lease_ttl=10.0)
    register(table, "w1", capacity=1, now=0.0)
    for _ in range(3):
        [done] = submit(table)
        acked, _ = deliver(table)
        table.report("w1", exited(done, table), 0.0)
    assert table.expire(11.0) == ["w1"]
    register(table, "w1", capacity=1, now=12.0)
    [job_id] = submit(table, now=12.0)
    seq, _ = deliver(table, now=12.0)  # the reply is still on its way...
    assert seq > acked
    # ...when a heartbeat overtakes it: the lease must not be taken for lost.
    assert table.heartbeat("w1", [], acked, 12.1) == ([], [])
    job = table.jobs[job_id]
    assert job.attempt == 1 and job.lease_seq == seq and job_id in table.workers["w1"].leases


def test_heartbeat_keeps_an_undelivered_lease() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table, "w1")
    assert table.heartbeat("w1", [], 99, 1.0) == ([], [])
    assert table.jobs[job_id].state is L and table.workers["w1"].outbox


def test_heartbeat_returns_held_jobs_that_are_not_the_workers_lease_in_drop() -> None:
    table = JobTable()
    [done, mine, other] = submit(table, 3)
    register(table, "w1", capacity=2)
    register(table, "w2", capacity=1)
    seq, _ = deliver(table, "w1")
    table.report("w1", exited(done, table), 0.5)
    assert table.jobs[mine].attempt == 1 and table.jobs[other].worker_id == "w2"
    garbage = [
        Held("job-77777777", 1),  # unknown id
        Held(done, 1),  # finished and reported
        Held(other, 1, running=True),  # another worker's lease
    ]
    cancel, drop = table.heartbeat("w1", [Held(mine, 1), *garbage], seq, 1.0)
    assert cancel == [] and drop == garbage
    assert table.jobs[mine].state is L and mine in table.workers["w1"].leases
    assert table.jobs[other].state is L and other in table.workers["w2"].leases
    assert table.jobs[done].state is JobState.SUCCEEDED


def test_heartbeat_drops_a_held_job_of_a_superseded_attempt() -> None:
    table = JobTable()
    [job_id] = submit(table, retries=1)
    register(table, "w1")
    deliver(table)
    table.report("w1", exited(job_id, table, code=1), 0.5)  # retried: attempt 2
    seq, _ = deliver(table)
    cancel, drop = table.heartbeat("w1", [Held(job_id, 1)], seq, 1.0)
    assert drop == [Held(job_id, 1)] and cancel == []


def test_heartbeat_running_flag_marks_the_job_running() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    seq, _ = deliver(table)
    table.heartbeat("w1", [Held(job_id, 1, running=False)], seq, 1.0)
    assert table.jobs[job_id].state is L
    table.heartbeat("w1", [Held(job_id, 1, running=True)], seq, 2.0)
    assert table.jobs[job_id].state is R and table.jobs[job_id].started_at == 2.0
    assert table.workers["w1"].running == 1


def test_started_for_a_superseded_attempt_is_ignored() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    deliver(table)
    before = fingerprint(table)
    table.started("w1", Held(job_id, 7), 1.0)
    assert fingerprint(table) == before


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_a_queued_job_it_is_never_leased() -> None:
    table = JobTable()
    [job_id] = submit(table)
    assert table.cancel(job_id, 1.0) is JobState.CANCELLED
    job = table.jobs[job_id]
    assert job.reason == "cancelled" and job.finished_at == 1.0
    register(table)
    assert deliver(table)[1] == [] and table.workers["w1"].leases == {}
    assert job.attempt == 0 and table.counts[Q] == 0 and finished_ids(table) == [job_id]


def test_cancel_an_undelivered_lease_releases_it_at_once() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    assert table.cancel(job_id, 1.0) is JobState.CANCELLED
    assert table.workers["w1"].leases == {} and table.workers["w1"].cancel_notices == {}
    assert deliver(table)[1] == []  # never handed over
    assert table.take_cancel_notices("w1") == []


def test_cancel_an_undelivered_lease_frees_the_slot_for_the_next_queued_job() -> None:
    table = JobTable()
    register(table, capacity=1)
    first, second = submit(table, 2)
    assert table.jobs[second].state is Q
    table.take_wakeups()
    table.cancel(first, 1.0)
    # The slot is free: the queued job must not wait for some unrelated event.
    assert table.jobs[second].state is L and table.jobs[second].worker_id == "w1"
    assert table.take_wakeups() == {"w1"}
    assert deliver(table)[1] == [table.jobs[second]]


def test_cancel_a_delivered_job_waits_for_the_worker_to_stop_it() -> None:
    table = JobTable()
    register(table, capacity=1)
    [job_id, queued] = submit(table, 2)
    seq, _ = deliver(table)
    table.started("w1", Held(job_id, 1), 0.5)
    table.take_wakeups()
    assert table.cancel(job_id, 1.0) is JobState.CANCELLED
    worker = table.workers["w1"]
    # Still running there: it keeps counting against the worker's capacity.
    assert job_id in worker.leases and table.jobs[queued].state is Q
    assert table.take_wakeups() == {"w1"}
    assert table.take_cancel_notices("w1") == [Held(job_id, 1)]
    assert table.take_cancel_notices("w1") == []
    cancel, drop = table.heartbeat("w1", [Held(job_id, 1, running=True)], seq, 2.0)
    assert cancel == [Held(job_id, 1, running=True)] and drop == []
    # The worker stopped it and reports: acknowledged, the lease is released.
    stopped = exited(job_id, table, code=None, signal=15, reason="cancelled")
    assert table.report("w1", stopped, 3.0) is ReportOutcome.DUPLICATE
    job = table.jobs[job_id]
    assert job_id not in worker.leases and job.state is JobState.CANCELLED
    assert job.reason == "cancelled" and job.signal == 15
    assert table.jobs[queued].state is L  # the freed slot is used
    assert finished_ids(table) == [job_id]


def test_cancel_a_delivered_job_released_when_the_worker_stops_listing_it() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    seq, _ = deliver(table)
    table.cancel(job_id, 1.0)
    table.heartbeat("w1", [], seq, 2.0)
    assert table.workers["w1"].leases == {} and table.workers["w1"].cancel_notices == {}
    assert table.jobs[job_id].state is JobState.CANCELLED and table.jobs[job_id].lost_count == 0


def test_cancel_of_a_finished_job_returns_its_state_unchanged() -> None:
    table = JobTable()
    [job_id] = submit(table)
    register(table)
    deliver(table)
    table.report("w1", exited(job_id, table, code=0), 1.0)
    before = fingerprint(table)
    assert table.cancel(job_id, 2.0) is JobState.SUCCEEDED
    assert table.cancel("job-12345678", 2.0) is None
    assert fingerprint(table) == before


# -- re-registration and hand-backs -------------------------------------------------------------


def test_reregister_keeps_held_leases_and_requeues_delivered_ones_not_held() -> None:
    table = JobTable()
    register(table, "w1", capacity=3)
    kept, lost, routed = submit(table, 3)
    table.lease("w1", 2, 0.0)  # hands over `kept` and `lost`; `routed` waits in the outbox
    drop = register(table, "w1", capacity=3, held=[Held(kept, 1, running=True), Held(lost, 9)])
    assert drop == [Held(lost, 9)]
    worker = table.workers["w1"]
    assert table.jobs[kept].state is R and kept in worker.leases
    assert table.jobs[lost].lost_count == 1
    assert table.jobs[lost].attempt == 2 and table.jobs[lost].worker_id == "w1"  # routed again
    assert table.jobs[routed].attempt == 1 and table.jobs[routed].lease_seq == 0
    _, batch = deliver(table)
    assert {j.job_id for j in batch} == {lost, routed}


def test_another_process_of_a_worker_id_replaces_it_and_fences_its_leases() -> None:
    """Two processes with one worker id: the later one holds the id. The earlier one's calls
    and registrations are refused, and its leases wait out its TTL before running elsewhere
    (it may still be running them: it stops them by then, burstd/leases.py)."""
    table = JobTable(lease_ttl=10.0)
    table.register("w1", slots=2, capacity=4, now=0.0, instance=111)
    running, queued, cancelled, routed = submit(table, 4)
    table.lease("w1", 3, 1.0)  # `routed` waits in the outbox
    table.started("w1", Held(running, 1), 2.0)
    table.heartbeat("w1", [Held(running, 1, True), Held(queued, 1), Held(cancelled, 1)], 1, 3.0)
    table.register("w1", slots=2, capacity=4, now=5.0, instance=222)
    with pytest.raises(WorkerReplaced, match="'w1'"):
        table.check_process("w1", 111)
    with pytest.raises(WorkerReplaced, match="'w1'"):  # no flapping back
        table.register("w1", slots=2, capacity=4, now=6.0, instance=111)
    table.check_process("w1", 222)
    table.check_process("w1", 0)  # the prototype's workers are not told apart
    worker = table.workers["w1"]
    assert set(worker.leases) == {routed}  # never reached the replaced process: the new one's
    assert table.orphans == dict.fromkeys([running, queued, cancelled], 13.0)  # 3.0 + the TTL
    assert table.jobs[running].state is R and table.jobs[queued].state is L
    table.cancel(cancelled, 7.0)  # no worker holds it: nobody to tell
    assert worker.cancel_notices == {}
    table.forget([cancelled])
    assert table.expire(12.9) == [] and table.jobs[running].state is R
    table.heartbeat("w1", [], 0, 12.9)
    table.expire(13.1)
    assert table.jobs[running].state is Q or table.jobs[running].worker_id == "w1"
    assert table.jobs[running].lost_count == 1 and table.jobs[running].attempt == 2
    assert table.jobs[queued].attempt == 2 and not table.orphans


def test_reregister_may_shrink_capacity_below_the_held_leases() -> None:
    table = JobTable()
    register(table, "w1", capacity=3)
    ids = submit(table, 4)
    _, batch = deliver(table)
    held = [Held(j.job_id, j.attempt) for j in batch]
    assert register(table, "w1", capacity=1, held=held) == []
    assert len(table.workers["w1"].leases) == 3  # nothing is taken away...
    table.report("w1", exited(ids[0], table), 1.0)
    assert len(table.workers["w1"].leases) == 2  # ...and nothing new until under capacity
    assert table.jobs[ids[3]].state is Q


def test_returned_job_is_requeued_without_counting_a_loss() -> None:
    table = JobTable()
    [job_id] = submit(table, retries=0)
    register(table)
    deliver(table)
    result = exited(job_id, table, code=None, reason="returned")
    assert table.report("w1", result, 1.0) is ReportOutcome.ACCEPTED
    job = table.jobs[job_id]
    assert job.lost_count == 0 and job.retried == 0
    assert finished_ids(table) == []
    # The worker is shutting down: the job waits for another worker, under a new attempt.
    assert job.state is Q
    register(table, "w2")
    assert job.state is L and job.worker_id == "w2" and job.attempt == 2


def test_a_worker_that_hands_a_job_back_gets_no_new_work_until_it_registers() -> None:
    table = JobTable()
    first, second, third = submit(table, 3)
    register(table, capacity=2)
    deliver(table)
    table.report("w1", exited(first, table, code=None, reason="returned"), 1.0)
    submit(table, 2)
    assert not table.workers["w1"].outbox and len(table.workers["w1"].leases) == 1
    assert table.jobs[third].state is Q  # routed to w1 but not handed over: queued again
    register(table, capacity=2, held=[Held(second, 1)])  # the worker came back
    assert len(table.workers["w1"].leases) == 2


# -- capacity, listing, counts ------------------------------------------------------------------


@pytest.mark.parametrize("router", ["roundrobin", "power2", "biased"])
def test_a_worker_never_gets_more_leases_than_its_capacity(router: str) -> None:
    table = JobTable(router=router)
    register(table, "w1", capacity=2)
    ids = submit(table, 5)
    assert len(table.workers["w1"].leases) == 2 and table.counts[Q] == 3
    deliver(table)
    table.report("w1", exited(ids[0], table), 1.0)
    assert len(table.workers["w1"].leases) == 2 and table.counts[Q] == 2


def test_leases_are_spread_over_workers_with_room() -> None:
    table = JobTable()
    register(table, "w1", capacity=2)
    register(table, "w2", capacity=3)
    submit(table, 10)
    assert len(table.workers["w1"].leases) == 2 and len(table.workers["w2"].leases) == 3
    assert table.counts[L] == 5 and table.counts[Q] == 5


def test_lease_batch_respects_max_jobs_and_sequence_grows() -> None:
    table = JobTable()
    register(table, capacity=4)
    submit(table, 4)
    seq1, b1 = table.lease("w1", 3, 0.0)
    seq2, b2 = table.lease("w1", 3, 0.0)
    assert len(b1) == 3 and len(b2) == 1 and seq2 == seq1 + 1
    assert [j.job_id for j in b1 + b2] == [f"job-{n:08d}" for n in range(1, 5)]


def test_iter_jobs_pages_in_id_order_and_filters_by_state() -> None:
    table = JobTable()
    ids = submit(table, 5)
    table.cancel(ids[1], 1.0)
    table.cancel(ids[3], 1.0)
    assert [j.job_id for j in table.iter_jobs()] == ids
    assert [j.job_id for j in table.iter_jobs(after=ids[1])] == ids[2:]
    assert [j.job_id for j in table.iter_jobs(after=ids[-1])] == []
    cancelled = [j.job_id for j in table.iter_jobs(JobState.CANCELLED)]
    assert cancelled == [ids[1], ids[3]]
    assert [j.job_id for j in table.iter_jobs(Q, after=ids[1])] == [ids[2], ids[4]]


def test_counts_always_equal_the_real_number_of_jobs_per_state() -> None:
    table = JobTable(lease_ttl=5.0)
    ids = submit(table, 8, retries=1)
    assert table.counts == real_counts(table)
    register(table, "w1", capacity=3)
    register(table, "w2", capacity=2)
    assert table.counts == real_counts(table)
    deliver(table, "w1")
    table.started("w1", Held(ids[0], 1), 0.0)
    table.report("w1", exited(ids[0], table, code=1), 1.0)
    table.cancel(ids[5], 1.0)
    table.cancel(ids[6], 1.0)
    assert table.counts == real_counts(table)
    table.expire(7.0)
    assert table.counts == real_counts(table)
    assert sum(table.counts.values()) == len(ids)


def test_finished_log_lists_each_job_once_when_it_ends() -> None:
    table = JobTable()
    a, b, c = submit(table, 3)
    register(table)
    table.cancel(c, 0.5)
    deliver(table)
    table.report("w1", exited(a, table), 1.0)
    table.report("w1", exited(a, table), 1.0)  # duplicate
    table.cancel(a, 1.0)  # already over
    table.report("w1", exited(b, table, code=2), 2.0)
    assert finished_ids(table) == [c, a, b] and table.finished_seq == 3


def test_a_transition_outside_the_table_is_an_invariant_error() -> None:
    table = JobTable()
    [job_id] = submit(table)
    job = table.jobs[job_id]
    # A terminal state is final: from one, a job only re-enters it (restore) or leaves.
    assert all(
        step.to in (state, None) for (state, _), step in TRANSITIONS.items() if state in TERMINAL
    )
    with pytest.raises(InvariantError, match="no transition queued --start-->"):
        table._move(job, Event.START)
    assert job.state is Q and table.counts == real_counts(table)


def test_moves_that_start_or_end_a_job_change_nothing_else() -> None:
    """``JobTable._move`` relies on it to test little on the hot path."""
    for _, step, _, _ in _MOVES.values():
        if step.ends or step.starts:
            assert not (step.attempt or step.undelivered or step.retried)
            assert step.place.value == "stays"


def test_a_worker_that_left_cannot_come_back_as_the_same_worker() -> None:
    table = JobTable()
    register(table)
    worker = table.workers["w1"]
    table.remove_worker("w1", 1.0)
    assert worker.state is WorkerState.GONE and not table.workers
    with pytest.raises(InvariantError, match="w1: no transition gone --register-->"):
        table._worker_move(worker, WorkerEvent.REGISTER)


# -- random operation sequences ---------------------------------------------------------------


class RecordingRouter(Router):
    """Delegates to a real router and remembers what the table last told it about each worker."""

    name: ClassVar[str] = "recording"

    def __init__(self, inner: Router) -> None:
        super().__init__()
        self.inner = inner
        self.seen: dict[str, tuple[int, int]] = {}

    def update(self, worker_id: str, leased: int, capacity: int) -> None:
        self.inner.update(worker_id, leased, capacity)
        self.seen[worker_id] = (leased, capacity)

    def remove(self, worker_id: str) -> None:
        self.inner.remove(worker_id)
        self.seen.pop(worker_id, None)

    def pick(self) -> str | None:
        return self.inner.pick()


@dataclass
class SimJob:
    attempt: int
    running: bool = False
    cancel_asked: bool = False


@dataclass
class SimWorker:
    """What one worker process knows: the jobs it holds and the highest lease batch it received."""

    holds: dict[str, SimJob] = field(default_factory=dict)
    acked: int = 0  # the highest lease_seq received (the worker never resets it)
    inflight: tuple[int, list[tuple[str, int]]] | None = None  # one poll reply on its way
    sent: list[Result] = field(default_factory=list)  # reports the table acknowledged

    def receive(self, seq: int, jobs: list[tuple[str, int]]) -> None:
        for job_id, attempt in jobs:
            self.holds[job_id] = SimJob(attempt)
        if jobs:
            self.acked = max(self.acked, seq)

    def held(self) -> list[Held]:
        return [Held(job_id, s.attempt, s.running) for job_id, s in self.holds.items()]

    def forget(self, dropped: list[Held]) -> None:
        for h in dropped:
            s = self.holds.get(h.job_id)
            if s is not None and s.attempt == h.attempt:
                del self.holds[h.job_id]


WORKER_IDS = ("w1", "w2", "w3")
PRIORITIES = (-5, 0, 0, 7)
# "" has no quota; alice may run 2 at once, bob queue 4, carol submit 2 jobs a second.
OWNERS = ("", "alice", "bob", "carol")
QUOTAS = Quotas(
    users={"alice": {"max_running": 2}, "bob": {"max_queued": 4}, "carol": {"submit_rate": 2.0}}
)
# Requests of the machine's jobs (None: one CPU), and the offers its workers draw from.
REQUESTS = st.one_of(
    st.none(),
    st.builds(
        resources.make_request,
        cpus=st.integers(1, 3),
        gpus=st.integers(0, 2),
        named=st.fixed_dictionaries({"lic": st.integers(0, 1)}),
    ),
)
OFFERS = st.fixed_dictionaries({resources.GPUS: st.integers(0, 2), "lic": st.integers(0, 1)})
STORED_COLUMNS = operator.attrgetter(*store_module._FIELDS)
UNKNOWN_ID = "job-99999999"


class TableMachine(RuleBasedStateMachine):
    router_name: ClassVar[str] = "roundrobin"

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.router = RecordingRouter(make_router(self.router_name, rng=random.Random(0)))
        self.table = JobTable(
            router=self.router, max_queued=12, lease_ttl=10.0, crash_limit=3, quotas=QUOTAS
        )
        self.sims = {w: SimWorker() for w in WORKER_IDS}
        self.submitted: list[str] = []
        self.final: dict[str, tuple[Any, ...]] = {}
        self.attempts: dict[str, int] = {}
        self.routed: dict[str, int] = {}  # the attempt each job was last routed under
        self.load: dict[str, int] = {}
        # The store's copy of each job's columns, as the recorded changes keep it.
        self.stored: dict[str, tuple[Any, ...]] = {}
        # Every worker object seen, with its state at the last look.
        self.worker_states: dict[int, tuple[Worker, WorkerState | None]] = {}

    # -- helpers --

    def job_ids(self) -> st.SearchStrategy[str]:
        return st.sampled_from([*self.submitted, UNKNOWN_ID])

    def garbage(self, data: st.DataObject, worker_id: str) -> list[Held]:
        """Held entries the worker does not really have (never its current lease)."""
        entries = data.draw(st.lists(st.tuples(self.job_ids(), st.integers(0, 6)), max_size=2))
        out = []
        for job_id, attempt in entries:
            if any(h.job_id == job_id for h in out):
                continue
            job = self.table.jobs.get(job_id)
            w = self.table.workers.get(worker_id)
            mine = job is not None and w is not None and w.leases.get(job_id) is job
            if mine and job.attempt == attempt:
                continue
            if job_id in self.sims[worker_id].holds:
                continue
            out.append(Held(job_id, attempt, data.draw(st.booleans())))
        return out

    @staticmethod
    def retried_for(job: Job, code: int | None) -> bool:
        """Whether a failure with this exit code is one the job's retry_on_exit retries."""
        return not job.retry_on_exit or str(code) in job.retry_on_exit.split(",")

    def holds(self, worker_id: str, h: Held) -> bool:
        w = self.table.workers.get(worker_id)
        job = None if w is None else w.leases.get(h.job_id)
        return job is not None and job.attempt == h.attempt

    def delivered(self, worker_id: str) -> set[tuple[str, int]]:
        w = self.table.workers[worker_id]
        return {(j.job_id, j.attempt) for j in w.leases.values() if j.lease_seq}

    @initialize(
        capacities=st.lists(st.integers(1, 4), min_size=3, max_size=3),
        offers=st.lists(OFFERS, min_size=3, max_size=3),
        n=st.integers(0, 8),
    )
    def fleet(self, capacities: list[int], offers: list[dict[str, int]], n: int) -> None:
        # Each worker offers the same resources beside its CPUs in every session.
        self.offers = dict(zip(WORKER_IDS, offers, strict=True))
        for worker_id, capacity in zip(WORKER_IDS, capacities, strict=True):
            # As many slots as capacity: the router's pick takes a job per idle slot at once.
            self.table.register(
                worker_id,
                slots=capacity,
                capacity=capacity,
                now=self.now,
                offer=self.offers[worker_id],
            )
        self.submitted += submit(self.table, n, retries=1)

    # -- clients --

    @rule(data=st.data(), n=st.integers(1, 5), owner=st.sampled_from(OWNERS))
    def submit(self, data: st.DataObject, n: int, owner: str) -> None:
        retries = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        requests = data.draw(st.lists(REQUESTS, min_size=n, max_size=n))
        before, first = fingerprint(self.table), self.table.next_id
        # retry_on_exit, crash_limit, retry_delay
        policy = data.draw(
            st.sampled_from(
                [("", 0, 0.0), ("", 0, 0.0), ("1", 0, 1.0), ("", 1, 0.0), ("2,3", 2, 4.0)]
            )
        )
        on_exit, crash_limit, delay = policy
        priority = data.draw(st.sampled_from(PRIORITIES))
        max_fails = data.draw(st.sampled_from([0, 0, 1, 2]))
        deps: list[str] = []
        live = [j for j in self.submitted if self.table.jobs[j].state not in TERMINAL]
        if self.submitted and data.draw(st.booleans()):
            # Mostly jobs that have not ended, whose ends the new ones then wait for.
            among = live if live and data.draw(st.integers(0, 3)) else self.submitted
            # now and then a whole submission (rule 12)
            among = [*among, *(wire.submission_id(n) for n in self.table.submissions)]
            deps = data.draw(st.lists(st.sampled_from(among), max_size=3, unique=True))
        after, after_any = ",".join(deps), data.draw(st.booleans())
        new = [
            NewJob(
                b"s", r, "", q, on_exit, crash_limit, after, after_any, priority, delay, max_fails
            )
            for r, q in zip(retries, requests, strict=True)
        ]
        if data.draw(st.integers(0, 9)) == 0:  # now and then one that names no job
            before = fingerprint(self.table)
            with pytest.raises(UnknownDependency):
                self.table.submit([NewJob(b"s", after="job-99999999")], self.now, owner)
            assert fingerprint(self.table) == before
        try:
            ids = self.table.submit(new, self.now, owner)
        except OverQuota as refused:
            quota = QUOTAS.of(owner)
            if refused.limit == "max_queued":
                counts = self.table.owner_counts(owner)
                assert counts[Q] + counts[W] + n > quota.max_queued
            else:
                assert refused.limit == "submit_rate" and quota.submit_rate
                assert refused.retry_after is not None and refused.retry_after > 0
            assert fingerprint(self.table) == before
            return
        except QueueFull:
            assert self.table.counts[Q] + self.table.counts[W] + n > self.table.max_queued
            assert fingerprint(self.table) == before
            return
        assert ids == [wire.job_id(k) for k in range(first, first + n)]
        assert not set(ids) & set(self.submitted)
        self.submitted += ids

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(self.job_ids())
        job = self.table.jobs.get(job_id)
        if job is None:
            assert self.table.cancel(job_id, self.now) is None
            return
        state, seq, worker_id = job.state, job.lease_seq, job.worker_id
        before = fingerprint(self.table)
        result = self.table.cancel(job_id, self.now)
        if state in TERMINAL:
            assert result is state and fingerprint(self.table) == before
            return
        assert result is JobState.CANCELLED and job.state is JobState.CANCELLED
        if state not in (Q, JobState.WAITING):
            w = self.table.workers[worker_id]
            if seq == 0:
                assert job_id not in w.leases
            else:
                assert w.leases[job_id] is job and w.cancel_notices[job_id] == job.attempt

    # -- workers --

    @rule(worker_id=st.sampled_from(WORKER_IDS), capacity=st.integers(1, 4), data=st.data())
    def register(self, worker_id: str, capacity: int, data: st.DataObject) -> None:
        """The worker (re)starts its session; a restarted worker may have lost some jobs."""
        sim = self.sims[worker_id]
        kept = data.draw(
            st.sets(st.sampled_from(sorted(sim.holds))) if sim.holds else st.just(set())
        )
        sim.holds = {k: v for k, v in sim.holds.items() if k in kept}
        self.send_register(worker_id, capacity, data)

    def reregister(self, worker_id: str, data: st.DataObject) -> None:
        """Told it is unknown (declared lost), the worker registers again with what it holds."""
        if data.draw(st.booleans()):
            self.send_register(worker_id, data.draw(st.integers(1, 4)), data)

    def send_register(self, worker_id: str, capacity: int, data: st.DataObject) -> None:
        sim = self.sims[worker_id]
        sim.inflight = None  # a reply to the old session never arrives
        held = sim.held() + self.garbage(data, worker_id)
        old = self.table.workers.get(worker_id)
        old_leases = dict(old.leases) if old is not None else {}
        had = {(h.job_id, h.attempt) for h in held if self.holds(worker_id, h)}
        old_state = {j.job_id: (j.lease_seq, j.lost_count) for j in old_leases.values()}
        slots = data.draw(st.integers(1, capacity))
        drop = self.table.register(
            worker_id,
            slots=slots,
            capacity=capacity,
            now=self.now,
            held=held,
            offer=self.offers[worker_id],
        )
        w = self.table.workers[worker_id]
        assert w.capacity == capacity
        assert [(h.job_id, h.attempt) for h in drop] == [
            (h.job_id, h.attempt) for h in held if (h.job_id, h.attempt) not in had
        ]
        if old is None:
            assert len(drop) == len(held)
        kept_ids = {h.job_id for h in held if self.holds(worker_id, h)}
        for job_id, job in old_leases.items():
            seq, lost = old_state[job_id]
            if job_id in kept_ids or seq == 0:
                assert w.leases.get(job_id) is job  # held, or still waiting to be handed over
            elif job.state not in TERMINAL or job.reason == "worker_lost":
                assert job.lost_count == lost + 1
        sim.forget(drop)
        assert {(k, s.attempt) for k, s in sim.holds.items()} == had

    @rule(
        worker_id=st.sampled_from(WORKER_IDS),
        max_jobs=st.integers(0, 4),
        fate=st.sampled_from(["received", "received", "lost", "delayed"]),
        data=st.data(),
    )
    def lease(self, worker_id: str, max_jobs: int, fate: str, data: st.DataObject) -> None:
        sim = self.sims[worker_id]
        sim.inflight = None  # the previous poll timed out: its reply is gone
        if worker_id not in self.table.workers:
            before = fingerprint(self.table)
            with pytest.raises(UnknownWorker):
                self.table.lease(worker_id, max_jobs, self.now)
            assert fingerprint(self.table) == before
            self.reregister(worker_id, data)
            return
        w = self.table.workers[worker_id]
        waiting = [j for j in w.leases.values() if j.lease_seq == 0]
        old_seq = w.lease_seq
        seq, batch = self.table.lease(worker_id, max_jobs, self.now)
        assert len(batch) == min(max_jobs, len(waiting))
        assert len({j.job_id for j in batch}) == len(batch), "a job handed over twice"
        assert batch == waiting[: len(batch)]  # in the order they were routed
        if batch:
            assert seq > old_seq
        for job in batch:
            assert w.leases[job.job_id] is job and job.lease_seq == seq
        jobs = [(j.job_id, j.attempt) for j in batch]
        if fate == "received":
            sim.receive(seq, jobs)
        elif fate == "delayed" and jobs:
            sim.inflight = (seq, jobs)
            if data.draw(st.booleans()):
                self.send_heartbeat(worker_id, data)  # the heartbeat overtakes the reply

    @rule(worker_id=st.sampled_from(WORKER_IDS))
    def reply_arrives(self, worker_id: str) -> None:
        sim = self.sims[worker_id]
        if sim.inflight is not None:
            sim.receive(*sim.inflight)
            sim.inflight = None

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def started(self, worker_id: str, data: st.DataObject) -> None:
        sim = self.sims[worker_id]
        idle = sorted(k for k, s in sim.holds.items() if not s.running)
        if not idle:
            return
        job_id = data.draw(st.sampled_from(idle))
        h = Held(job_id, sim.holds[job_id].attempt)
        if worker_id not in self.table.workers:
            with pytest.raises(UnknownWorker):
                self.table.started(worker_id, h, self.now)
            return
        current = self.holds(worker_id, h)
        state = self.table.jobs[job_id].state
        self.table.started(worker_id, h, self.now)
        sim.holds[job_id].running = True
        if current and state is L:
            assert self.table.jobs[job_id].state is R

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def heartbeat(self, worker_id: str, data: st.DataObject) -> None:
        self.send_heartbeat(worker_id, data)

    def send_heartbeat(self, worker_id: str, data: st.DataObject) -> None:
        sim = self.sims[worker_id]
        if sim.holds and data.draw(st.integers(0, 4)) == 0:  # the worker lost some jobs
            lost = data.draw(st.sets(st.sampled_from(sorted(sim.holds)), min_size=1))
            sim.holds = {k: v for k, v in sim.holds.items() if k not in lost}
        faithful = data.draw(st.booleans())
        acked = sim.acked if faithful else data.draw(st.integers(0, sim.acked))
        garbage = [] if faithful else self.garbage(data, worker_id)
        held = sim.held() + garbage
        if worker_id not in self.table.workers:
            before = fingerprint(self.table)
            with pytest.raises(UnknownWorker):
                self.table.heartbeat(worker_id, held, acked, self.now)
            assert fingerprint(self.table) == before
            self.reregister(worker_id, data)
            return
        w = self.table.workers[worker_id]
        old = {j.job_id: (j, j.lease_seq, j.attempt) for j in w.leases.values()}
        cancel, drop = self.table.heartbeat(worker_id, held, acked, self.now)
        assert [(h.job_id, h.attempt) for h in drop] == [
            (h.job_id, h.attempt) for h in held if not self.holds(worker_id, h)
        ]
        held_ids = {h.job_id for h in held}
        in_flight = sim.inflight
        for job_id, (job, seq, attempt) in old.items():
            if w.leases.get(job_id) is job and job.attempt == attempt:
                assert job_id in held_ids or not 0 < seq <= acked
            else:
                # A lease in flight (the worker's poll has not returned yet) is never taken back.
                assert not in_flight or (job_id, attempt) not in in_flight[1], (
                    f"{job_id} (lease_seq {seq}) taken back while still in flight"
                )
                assert job_id not in held_ids
        for h in cancel:
            assert h in held and self.table.jobs[h.job_id].state is JobState.CANCELLED
        sim.forget(drop)
        for h in cancel:
            sim.holds[h.job_id].cancel_asked = True
        if faithful:
            # The table knows exactly which handed-over jobs this worker holds (promise 3).
            ours = {(k, s.attempt) for k, s in sim.holds.items()}
            listed = {(j.job_id, j.attempt) for j in w.leases.values() if 0 < j.lease_seq <= acked}
            assert ours == listed

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def report(self, worker_id: str, data: st.DataObject) -> None:
        sim = self.sims[worker_id]
        if not sim.holds:
            return
        job_id = data.draw(st.sampled_from(sorted(sim.holds)))
        s = sim.holds[job_id]
        kind = "cancelled" if s.cancel_asked else None
        kind = kind or data.draw(st.sampled_from(["ok", "ok", "fail", "returned", "signal"]))
        code, reason, signal = {
            "ok": (0, "exit", 0),
            "fail": (1, "exit", 0),
            "returned": (None, "returned", 0),
            "signal": (None, "exit", 9),
            "cancelled": (None, "cancelled", 15),
        }[kind]
        prototype = data.draw(st.integers(0, 9)) == 0  # attempt 0: "my current lease"
        result = Result(job_id, 0 if prototype else s.attempt, code, signal, reason)
        result.finished_at = self.now
        job = self.table.jobs[job_id]
        if worker_id not in self.table.workers:
            before = fingerprint(self.table)
            with pytest.raises(UnknownWorker):
                self.table.report(worker_id, result, self.now)
            assert fingerprint(self.table) == before
            return
        w = self.table.workers[worker_id]
        attempt = result.attempt or job.attempt
        current = job.worker_id == worker_id and job.attempt == attempt
        in_lease = w.leases.get(job_id) is job
        state, retried, lost = job.state, job.retried, job.lost_count
        before = fingerprint(self.table)
        outcome = self.table.report(worker_id, result, self.now)
        if not current:
            assert outcome is ReportOutcome.STALE and fingerprint(self.table) == before
        elif state in TERMINAL:
            lost = job.reason == "worker_lost"  # the crash limit ended it: this run was lost
            assert outcome is (ReportOutcome.STALE if lost else ReportOutcome.DUPLICATE)
            assert job.state is state and job_id not in w.leases
            if not in_lease:
                assert fingerprint(self.table) == before
        elif not in_lease:
            assert outcome is ReportOutcome.STALE and fingerprint(self.table) == before
        else:
            assert outcome is ReportOutcome.ACCEPTED
            assert job.lost_count == lost
            if kind == "ok":
                assert job.state is JobState.SUCCEEDED and job.exit_code == 0
            elif kind == "returned":
                assert job.state in (Q, L) and job.retried == retried
            elif kind != "cancelled" and retried < job.retries and self.retried_for(job, code):
                assert job.retried == retried + 1
                assert job.state in ((JobState.WAITING,) if job.retry_delay else (Q, L))
            else:
                assert job.state is JobState.FAILED
        del sim.holds[job_id]
        if not prototype:
            sim.sent.append(result)

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def report_prototype(self, worker_id: str, data: st.DataObject) -> None:
        """A prototype worker's result (attempt 0: "my current lease"), maybe for a lost lease."""
        if worker_id not in self.table.workers or not self.submitted:
            return
        job = self.table.jobs[data.draw(st.sampled_from(self.submitted))]
        w = self.table.workers[worker_id]
        code = data.draw(st.sampled_from([0, 1]))
        handed_over = w.leases.get(job.job_id) is job and job.lease_seq != 0
        state, before = job.state, fingerprint(self.table)
        outcome = self.table.report(worker_id, Result(job.job_id, 0, code), self.now)
        if handed_over and state not in TERMINAL:
            assert outcome is ReportOutcome.ACCEPTED
        elif handed_over:
            assert outcome is ReportOutcome.DUPLICATE and job.job_id not in w.leases
        else:
            assert outcome is not ReportOutcome.ACCEPTED and fingerprint(self.table) == before
        if handed_over:
            self.sims[worker_id].holds.pop(job.job_id, None)

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def report_again(self, worker_id: str, data: st.DataObject) -> None:
        """A report resent after it was acknowledged (the ack was lost) changes nothing."""
        sim = self.sims[worker_id]
        if not sim.sent or worker_id not in self.table.workers:
            return
        result = data.draw(st.sampled_from(sim.sent))
        before = fingerprint(self.table)
        outcome = self.table.report(worker_id, result, self.now)
        assert outcome in (ReportOutcome.DUPLICATE, ReportOutcome.STALE)
        assert fingerprint(self.table) == before

    @rule(worker_id=st.sampled_from(WORKER_IDS), data=st.data())
    def report_superseded(self, worker_id: str, data: st.DataObject) -> None:
        if worker_id not in self.table.workers:
            return
        job_id = data.draw(self.job_ids())
        job = self.table.jobs.get(job_id)
        before = fingerprint(self.table)
        if job is None or job.attempt < 2:
            result = Result(job_id, 1, 0)
            outcome = self.table.report(worker_id, result, self.now)
            if job is None:
                assert outcome is ReportOutcome.UNKNOWN_JOB
                assert fingerprint(self.table) == before
            return
        result = Result(job_id, data.draw(st.integers(1, job.attempt - 1)), 0)
        assert self.table.report(worker_id, result, self.now) is ReportOutcome.STALE
        assert fingerprint(self.table) == before

    @rule(worker_id=st.sampled_from(WORKER_IDS))
    def take_cancel_notices(self, worker_id: str) -> None:
        w = self.table.workers.get(worker_id)
        pending = dict(w.cancel_notices) if w is not None else {}
        notices = self.table.take_cancel_notices(worker_id)
        assert {h.job_id: h.attempt for h in notices} == pending
        for h in notices:
            assert w is not None and self.table.jobs[h.job_id].state is JobState.CANCELLED
        assert w is None or not w.cancel_notices

    @rule(dt=st.sampled_from([0.5, 3.0, 6.0, 11.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        silent = {
            w.worker_id
            for w in self.table.workers.values()
            if self.now - w.last_seen > self.table.lease_ttl
        }
        leases = {wid: list(self.table.workers[wid].leases.values()) for wid in silent}
        objects = {wid: self.table.workers[wid] for wid in silent}
        assert set(self.table.expire(self.now)) == silent
        for wid in silent:
            assert wid not in self.table.workers and objects[wid].state is WorkerState.LOST
            for job in leases[wid]:
                assert job.state is Q or job.state in TERMINAL or job.worker_id != wid

    @rule(worker_id=st.sampled_from(WORKER_IDS))
    def remove_worker(self, worker_id: str) -> None:
        w = self.table.workers.get(worker_id)
        self.table.remove_worker(worker_id, self.now)
        assert worker_id not in self.table.workers
        assert w is None or w.state is WorkerState.GONE

    # -- invariants --

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        table = self.table
        where: dict[str, list[str]] = {}
        for w in table.workers.values():
            for job_id, job in w.leases.items():
                assert table.jobs[job_id] is job and job.worker_id == w.worker_id
                where.setdefault(job_id, []).append(w.worker_id)
            for job_id, attempt in w.cancel_notices.items():
                assert w.leases[job_id].state is JobState.CANCELLED
                assert w.leases[job_id].attempt == attempt
            live = [j for j in w.outbox if w.leases.get(j.job_id) is j and j.lease_seq == 0]
            waiting = [j for j in w.leases.values() if j.lease_seq == 0]
            assert len({j.job_id for j in live}) == len(live), "a job twice in an outbox"
            assert {j.job_id for j in live} == {j.job_id for j in waiting}
        queued = queued_in_order(table)
        assert len(queued) == len(set(queued)) == table.counts[Q]
        for job_id, job in table.jobs.items():
            holders = where.get(job_id, [])
            assert len(holders) <= 1
            if job.state is Q:
                assert not holders and job_id in queued
            elif job.state in (L, R):
                assert holders == [job.worker_id]
            elif holders:
                # Terminal, still counting on the worker: only a handed-over job a user
                # cancelled, until the worker says it stopped it.
                assert job.state is JobState.CANCELLED and job.lease_seq != 0

    @invariant()
    def counts_match_and_nothing_is_lost(self) -> None:
        table = self.table
        assert table.counts == real_counts(table)
        assert sum(table.counts.values()) == len(table.jobs) == len(self.submitted)
        assert all(job_id in table.jobs for job_id in self.submitted)
        log = [job.job_id for job in table.finished_log]
        assert len(log) == len(set(log))
        assert set(log) == {j.job_id for j in table.jobs.values() if j.state in TERMINAL}

    @invariant()
    def jobs_wait_for_their_dependencies_and_no_longer(self) -> None:
        """Rule 12: a waiting job waits for the dependencies that have not ended (and none of
        those that ended failed it); a job past waiting had every dependency end as it needs,
        or ended failed for one; the index lists only jobs that have not ended."""
        jobs = self.table.jobs
        deferred = {job.job_id: due for due, _, job in self.table._deferred}
        for job in jobs.values():
            if job.state is JobState.WAITING and job.retry_at:
                # A retry waiting out its delay (rule 4), queued once due (time passes only
                # with ``expire``)
                assert job.retried and not job.unmet and deferred[job.job_id] == job.retry_at
                assert job.retry_at > self.now
                continue
            if not job.after:
                continue
            # each dependency as its jobs: a submission stands for every job of it
            deps = {
                d: [j for j in jobs.values() if j.submission == wire.submission_number(d)]
                if d.startswith(wire.SUBMISSION_ID_PREFIX)
                else [jobs[d]]
                for d in job.after.split(",")
            }
            unended = [d for d, of in deps.items() if any(j.state not in TERMINAL for j in of)]
            bad = [j for of in deps.values() for j in of if j.state in (F, JobState.CANCELLED)]
            if job.reason == "dependency_failed":
                assert job.state is JobState.FAILED and bad and not job.after_any
            elif job.state is JobState.WAITING:
                assert job.unmet == len(unended) > 0
                assert job.after_any or not bad
                for d in unended:
                    key = deps[d][0].submission if d.startswith("sub-") else d
                    assert job in self.table._dependents[key]
            elif job.state is not JobState.CANCELLED:
                assert not unended and (job.after_any or not bad), job
        for key in self.table._dependents:
            if isinstance(key, str):
                assert jobs[key].state not in TERMINAL
            else:
                assert self.table.submissions[key].pending

    @invariant()
    def higher_priorities_lease_first(self) -> None:
        """Rule 10: a job routed from the queue (a new attempt, not a steal) that asks for no
        resources leaves no lane of a higher priority in the rotation whose head asks for none
        either (one that asks for some may wait for them while lower ones backfill: rule 11)."""
        table = self.table
        plain_heads = [
            lane.priority
            for level in table._rotation.values()
            for lane in level.values()
            if (head := next((j for j in (*lane.backlog, *lane.queue) if j.state is Q), None))
            and head.request is None
        ]
        for job_id, job in table.jobs.items():
            if job.attempt != self.routed.get(job_id, 0):
                self.routed[job_id] = job.attempt
                if job.state in (L, R) and not job.steal_round and job.request is None:
                    assert all(p <= job.priority for p in plain_heads), job

    @invariant()
    def terminal_is_final_and_attempts_only_grow(self) -> None:
        for job_id, job in self.table.jobs.items():
            assert job.attempt >= self.attempts.get(job_id, 0)
            self.attempts[job_id] = job.attempt
            if job.state in TERMINAL:
                snap = (job.state, job.attempt, job.reason, job.finished_at)
                if job.state is not JobState.CANCELLED:
                    snap += (job.exit_code, job.signal)
                assert self.final.setdefault(job_id, snap) == snap

    @invariant()
    def every_change_is_recorded_for_the_store(self) -> None:
        """Rule 7: what a transition changed in a job reaches the store: a new job as new, a
        lease alone as leased (only its state, attempt and worker differ), anything else as
        changed."""
        new, changed, leased = self.table.take_changes()
        columns = {job.job_id: STORED_COLUMNS(job) for job in self.table.jobs.values()}
        recorded = {job.job_id for job in (*new, *changed, *leased)}
        for job_id, now in columns.items():
            if self.stored.get(job_id) != now:
                assert job_id in recorded, f"{job_id} changed but not recorded"
        for job in new:
            assert job.job_id not in self.stored
        for job in leased:
            before, now = self.stored[job.job_id], columns[job.job_id]
            assert job.job_id not in {j.job_id for j in (*new, *changed)}
            differ = {
                c for c, a, b in zip(store_module._COLUMNS, before, now, strict=True) if a != b
            }
            assert differ <= {"state", "attempt", "worker_id"}, differ
        self.stored = columns

    @invariant()
    def workers_follow_their_table(self) -> None:
        """Rule 8 for workers: every state a worker object went through is a step of
        WORKER_TRANSITIONS (one or a chain since the last look); the registry holds exactly the
        REGISTERED and DRAINING ones, and one that left holds no lease."""
        reachable: dict[WorkerState | None, set[WorkerState]] = {}
        for (old, _), step in WORKER_TRANSITIONS.items():
            reachable.setdefault(old, set()).add(step.to)
        for w in self.table.workers.values():
            assert w.state in (WorkerState.REGISTERED, WorkerState.DRAINING)
            self.worker_states.setdefault(id(w), (w, None))
        for key, (w, old) in list(self.worker_states.items()):
            if w.state is not old:
                seen, todo = set(), [old]
                while todo:  # the states reachable from ``old`` in one or more steps
                    for state in reachable.get(todo.pop(), ()):
                        if state not in seen:
                            seen.add(state)
                            todo.append(state)
                assert w.state in seen, f"worker {w.worker_id}: {old} -> {w.state}"
            if self.table.workers.get(w.worker_id) is not w:
                assert w.state in (WorkerState.LOST, WorkerState.GONE) and not w.leases
            self.worker_states[key] = (w, w.state)

    @invariant()
    def capacity_holds_and_the_router_sees_the_real_load(self) -> None:
        table = self.table
        for worker_id, w in table.workers.items():
            # Only a re-registration that lowered the capacity may leave a worker above it,
            # and such a worker gets nothing more until it is back under.
            assert w.load <= max(w.capacity, self.load.get(worker_id, 0))
            if w.draining:
                assert not w.outbox or all(j.lease_seq for j in w.outbox if j.job_id in w.leases)
            elif worker_id not in table._reserved:
                assert self.router.seen.get(worker_id) == (w.load, w.capacity)
        # A draining worker (it handed a job back) is out of the rotation until it registers,
        # and a reserved one until its job fits it.
        registered = {k for k, w in table.workers.items() if w.state is WorkerState.REGISTERED}
        assert set(self.router.seen) == registered - set(table._reserved)
        self.load = {k: w.load for k, w in table.workers.items()}
        for lane in (lane for level in table._rotation.values() for lane in level.values()):
            name = lane.owner
            head = next((j for j in (*lane.backlog, *lane.queue) if j.state is Q), None)
            if head is None:
                assert all(j.owner != name for j in table._unfit.values() if j.state is not Q)
                continue
            if head.request is None:
                assert self.router.pick() is None, "a job waits while a worker has room"
            else:
                assert not any(
                    table._fits(w, head.request)
                    for k, w in table.workers.items()
                    if w.state is WorkerState.REGISTERED and k not in table._reserved
                ), "a job waits while a worker has room for it"

    @invariant()
    def resources_are_never_over_committed_and_counted_exactly(self) -> None:
        """Rules 5 and 11: what a worker's leases use is what ``extra`` counts (back to zero
        with no lease), never beyond its offer; a reserved worker waits for a queued job that
        does not fit it yet but fits its totals; a job set aside fits no registered worker."""
        table = self.table
        for w in table.workers.values():
            extra: dict[str, int] = {}
            for job in w.leases.values():
                if job.request is not None:
                    resources.charge(extra, job.request, 1)
            assert {k: v for k, v in w.extra.items() if v} == {k: v for k, v in extra.items() if v}
            for name, amount in w.offer.items():
                assert w.extra.get(name, 0) <= amount, f"{w.worker_id} over-committed {name}"
            assert all(v == 0 for v in w.extra.values()) or w.leases
        for worker_id, job in table._reserved.items():
            w = table.workers[worker_id]
            assert job.state is Q and job.request is not None
            assert w.state is WorkerState.REGISTERED
            assert resources.fits(job.request, w.totals())
            assert not table._fits(w, job.request)
        for job in table._unfit.values():
            if job.state is Q:
                assert job.request is not None and not table.could_fit(job.request)

    @invariant()
    def owners_count_their_jobs_and_take_turns_within_their_quotas(self) -> None:
        """Rule 10: each owner's lanes hold its queued jobs, one lane a priority; the rotation
        holds exactly the lanes with queued jobs of owners below max_running, so one at its
        limit holds no one back."""
        table = self.table
        for name, owner in table._owners.items():
            mine = [j for j in table.jobs.values() if j.owner == name]
            real = dict.fromkeys(JobState, 0)
            for job in mine:
                real[job.state] += 1
            assert owner.counts == real
            unfit = [j for j in table._unfit.values() if j.owner == name]
            assert {j.job_id for j in [*lane_jobs(owner), *unfit] if j.state is Q} == {
                j.job_id for j in mine if j.state is Q
            }
            quota = QUOTAS.of(name)
            if quota.max_running:
                assert owner.active <= quota.max_running
            for priority, lane in owner.lanes.items():
                entries = (*lane.backlog, *lane.queue)
                assert all(j.owner == name and j.priority == priority for j in entries)
                queued = sum(j.state is Q and j.priority == priority for j in mine)
                assert lane.queued == queued
                ready = queued > 0 and quota.may_lease(owner.active)
                in_rotation = table._rotation.get(priority, {}).get(name) is lane
                assert in_rotation is ready is lane.ready

    @invariant()
    def submissions_count_their_jobs(self) -> None:
        """Rule 13: each submission counts its jobs per state, as they are; every job's
        submission is known, and no empty one is kept."""
        table = self.table
        real: dict[int, dict[JobState, int]] = {}
        for job in table.jobs.values():
            real.setdefault(job.submission, dict.fromkeys(JobState, 0))[job.state] += 1
        assert {n: s.counts for n, s in table.submissions.items()} == real
        for submission in table.submissions.values():
            if submission.max_fails and submission.counts[JobState.FAILED] >= submission.max_fails:
                # halted: nothing of it left to run
                assert not submission.pending, submission
        for number, submission in table.submissions.items():
            nums = [j.num for j in table.jobs.values() if j.submission == number]
            assert submission.number == min(nums) and submission.last == max(nums)


SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("TABLE_EXAMPLES", "60")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class RoundRobinMachine(TableMachine):
    router_name = "roundrobin"


class PowerOfTwoMachine(TableMachine):
    router_name = "power2"


class BiasedMachine(TableMachine):
    router_name = "biased"


TestTableRoundRobin = RoundRobinMachine.TestCase
TestTablePowerOfTwo = PowerOfTwoMachine.TestCase
TestTableBiased = BiasedMachine.TestCase
TestTableRoundRobin.settings = SETTINGS
TestTablePowerOfTwo.settings = SETTINGS
TestTableBiased.settings = SETTINGS


def test_a_submission_built_in_slices_is_queued_whole_or_not_at_all() -> None:
    """Jobs built from their numbers (``number``, ``new_jobs``) change nothing until ``enqueue``;
    a queue that filled meanwhile refuses them all, and their numbers are not used again."""
    table = JobTable(max_queued=3)
    first = table.number(2)
    jobs = [
        *table.new_jobs(first, [NewJob(b"a")], 1.0),
        *table.new_jobs(first + 1, [NewJob(b"b")], 1.0),
    ]
    assert not table.jobs and table.counts[JobState.QUEUED] == 0
    table.submit([NewJob(b"c"), NewJob(b"d")], 2.0)
    with pytest.raises(QueueFull):
        table.enqueue(jobs)
    assert list(table.jobs) == ["job-00000003", "job-00000004"]
    assert table.counts[JobState.QUEUED] == 2
    assert table.enqueue(jobs[:1]) == ["job-00000001"]
    assert [job.spec for job in table.iter_jobs()] == [b"a", b"c", b"d"]


def test_a_stored_submission_is_queued_even_if_returning_jobs_filled_the_queue() -> None:
    """A staged submission is stored under the room it held; jobs going back to the queue meanwhile
    (a lost worker's) do not ask for room. Refused then, it would stay stored, and come back
    after a restart: it is queued."""
    table = JobTable(max_queued=2)
    table.register("w1", slots=1, capacity=1, now=0.0)
    table.submit([NewJob(b"a")], 0.0)  # leased to w1
    with table.room(2):
        jobs = table.new_jobs(table.number(2), [NewJob(b"b"), NewJob(b"c")], 0.0)
        table.remove_worker("w1", 1.0)  # its job goes back to the queue
    assert table.counts[JobState.QUEUED] == 1
    assert table.enqueue(jobs, stored=True) == ["job-00000002", "job-00000003"]
    assert table.counts[JobState.QUEUED] == 3


def test_room_held_for_a_submission_being_stored_counts_until_released() -> None:
    table = JobTable(max_queued=5)
    with table.room(4):
        with pytest.raises(QueueFull, match="0 queued or waiting and 4 being submitted, 2 more"):
            table.submit([NewJob(b"a"), NewJob(b"b")], 0.0)
        table.submit([NewJob(b"c")], 0.0)
    assert table.held_room == 0
    table.submit([NewJob(b"d")] * 4, 0.0)
    assert table.counts[JobState.QUEUED] == 5


def test_an_admin_drain_outlives_the_workers_registrations_until_undrained() -> None:
    table = JobTable()
    register(table, "w1")
    table.drain("w1")
    (job_id,) = submit(table)
    assert table.workers["w1"].state is WorkerState.DRAINING
    assert table.jobs[job_id].state is JobState.QUEUED

    register(table, "w1", now=1.0)  # the same process again, or a restarted one
    register(table, "w1", now=2.0)
    assert table.workers["w1"].state is WorkerState.DRAINING
    assert table.jobs[job_id].state is JobState.QUEUED
    table.expire(now=100.0)  # lost, then back: still drained
    assert "w1" not in table.workers
    register(table, "w1", now=100.0)
    assert table.workers["w1"].state is WorkerState.DRAINING
    assert table.jobs[job_id].state is JobState.QUEUED
    assert table.take_drains() == [("w1", True)]

    table.undrain("w1")
    assert table.workers["w1"].state is WorkerState.REGISTERED
    assert table.jobs[job_id].state is JobState.LEASED
    assert table.take_drains() == [("w1", False)]
    register(table, "w1", now=101.0)
    assert table.workers["w1"].state is WorkerState.REGISTERED
    with pytest.raises(UnknownWorker):
        table.undrain("w1")  # not drained
    assert table.take_drains() == []


def test_a_shutdown_drain_ends_when_the_worker_registers_again() -> None:
    """A worker handing a job back drains itself (it is stopping): its next process is not."""
    table = JobTable()
    register(table, "w1")
    (job_id,) = submit(table)
    deliver(table)
    table.report("w1", exited(job_id, table, None, reason="returned"), 1.0)
    assert table.workers["w1"].state is WorkerState.DRAINING
    register(table, "w1", now=2.0)
    assert table.workers["w1"].state is WorkerState.REGISTERED
    assert table.take_drains() == []


def test_a_worker_counts_the_results_that_ended_an_attempt() -> None:
    """``burst top``'s jobs/s: a job's end or a retry counts, a handed-back job does not."""
    table = JobTable()
    register(table, "w1")
    ok, retried, returned = submit(table, 3, retries=1)
    deliver(table)
    table.report_many(
        "w1",
        [
            exited(ok, table),
            exited(retried, table, 1),
            exited(returned, table, None, reason="returned"),
        ],
        1.0,
    )
    assert table.workers["w1"].ended == 2


def test_events_record_each_job_and_worker_transition_in_order() -> None:
    table = JobTable(track_events=True)
    register(table, "w1")
    register(table, "w2", capacity=4)
    ok, retried = submit(table, 2, retries=1)
    deliver(table, "w1")
    deliver(table, "w2")
    table.started("w1", Held(ok, 1), 1.0)
    table.report("w1", exited(ok, table), 2.0)
    worker_of_retried = table.jobs[retried].worker_id
    table.report(worker_of_retried, exited(retried, table, 1), 3.0)
    table.drain("w1")
    events = table.take_events()
    assert [e for e in events if e[1] == ""] == [
        ("registered", "", "w1", 0, ""),
        ("registered", "", "w2", 0, ""),
        ("drained", "", "w1", 0, ""),
    ]
    assert [e for e in events if e[1] == ok] == [
        ("submitted", ok, "", 0, ""),
        ("leased", ok, "w1", 1, ""),
        ("started", ok, "w1", 1, ""),
        ("ended", ok, "w1", 1, "succeeded"),
    ]
    kinds = [(e[0], e[2], e[3]) for e in events if e[1] == retried]
    assert kinds[:3] == [
        ("submitted", "", 0),
        ("leased", worker_of_retried, 1),
        ("retried", worker_of_retried, 1),
    ]
    assert kinds[3][0] == "leased" and kinds[3][2] == 2  # routed again at once
    assert table.take_events() == []
    assert JobTable().take_events() == []  # without track_events, none
