"""A real `burstd controller` process, driven by the real `burst` CLI and by the worker RPCs.

The worker side is played by the test itself through `burstd.transport.Channel`, call by call,
so every step of the lease protocol (register, poll, report, heartbeat, expiry) is observable.
Nothing here asserts tight timings: waits poll for a condition with generous upper bounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from burstd import auth, transport, wire
from proto.burst.v1 import job_pb2, worker_pb2
from tests.cluster import Cluster, environment, free_port, program

SERVICE = wire.CONTROLLER_SERVICE
CALL_TIMEOUT = 15.0  # per call: generous, the machine may be loaded
PATIENCE = 15.0  # upper bound for anything that should happen "soon"
OUTCOME = job_pb2.ReportOutcome
ACCEPTED = OUTCOME.Value("REPORT_OUTCOME_ACCEPTED")
DUPLICATE = OUTCOME.Value("REPORT_OUTCOME_DUPLICATE")
STALE = OUTCOME.Value("REPORT_OUTCOME_STALE")
UNKNOWN_JOB = OUTCOME.Value("REPORT_OUTCOME_UNKNOWN_JOB")

T = TypeVar("T")

# Fast failure detection for the lease tests (the brief's numbers: TTL 500 ms, heartbeat 100 ms).
FAST_LEASES = {"lease_ttl_ms": 500, "heartbeat_interval_ms": 100}


# -- helpers ----------------------------------------------------------------------------------


def write_config(directory: Path, name: str = "controller.toml", **controller: object) -> Path:
    """A TOML file with a [controller] table holding ``controller``."""
    lines = ["[controller]"]
    for key, value in controller.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def start_controller(cluster: Cluster, **controller: object) -> None:
    if controller:
        cluster.controller("--config", str(write_config(cluster.tmp, **controller)))
    else:
        cluster.controller()


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert 'File "' not in text, text


def process_spec(command: str = "true", *args: str) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec()
    spec.process.command = command
    spec.process.args.extend(args)
    return spec


def held(job_id: str, attempt: int, running: bool = False) -> worker_pb2.HeldJob:
    return worker_pb2.HeldJob(job_id=job_id, attempt=attempt, running=running)


def pairs(items: Any) -> list[tuple[str, int]]:
    return sorted((h.job_id, h.attempt) for h in items)


def result(
    job_id: str, attempt: int, exit_code: int = 0, **fields: Any
) -> job_pb2.ReportJobResultRequest:
    return job_pb2.ReportJobResultRequest(
        job_id=job_id, attempt=attempt, exit_code=exit_code, **fields
    )


class Rpc:
    """The controller's RPCs as a worker (or a client) calls them, one method per call."""

    def __init__(self, channel: transport.Channel) -> None:
        self.channel = channel

    async def call(self, method: str, request: Any, response_type: type[T], **kw: Any) -> T:
        kw.setdefault("timeout", CALL_TIMEOUT)
        return await self.channel.unary(SERVICE, method, request, response_type, **kw)

    # clients

    async def submit(self, spec: job_pb2.JobSpec | None = None) -> str:
        request = job_pb2.SubmitJobRequest(spec=spec or process_spec())
        reply = await self.call("SubmitJob", request, job_pb2.SubmitJobResponse)
        assert wire.JOB_ID.fullmatch(reply.job_id), reply.job_id
        return reply.job_id

    async def submit_many(self, count: int) -> list[str]:
        request = job_pb2.SubmitJobsRequest(specs=[process_spec() for _ in range(count)])
        reply = await self.call("SubmitJobs", request, job_pb2.SubmitJobsResponse)
        assert len(reply.job_ids) == count
        return list(reply.job_ids)

    async def status(self, job_id: str) -> job_pb2.JobInfo:
        request = job_pb2.GetJobStatusRequest(job_id=job_id)
        reply = await self.call("GetJobStatus", request, job_pb2.GetJobStatusResponse)
        assert reply.job_id == job_id
        assert reply.state == reply.info.state
        return reply.info

    async def cancel(self, *job_ids: str) -> list[str]:
        request = job_pb2.CancelJobsRequest(job_ids=job_ids)
        reply = await self.call("CancelJobs", request, job_pb2.CancelJobsResponse)
        return list(reply.states)

    async def all_jobs(self) -> list[job_pb2.JobInfo]:
        request = job_pb2.ListJobsRequest(limit=10_000)
        return list((await self.call("ListJobs", request, job_pb2.ListJobsResponse)).jobs)

    async def workers(self) -> dict[str, job_pb2.WorkerInfo]:
        reply = await self.call(
            "ListWorkers", job_pb2.ListWorkersRequest(), job_pb2.ListWorkersResponse
        )
        return {w.worker_id: w for w in reply.workers}

    # workers

    async def register(
        self, worker_id: str, slots: int = 1, capacity: int = 0, held_jobs: Any = ()
    ) -> worker_pb2.RegisterWorkerResponse:
        request = worker_pb2.RegisterWorkerRequest(
            worker_id=worker_id, slots=slots, queue_capacity=capacity, held=held_jobs
        )
        reply = await self.call("RegisterWorker", request, worker_pb2.RegisterWorkerResponse)
        assert reply.accepted
        return reply

    async def poll(
        self, worker_id: str, max_jobs: int = 1, wait_ms: int = 0, batch: bool = True
    ) -> job_pb2.PollJobResponse:
        request = job_pb2.PollJobRequest(
            worker_id=worker_id, max_jobs=max_jobs, wait_ms=wait_ms, batch=batch
        )
        return await self.call(
            "PollJob", request, job_pb2.PollJobResponse, timeout=wait_ms / 1000 + CALL_TIMEOUT
        )

    async def report(
        self, worker_id: str, *results: job_pb2.ReportJobResultRequest, started: Any = ()
    ) -> list[int]:
        request = job_pb2.ReportJobResultsRequest(
            worker_id=worker_id, results=results, started=started
        )
        reply = await self.call("ReportJobResults", request, job_pb2.ReportJobResultsResponse)
        return list(reply.outcomes)

    async def heartbeat(
        self, worker_id: str, held_jobs: Any = (), lease_seq: int = 0
    ) -> worker_pb2.HeartbeatResponse:
        request = worker_pb2.HeartbeatRequest(
            worker_id=worker_id, held=held_jobs, lease_seq=lease_seq
        )
        return await self.call("Heartbeat", request, worker_pb2.HeartbeatResponse)

    async def unary_report(
        self, worker_id: str, job_id: str, attempt: int = 0, exit_code: int = 0
    ) -> job_pb2.ReportJobResultResponse:
        request = job_pb2.ReportJobResultRequest(
            worker_id=worker_id, job_id=job_id, attempt=attempt, exit_code=exit_code
        )
        return await self.call("ReportJobResult", request, job_pb2.ReportJobResultResponse)


