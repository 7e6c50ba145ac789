"""Mixed resource requests: how busy the CPUs stay while work is queued (issue 22's target: 90%).

A discrete-event simulation of the scheduling itself, with no process and no network: the real
job table (``burstd.controller.table``) leases jobs asking for 1, 2 or 4 CPUs to four simulated
4-CPU workers; each worker holds what it was leased (up to its capacity, twice its CPUs, as a
real worker) and starts its oldest job once that job's CPUs are free (``resources.Pool``, as a
real worker does), reports it when it ends, and takes what the table routed to it meanwhile.
Run times are drawn at random (seeded). Printed: the share of the CPUs busy from the start until
the queue (the table's and the workers') ran dry, per mix, and the same with one-CPU jobs only.

Usage::

    python bench/mixed_resources.py [--jobs 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from burstd import resources
from burstd.controller.table import Job, JobState, JobTable, NewJob, Result

WORKERS, CPUS = 4, 4


def simulate(sizes: list[int], seed: int, owners: int = 1) -> tuple[float, float]:
    """Run jobs of these CPU counts; returns (CPU utilisation while work was queued, makespan)."""
    rng = random.Random(seed)
    table = JobTable(track_changes=False)
    pools = {f"w{i}": resources.Pool(range(CPUS), [], {}) for i in range(WORKERS)}
    held: dict[str, deque[Job]] = {w: deque() for w in pools}
    for worker_id in pools:
        table.register(worker_id, slots=CPUS, capacity=2 * CPUS, now=0.0)
    new = [NewJob(b"", request=resources.make_request(n)) for n in sizes]
    for k in range(owners):
        table.submit(new[k::owners], 0.0, owner=f"user{k}")
    ends: list[tuple[float, int, str, Job, resources.Grant]] = []
    now, busy_area, tick = 0.0, 0.0, 0
    busy = 0  # CPUs running jobs now
    queued_until = 0.0

    def start_what_fits(worker_id: str) -> None:
        nonlocal busy, tick
        _, jobs = table.lease(worker_id, 100, now)
        held[worker_id].extend(jobs)
        pool, mine = pools[worker_id], held[worker_id]
        while mine and (grant := pool.grant(mine[0].request)) is not None:
            job = mine.popleft()
            busy += len(grant.cpus)
            tick += 1
            heapq.heappush(ends, (now + rng.uniform(0.5, 1.5), tick, worker_id, job, grant))

    for worker_id in pools:
        start_what_fits(worker_id)
    while ends:
        when, _, worker_id, job, grant = heapq.heappop(ends)
        if table.counts[JobState.QUEUED] or any(held.values()):
            busy_area += busy * (when - now)
            queued_until = when
        now = when
        busy -= len(grant.cpus)
        pools[worker_id].release(grant)
        table.report(worker_id, Result(job.job_id, job.attempt, 0), now)
        for other in pools:
            start_what_fits(other)
    return busy_area / (WORKERS * CPUS * queued_until), now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    mixes = {
        "1 CPU only": [1] * args.jobs,
        "1, 2, 4 CPUs (equal numbers)": [rng.choice((1, 2, 4)) for _ in range(args.jobs)],
        "mostly 1, some 4 (90/10)": [4 if rng.random() < 0.1 else 1 for _ in range(args.jobs)],
    }
    print(f"{WORKERS} simulated workers x {CPUS} CPUs, {args.jobs} jobs, run times 0.5-1.5")
    for name, sizes in mixes.items():
        for owners in (1, 2):
            used, makespan = simulate(sizes, args.seed, owners)
            print(
                f"  {name:<30} {owners} owner{'s' if owners > 1 else ' '}: "
                f"{100 * used:5.1f}% of CPUs busy while work was queued (makespan {makespan:.0f})"
            )


if __name__ == "__main__":
    main()
