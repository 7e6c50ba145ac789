"""Unit tests of the worker's local job set (burstd/worker/queue.py): pure, no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from burstd.worker.queue import LocalJob, LocalQueue, LocalState
from proto.burst.v1 import job_pb2


def assigned(job_id: str, attempt: int = 1) -> job_pb2.AssignedJob:
    spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
    return job_pb2.AssignedJob(job_id=job_id, attempt=attempt, spec=spec)


def result(job: LocalJob, exit_code: int = 0) -> job_pb2.ReportJobResultRequest:
    return job_pb2.ReportJobResultRequest(
        job_id=job.job_id, attempt=job.attempt, exit_code=exit_code, reason="exit"
    )


def held_ids(queue: LocalQueue) -> dict[str, tuple[int, bool]]:
    return {h.job_id: (h.attempt, h.running) for h in queue.held()}


def run_to_done(queue: LocalQueue) -> LocalJob:
    job = queue.next_queued()
    assert job is not None
    queue.finish(job, result(job))
    return job


def test_room_counts_every_held_job() -> None:
    queue = LocalQueue(capacity=3)
    assert queue.room() == 3
    assert queue.add([assigned("a"), assigned("b")], lease_seq=1) == 2
    assert queue.room() == 1
    job = queue.next_queued()  # running still counts
    assert job is not None and job.state is LocalState.RUNNING
    assert queue.room() == 1
    queue.finish(job, result(job))  # finished but unacknowledged still counts
    assert queue.room() == 1
    _, done = queue.take_reports()
    queue.acknowledged(done)
    assert queue.room() == 2


def test_held_lists_queued_running_and_finished_unacknowledged() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a"), assigned("b"), assigned("c", attempt=2)], lease_seq=7)
    done = run_to_done(queue)  # a: finished, not acknowledged
    running = queue.next_queued()  # b: running
    assert running is not None
    assert held_ids(queue) == {"a": (1, False), "b": (1, True), "c": (2, False)}
    assert queue.lease_seq == 7
    _, reports = queue.take_reports()
    assert reports == [done]
    # Until acknowledged, a result stays held (and is offered again).
    assert "a" in held_ids(queue)
    assert queue.take_reports()[1] == [done]
    queue.acknowledged(reports)
    assert held_ids(queue) == {"b": (1, True), "c": (2, False)}


def test_add_ignores_duplicate_and_older_attempts_but_takes_newer() -> None:
    queue = LocalQueue(capacity=4)
    assert queue.add([assigned("a", attempt=2)], lease_seq=1) == 1
    assert queue.add([assigned("a", attempt=2)], lease_seq=2) == 0  # duplicate
    assert queue.add([assigned("a", attempt=1)], lease_seq=3) == 0  # superseded attempt
    assert len(queue.jobs) == 1 and queue.jobs["a"].attempt == 2
    assert queue.lease_seq == 3  # the batch is still acknowledged
    assert queue.add([assigned("a", attempt=3)], lease_seq=2) == 1  # newer attempt replaces
    assert queue.jobs["a"].attempt == 3
    assert queue.lease_seq == 3  # never goes down
    # Only the newest attempt starts, once.
    job = queue.next_queued()
    assert job is not None and job.attempt == 3
    assert queue.next_queued() is None


def test_return_unstarted_hands_back_queued_jobs_only() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a"), assigned("b"), assigned("c")], lease_seq=1)
    running = queue.next_queued()
    assert running is not None and running.job_id == "a"
    returned = queue.return_unstarted()
    assert [j.job_id for j in returned] == ["b", "c"]
    assert queue.waiting() == 0
    assert queue.next_queued() is None
    assert running.state is LocalState.RUNNING
    for job in returned:
        assert job.state is LocalState.DONE
        assert job.result is not None
        assert job.result.reason == "returned"
        assert (job.result.job_id, job.result.attempt) == (job.job_id, job.attempt)
    # Handed-back jobs are reported (and held until acknowledged) like any result.
    _, done = queue.take_reports()
    assert {j.job_id for j in done} == {"b", "c"}
    queue.acknowledged(done)
    assert set(queue.jobs) == {"a"}


def test_drop_forgets_the_named_attempt_and_no_result_is_kept() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a", attempt=2), assigned("b")], lease_seq=1)
    assert queue.drop("a", 1) is None  # another attempt: not ours to drop
    assert "a" in queue.jobs
    job = queue.next_queued()
    assert job is not None and job.job_id == "a"
    assert queue.drop("a", 2) is job
    assert "a" not in queue.jobs
    # The runner finishing a dropped job records nothing.
    queue.finish(job, result(job))
    assert job.state is LocalState.RUNNING
    started, done = queue.take_reports()
    assert done == []
    assert [h.job_id for h in started] == []  # no start notice for a dropped job either
    assert queue.drop("zzz", 1) is None
    # A dropped queued job is never started.
    assert queue.drop("b", 1) is not None
    assert queue.next_queued() is None
    assert queue.room() == 4


def test_take_reports_sends_each_start_notice_once() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a"), assigned("b")], lease_seq=1)
    assert not queue.has_reports()
    a = queue.next_queued()
    assert a is not None
    assert queue.has_reports()
    started, done = queue.take_reports()
    assert [(h.job_id, h.attempt, h.running) for h in started] == [("a", 1, True)]
    assert done == []
    assert not queue.has_reports()
    assert queue.take_reports() == ([], [])
    # A job that ends before its start notice went out needs no notice: the result says it all.
    b = queue.next_queued()
    assert b is not None
    queue.finish(b, result(b, exit_code=3))
    started, done = queue.take_reports()
    assert started == []
    assert done == [b]
    assert done[0].result is not None and done[0].result.exit_code == 3


def test_acknowledged_ignores_jobs_replaced_meanwhile() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a", attempt=1)], lease_seq=1)
    old = run_to_done(queue)
    _, done = queue.take_reports()
    # While the report is on its way, the controller re-leases the job to us (a newer attempt).
    queue.add([assigned("a", attempt=2)], lease_seq=2)
    queue.acknowledged(done)
    assert queue.jobs["a"].attempt == 2
    assert queue.jobs["a"] is not old
    # finish() of the superseded attempt changes nothing either.
    queue.finish(old, result(old, exit_code=9))
    assert queue.jobs["a"].state is LocalState.QUEUED


def test_take_removes_only_queued_jobs() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a"), assigned("b")], lease_seq=1)
    queue.next_queued()  # a runs
    taken = queue.take(["a", "b", "zzz"])
    assert [j.job_id for j in taken] == ["b"]
    assert set(queue.jobs) == {"a"}
    assert queue.next_queued() is None


# -- random sequences: capacity and accounting invariants ---------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(
                st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 3)), min_size=0, max_size=5
            ),
        ),
        st.tuples(st.just("start"), st.none()),
        st.tuples(st.just("finish"), st.integers(0, 7)),
        st.tuples(st.just("report"), st.booleans()),
        st.tuples(st.just("drop"), st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 3))),
        st.tuples(st.just("return"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 5), operations=ops)
def test_random_sequences_keep_the_invariants(
    capacity: int, operations: list[tuple[str, object]]
) -> None:
    queue = LocalQueue(capacity)
    running: list[LocalJob] = []
    lease_seq = 0
    for op, arg in operations:
        if op == "add":
            # The lease loop asks for at most room() jobs, and the controller sends at most that.
            batch = [assigned(job_id, attempt) for job_id, attempt in arg][: queue.room()]  # type: ignore[attr-defined]
            lease_seq += 1
            queue.add(batch, lease_seq)
        elif op == "start":
            job = queue.next_queued()
            if job is not None:
                running.append(job)
        elif op == "finish" and running:
            job = running.pop(int(arg) % len(running))  # type: ignore[call-overload]
            queue.finish(job, result(job))
        elif op == "report":
            _, done = queue.take_reports()
            if arg:
                queue.acknowledged(done)
        elif op == "drop":
            job_id, attempt = arg  # type: ignore[misc]
            queue.drop(job_id, attempt)
        elif op == "return":
            queue.return_unstarted()
        # Invariants after every step.
        assert len(queue.jobs) <= capacity
        assert queue.room() == capacity - len(queue.jobs)
        held = queue.held()
        assert len(held) == len(queue.jobs)
        assert len({h.job_id for h in held}) == len(held)
        for h in held:
            job = queue.jobs[h.job_id]
            assert h.attempt == job.attempt
            assert h.running == (job.state is LocalState.RUNNING)
            # Exactly the DONE jobs carry a result, and it names the job's own lease.
            if job.state is LocalState.DONE:
                assert job.result is not None
                assert (job.result.job_id, job.result.attempt) == (job.job_id, job.attempt)
            else:
                assert job.result is None
        assert queue.lease_seq == lease_seq
        assert queue.has_stealable() == (queue.queued_count() > 0)


def test_every_change_is_announced_and_reads_are_not() -> None:
    changes: list[int] = []
    queue = LocalQueue(capacity=4, on_change=lambda: changes.append(1))

    def announced(count: int = 1) -> bool:
        seen = len(changes)
        changes.clear()
        return seen == count

    queue.add([assigned("a"), assigned("b"), assigned("c"), assigned("d")], lease_seq=1)
    assert announced()
    queue.add([assigned("a")], lease_seq=2)  # nothing new
    assert announced(0)
    queue.room(), queue.held(), queue.waiting(), queue.has_reports(), queue.lookup("a", 1)
    assert announced(0)
    a = queue.next_queued()
    assert a is not None and announced()
    queue.finish(a, result(a))
    assert announced()
    _, done = queue.take_reports()
    assert announced()
    queue.acknowledged(done)
    assert announced()
    assert queue.cancel("b", 1, now=5.0) is None  # queued: ends now, as cancelled
    assert announced() and queue.jobs["b"].result is not None
    assert queue.jobs["b"].result.reason == "cancelled"
    offered = queue.offer(1)
    assert announced()
    queue.handed_over(offered, moved={"d"})
    assert announced()
    assert queue.drop("c", 1) is not None and announced()
    queue.add([assigned("e"), assigned("f")], lease_seq=3)
    changes.clear()
    assert len(queue.return_unstarted()) == 2
    assert announced()  # once for the whole hand-back


def test_a_job_whose_other_attempt_still_runs_here_waits_for_it() -> None:
    queue = LocalQueue(capacity=4)
    queue.add([assigned("a", attempt=1), assigned("b")], lease_seq=1)
    first = queue.next_queued()
    assert first is not None and first.job_id == "a"
    queue.add([assigned("a", attempt=2)], lease_seq=2)  # the controller moved on: attempt 2
    # "b" is ahead of the new attempt; then the new attempt waits while attempt 1 still runs.
    assert queue.next_queued(busy={"a"}) is not None  # b
    assert not queue.can_start(busy={"a"}) and queue.next_queued(busy={"a"}) is None
    assert queue.can_start(busy=set())
    second = queue.next_queued(busy=set())
    assert second is not None and (second.job_id, second.attempt) == ("a", 2)
    queue.finish(first, result(first))  # the superseded attempt's end records nothing
    assert first.result is None and queue.jobs["a"] is second
