"""Controller capacity: simulated workers that finish jobs instantly, over real RPCs.

For each worker count, a fresh ``burstd controller`` (durable store in a temporary state dir
unless ``--store memory``) is started; ``--procs`` processes run the simulated workers, which
start at random times over workers / CONNECT_RATE seconds, as a cluster's do (each with its own
connection, a real worker's back-off and registration again after a failed call, and a real
worker's timing: RegisterWorker, a long poll for up to its
capacity, then one ReportJobResults for the whole batch that asks for as many jobs again, over
and over (a long poll again when a report brings none), beside a notice poll and heartbeats at
the interval the controller asks for), while this process submits the jobs in
arrays of ``--array`` and waits for all of them (WaitJobs). Printed per point: jobs/s from the
first submission to the last result, and the controller's CPU time (user + system, from
/proc) per job, also net of the background cost that the idle workers (measured first, every
worker registered) add over that time; then how busy the controller and the simulator
processes were (share of one core), which tells whether the machine or the controller set the
pace.

``--tls`` runs every point over TLS (the controller's certificates from ``burstd tls init``;
the simulated workers and the client verify them), as a cluster across machines runs.

``--metrics on`` serves the controller's Prometheus metrics and scrapes them every
SCRAPE_INTERVAL seconds meanwhile; ``--metrics both`` runs each point with metrics off and on,
alternately (off, on, on, off, ...: a machine whose load drifts favours neither), and prints the
median of each and their difference beside the target (at most 2% fewer jobs/s with metrics).

With ``--after earlier``, each array's jobs depend on the last job of the array before (the
first array on a job submitted first): every job waits in the table's WAITING state and is
queued by the end of an earlier one. With ``--after submission``, on the whole array before
(its ``sub-…`` id): queued once every job of it ended. Each point then runs twice,
independent jobs first, and prints the CPU per job of both and their ratio (the target: at most
1.5).

Usage::

    python bench/controller_capacity.py [--workers 1,10,100,1000] [--jobs 20000] [--repeat 3]
    python bench/controller_capacity.py --metrics both --workers 100 --repeat 5
    python bench/controller_capacity.py --tls --workers 10,1000
    python bench/controller_capacity.py --after earlier --workers 10
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench._common import (
    REPO,
    burst_env,
    cpu_seconds,
    free_port,
    load,
    machine,
    start_controller,
)

if TYPE_CHECKING:
    from burstd.backoff import Backoff

T = TypeVar("T")

# Seconds between scrapes of the metrics (``--metrics on``): Prometheus's default is 60 s and
# the example config's 15 s; every second is a harsher test of what a scrape costs.
SCRAPE_INTERVAL = 1.0
# Simulated workers start at random times over workers / CONNECT_RATE seconds (1,000 over 5 s),
# as a cluster's workers do, not all in the same millisecond; the start-up may take ten times
# that (and a minute) before the point is given up.
CONNECT_RATE = 200.0
# The most the metrics may cost (issue 23): a share of the capacity figure.
METRICS_TARGET = 0.02


def scrape_until(addr: str, stop: threading.Event) -> None:
    """GET the metrics every SCRAPE_INTERVAL seconds until ``stop`` is set."""
    while not stop.wait(SCRAPE_INTERVAL):
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
            response.read()


class Sim(NamedTuple):
    """What the simulated workers of one process share, as a worker process has one of each."""

    addr: str
    capacity: int
    token: dict[str, str]  # the call metadata with the controller's admin token
    tls: ssl.SSLContext | None


async def sim_worker(sim: Sim, worker_id: str, start: float) -> None:
    """One simulated worker, started ``start`` seconds from now, that a failed call sends
    back to registering after a pause, as a real worker's session (burstd/worker/session.py,
    with its back-off)."""
    from burstd import transport
    from burstd.backoff import Backoff
    from burstd.worker.session import MAX_BACKOFF

    await trio.sleep(start)
    backoff = Backoff(0.5)
    while True:
        try:
            await sim_session(sim, worker_id, backoff)
        except transport.RpcError as error:
            print(f"{worker_id}: {error}; registering again", file=sys.stderr, flush=True)
        await trio.sleep(backoff.pause(MAX_BACKOFF))


async def sim_session(sim: Sim, worker_id: str, backoff: Backoff) -> None:
    """A simulated worker's session, with a real worker's timing: reports that ask for the
    room they free, long polls of LONG_POLL_MS for work when they bring none, one of
    NOTICE_POLL_MS for notices, heartbeats at the interval the controller asks for."""
    from burstd import transport, wire
    from burstd.config import parse_hostport
    from burstd.worker.daemon import LONG_POLL_MS, NOTICE_POLL_MS
    from proto.burst.v1 import job_pb2, worker_pb2

    service = wire.CONTROLLER_SERVICE
    host, port = parse_hostport(sim.addr)
    capacity = sim.capacity
    async with transport.Channel(
        host, port, connect_timeout=10.0, multiplex=True, metadata=sim.token, tls=sim.tls
    ) as channel:

        async def call(method: str, request: Any, reply: type[T]) -> T:
            return await channel.unary(service, method, request, reply, timeout=60)

        registered = await call(
            "RegisterWorker",
            worker_pb2.RegisterWorkerRequest(
                worker_id=worker_id, slots=capacity, queue_capacity=capacity, hostname="sim"
            ),
            worker_pb2.RegisterWorkerResponse,
        )
        backoff.reset()
        interval = (registered.paced_heartbeat_ms or registered.heartbeat_interval_ms) / 1000
        lease_seq = 0

        async def heartbeat() -> None:
            nonlocal interval
            while True:
                await trio.sleep(interval)
                beat = await call(
                    "Heartbeat",
                    worker_pb2.HeartbeatRequest(worker_id=worker_id, lease_seq=lease_seq),
                    worker_pb2.HeartbeatResponse,
                )
                interval = beat.paced_heartbeat_ms / 1000 or interval

        async def notice_poll() -> None:
            poll = job_pb2.PollJobRequest(worker_id=worker_id, wait_ms=NOTICE_POLL_MS, batch=True)
            while True:
                await call("PollJob", poll, job_pb2.PollJobResponse)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            nursery.start_soon(notice_poll)
            poll = job_pb2.PollJobRequest(
                worker_id=worker_id, max_jobs=capacity, wait_ms=LONG_POLL_MS, batch=True
            )
            jobs: Sequence[job_pb2.AssignedJob] = ()
            while True:
                if not jobs:
                    response = await call("PollJob", poll, job_pb2.PollJobResponse)
                    lease_seq = response.lease_seq or lease_seq
                    jobs = response.jobs
                    continue
                now = time.time()
                results = [
                    job_pb2.ReportJobResultRequest(
                        job_id=job.job_id,
                        attempt=job.attempt,
                        exit_code=0,
                        reason="exit",
                        started_at=now,
                        finished_at=now,
                    )
                    for job in jobs
                ]
                # As a worker's reporter: the results free room, which the same call fills.
                reported = await call(
                    "ReportJobResults",
                    job_pb2.ReportJobResultsRequest(
                        worker_id=worker_id, results=results, max_jobs=capacity
                    ),
                    job_pb2.ReportJobResultsResponse,
                )
                lease_seq = reported.lease_seq or lease_seq
                jobs = reported.jobs


async def sim_main(addr: str, prefix: str, count: int, capacity: int, ramp: float) -> None:
    """``count`` simulated workers, each started at a random time within ``ramp`` seconds."""
    from burstd import auth, credentials, tlsconfig

    # The controller's admin token (see start_controller), allowed every worker call, and
    # BURST_TLS_CA, from start_controller.
    token = auth.bearer(credentials.local_token())
    sim = Sim(addr, capacity, token, tlsconfig.environment_client_context())
    rng = random.Random(prefix)
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(sim_worker, sim, f"{prefix}-{i}", rng.uniform(0, ramp))


async def wait_registered(addr: str, workers: int, timeout: float) -> None:
    from burstd.client import Client

    async with Client.connect(addr) as client:
        with trio.fail_after(timeout):
            while len(await client.workers()) < workers:
                await trio.sleep(0.5)


class Run(NamedTuple):
    elapsed: float  # seconds from the first submission to the last result
    submitted: float  # seconds until the last submission was accepted
    done_by_then: int  # jobs that had ended by then


async def drive(addr: str, jobs: int, array: int, after: str = "none") -> Run:
    from burstd.client import Client, process

    spec = process("/bin/true")
    async with Client.connect(addr) as client:
        start = time.perf_counter()
        ids: list[str] = []
        previous = ""  # what the next array waits for
        if after != "none":
            previous = await client.submit(spec)
            ids.append(previous)
        for first in range(0, jobs, array):
            if after != "none":
                spec = process("/bin/true", after=[previous])
            submitted = await client.submit_array(spec, range(first, min(jobs, first + array)))
            ids += submitted
            previous = submitted.submission_id if after == "submission" else ids[-1]
        submitted = time.perf_counter() - start
        done_by_then = -1
        async for update in client.wait(all=True):
            if done_by_then < 0:  # the first update comes at once
                done_by_then = jobs - update.pending
            if update.pending == 0:
                break
        return Run(time.perf_counter() - start, submitted, done_by_then)


def point(
    workers: int, args: argparse.Namespace, metrics: bool = False, after: str = "none"
) -> tuple[float, float]:
    """One run of ``workers`` simulated workers: jobs/s and controller CPU us per job;
    ``metrics``: with the controller's metrics served and scraped."""
    with tempfile.TemporaryDirectory(prefix="burst-cap-") as tmp:
        sims: list[subprocess.Popen[bytes]] = []
        metrics_addr = f"127.0.0.1:{free_port()}" if metrics else ""
        ctl, port = start_controller(
            tmp, args.store, 100_000_000, metrics_addr, args.tls, args.events_max
        )
        addr = f"127.0.0.1:{port}"
        stop_scraping = threading.Event()
        try:
            if metrics_addr:
                threading.Thread(
                    target=scrape_until, args=(metrics_addr, stop_scraping), daemon=True
                ).start()
            procs = min(args.procs, workers)
            for p in range(procs):
                share = workers // procs + (1 if p < workers % procs else 0)
                sims.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--sim",
                            addr,
                            f"sim{p}",
                            str(share),
                            str(args.capacity),
                            str(workers / CONNECT_RATE),
                        ],
                        cwd=REPO,
                        env=burst_env(),
                    )
                )
            trio.run(wait_registered, addr, workers, 60 + workers / CONNECT_RATE * 10)
            # The background cost of idle workers (heartbeats, long polls), measured apart.
            cpu0, wall0 = cpu_seconds(ctl.pid), time.monotonic()
            time.sleep(args.idle)
            idle = (cpu_seconds(ctl.pid) - cpu0) / (time.monotonic() - wall0)
            cpu0, loop0 = cpu_seconds(ctl.pid), cpu_seconds(ctl.pid, descendants=False)
            sims0 = sum(cpu_seconds(sim.pid) for sim in sims)
            run = trio.run(drive, addr, args.jobs, args.array, after)
            elapsed = run.elapsed
            cpu = cpu_seconds(ctl.pid) - cpu0
            store_cpu = cpu - (cpu_seconds(ctl.pid, descendants=False) - loop0)
            sims_cpu = sum(cpu_seconds(sim.pid) for sim in sims) - sims0
        finally:
            stop_scraping.set()
            for proc in [*sims, ctl]:
                proc.terminate()
            for proc in [*sims, ctl]:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rate = args.jobs / elapsed
        per_job_us = cpu / args.jobs * 1e6
        # What the jobs cost beyond the idle workers' background, which grows with the wall
        # time: on a machine shared with other work, that is the steadier figure.
        net_us = max(0.0, cpu - idle * elapsed) / args.jobs * 1e6
        # The simulators share the machine with the controller: when they use most of the
        # other core, jobs/s measures them as much as the controller.
        print(
            f"  {workers:>5} workers{' (after)' if after != 'none' else ''}:"
            f" {rate:8.0f} jobs/s, controller CPU {per_job_us:6.1f} us/job,"
            + (" metrics on," if metrics else "")
            + (" TLS," if args.tls else "")
            + f" {net_us:6.1f} net of idle {idle * 100:4.1f}% of a core; controller busy"
            f" {cpu / elapsed * 100:3.0f}% (store process {store_cpu / elapsed * 100:.0f}%),"
            f" simulators {sims_cpu / elapsed * 100:3.0f}% of a core"
            f" ({load()})",
            flush=True,
        )
        # Jobs run while the client still submits compete with the submissions (a commit that
        # inserts a whole array holds up the reports behind it): the two phases apart.
        after = run.elapsed - run.submitted
        print(
            f"  {'':>5}          submitted in {run.submitted:.2f} s, {run.done_by_then} jobs done"
            f" meanwhile ({run.done_by_then / run.submitted:.0f} jobs/s), the other"
            f" {args.jobs - run.done_by_then} in {after:.2f} s"
            f" ({(args.jobs - run.done_by_then) / after:.0f} jobs/s)",
            flush=True,
        )
        return rate, per_job_us


