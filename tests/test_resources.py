"""Resources: parsing, the worker's pool, and the job table's rules 5 and 11 (burstd/resources.py,
burstd/controller/table.py). The hypothesis machine of tests/test_table.py covers them in random
sequences; these tests show each rule on its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstd import resources
from burstd.config import WorkerConfig
from burstd.controller.table import Held, JobState, JobTable, NewJob, Result
from burstd.resources import CPUS, GPUS, MEM, make_request
from burstd.resources_proto import request_of_spec, to_message
from burstd.worker.detect import default_gpus
from burstd.worker.queue import MAX_PASSED, LocalJob, LocalQueue
from burstd.worker.state import WorkerState
from proto.burst.v1 import job_pb2

Q, L = JobState.QUEUED, JobState.LEASED


def asking(cpus: int = 1, **kw: int) -> NewJob:
    gpus = kw.pop("gpus", 0)
    mem = kw.pop("mem", 0)
    return NewJob(b"s", request=make_request(cpus, mem, gpus, kw))


def workers(table: JobTable, *cpus: int, capacity_factor: int = 1, **offer: int) -> None:
    for i, n in enumerate(cpus, 1):
        table.register(f"w{i}", slots=n, capacity=n * capacity_factor, now=0.0, offer=offer)


def end(table: JobTable, job_id: str) -> None:
    job = table.jobs[job_id]
    table.lease(job.worker_id, 100, 0.0)
    assert table.report(job.worker_id, Result(job_id, job.attempt, 0), 0.0).name == "ACCEPTED"


# -- parsing and the wire -----------------------------------------------------------------------


def test_sizes_amounts_and_named_resources_parse_or_name_the_bad_one() -> None:
    assert resources.parse_size("4G") == 4 << 30
    assert resources.parse_size("1.5GiB") == 3 << 29
    assert resources.parse_size("100000") == 100_000
    assert resources.format_size(4 << 30) == "4G"
    assert resources.parse_named(["scratch=100G", "licence=2"]) == {
        "scratch": 100 << 30,
        "licence": 2,
    }
    for bad, named in [
        (["licence"], "licence"),
        (["cpus=2"], "--cpus"),
        (["a=1", "a=2"], "twice"),
        (["Bad=1"], "Bad"),
        (["x=lots"], "x=lots"),
    ]:
        with pytest.raises(ValueError, match=named):
            resources.parse_named(bad)
    with pytest.raises(ValueError, match="at least one CPU"):
        make_request(0)


def test_the_plain_request_is_none_and_a_spec_without_resources_is_not_decoded() -> None:
    assert make_request() is None
    assert make_request(1, 0, 0, {"lic": 0}) is None
    assert dict(make_request(2, 1 << 30, 1) or {}) == {CPUS: 2, MEM: 1 << 30, GPUS: 1}
    plain = job_pb2.JobSpec(name="x").SerializeToString()
    assert request_of_spec(plain) is None
    asked = make_request(4, named={"lic": 1})
    spec = job_pb2.JobSpec(name="x", resources=to_message(asked)).SerializeToString()
    assert request_of_spec(spec) == asked


def test_gpus_are_a_count_or_a_list_and_detected_from_cuda_visible_devices() -> None:
    assert resources.gpu_list("2") == ["0", "1"]
    assert resources.gpu_list("3,") == ["3"]
    assert resources.gpu_list("0, 2") == ["0", "2"]
    with pytest.raises(ValueError, match="twice"):
        resources.gpu_list("1,1")
    assert default_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert default_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert default_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_the_pool_gives_each_job_cpus_and_gpus_of_its_own() -> None:
    pool = resources.Pool(range(4), ["0", "1"], {MEM: 8})
    a = pool.grant(make_request(2, 4, 1))
    b = pool.grant(None)
    assert a is not None and b is not None
    assert a.cpus == (0, 1) and a.gpus == ("0",) and b.cpus == (2,)
    assert not pool.fits(make_request(2))  # one CPU left
    assert not pool.fits(make_request(1, 5))  # 4 bytes of memory left
    c = pool.grant(make_request(1, 0, 1))
    assert c is not None and c.gpus == ("1",) and not pool.fits(make_request(1, 0, 1))
    pool.release(a)
    d = pool.grant(make_request(2, 0, 1))
    assert d is not None and d.gpus == ("0",) and set(d.cpus) == {0, 1}
    assert not set(d.cpus) & set(b.cpus + c.cpus)


# -- the table: rule 5 ---------------------------------------------------------------------------


def test_a_worker_is_leased_jobs_by_their_cpus_never_beyond_its_capacity() -> None:
    table = JobTable()
    workers(table, 4)
    ids = table.submit([asking(2) for _ in range(3)], 0.0)
    assert [table.jobs[i].state for i in ids] == [L, L, Q]
    w1 = table.workers["w1"]
    assert w1.load == 4 and w1.extra == {CPUS: 2}
    end(table, ids[0])
    assert table.jobs[ids[2]].state is L and w1.load == 4
    end(table, ids[1])
    end(table, ids[2])
    assert w1.load == 0 and all(v == 0 for v in w1.extra.values())


def test_gpus_memory_and_named_resources_are_never_over_committed() -> None:
    table = JobTable()
    workers(table, 8, gpus=1, mem=10, lic=1)
    ids = table.submit([asking(gpus=1), asking(gpus=1), asking(mem=6), asking(mem=6)], 0.0)
    ids += table.submit([asking(lic=1), asking(lic=1), NewJob(b"plain")], 0.0)
    states = [table.jobs[i].state for i in ids]
    # One of each pair fits; the second waits at the head of the owner's queue (FIFO), and
    # what is behind it waits too.
    assert states == [L, Q, Q, Q, Q, Q, Q]
    end(table, ids[0])
    states = [table.jobs[i].state for i in ids]
    assert states == [JobState.SUCCEEDED, L, L, Q, Q, Q, Q]
    end(table, ids[2])
    states = [table.jobs[i].state for i in ids]
    assert states[3:] == [L, L, Q, Q]  # the plain one waits behind the second licence
    w1 = table.workers["w1"]
    assert {k: v for k, v in w1.extra.items() if v} == {GPUS: 1, MEM: 6, "lic": 1}


def test_a_job_goes_to_a_worker_that_fits_it_whatever_the_router_picks() -> None:
    table = JobTable()
    table.register("w1", slots=2, capacity=2, now=0.0)
    table.register("w2", slots=2, capacity=2, now=0.0, offer={GPUS: 2})
    ids = table.submit([asking(gpus=2), asking(gpus=1)], 0.0)
    assert [table.jobs[i].worker_id for i in ids] == ["w2", ""]
    assert table.jobs[ids[1]].state is Q


def test_a_transfer_gives_the_thief_only_what_it_can_hold() -> None:
    table = JobTable()
    table.register("victim", slots=8, capacity=8, now=0.0, offer={GPUS: 2}, instance=1)
    table.register("thief", slots=2, capacity=2, now=0.0, instance=2)
    table.router.remove("thief")  # everything goes to the victim
    ids = table.submit([asking(gpus=1), asking(4), asking(2), NewJob(b"p")], 0.0)
    table.remove_worker("thief", 0.0)
    table.register("thief", slots=2, capacity=2, now=0.0, instance=2)
    assert all(table.jobs[i].worker_id == "victim" for i in ids)
    table.lease("victim", 100, 0.0)
    held = [Held(i, table.jobs[i].attempt) for i in ids]
    moved = table.transfer("victim", "thief", held, thief_instance=2, steal_round=1, now=0.0)
    # No GPU there, 4 CPUs more than it has; 2 CPUs fill it, the plain one finds no room.
    assert [j.job_id for j in moved] == [ids[2]]
    assert table.workers["thief"].load == 2


def test_a_request_no_worker_could_hold_waits_with_a_reason_until_one_registers() -> None:
    table = JobTable()
    workers(table, 2)
    big, small = table.submit([asking(8), NewJob(b"p")], 0.0)
    assert table.jobs[big].state is Q and table.jobs[small].state is L
    assert table.waiting(table.jobs[big]) == "no registered worker has 8 cpus"
    assert not table.could_fit(make_request(8))
    table.register("large", slots=8, capacity=8, now=0.0)
    assert table.jobs[big].state is L and table.jobs[big].worker_id == "large"
    assert table.waiting(table.jobs[big]) == ""


def test_a_cancelled_job_set_aside_leaves_nothing_behind() -> None:
    table = JobTable()
    workers(table, 2)
    (big,) = table.submit([asking(8)], 0.0)
    assert table.cancel(big, 0.0) is JobState.CANCELLED
    assert not table._unfit
    table.register("large", slots=8, capacity=8, now=0.0)
    assert table.jobs[big].state is JobState.CANCELLED


# -- the table: rule 11 (large requests are not starved) -----------------------------------------


def test_a_stream_of_small_jobs_does_not_starve_a_large_one() -> None:
    """Two 4-CPU workers kept full by bob's one-CPU jobs, and alice's 4-CPU job: a worker is
    reserved for it, takes no more of bob's jobs, and runs it once its own ones ended; the
    other worker keeps taking bob's jobs meanwhile (backfill)."""
    table = JobTable()
    workers(table, 4, 4)
    small = table.submit([NewJob(b"s") for _ in range(8)], 0.0, owner="bob")
    assert all(table.jobs[i].state is L for i in small)
    (big,) = table.submit([asking(4)], 0.0, owner="alice")
    more = iter(table.submit([NewJob(b"s") for _ in range(40)], 0.0, owner="bob"))
    assert table.jobs[big].state is Q
    (reserved,) = table._reserved
    assert table.waiting(table.jobs[big]) == f"waiting for 4 cpus on {reserved} (reserved)"
    other = "w2" if reserved == "w1" else "w1"
    running = list(small)
    for _ in range(4):  # the reserved worker's jobs end one by one; so do the other's
        for worker_id in (reserved, other):
            job_id = next(j for j in running if table.jobs[j].worker_id == worker_id)
            running.remove(job_id)
            end(table, job_id)
            if table.jobs[big].state is Q:
                taken = [j for j in table.workers[worker_id].leases if j != big]
                running += [j for j in taken if j not in running]
        if table.jobs[big].state is L:
            break
    assert table.jobs[big].state is L and table.jobs[big].worker_id == reserved
    assert not table._reserved
    # The other worker was kept full with bob's jobs throughout.
    assert table.workers[other].load == 4
    assert next(more) and table.jobs[small[0]].state is JobState.SUCCEEDED