@asynccontextmanager
async def connect(cluster: Cluster) -> AsyncIterator[Rpc]:
    """As an admin: both a worker's and a client's calls are allowed."""
    async with transport.Channel(
        "127.0.0.1",
        cluster.port,
        connect_timeout=CALL_TIMEOUT,
        metadata=auth.bearer(cluster.token("admin")),
    ) as ch:
        yield Rpc(ch)


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = PATIENCE
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def state_is(rpc: Rpc, job_id: str, *states: str) -> job_pb2.JobInfo:
    async def check() -> job_pb2.JobInfo | None:
        info = await rpc.status(job_id)
        return info if info.state in states else None

    return await eventually(check, f"{job_id} in state {states}")


async def heartbeat_forever(
    rpc: Rpc, worker_id: str, holds: Callable[[], list[worker_pb2.HeldJob]] = list
) -> None:
    """What a live worker does in the background: a heartbeat every 100 ms."""
    while True:
        await rpc.heartbeat(worker_id, holds())
        await trio.sleep(0.1)


# -- the burst CLI against a controller with no workers ---------------------------------------


def test_cli_submit_status_list_cancel_wait(cluster: Cluster) -> None:
    cluster.controller()
    ids = []
    for argv in (
        ["process", "echo", "--help", "-x"],
        ["python", "-c", "print(1)"],
        ["docker", "alpine", "true"],
    ):
        run = cluster.burst("submit", "--name", argv[0], *argv)
        assert run.returncode == 0
        (job_id,) = run.stdout.split()
        assert wire.JOB_ID.fullmatch(job_id)
        ids.append(job_id)
    assert len(set(ids)) == 3

    run = cluster.burst("status", *ids, "job-99999999", check=False)
    assert run.returncode == 4  # no such job
    assert run.stdout.splitlines() == [*(f"{i} queued" for i in ids), "job-99999999 unknown"]
    run = cluster.burst("status", "--json", ids[0], "job-99999999", check=False)
    info, unknown = (json.loads(line) for line in run.stdout.splitlines())
    assert (info["job_id"], info["state"], info["name"]) == (ids[0], "queued", "process")
    assert info["attempt"] == 0 and info["submitted_at"].endswith("Z")
    assert (unknown["job_id"], unknown["state"]) == ("job-99999999", "unknown")

    listed = cluster.burst("list").stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [[i, "queued"] for i in ids]

    # with no worker, a wait cannot end: --timeout gives up with exit code 5
    run = cluster.burst("wait", "--timeout", "1", ids[0], check=False)
    assert run.returncode == 5
    assert "timed out" in run.stderr
    no_traceback(run.stderr)

    run = cluster.burst("cancel", ids[1], "job-99999999", check=False)
    assert run.returncode == 4
    assert run.stdout.splitlines() == [f"{ids[1]} cancelled", "job-99999999 unknown"]
    # cancelling again reports the final state it already has
    assert cluster.burst("cancel", ids[1]).stdout.split() == [ids[1], "cancelled"]
    run = cluster.burst("list", "--json", "--state", "queued")
    queued = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(j["job_id"], j["name"]) for j in queued] == [(ids[0], "process"), (ids[2], "docker")]

    # a wait on a cancelled job ends at once, names it on stdout and exits 1
    run = cluster.burst("wait", ids[1], check=False)
    assert run.returncode == 1
    assert run.stdout.startswith(f"{ids[1]} cancelled")
    no_traceback(run.stderr)


