"""The worker daemon's tasks in one trio run, against a fake controller link and fake jobs.

Virtual time (trio's autojump clock): what is checked is the order of events and how many calls
go out, never how long anything took on this machine. The last test runs the real controller link
over loopback against a stand-in controller service, to see how its calls travel.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from burstd import transport, wire
from burstd.config import WorkerConfig
from burstd.resources import Grant
from burstd.worker import daemon
from burstd.worker.executor import ExecConfig, Outcome
from burstd.worker.guard import JobGuard
from burstd.worker.queue import LocalQueue
from burstd.worker.session import ControllerLink, Replaced
from burstd.worker.state import WorkerState
from proto.burst.v1 import job_pb2, worker_pb2

JOB_SECONDS = 0.001  # how long a fake job runs (virtual time)
LONG_JOB_SECONDS = 100.0  # how long a fake job whose id starts with "long" runs
STOP_SECONDS = 0.5  # how long a stopped fake job takes to end


class Events(list[tuple[str, Any]]):
    """Events in order, and in ``times`` the (virtual) time of each."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, event: tuple[str, Any]) -> None:
        super().append(event)
        self.times.append(trio.current_time())


class FakeLink:
    """Stands in for ControllerLink: PollJob replies come from ``replies``, every call is kept."""

    heartbeat_interval = paced_interval = 1.0

    def __init__(self, events: Events) -> None:
        self.events = events
        self.send, self.replies = trio.open_memory_channel[job_pb2.PollJobResponse](100)
        self.reports: list[tuple[float, job_pb2.ReportJobResultsRequest]] = []
        # Answers to the reports that ask for work, in turn (then: no jobs).
        self.report_replies: list[job_pb2.ReportJobResultsResponse] = []
        # Calls that may bring leases under way now, and at most so far.
        self.leasing = self.most_leasing = 0
        # Calls are answered while this is set (then they renew the leases, as the real link's).
        self.answering = trio.Event()
        self.answering.set()
        self.state: WorkerState | None = None
        self.heartbeat_replies: list[worker_pb2.HeartbeatResponse] = []

    async def run(self) -> None:
        await trio.sleep_forever()

    async def call(self, method: str, request: Any, response_type: Any, timeout: float = 0) -> Any:
        if method == "PollJob" and request.max_jobs == 0:  # the notice poll: no notices here
            await trio.sleep_forever()
        leases = method in ("PollJob", "ReportJobResults") and request.max_jobs > 0
        self.leasing += leases
        self.most_leasing = max(self.most_leasing, self.leasing)
        sent = trio.current_time()
        try:
            await self.answering.wait()
            if self.state is not None:
                self.state.lease.heard(sent)
            if method == "Heartbeat":
                self.events.append(("heartbeat", sent))
                return self.heartbeat_replies.pop(0) if self.heartbeat_replies else response_type()
            if method == "PollJob":
                self.events.append(("poll", request.max_jobs))
                return await self.replies.receive()
            if method == "ReportJobResults":
                self.reports.append((trio.current_time(), request))
            await trio.sleep(0.001)  # a call takes a while; results may end meanwhile
            if leases and self.report_replies:
                return self.report_replies.pop(0)
            return response_type()
        finally:
            self.leasing -= leases

    def pace(self, paced_heartbeat_ms: int) -> None:
        pass

    def broken(self, channel: object = None) -> None:
        pass


def assigned(*ids: str) -> list[job_pb2.AssignedJob]:
    spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
    return [job_pb2.AssignedJob(job_id=i, attempt=1, spec=spec) for i in ids]


def jobs(*ids: str) -> job_pb2.PollJobResponse:
    return job_pb2.PollJobResponse(jobs=assigned(*ids), lease_seq=1)


class Harness:
    """A worker with a FakeLink and fake jobs; ``events`` records polls, job starts and ends."""

    def __init__(self, worker: daemon.Worker, link: FakeLink) -> None:
        self.worker, self.link, self.events = worker, link, link.events
        self.times = link.events.times

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.worker.run)
            yield
            nursery.cancel_scope.cancel()


