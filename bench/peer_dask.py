"""Dask distributed, a peer of the end-to-end benchmark: N tiny process jobs on a LocalCluster.

Runs in the peer's own virtual environment (``pip install dask distributed``), which the harness
makes (``_common.peer_python``), never in burst's.

Usage: ``python peer_dask.py N [workers] [threads_per_worker]`` (default 2 x 2). Each job runs
``/bin/true`` with ``subprocess``, its output captured in memory (Dask writes no files). Prints
one line, ``dask N jobs S s R jobs/s``.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

from dask.distributed import Client, LocalCluster


def run_true(_index: int) -> int:
    """One job: ``/bin/true``, its output captured; its exit code."""
    return subprocess.run(["/bin/true"], capture_output=True, check=False).returncode


@contextlib.contextmanager
def local_cluster(workers: int, threads: int) -> Iterator[Client]:
    """A LocalCluster of ``workers`` processes of ``threads`` threads (no dashboard, errors only
    in its log) and a client of it."""
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            silence_logs=logging.ERROR,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def main(argv: list[str]) -> None:
    jobs = int(argv[0])
    workers = int(argv[1]) if len(argv) > 1 else 2
    threads = int(argv[2]) if len(argv) > 2 else 2
    with local_cluster(workers, threads) as client:
        start = time.perf_counter()
        codes = client.gather(client.map(run_true, range(jobs), pure=False))
        elapsed = time.perf_counter() - start
    failed = sum(1 for code in codes if code != 0)
    if failed:
        sys.exit(f"dask: {failed} of {jobs} jobs failed")
    print(f"dask {jobs} jobs {elapsed:.2f} s {jobs / elapsed:.0f} jobs/s")


if __name__ == "__main__":
    main(sys.argv[1:])