def test_cli_errors_are_one_line_on_stderr(cluster: Cluster, tmp_path: Path) -> None:
    cluster.controller()

    def fails(code: int, *argv: str, says: tuple[str, ...]) -> None:
        run = cluster.burst(*argv, check=False)
        assert run.returncode == code, (argv, run)
        assert run.stdout == "", (argv, run)
        for text in says:
            assert text in run.stderr, (argv, run.stderr)
        assert run.stderr.startswith("burst: error: ") and run.stderr.count("\n") == 1, run.stderr
        no_traceback(run.stderr)

    # refused by the controller as invalid: exit 2, the status code and the field
    fails(2, "submit", "process", " ", says=("INVALID_ARGUMENT", "spec.process.command"))
    fails(
        2,
        "submit",
        "--env",
        "BURST_JOB_ID=7",
        "process",
        "true",
        says=("INVALID_ARGUMENT", "spec.env.BURST_JOB_ID"),
    )
    fails(4, "wait", "job-99999999", says=("NOT_FOUND", "job-99999999"))
    # usage errors: exit 2, one line naming the flag (cyclopts's own errors too: no boxed panel)
    fails(2, "status", says=("status",))
    fails(2, "submit", "--env", "NOVALUE", "process", "true", says=("--env",))
    fails(2, "submit", "--timeout", "abc", "process", "true", says=("--timeout", "abc"))
    fails(2, "list", "--state", "done", says=("--state", "done"))
    fails(2, "status", "--bogus", "job-1", says=("--bogus",))
    fails(2, "nonsense", says=("nonsense",))
    fails(2, "submit", says=("process CMD",))
    # no controller there: exit 3, and the address
    dead = f"127.0.0.1:{free_port()}"
    run = subprocess.run(
        [*program("burst"), "--controller", dead, "status", "job-00000001"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=cluster.env,
    )
    assert run.returncode == 3
    assert "cannot reach" in run.stderr and dead in run.stderr
    no_traceback(run.stderr)
    # nothing was submitted by any of this
    assert cluster.burst("list").stdout == ""


# -- the worker RPCs, exactly as a worker calls them ------------------------------------------


async def test_register_poll_batch_and_report(cluster: Cluster) -> None:
    cluster.controller()
    async with connect(cluster) as rpc:
        reply = await rpc.register("w1", slots=2, capacity=4)
        assert reply.lease_ttl_ms > reply.heartbeat_interval_ms > 0
        assert list(reply.drop) == []
        ids = await rpc.submit_many(5)

        # capacity 4: only four of the five are leased to w1; max_jobs bounds each batch
        first = await rpc.poll("w1", max_jobs=3)
        assert [(j.job_id, j.attempt) for j in first.jobs] == [(i, 1) for i in ids[:3]]
        assert first.WhichOneof("result") is None
        assert first.jobs[0].spec.process.command == "true"
        second = await rpc.poll("w1", max_jobs=3)
        assert [(j.job_id, j.attempt) for j in second.jobs] == [(ids[3], 1)]
        assert second.lease_seq > first.lease_seq
        assert list((await rpc.poll("w1", max_jobs=3)).jobs) == []
        assert (await rpc.status(ids[4])).state == "queued"
        assert (await rpc.workers())["w1"].leased == 4

        for job_id in ids[:4]:
            info = await rpc.status(job_id)
            assert (info.state, info.attempt, info.worker_id) == ("leased", 1, "w1")

        # start notices, then results: accepted once, duplicates acknowledged and ignored
        outcomes = await rpc.report("w1", started=[held(ids[0], 1), held(ids[1], 1)])
        assert outcomes == []
        assert (await rpc.status(ids[0])).state == "running"
        outcomes = await rpc.report("w1", result(ids[0], 1, 0), result(ids[1], 1, 3))
        assert outcomes == [ACCEPTED, ACCEPTED]
        ok, failed = await rpc.status(ids[0]), await rpc.status(ids[1])
        assert (ok.state, ok.exit_code) == ("succeeded", 0)
        assert (failed.state, failed.exit_code, failed.reason) == ("failed", 3, "exit")
        outcomes = await rpc.report("w1", result(ids[0], 1, 0), result(ids[1], 1, 0))
        assert outcomes == [DUPLICATE, DUPLICATE]
        assert (await rpc.status(ids[1])).state == "failed"  # a duplicate changes nothing
        assert (await rpc.report("w1", result("job-99999999", 1))) == [UNKNOWN_JOB]

        # two slots freed: the fifth job is leased now
        third = await rpc.poll("w1", max_jobs=3)
        assert [(j.job_id, j.attempt) for j in third.jobs] == [(ids[4], 1)]
        assert (await rpc.workers())["w1"].leased == 3


async def test_long_poll_gets_a_job_submitted_while_it_waits(cluster: Cluster) -> None:
    cluster.controller()
    async with connect(cluster) as rpc:
        await rpc.register("w1", slots=1, capacity=2)
        got: list[job_pb2.PollJobResponse] = []

        async def poll() -> None:
            got.append(await rpc.poll("w1", max_jobs=2, wait_ms=30_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.3)  # let the poll park on the controller (not needed for success)
            submitted = trio.current_time()
            job_id = await rpc.submit()
            with trio.fail_after(10):  # far below the 30 s the poll may wait
                while not got:
                    await trio.sleep(0.01)
            woke_after = trio.current_time() - submitted
        (reply,) = got
        assert [(j.job_id, j.attempt) for j in reply.jobs] == [(job_id, 1)]
        assert woke_after < 10

        # with nothing to lease, a poll waits its wait_ms and answers empty
        started = trio.current_time()
        empty = await rpc.poll("w1", max_jobs=2, wait_ms=300)
        assert list(empty.jobs) == [] and list(empty.cancel) == []
        assert trio.current_time() - started >= 0.25


async def test_prototype_unary_forms(cluster: Cluster) -> None:
    """The prototype's worker: PollJob without batch (one job or `empty`), ReportJobResult."""
    cluster.controller()
    async with connect(cluster) as rpc:
        # the prototype sends no queue_capacity: one job per slot
        await rpc.register("proto", slots=1)
        reply = await rpc.poll("proto", batch=False, max_jobs=0)
        assert reply.WhichOneof("result") == "empty"
        assert list(reply.jobs) == []

        first, second = await rpc.submit_many(2)
        reply = await rpc.poll("proto", batch=False, max_jobs=0)
        assert reply.WhichOneof("result") == "job"
        assert (reply.job.job_id, reply.job.attempt) == (first, 1)
        assert list(reply.jobs) == []  # the batch field stays empty in the prototype's form
        assert (await rpc.poll("proto", batch=False)).WhichOneof("result") == "empty"

        # attempt 0 (the prototype's workers send none) means the current lease
        assert (await rpc.unary_report("proto", first, exit_code=0)).accepted
        assert (await rpc.status(first)).state == "succeeded"
        assert (await rpc.unary_report("proto", first, exit_code=0)).accepted  # duplicate

        reply = await rpc.poll("proto", batch=False)
        assert (reply.job.job_id, reply.job.attempt) == (second, 1)

        with pytest.raises(transport.NotFound) as caught:
            await rpc.unary_report("proto", "job-99999999")
        assert "job-99999999" in caught.value.message

        # the worker comes back without the job: that lease is superseded by attempt 2
        await rpc.register("proto", slots=1)
        info = await rpc.status(second)
        assert (info.state, info.attempt, info.lost_count) == ("leased", 2, 1)
        with pytest.raises(transport.FailedPrecondition) as caught:
            await rpc.unary_report("proto", second, attempt=1, exit_code=0)
        assert second in caught.value.message
        assert (await rpc.report("proto", result(second, 1, 0))) == [STALE]
        assert (await rpc.status(second)).state == "leased"  # nothing recorded

        reply = await rpc.poll("proto", batch=False)
        assert (reply.job.job_id, reply.job.attempt) == (second, 2)
        assert (await rpc.unary_report("proto", second, attempt=2, exit_code=1)).accepted
        info = await rpc.status(second)
        assert (info.state, info.exit_code, info.attempt) == ("failed", 1, 2)

        # an unregistered worker is told so
        with pytest.raises(transport.FailedPrecondition):
            await rpc.unary_report("stranger", second, attempt=2)
        assert (await rpc.heartbeat("stranger")).reregister


async def test_heartbeats_are_paced_to_the_budget_and_the_lease_ttl_with_them(
    cluster: Cluster,
) -> None:
    # 10 heartbeats a second at 100 ms: one worker beats every 100 ms, three every 300 ms.
    start_controller(cluster, **FAST_LEASES, heartbeat_budget=10)
    async with connect(cluster) as rpc:
        first = await rpc.register("w1")
        assert (first.heartbeat_interval_ms, first.paced_heartbeat_ms) == (100, 100)
        await rpc.register("w2")
        third = await rpc.register("w3")
        assert (third.heartbeat_interval_ms, third.paced_heartbeat_ms) == (100, 300)
        async with trio.open_nursery() as nursery:
            for worker_id in ("w2", "w3"):
                nursery.start_soon(heartbeat_forever, rpc, worker_id)
            silent_since = time.monotonic()
            assert (await rpc.heartbeat("w1")).paced_heartbeat_ms == 300
            # Told 300 ms, w1 may stay silent for 3 x 500 ms, past the unpaced TTL ...
            await trio.sleep(0.9)
            assert "w1" in await rpc.workers()
            # ... and not much longer.
            with trio.fail_after(PATIENCE):
                while "w1" in await rpc.workers():
                    await trio.sleep(0.05)
            assert time.monotonic() - silent_since > 1.5
            nursery.cancel_scope.cancel()


async def test_lost_worker_job_moves_to_another_with_attempt_2(cluster: Cluster) -> None:
    start_controller(cluster, **FAST_LEASES)
    async with connect(cluster) as rpc:
        reply = await rpc.register("w1", slots=1)
        assert (reply.lease_ttl_ms, reply.heartbeat_interval_ms) == (500, 100)
        job_id = await rpc.submit()
        lease = await rpc.poll("w1", wait_ms=5_000)
        assert [(j.job_id, j.attempt) for j in lease.jobs] == [(job_id, 1)]

        # w1 goes silent; w2 is alive (heartbeats all along) and long-polls
        await rpc.register("w2", slots=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat_forever, rpc, "w2")
            with trio.fail_after(PATIENCE):
                while not (taken := await rpc.poll("w2", wait_ms=2_000)).jobs:
                    pass
            assert [(j.job_id, j.attempt) for j in taken.jobs] == [(job_id, 2)]
            info = await rpc.status(job_id)
            assert (info.state, info.attempt, info.worker_id, info.lost_count) == (
                "leased",
                2,
                "w2",
                1,
            )
            assert "w1" not in await rpc.workers()

            # w1 wakes up: its late report is refused and changes nothing
            with pytest.raises(transport.FailedPrecondition):
                await rpc.unary_report("w1", job_id, attempt=1, exit_code=0)
            assert (await rpc.heartbeat("w1", [held(job_id, 1, running=True)])).reregister
            again = await rpc.register("w1", slots=1, held_jobs=[held(job_id, 1, running=True)])
            assert pairs(again.drop) == [(job_id, 1)]
            nursery.start_soon(heartbeat_forever, rpc, "w1")  # alive again from now on
            with pytest.raises(transport.FailedPrecondition):
                await rpc.unary_report("w1", job_id, attempt=1, exit_code=0)
            assert (await rpc.report("w1", result(job_id, 1, 0))) == [STALE]
            assert (await rpc.status(job_id)).state == "leased"

            assert (await rpc.report("w2", result(job_id, 2, 0))) == [ACCEPTED]
            info = await rpc.status(job_id)
            assert (info.state, info.attempt, info.worker_id) == ("succeeded", 2, "w2")
            # finished (and stored, so possibly no longer in memory): still a duplicate for w2,
            # still stale for w1
            assert (await rpc.report("w2", result(job_id, 2, 0))) == [DUPLICATE]
            assert (await rpc.report("w1", result(job_id, 1, 1))) == [STALE]
            with pytest.raises(transport.FailedPrecondition):
                await rpc.unary_report("w1", job_id, attempt=1, exit_code=1)
            assert (await rpc.unary_report("w2", job_id, attempt=0, exit_code=0)).accepted
            info = await rpc.status(job_id)
            assert (info.state, info.exit_code, info.worker_id) == ("succeeded", 0, "w2")
            nursery.cancel_scope.cancel()


async def test_crash_limit_fails_the_job_with_worker_lost(cluster: Cluster) -> None:
    start_controller(cluster, crash_limit=2, **FAST_LEASES)
    async with connect(cluster) as rpc:
        await rpc.register("w1", slots=1)
        job_id = await rpc.submit()
        assert (await rpc.poll("w1")).jobs[0].attempt == 1
        # w1 dies; w2 takes the job over, then dies too
        await rpc.register("w2", slots=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat_forever, rpc, "w2")
            with trio.fail_after(PATIENCE):
                while not (taken := await rpc.poll("w2", wait_ms=2_000)).jobs:
                    pass
            nursery.cancel_scope.cancel()
        assert taken.jobs[0].attempt == 2

        info = await state_is(rpc, job_id, "failed")
        assert (info.reason, info.lost_count, info.attempt) == ("worker_lost", 2, 2)
        assert not info.HasField("exit_code")
        assert "crash limit" in info.error_message

    run = await trio.to_thread.run_sync(lambda: cluster.burst("wait", job_id, check=False))
    assert run.returncode == 1
    assert f"{job_id} failed worker_lost" in run.stdout


async def test_heartbeat_reconciles_what_the_worker_holds(cluster: Cluster) -> None:
    cluster.controller()
    async with connect(cluster) as rpc:
        await rpc.register("w1", slots=2, capacity=4)
        a, b = await rpc.submit_many(2)
        lease = await rpc.poll("w1", max_jobs=4)
        assert [j.job_id for j in lease.jobs] == [a, b]

        # w1 acknowledges the batch but does not hold b: b was lost on the way, queued again
        reply = await rpc.heartbeat("w1", [held(a, 1, running=True)], lease.lease_seq)
        assert reply.ok and not reply.reregister
        assert list(reply.cancel) == [] and list(reply.drop) == []
        assert (await rpc.status(a)).state == "running"
        info = await rpc.status(b)
        # (w1 is the only worker, so b is routed straight back to it, as a new attempt)
        assert (info.state, info.attempt, info.lost_count) == ("leased", 2, 0)
        again = await rpc.poll("w1", max_jobs=4)
        assert [(j.job_id, j.attempt) for j in again.jobs] == [(b, 2)]

        # held jobs that are not w1's lease (an old attempt, an unknown id) are to be dropped
        reply = await rpc.heartbeat(
            "w1",
            [held(a, 1), held(b, 2), held("job-99999999", 1)],
            again.lease_seq,
        )
        assert pairs(reply.drop) == [("job-99999999", 1)]
        reply = await rpc.heartbeat("w1", [held(a, 1), held(b, 1)], again.lease_seq)
        assert pairs(reply.drop) == [(b, 1)]
        assert (await rpc.status(a)).state == "running"
        assert (await rpc.workers())["w1"].leased == 2


async def test_cancel_of_a_leased_job_reaches_the_worker(cluster: Cluster) -> None:
    cluster.controller()
    async with connect(cluster) as rpc:
        await rpc.register("w1", slots=2, capacity=2)
        a, b = await rpc.submit_many(2)
        lease = await rpc.poll("w1", max_jobs=2)
        assert [j.job_id for j in lease.jobs] == [a, b]

        got: list[job_pb2.PollJobResponse] = []

        async def wait_for_notices() -> None:
            # batch form with max_jobs 0: only wait for cancel/drop notices
            got.append(await rpc.poll("w1", max_jobs=0, wait_ms=30_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_notices)
            await trio.sleep(0.3)
            run = await trio.to_thread.run_sync(lambda: cluster.burst("cancel", a))
            assert run.stdout.split() == [a, "cancelled"]
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.01)
        (reply,) = got
        assert pairs(reply.cancel) == [(a, 1)]
        assert list(reply.jobs) == []
        info = await rpc.status(a)
        assert (info.state, info.reason) == ("cancelled", "cancelled")

        # the heartbeat says it too, for as long as the worker still holds the job
        reply_hb = await rpc.heartbeat("w1", [held(a, 1, True), held(b, 1, True)], lease.lease_seq)
        assert pairs(reply_hb.cancel) == [(a, 1)]
        assert list(reply_hb.drop) == []
        # the process still runs until the worker reports it: it still counts on w1
        assert (await rpc.workers())["w1"].leased == 2

        # the worker stops it and reports it: acknowledged, the job stays cancelled
        stopped = result(a, 1, -15, reason="cancelled", signal=15)
        assert (await rpc.report("w1", stopped)) == [DUPLICATE]
        assert (await rpc.status(a)).state == "cancelled"
        assert (await rpc.workers())["w1"].leased == 1
        reply_hb = await rpc.heartbeat("w1", [held(b, 1, True)], lease.lease_seq)
        assert list(reply_hb.cancel) == [] and list(reply_hb.drop) == []


# -- admission: bad input gets INVALID_ARGUMENT naming the field, and changes nothing ----------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One controller for the tests that only read or are refused (small limits)."""
    c = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        c.controller("--config", str(write_config(c.tmp, max_batch=10, max_spec_bytes=1024)))
        yield c
    finally:
        c.close()


def _one(spec: job_pb2.JobSpec | None) -> tuple[str, Any]:
    request = job_pb2.SubmitJobRequest()
    if spec is not None:
        request.spec.CopyFrom(spec)
    return "SubmitJob", request


def _env(**env: str) -> job_pb2.JobSpec:
    spec = process_spec()
    spec.env.update(env)
    return spec


def _with(**fields: Any) -> job_pb2.JobSpec:
    spec = process_spec()
    for key, value in fields.items():
        setattr(spec, key, value)
    return spec


def _sized(size: int) -> job_pb2.JobSpec:
    """A valid spec of exactly ``size`` encoded bytes."""
    spec = process_spec("x", "")
    spec.process.args[0] = "y" * (size - spec.ByteSize())
    while spec.ByteSize() > size:  # lengths past 127 take a byte more
        spec.process.args[0] = spec.process.args[0][1:]
    assert spec.ByteSize() == size
    return spec


BAD_REQUESTS = {
    "missing spec": (_one(None), "spec: missing job spec"),
    "blank command": (_one(process_spec(" \t")), "spec.process.command: cannot be empty"),
    "blank entry_point": (
        _one(job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="  "))),
        "spec.python.entry_point: cannot be empty",
    ),
    "blank docker image": (
        _one(job_pb2.JobSpec(docker=job_pb2.DockerSpec(image=" ", args=["x"]))),
        "spec.docker.image: cannot be empty",
    ),
    "missing type": (_one(job_pb2.JobSpec(cwd="/tmp")), "spec: missing job type"),
    "env key with =": (_one(_env(**{"A=B": "1"})), "spec.env: invalid variable name 'A=B'"),
    "reserved env": (_one(_env(BURST_JOB_ID="job-1")), "spec.env.BURST_JOB_ID"),
    "negative timeout": (_one(_with(timeout_seconds=-1.0)), "spec.timeout_seconds"),
    "too many retries": (_one(_with(retries=101)), "spec.retries: at most 100"),
    "oversized spec": (_one(process_spec("x", "y" * 2000)), "more than the limit of 1024"),
    "oversized entry in a prototype spec": (
        _one(_with(entry="e" * 2000)),
        "spec: 20",
    ),
    "oversized spec in a batch": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(specs=[process_spec(), _sized(1025)])),
        "specs[1]: 1025 bytes, more than the limit of 1024",
    ),
    "oversized each-line entry": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(template=_sized(24), entries=["a", "b" * 998])),
        "entries[1]: 1025 bytes with the template, more than the limit of 1024",
    ),
    "oversized array template": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(template=_sized(1025), array_count=2)),
        "template: 1025 bytes, more than the limit of 1024",
    ),
    "array index past the spec limit": (
        (
            "SubmitJobs",
            job_pb2.SubmitJobsRequest(template=_sized(1022), array_start=200, array_count=2),
        ),
        "template: 1025 bytes with array index 201, more than the limit of 1024",
    ),
    "bad spec in a batch": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(specs=[process_spec(), process_spec(" ")])),
        "specs[1].process.command: cannot be empty",
    ),
    "batch over max_batch": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(specs=[process_spec()] * 11)),
        "specs: 11 jobs, more than the limit of 10",
    ),
    "array over max_batch": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(template=process_spec(), array_count=11)),
        "specs: 11 jobs, more than the limit of 10",
    ),
    "array without template": (
        ("SubmitJobs", job_pb2.SubmitJobsRequest(array_count=2)),
        "template: required",
    ),
    "empty batch": (("SubmitJobs", job_pb2.SubmitJobsRequest()), "specs: no jobs to submit"),
    "blank worker_id": (
        ("RegisterWorker", worker_pb2.RegisterWorkerRequest(worker_id=" ", slots=1)),
        "worker_id: cannot be empty",
    ),
    "unknown list state": (("ListJobs", job_pb2.ListJobsRequest(state="done")), "state:"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_invalid_requests_name_the_field(shared: Cluster, case: str) -> None:
    (method, request), expected = BAD_REQUESTS[case]
    response_type = {
        "SubmitJob": job_pb2.SubmitJobResponse,
        "SubmitJobs": job_pb2.SubmitJobsResponse,
        "RegisterWorker": worker_pb2.RegisterWorkerResponse,
        "ListJobs": job_pb2.ListJobsResponse,
    }[method]
    async with connect(shared) as rpc:
        before = await rpc.all_jobs()
        with pytest.raises(transport.InvalidArgument) as caught:
            await rpc.call(method, request, response_type)
        assert expected in caught.value.message
        assert "Traceback" not in caught.value.message
        assert await rpc.all_jobs() == before
        assert " " not in await rpc.workers()


def test_an_each_line_entry_over_the_spec_limit_is_refused_before_anything_is_stored(
    shared: Cluster,
) -> None:
    """The spec is checked whole, its entry included (a 300 KB line was stored and queued,
    then failed at spawn with E2BIG)."""
    (shared.tmp / "lines.txt").write_text("a\n" + "b" * 2000 + "\n")
    before = shared.burst("list").stdout
    run = shared.burst("submit", "--each-line", "lines.txt", "process", "echo", check=False)
    assert run.returncode != 0 and run.stdout == ""
    assert "entries[1]: " in run.stderr and "more than the limit of 1024" in run.stderr
    assert shared.burst("list").stdout == before


CORRUPT = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"]


@pytest.mark.parametrize(
    ("method", "type_name"),
    [
        ("SubmitJob", "SubmitJobRequest"),
        ("SubmitJobs", "SubmitJobsRequest"),
        ("PollJob", "PollJobRequest"),
        ("ReportJobResults", "ReportJobResultsRequest"),
        ("Heartbeat", "HeartbeatRequest"),
        ("RegisterWorker", "RegisterWorkerRequest"),
    ],
)
async def test_corrupt_request_body_is_invalid_argument(
    shared: Cluster, method: str, type_name: str
) -> None:
    async with connect(shared) as rpc:
        before = await rpc.all_jobs()
        for body in CORRUPT:
            with pytest.raises(transport.InvalidArgument) as caught:
                await rpc.channel.unary_raw(SERVICE, method, body, timeout=CALL_TIMEOUT)
            assert caught.value.message == f"malformed burst.v1.{type_name}"
        assert await rpc.all_jobs() == before
        # the same connection and the controller still serve
        assert (await rpc.status("job-99999999")).state == "unknown"


def test_grpcio_client_garbage_and_health_check(shared: Cluster) -> None:
    """The official grpcio client: a corrupt body, a valid call after it, and Health/Check
    (which alone needs no token)."""
    grpc = pytest.importorskip("grpc")
    from proto.grpc.health.v1 import health_pb2

    token = list(auth.bearer(shared.token()).items())
    with grpc.insecure_channel(shared.addr) as channel:
        raw = channel.unary_unary(
            f"/{SERVICE}/SubmitJob",
            request_serializer=bytes,
            response_deserializer=job_pb2.SubmitJobResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff", timeout=CALL_TIMEOUT, metadata=token)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "malformed burst.v1.SubmitJobRequest"

        status = channel.unary_unary(
            f"/{SERVICE}/GetJobStatus",
            request_serializer=job_pb2.GetJobStatusRequest.SerializeToString,
            response_deserializer=job_pb2.GetJobStatusResponse.FromString,
        )
        reply = status(
            job_pb2.GetJobStatusRequest(job_id="job-99999999"), timeout=CALL_TIMEOUT, metadata=token
        )
        assert reply.state == "unknown"

        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_array_sent_in_pieces_is_refused_whole_when_the_queue_takes_only_part(
    cluster: Cluster,
) -> None:
    """Issue 17, defect 1, as reported: the client sends this array in two pieces of 100,000;
    the queue takes 150,000. The command is refused, prints no id, and leaves nothing queued
    (it used to leave the first 100,000)."""
    start_controller(cluster, submission_buffer_capacity=150_000)
    run = cluster.burst("submit", "--array", "0-199999", "process", "true", check=False)
    assert run.returncode == 1 and run.stdout == ""
    assert "RESOURCE_EXHAUSTED" in run.stderr and "queue is full" in run.stderr
    no_traceback(run.stderr)
    assert cluster.burst("list", "--limit", "1").stdout == ""
    # Its room is free again.
    run = cluster.burst("submit", "--array", "1-3", "process", "true")
    assert len(run.stdout.split()) == 3


async def test_full_queue_is_resource_exhausted_and_all_or_nothing(cluster: Cluster) -> None:
    start_controller(cluster, submission_buffer_capacity=5)
    async with connect(cluster) as rpc:
        ids = await rpc.submit_many(3)
        with pytest.raises(transport.ResourceExhausted) as caught:
            await rpc.submit_many(3)  # 3 + 3 > 5: none of the three is taken
        assert "queue is full" in caught.value.message
        assert [j.job_id for j in await rpc.all_jobs()] == ids
        ids += await rpc.submit_many(2)
        with pytest.raises(transport.ResourceExhausted):
            await rpc.submit()
        assert [j.job_id for j in await rpc.all_jobs()] == ids

        run = await trio.to_thread.run_sync(
            lambda: cluster.burst("submit", "--array", "0-9", "process", "true", check=False)
        )
        assert run.returncode == 1
        assert "RESOURCE_EXHAUSTED" in run.stderr
        no_traceback(run.stderr)
        assert [j.job_id for j in await rpc.all_jobs()] == ids

        # room again once a job leaves the queue
        assert await rpc.cancel(ids[0]) == ["cancelled"]
        ids.append(await rpc.submit())
        assert len(await rpc.all_jobs()) == 6


# -- start-up errors ---------------------------------------------------------------------------


def run_burstd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*program("burstd"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environment(BURST_LOG="info"),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[controller]\nlease_ttl = 500\n", ["controller.lease_ttl", "unknown key"]),
        (
            '[controller]\nrouter = "fifo"\n',
            ["controller.router", "'fifo'", "biased", "power2", "roundrobin"],
        ),
        ("[controller]\nlease_ttl_ms = 'soon'\n", ["controller.lease_ttl_ms"]),
    ],
)
def test_bad_config_file_exits_2_naming_file_and_key(
    tmp_path: Path, text: str, says: list[str]
) -> None:
    config = tmp_path / "conf" / "bad.toml"
    config.parent.mkdir()
    config.write_text(text)
    listen = f"127.0.0.1:{free_port()}"
    run = run_burstd(tmp_path, "controller", "--config", str(config), "--listen", listen)
    assert run.returncode == 2, run
    assert str(config) in run.stderr
    for text_ in says:
        assert text_ in run.stderr, run.stderr
    no_traceback(run.stderr)


def test_second_controller_on_a_busy_port_fails_clearly(cluster: Cluster) -> None:
    cluster.controller()
    run = run_burstd(
        cluster.tmp,
        "controller",
        "--listen",
        cluster.addr,
        "--state-dir",
        str(cluster.tmp / "state2"),
    )
    assert run.returncode != 0
    assert "already in use" in run.stderr
    assert cluster.addr in run.stderr
    no_traceback(run.stderr)
    # the first one is unaffected (it answers: no such job)
    run = cluster.burst("status", "job-00000001", check=False)
    assert (run.returncode, run.stdout.split()) == (4, ["job-00000001", "unknown"])


def test_sigterm_to_the_group_stops_the_controller_and_its_store_process(cluster: Cluster) -> None:
    """As systemd stops the unit: SIGTERM to every process of the group. The store process
    ignores it, writes what the controller still sends, and leaves when the controller is gone:
    nothing of the group is left."""
    daemon = cluster.controller()
    cluster.burst("submit", "process", "true")  # the first write starts the store process
    group = os.getpgid(daemon.pid)
    os.killpg(group, signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0, daemon.log()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break  # nobody left in the group
        assert time.monotonic() < deadline, "a process of the controller's group is left"
        time.sleep(0.05)
    no_traceback(daemon.log())


def test_controller_stops_cleanly_on_sigterm(cluster: Cluster) -> None:
    daemon = cluster.controller()
    cluster.burst("submit", "process", "true")
    deadline = time.monotonic() + 30
    code = daemon.stop(timeout=30)
    assert time.monotonic() < deadline
    assert code == 0, daemon.log()
    no_traceback(daemon.log())
