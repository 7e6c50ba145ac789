"""HyperQueue, a peer of the end-to-end benchmark: N tiny process jobs on a local cluster.

Runs in the peer's own virtual environment (``pip install hyperqueue``, whose wheel carries the
server), which the harness makes (``_common.peer_python``), never in burst's.

Usage: ``python peer_hq.py N [cores] [command...]`` (default command ``/bin/true``, 2 cores).
Prints one line, ``hyperqueue N jobs S s R jobs/s``. Each task's stdout and stderr go to files
of their own in a temporary folder (HyperQueue's default, like burst's capture per job).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from hyperqueue import Client, Job, LocalCluster
from hyperqueue.cluster import WorkerConfig


@contextlib.contextmanager
def local_cluster(cores: int) -> Iterator[Client]:
    """A HyperQueue server and one worker of ``cores`` cores, in a temporary working folder that
    also takes the tasks' output files; their messages are kept off stdout. Yields a client."""
    # Under e2e.py the folder stays in the caller's (BURST_BENCH_KEEP, ``_common.KEEP``), which
    # deletes it once every run is over.
    keep = os.environ.get("BURST_BENCH_KEEP")
    with (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="burst-bench-hq-", dir=keep))
        if keep
        else tempfile.TemporaryDirectory(prefix="burst-bench-hq-") as tmp,
        contextlib.chdir(tmp),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        LocalCluster() as cluster,
    ):
        cluster.start_worker(WorkerConfig(cores=cores))
        yield cluster.client()


def main(argv: list[str]) -> None:
    jobs = int(argv[0])
    cores = int(argv[1]) if len(argv) > 1 else 2
    command = argv[2:] or ["/bin/true"]
    with local_cluster(cores) as client:
        job = Job()
        for _ in range(jobs):
            job.program(command)
        start = time.perf_counter()
        client.wait_for_jobs([client.submit(job)])
        elapsed = time.perf_counter() - start
    print(f"hyperqueue {jobs} jobs {elapsed:.2f} s {jobs / elapsed:.0f} jobs/s")


if __name__ == "__main__":
    main(sys.argv[1:])