# -- the worker ----------------------------------------------------------------------------------


def sized(job_id: str, cpus: int) -> job_pb2.AssignedJob:
    spec = job_pb2.JobSpec(resources=to_message(make_request(cpus)))
    return job_pb2.AssignedJob(job_id=job_id, attempt=1, spec=spec)


def test_the_worker_starts_its_oldest_job_once_what_it_asks_for_is_free() -> None:
    """A 2-CPU job at the head of the worker's queue waits for two free CPUs, and the smaller
    jobs behind it wait with it (rule 7: a large job is never passed by smaller ones); each
    running job holds CPUs of its own."""
    state = WorkerState(WorkerConfig(worker_id="w", slots=2), LocalQueue(8))
    state.local.add([sized("a", 1)], 1)
    a = state.local.next_queued()
    assert a is not None and a.job_id == "a"
    state.local.add([sized("b", 2), sized("c", 1)], 2)
    with state.run(a):
        assert a.grant is not None and a.grant.cpus == (0,)
        assert not state.local.can_start() and state.local.next_queued() is None
    assert a.grant is None
    b = state.local.next_queued()
    assert b is not None and b.job_id == "b"
    with state.run(b):
        assert b.grant is not None and b.grant.cpus == (0, 1)
        assert state.local.next_queued() is None
    c = state.local.next_queued()
    assert c is not None and c.job_id == "c"


