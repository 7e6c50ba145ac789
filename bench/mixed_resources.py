"""Mixed resource requests: how busy the CPUs stay while work is queued (issue 22's target: 90%).

A discrete-event simulation of the scheduling itself, with no process and no network: the real
job table (``burstd.controller.table``) leases jobs asking for 1, 2 or 4 CPUs to four simulated
4-CPU workers; each worker holds what it was leased (up to its capacity, twice its CPUs, as a
real worker) in the real worker's queue (``burstd.worker.queue.LocalQueue``), starts the jobs
it hands out once their CPUs are free (``resources.Pool``: the oldest first, or a larger one
that fits: its rule 7), reports each when it ends, and takes what the table routed to it
meanwhile. Run times are drawn at random (seeded). Printed: the share of the CPUs busy from the
start until the queue (the table's and the workers') ran dry, per mix and seed, and the same
with one-CPU jobs only.

Usage::

    python bench/mixed_resources.py [--jobs 20000] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from burstd import resources
from burstd.controller.table import JobState, JobTable, NewJob, Result
from burstd.resources_proto import to_message
from burstd.worker.queue import LocalJob, LocalQueue
from proto.burst.v1 import job_pb2

WORKERS, CPUS = 4, 4


def simulate(sizes: list[int], seed: int, owners: int = 1) -> tuple[float, float]:
    """Run jobs of these CPU counts; returns (CPU utilisation while work was queued, makespan)."""
    rng = random.Random(seed)
    table = JobTable(track_changes=False)
    pools = {f"w{i}": resources.Pool(range(CPUS), [], {}) for i in range(WORKERS)}
    queues = {
        worker_id: LocalQueue(2 * CPUS, fits=lambda job, pool=pool: pool.fits(job.request))
        for worker_id, pool in pools.items()
    }
    for worker_id in pools:
        table.register(worker_id, slots=CPUS, capacity=2 * CPUS, now=0.0)
    requests = {n: resources.make_request(n) for n in set(sizes)}
    specs = {n: job_pb2.JobSpec(resources=to_message(request)) for n, request in requests.items()}
    new = [NewJob(b"", request=requests[n]) for n in sizes]
    for k in range(owners):
        table.submit(new[k::owners], 0.0, owner=f"user{k}")
    ends: list[tuple[float, int, str, LocalJob, resources.Grant]] = []
    now, busy_area, tick = 0.0, 0.0, 0
    busy = 0  # CPUs running jobs now
    running = dict.fromkeys(pools, 0)  # jobs running per worker
    queued_until = 0.0

    def start_what_fits(worker_id: str) -> None:
        nonlocal busy, tick
        seq, jobs = table.lease(worker_id, 100, now)
        local, pool = queues[worker_id], pools[worker_id]
        size = {job.job_id: (job.request or resources.PLAIN)[resources.CPUS] for job in jobs}
        local.add(
            [
                job_pb2.AssignedJob(job_id=j.job_id, attempt=j.attempt, spec=specs[size[j.job_id]])
                for j in jobs
            ],
            seq,
        )
        while (job := local.next_queued()) is not None:
            grant = pool.grant(job.request)
            assert grant is not None  # the queue hands out only a job that fits
            busy += len(grant.cpus)
            running[worker_id] += 1
            tick += 1
            heapq.heappush(ends, (now + rng.uniform(0.5, 1.5), tick, worker_id, job, grant))

    for worker_id in pools:
        start_what_fits(worker_id)
    while ends:
        when, _, worker_id, job, grant = heapq.heappop(ends)
        held = any(len(queues[w].jobs) > running[w] for w in pools)
        if table.counts[JobState.QUEUED] or held:
            busy_area += busy * (when - now)
            queued_until = when
        now = when
        busy -= len(grant.cpus)
        running[worker_id] -= 1
        pools[worker_id].release(grant)
        local = queues[worker_id]
        local.finish(job, job_pb2.ReportJobResultRequest(job_id=job.job_id, attempt=job.attempt))
        local.acknowledged([job])
        table.report(worker_id, Result(job.job_id, job.attempt, 0), now)
        for other in pools:
            start_what_fits(other)
    return busy_area / (WORKERS * CPUS * queued_until), now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, one run each")
    args = parser.parse_args()
    print(f"{WORKERS} simulated workers x {CPUS} CPUs, {args.jobs} jobs, run times 0.5-1.5")
    for seed in (int(text) for text in args.seeds.split(",")):
        rng = random.Random(seed)
        mixes = {
            "1 CPU only": [1] * args.jobs,
            "1, 2, 4 CPUs (equal numbers)": [rng.choice((1, 2, 4)) for _ in range(args.jobs)],
            "mostly 1, some 4 (90/10)": [4 if rng.random() < 0.1 else 1 for _ in range(args.jobs)],
        }
        for name, sizes in mixes.items():
            for owners in (1, 2):
                used, makespan = simulate(sizes, seed, owners)
                print(
                    f"  seed {seed} {name:<30} {owners} owner{'s' if owners > 1 else ' '}: "
                    f"{100 * used:5.1f}% of CPUs busy while work was queued "
                    f"(makespan {makespan:.0f})"
                )


if __name__ == "__main__":
    main()