def main() -> dict[int, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,10,100,1000")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--array", type=int, default=5_000)
    parser.add_argument("--capacity", type=int, default=64, help="jobs each worker holds")
    parser.add_argument("--procs", type=int, default=2, help="processes of simulated workers")
    parser.add_argument(
        "--idle",
        type=float,
        default=12.0,
        help="seconds of idle workers measured first (at least one paced heartbeat interval:"
        " 10 s at 1,000 workers)",
    )
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per point, each with a fresh controller; more than one prints their median",
    )
    parser.add_argument(
        "--metrics",
        default="off",
        choices=["off", "on", "both"],
        help="the controller's metrics served and scraped (both: off and on, interleaved)",
    )
    parser.add_argument(
        "--after",
        default="none",
        choices=["none", "earlier", "submission"],
        help="earlier: each array's jobs depend on an earlier job; submission: on the array"
        " before (sub-…); also runs independent ones",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the controller serves TLS (certificates of burstd tls init), the clients use it",
    )
    parser.add_argument(
        "--events-max",
        type=int,
        default=None,
        help="the controller's events_max (0: no event log; default: the controller's)",
    )
    parser.add_argument("--sim", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sim:
        addr, prefix, count, capacity, ramp = args.sim
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(sim_main, addr, prefix, int(count), int(capacity), float(ramp))
        return {}
    print(
        f"controller capacity: {args.jobs} jobs per point, store {args.store}, capacity "
        f"{args.capacity} per worker, {args.procs} simulator processes, metrics {args.metrics},"
        f" TLS {'on' if args.tls else 'off'},"
        f" events_max {'default' if args.events_max is None else args.events_max}; {machine()}"
    )
    if args.metrics == "both":
        for w in map(int, args.workers.split(",")):
            metrics_cost(w, args)
        return {}
    figures: dict[int, tuple[float, float]] = {}
    for w in map(int, args.workers.split(",")):
        runs, dependent = [], []
        for _ in range(args.repeat):
            try:
                runs.append(point(w, args, metrics=args.metrics == "on"))
                if args.after != "none":
                    dependent.append(point(w, args, args.metrics == "on", args.after))
            except Exception as error:  # a point that cannot finish is a figure too
                print(f"  {w:>5} workers: failed: {error!r}", flush=True)
        if dependent and runs:
            alone = statistics.median(cpu for _, cpu in runs)
            waiting = statistics.median(cpu for _, cpu in dependent)
            print(
                f"  {w:>5} workers: controller CPU per job {waiting:.0f} us with dependencies,"
                f" {alone:.0f} us independent: {waiting / alone:.2f}x (target at most 1.5x)",
                flush=True,
            )
        if not runs:
            continue
        # A run of a few seconds swings by 10-20% on a shared VM: the median of several is
        # the steadier figure (a rate and a CPU time each, not necessarily of the same run).
        figures[w] = rate, per_job_us = (
            statistics.median(rate for rate, _ in runs),
            statistics.median(cpu for _, cpu in runs),
        )
        if args.repeat > 1:
            print(
                f"  {w:>5} workers: median of {len(runs)} runs: {rate:.0f} jobs/s"
                f" ({', '.join(f'{rate:.0f}' for rate, _ in runs)}),"
                f" controller CPU {per_job_us:.0f} us/job",
                flush=True,
            )
    return figures


def metrics_cost(workers: int, args: argparse.Namespace) -> None:
    """Runs with metrics off and on, interleaved; prints the median of each and the cost, and
    the median of each pair's difference (a load that drifts over the runs moves both runs of
    a pair, less so their difference)."""
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    pairs: list[dict[bool, tuple[float, float]]] = []
    for i in range(args.repeat):
        pair: dict[bool, tuple[float, float]] = {}
        for metrics in (False, True) if i % 2 == 0 else (True, False):
            try:
                runs[metrics].append(pair.setdefault(metrics, point(workers, args, metrics)))
            except Exception as error:  # a point that cannot finish is a figure too
                print(f"  {workers:>5} workers: failed: {error!r}", flush=True)
        if len(pair) == 2:
            pairs.append(pair)
    if not runs[False] or not runs[True]:
        return
    (off_rate, off_cpu), (on_rate, on_cpu) = (
        (statistics.median(r for r, _ in runs[m]), statistics.median(c for _, c in runs[m]))
        for m in (False, True)
    )
    print(
        f"  {workers:>5} workers: metrics off {off_rate:.0f} jobs/s ({off_cpu:.1f} us CPU/job),"
        f" on {on_rate:.0f} jobs/s ({on_cpu:.1f} us CPU/job), medians of {len(runs[False])}"
        f" and {len(runs[True])} runs: metrics cost {(1 - on_rate / off_rate) * 100:+.1f}% jobs/s,"
        f" {(on_cpu / off_cpu - 1) * 100:+.1f}% CPU/job (target: at most"
        f" {METRICS_TARGET * 100:.0f}% jobs/s)",
        flush=True,
    )
    if pairs:
        rates = [(1 - pair[True][0] / pair[False][0]) * 100 for pair in pairs]
        cpus = [(pair[True][1] / pair[False][1] - 1) * 100 for pair in pairs]
        print(
            f"  {workers:>5} workers: each pair's cost, jobs/s"
            f" {', '.join(f'{rate:+.1f}%' for rate in rates)} (median"
            f" {statistics.median(rates):+.1f}%); CPU/job"
            f" {', '.join(f'{cpu:+.1f}%' for cpu in cpus)}"
            f" (median {statistics.median(cpus):+.1f}%)",
            flush=True,
        )


if __name__ == "__main__":
    main()