def test_a_larger_job_that_fits_starts_before_the_oldest_a_bounded_number_of_times() -> None:
    """Rule 7 of the worker's queue (best fit): while the oldest job fits, a later one asking
    for more CPUs that fits too starts first, so the CPUs a 4-CPU job frees go to the next
    4-CPU job; the oldest is passed over so at most MAX_PASSED times, then starts."""
    state = WorkerState(WorkerConfig(worker_id="w", slots=4), LocalQueue(16))
    big = [sized(f"big{i}", 4) for i in range(MAX_PASSED + 1)]
    state.local.add([sized("small", 1), sized("two", 2), *big], 1)
    for i in range(MAX_PASSED):
        job = state.local.next_queued()
        assert job is not None and job.job_id == f"big{i}"
        with state.run(job):
            assert state.local.next_queued() is None  # all four CPUs are taken
    small = state.local.next_queued()  # passed over enough: it starts, a 4-CPU job fits too
    assert small is not None and small.job_id == "small" and small.passed == MAX_PASSED
    with state.run(small):
        two = state.local.next_queued()  # then the oldest again: two CPUs of the three free
        assert two is not None and two.job_id == "two"
        with state.run(two):
            assert state.local.next_queued() is None  # the last 4-CPU job waits for all four


@settings(max_examples=60, deadline=None)
@given(
    cpus=st.lists(st.sampled_from((1, 1, 2, 4)), min_size=1, max_size=30),
    ends=st.lists(st.integers(0, 3), max_size=60),
)
def test_the_worker_never_overcommits_passes_a_job_by_a_smaller_one_or_starves_one(
    cpus: list[int], ends: list[int]
) -> None:
    """Rule 7 for any jobs and any order of ends: a job starts only with its CPUs free; one that
    does not start while it is the oldest and fits is passed by a larger one that fits, at most
    MAX_PASSED times; every job runs in the end."""
    state = WorkerState(WorkerConfig(worker_id="w", slots=4), LocalQueue(64))
    state.local.add([sized(str(i), n) for i, n in enumerate(cpus)], 1)
    waiting = [str(i) for i in range(len(cpus))]
    running: list[LocalJob] = []
    draws = iter(ends)
    while waiting or running:
        while (job := state.local.next_queued()) is not None:
            head = state.local.jobs[waiting[0]]
            if job is not head:
                assert job.cpus > head.cpus and state.pool.fits(head.request)
                assert head.passed <= MAX_PASSED
            grant = state.pool.grant(job.request)
            assert grant is not None and len(grant.cpus) == job.cpus
            job.grant = grant
            waiting.remove(job.job_id)
            running.append(job)
        assert running, "nothing runs while jobs wait"
        done = running.pop(next(draws, 0) % len(running))
        assert done.grant is not None
        state.pool.release(done.grant)
        state.local.finish(done, job_pb2.ReportJobResultRequest(job_id=done.job_id, attempt=1))
        state.local.acknowledged([done])
