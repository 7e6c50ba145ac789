"""The controller's job path without the network: CPU time per job of the service, table and store.

One process holds a ``ControllerService`` (durable store in a temporary state directory, its
group-commit writer running, or ``--store memory``) and simulated workers that call its handlers
directly, timed like ``bench/controller_capacity.py``'s (long polls for up to ``--capacity``
jobs, one ReportJobResults per batch), while jobs are submitted in arrays of ``--array``.
Requests are parsed from bytes and replies serialized, as the transport would; HTTP/2 is left
out, so the figures are what the job path itself costs.

Printed per round: jobs/s and CPU time per job of the whole process and its store process (from
/proc), and the same without the simulated workers' own share
(building requests and reading replies, timed on their side with ``time.thread_time``).

Usage::

    python bench/job_path.py [--jobs 40000] [--workers 10] [--rounds 3] [--store memory]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

from bench._common import cpu_seconds
from burstd.auth import Caller, Role
from burstd.controller.daemon import tune_gc
from burstd.controller.service import ControllerService
from burstd.controller.store import Store
from burstd.controller.table import JobTable
from burstd.controller.writer import StoreWriter
from proto.burst.v1 import job_pb2, worker_pb2

# The handlers are called as the transport calls them, after the guard: by an admin.
ADMIN = Caller("bench", Role.ADMIN, "bench")


class SimCost:
    """CPU time the simulated workers and the submitter spent on their own side."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = 0.0

    def start(self) -> None:
        self._since = time.thread_time()

    def stop(self) -> None:
        self.seconds += time.thread_time() - self._since


async def sim_worker(
    service: ControllerService, worker_id: str, capacity: int, cost: SimCost
) -> None:
    cost.start()
    register = worker_pb2.RegisterWorkerRequest(
        worker_id=worker_id, slots=capacity, queue_capacity=capacity, hostname="sim"
    ).SerializeToString()
    cost.stop()
    await service.register_worker(worker_pb2.RegisterWorkerRequest.FromString(register), ADMIN)
    poll = job_pb2.PollJobRequest(
        worker_id=worker_id, max_jobs=capacity, wait_ms=20_000, batch=True
    ).SerializeToString()
    while True:
        reply = await service.poll_job(job_pb2.PollJobRequest.FromString(poll), ADMIN)
        data = reply.SerializeToString()
        cost.start()
        response = job_pb2.PollJobResponse.FromString(data)
        report = job_pb2.ReportJobResultsRequest(worker_id=worker_id)
        now = time.time()
        for job in response.jobs:
            # Finished at once, with success: what the table does with a result, not a process.
            report.results.add(
                job_id=job.job_id, attempt=job.attempt, started_at=now, finished_at=now
            )
        data = report.SerializeToString()
        cost.stop()
        if not response.jobs:
            continue
        answer = await service.report_job_results(
            job_pb2.ReportJobResultsRequest.FromString(data), ADMIN
        )
        answer.SerializeToString()


async def one_round(
    args: argparse.Namespace, state_dir: Path | None
) -> tuple[float, float, float, float]:
    store = Store(state_dir) if state_dir is not None else None
    table = JobTable(track_changes=store is not None, max_queued=100_000_000)
    writer = StoreWriter(store, table) if store is not None else None
    service = ControllerService(table, writer=writer)
    cost = SimCost()
    try:
        async with trio.open_nursery() as nursery:
            if writer is not None:
                nursery.start_soon(writer.run)
            for i in range(args.workers):
                nursery.start_soon(sim_worker, service, f"sim-{i}", args.capacity, cost)
            await trio.sleep(0.1)
            cpu0, loop0, wall0 = cpu_seconds(os.getpid()), time.thread_time(), time.perf_counter()
            for first in range(0, args.jobs, args.array):
                cost.start()
                submit = job_pb2.SubmitJobsRequest(
                    template=job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="/bin/true")),
                    array_start=first,
                    array_count=min(args.array, args.jobs - first),
                ).SerializeToString()
                cost.stop()
                reply = await service.submit_jobs(
                    job_pb2.SubmitJobsRequest.FromString(submit), ADMIN
                )
                reply.SerializeToString()
            while table.finished_seq < args.jobs:
                await trio.sleep(0.02)
            cpu = cpu_seconds(os.getpid()) - cpu0
            loop = time.thread_time() - loop0
            wall = time.perf_counter() - wall0
            nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            store.close()
    per_job = 1e6 / args.jobs
    return (
        args.jobs / wall,
        cpu * per_job,
        (cpu - cost.seconds) * per_job,
        (loop - cost.seconds) * per_job,
    )


def main() -> None:
    logger.remove()  # no info lines from the handlers
    tune_gc()  # as the controller process does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--array", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    args = parser.parse_args()
    print(
        f"job path: {args.jobs} jobs, {args.workers} workers x {args.capacity}, store {args.store}"
    )
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="burst-path-") as tmp:
            state_dir = Path(tmp, "state") if args.store == "sqlite" else None
            rate, per_job, net, loop = trio.run(one_round, args, state_dir)
        print(
            f"  round {i + 1}: {rate:8.0f} jobs/s, {per_job:5.1f} us CPU per job, "
            f"{net:5.1f} without the simulated workers' side, of which {loop:5.1f} on the event"
            " loop's thread",
            flush=True,
        )


if __name__ == "__main__":
    main()
