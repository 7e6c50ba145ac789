"""HyperQueue, a peer of the latency benchmark: submit to finish of one job on an idle cluster.

Runs in the peer's own virtual environment, as ``peer_hq.py`` (whose cluster it uses).

Usage: ``python peer_hq_latency.py [N]`` (default 50): N ``/bin/true`` jobs one after the other,
each submitted once the one before has finished, on a local cluster of 2 cores. Prints one line,
``hyperqueue latency n=N p50 X ms p90 Y ms max Z ms``.
"""

from __future__ import annotations

import statistics
import sys
import time

from hyperqueue import Job
from peer_hq import local_cluster


def main(argv: list[str]) -> None:
    jobs = int(argv[0]) if argv else 50
    latencies: list[float] = []
    with local_cluster(2) as client:
        for _ in range(jobs):
            job = Job()
            job.program(["/bin/true"])
            start = time.perf_counter()
            client.wait_for_jobs([client.submit(job)])
            latencies.append(time.perf_counter() - start)
    latencies.sort()
    print(
        f"hyperqueue latency n={jobs} p50 {statistics.median(latencies) * 1000:.1f} ms "
        f"p90 {latencies[int(0.9 * jobs)] * 1000:.1f} ms max {latencies[-1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