def make_harness(monkeypatch: pytest.MonkeyPatch, local_queue_capacity: int) -> Harness:
    events = Events()

    async def fake_run_job(
        job_id: str,
        attempt: int,
        spec: Any,
        config: ExecConfig,
        guard: JobGuard | None,
        grant: Grant | None = None,
    ) -> Outcome:
        assert guard is not None  # every job of a running worker is guarded
        events.append(("start", job_id))
        started = trio.current_time()
        try:
            await trio.sleep(LONG_JOB_SECONDS if job_id.startswith("long") else JOB_SECONDS)
        except trio.Cancelled:
            events.append(("stopped", (job_id, attempt)))
            with trio.CancelScope(shield=True):
                await trio.sleep(STOP_SECONDS)  # its process takes a while to die
            events.append(("dead", (job_id, attempt)))
            raise
        events.append(("end", job_id))
        return Outcome(0, 0, "exit", "", started, trio.current_time(), "", "")

    monkeypatch.setattr(daemon, "run_job", fake_run_job)
    config = WorkerConfig(worker_id="w1", slots=2, local_queue_capacity=local_queue_capacity)
    w = daemon.Worker(config, steal=False, token="unused: the link is a fake")
    link = FakeLink(events)
    w.link = link  # type: ignore[assignment]
    return Harness(w, link)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    return make_harness(monkeypatch, local_queue_capacity=64)


def reported(link: FakeLink) -> list[str]:
    return [r.job_id for _, request in link.reports for r in request.results]


async def test_a_change_to_the_queue_wakes_only_the_tasks_whose_condition_holds() -> None:
    state = WorkerState(WorkerConfig(worker_id="w1"), LocalQueue(4))
    local = state.local
    checks = {"a": 0, "b": 0}
    conditions = {"a": lambda: local.waiting() > 0, "b": local.has_results}
    woken: list[str] = []

    def condition(name: str) -> bool:
        checks[name] += 1
        return conditions[name]()

    async def waiter(name: str) -> None:
        await state.wait_until(lambda: condition(name))
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        local.take_reports()  # a change, but nothing holds: each condition is checked again
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [] and checks == {"a": 2, "b": 2}
        local.add(assigned("j1"), lease_seq=1)  # nobody calls anything: the queue wakes "a"
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["a"]
        job = local.next_queued()
        assert job is not None
        local.finish(job, job_pb2.ReportJobResultRequest(job_id="j1", attempt=1))
    assert woken == ["a", "b"] and checks == {"a": 3, "b": 5}


