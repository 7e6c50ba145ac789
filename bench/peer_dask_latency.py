"""Dask distributed, a peer of the latency benchmark: submit to result of one job on an idle
LocalCluster.

Runs in the peer's own virtual environment, as ``peer_dask.py`` (whose cluster and job it uses).

Usage: ``python peer_dask_latency.py [N]`` (default 200): N ``/bin/true`` jobs one after the
other on 2 workers x 2 threads, after one to warm the cluster up. Prints one line,
``dask latency n=N p50 X ms p99 Y ms``.
"""

from __future__ import annotations

import statistics
import sys
import time

from peer_dask import local_cluster, run_true


def main(argv: list[str]) -> None:
    jobs = int(argv[0]) if argv else 200
    latencies: list[float] = []
    with local_cluster(2, 2) as client:
        client.submit(run_true, -1, pure=False).result()
        for index in range(jobs):
            start = time.perf_counter()
            client.submit(run_true, index, pure=False).result()
            latencies.append(time.perf_counter() - start)
    latencies.sort()
    print(
        f"dask latency n={jobs} p50 {statistics.median(latencies) * 1000:.1f} ms "
        f"p99 {latencies[int(0.99 * jobs)] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