async def test_a_leased_job_starts_before_the_next_request_for_work(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness.running():
        for i in range(10):
            await harness.link.send.send(jobs(f"j{i}"))
            await trio.sleep(0.1)
    events = harness.events
    order = [e[1] if e[0] == "start" else "poll" for e in events if e[0] in ("poll", "start")]
    # trio orders a batch of woken tasks at random: ten in a row right is no accident.
    assert order == [e for i in range(10) for e in ("poll", f"j{i}")] + ["poll"]


async def test_a_stream_of_results_goes_in_few_calls_and_a_lone_result_at_once(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    link = harness.link
    async with harness.running():
        await link.send.send(jobs(*(f"s{i}" for i in range(40))))  # 20 ms of jobs on 2 slots
        await trio.sleep(1.0)
        streamed = len(link.reports)
        for i in range(3):  # then lone jobs, each a few ms after the last one's report
            await link.send.send(jobs(f"lone{i}"))
            await trio.sleep(0.005)
    assert sorted(reported(link)) == sorted(
        [f"s{i}" for i in range(40)] + ["lone0", "lone1", "lone2"]
    )
    # One call per result would be 40; one per REPORT_INTERVAL is a handful.
    assert streamed <= 1 + int(40 * JOB_SECONDS / 2 / daemon.REPORT_INTERVAL) + 2
    for sent_at, request in link.reports[streamed:]:
        assert [r.job_id for r in request.results] in (["lone0"], ["lone1"], ["lone2"])
        # Reported the moment it ended (virtual time): no wait for a batch.
        assert sent_at == pytest.approx(request.results[0].finished_at)


async def test_a_report_asks_for_the_room_its_results_free_and_runs_what_comes_back(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    h = make_harness(monkeypatch, local_queue_capacity=4)
    link = h.link
    link.report_replies.append(
        job_pb2.ReportJobResultsResponse(jobs=assigned("b0", "b1"), lease_seq=7)
    )
    async with h.running():
        await link.send.send(jobs("a0", "a1", "a2", "a3"))  # the worker is full
        await trio.sleep(1.0)
        assert h.worker.state.local.lease_seq == 7
    assert sorted(reported(link)) == ["a0", "a1", "a2", "a3", "b0", "b1"]
    first = link.reports[0][1]
    # Full, so the room it asks for is what its own results free.
    assert first.max_jobs == len(first.results) > 0
    assert ("start", "b0") in h.events and ("start", "b1") in h.events
    # b0 and b1 came with the report: no poll was needed for them.
    assert [e for e in h.events if e[0] == "poll"][:1] == [("poll", 4)]
    assert link.most_leasing == 1


async def test_while_a_poll_for_work_is_under_way_a_report_asks_for_none(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """Two calls bringing leases at once could arrive out of order: a heartbeat acknowledging
    the later batch would disown the earlier one's jobs, still on their way."""
    link = harness.link
    async with harness.running():
        await link.send.send(jobs("a0", "a1", "a2", "a3"))  # room is left: it polls again
        await trio.sleep(1.0)
    assert sorted(reported(link)) == ["a0", "a1", "a2", "a3"]
    assert [request.max_jobs for _, request in link.reports] == [0] * len(link.reports)
    assert link.most_leasing == 1


def lapsing_harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    """A worker whose leases run on trio's clock, with a lease TTL of 10 s from now."""
    h = make_harness(monkeypatch, local_queue_capacity=64)
    state = h.worker.state
    state.clock = trio.current_time
    state.lease.set_ttl(10.0, pace=1.0)
    state.lease.heard(trio.current_time())
    h.link.state = state
    return h


async def test_a_worker_that_hears_nothing_stops_its_jobs_before_the_ttl_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    h = lapsing_harness(monkeypatch)
    link, lease = h.link, h.worker.state.lease
    async with h.running():
        await link.send.send(jobs("long-a", "long-b", "queued"))  # 2 slots: "queued" waits
        await trio.sleep(0.5)
        link.answering = trio.Event()  # cut off: no call is answered from now on
        cut_at = trio.current_time()
        heard = lease.heard_at
        await trio.sleep(30)
        stopped = [(e, t) for e, t in zip(h.events, h.times, strict=True) if e[0] == "stopped"]
        assert {e[1] for e, _ in stopped} == {("long-a", 1), ("long-b", 1)}
        # SIGTERM at 80% of the TTL (the kill grace is 5 s: 10% of the TTL, 1 s, is less), so
        # that they are dead by 90% (the margin: 10%), before the controller may lease them
        # elsewhere (100%).
        for _, at in stopped:
            assert at == pytest.approx(heard + 8.0, abs=0.3)
        assert heard <= cut_at
        assert ("start", "queued") not in h.events
        assert reported(link) == []  # the stopped jobs are not this worker's to report
        assert set(h.worker.state.local.jobs) == {"queued"}
        link.answering.set()  # back: calls sent before the lapse do not confirm anything
        await trio.sleep(0.5)
        assert ("start", "queued") not in h.events
        await trio.sleep(2)  # the next heartbeat, sent after the lapse, confirms: it starts
        assert ("start", "queued") in h.events
        # Started once a heartbeat sent after the lapse was answered, not before.
        answered = [
            t
            for e, t in zip(h.events, h.times, strict=True)
            if e[0] == "heartbeat" and e[1] >= heard + 8.0
        ]
        assert h.times[h.events.index(("start", "queued"))] >= min(answered)


async def test_after_a_lapse_a_job_the_controller_dropped_is_never_started(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    h = lapsing_harness(monkeypatch)
    link = h.link
    async with h.running():
        await link.send.send(jobs("long-a", "long-b", "gone", "kept"))
        await trio.sleep(0.5)
        link.answering = trio.Event()
        await trio.sleep(30)
        link.heartbeat_replies = [
            worker_pb2.HeartbeatResponse(),  # to the heartbeat sent before the lapse
            worker_pb2.HeartbeatResponse(drop=[worker_pb2.HeldJob(job_id="gone", attempt=1)]),
        ]
        link.answering.set()
        await trio.sleep(5)
    assert ("start", "gone") not in h.events and ("start", "kept") in h.events
    assert sorted(reported(link)) == ["kept"]


def lease(job_id: str, attempt: int) -> job_pb2.AssignedJob:
    (job,) = assigned(job_id)
    job.attempt = attempt
    return job


def held(job_id: str, attempt: int) -> worker_pb2.HeldJob:
    return worker_pb2.HeldJob(job_id=job_id, attempt=attempt)


async def test_a_newer_lease_of_a_running_job_stops_it_and_runs_after_it_ended(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """Two attempts of one job in one worker (the controller moved on while it ran, or two
    processes share a worker id): never both at once, no crash, no report of the old one."""
    link = harness.link
    async with harness.running():
        await link.send.send(job_pb2.PollJobResponse(jobs=[lease("long-x", 1)], lease_seq=1))
        await trio.sleep(1)
        stale_and_dup = [lease("long-x", 1), lease("long-x", 2), lease("long-x", 2)]
        await link.send.send(job_pb2.PollJobResponse(jobs=stale_and_dup, lease_seq=2))
        await trio.sleep(1)
        # and after a drop of the running attempt, the next one waits for its end too
        await link.send.send(job_pb2.PollJobResponse(jobs=[lease("long-y", 1)], lease_seq=3))
        await trio.sleep(1)
        harness.worker.state.drop([held("long-y", 1)])
        await link.send.send(job_pb2.PollJobResponse(jobs=[lease("long-y", 2)], lease_seq=4))
        await trio.sleep(1)
    events = [e for e in harness.events if e[0] != "poll"]
    at = {e: t for e, t in zip(harness.events, harness.times, strict=True)}
    for job_id in ("long-x", "long-y"):
        ran = [e for e in events if e[1] in (job_id, (job_id, 1))]
        assert ran == [
            ("start", job_id),
            ("stopped", (job_id, 1)),
            ("dead", (job_id, 1)),
            ("start", job_id),
        ]
        starts = [t for e, t in zip(harness.events, harness.times, strict=True) if e == ran[0]]
        assert starts[1] >= at[("dead", (job_id, 1))]  # not before the first one ended
    assert reported(link) == []


async def test_notices_for_attempts_and_jobs_not_held_are_ignored(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    link, state = harness.link, harness.worker.state
    async with harness.running():
        await link.send.send(job_pb2.PollJobResponse(jobs=[lease("long-z", 2)], lease_seq=1))
        await trio.sleep(1)
        strangers = [held("long-z", 1), held("long-z", 3), held("nobody", 1)]
        state.apply_notices(cancel=strangers, drop=strangers)
        link.heartbeat_replies = [worker_pb2.HeartbeatResponse(cancel=strangers, drop=strangers)]
        await trio.sleep(2)
        assert [e for e in harness.events if e[0] in ("stopped", "dead")] == []
        assert set(state.local.jobs) == {"long-z"} and len(state.running) == 1


async def test_answers_to_reports_that_refuse_results_or_repeat_leases_change_nothing_else(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    h = make_harness(monkeypatch, local_queue_capacity=2)  # full: its reports ask for work
    link, state = h.link, h.worker.state
    link.report_replies = [
        job_pb2.ReportJobResultsResponse(
            outcomes=[job_pb2.REPORT_OUTCOME_STALE, job_pb2.REPORT_OUTCOME_UNKNOWN_JOB],
            jobs=[lease("c", 1), lease("c", 1)],  # twice in one answer
            lease_seq=2,
        )
    ]
    async with h.running():
        await link.send.send(jobs("a", "b"))
        await trio.sleep(2)
    assert [e for e in h.events if e[0] == "start"] == [("start", i) for i in "abc"]
    assert sorted(reported(link)) == ["a", "b", "c"]
    assert state.local.jobs == {}


async def test_the_controller_link_carries_its_calls_over_one_stream() -> None:
    """Registration, heartbeats, polls and reports are many small calls: one multiplexed stream
    carries them all (real transport on loopback, a stand-in controller service)."""
    seen: list[str] = []

    async def register(request: Any, metadata: Any) -> worker_pb2.RegisterWorkerResponse:
        seen.append("RegisterWorker")
        return worker_pb2.RegisterWorkerResponse(heartbeat_interval_ms=1000)

    async def heartbeat(request: Any, metadata: Any) -> worker_pb2.HeartbeatResponse:
        seen.append("Heartbeat")
        return worker_pb2.HeartbeatResponse()

    service = transport.Service(wire.CONTROLLER_SERVICE)
    service.unary("RegisterWorker", worker_pb2.RegisterWorkerRequest, register)
    service.unary("Heartbeat", worker_pb2.HeartbeatRequest, heartbeat)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(transport.serve, "127.0.0.1", 0, [service])
        config = WorkerConfig(worker_id="w1", controller_addr=f"127.0.0.1:{port}")
        link = ControllerLink(WorkerState(config, LocalQueue(4)))
        nursery.start_soon(link.run)
        for _ in range(3):
            await link.call(
                "Heartbeat", worker_pb2.HeartbeatRequest(), worker_pb2.HeartbeatResponse
            )
        channel = link._channel
        assert channel is not None and channel._mux is not None
        assert channel._mux.last_id == 4  # the registration and 3 heartbeats, on one stream
        assert seen == ["RegisterWorker"] + ["Heartbeat"] * 3
        nursery.cancel_scope.cancel()


async def test_a_refused_registration_ends_the_session_for_good() -> None:
    """Another process holds this worker id: registering again would take it back and the two
    would flap, so the session ends (the worker then stops its jobs and exits)."""
    tries: list[int] = []

    async def register(request: Any, metadata: Any) -> worker_pb2.RegisterWorkerResponse:
        tries.append(request.instance)
        raise transport.FailedPrecondition("worker id 'w1' is held by another worker process")

    service = transport.Service(wire.CONTROLLER_SERVICE)
    service.unary("RegisterWorker", worker_pb2.RegisterWorkerRequest, register)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(transport.serve, "127.0.0.1", 0, [service])
        config = WorkerConfig(worker_id="w1", controller_addr=f"127.0.0.1:{port}")
        state = WorkerState(config, LocalQueue(4))
        with pytest.raises(Replaced, match="worker id 'w1' is held by another"):
            await ControllerLink(state).run()
        nursery.cancel_scope.cancel()
    assert tries == [state.instance]


async def test_workers_that_lost_the_controller_together_come_back_spread_out() -> None:
    """Ten workers whose controller answers UNAVAILABLE retry their registration with pauses
    that grow (never past the heartbeat interval) and are jittered: after a few retries their
    attempts are spread over time, not ten at once each time (real transport on loopback)."""
    tries: dict[str, list[float]] = {}

    async def register(request: Any, metadata: Any) -> worker_pb2.RegisterWorkerResponse:
        tries.setdefault(request.worker_id, []).append(trio.current_time())
        raise transport.Unavailable("the controller is starting")

    service = transport.Service(wire.CONTROLLER_SERVICE)
    service.unary("RegisterWorker", worker_pb2.RegisterWorkerRequest, register)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(transport.serve, "127.0.0.1", 0, [service])
        for i in range(10):
            config = WorkerConfig(
                worker_id=f"w{i}", controller_addr=f"127.0.0.1:{port}", retry_interval_ms=100
            )
            nursery.start_soon(ControllerLink(WorkerState(config, LocalQueue(4))).run)
        with trio.fail_after(20):
            while len(tries) < 10 or min(len(times) for times in tries.values()) < 6:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for times in tries.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.0 + 0.5  # the heartbeat interval, and room for a loaded machine
    # From its first attempt to its sixth, a worker sleeps 0.1 + 0.2 + 0.4 + 0.8 + 1.0 s
    # without jitter, whoever it is (and the calls take some more); with it, anything from
    # half that to all of it, each worker its own.
    waits = [times[5] - times[0] for times in tries.values()]
    print(f"first to sixth attempt: {min(waits):.3f} to {max(waits):.3f} s")
    assert min(waits) < 2.2
