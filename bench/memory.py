"""Memory: controller RSS with N queued jobs (default one million), as bytes per job.

A fresh ``burstd controller`` (durable store in a temporary state dir unless ``--store memory``)
with no workers takes N ``/bin/true`` jobs in arrays of 100,000 through the Python client; its
RSS (from /proc) is read before the first submission and after the last, and the difference is
divided by N. The figure is the controller's whole growth: job table, indexes, allocator slack.

Usage::

    python bench/memory.py [--jobs 1000000] [--store sqlite|memory]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, start_controller


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def submit(addr: str, jobs: int, array: int) -> int:
    from burstd.client import Client, process

    spec = process("/bin/true")
    count = 0
    async with Client.connect(addr) as client:
        for first in range(0, jobs, array):
            count += len(await client.submit_array(spec, range(first, min(jobs, first + array))))
    return count


def main() -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--array", type=int, default=100_000)
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    args = parser.parse_args()
    print(f"memory: {args.jobs} queued jobs, store {args.store}; {machine()}")
    with tempfile.TemporaryDirectory(prefix="burst-mem-") as tmp:
        ctl, port = start_controller(tmp, args.store, max(args.jobs * 2, 1_000_000))
        addr = f"127.0.0.1:{port}"
        try:
            time.sleep(0.5)
            before = rss_bytes(ctl.pid)
            start = time.perf_counter()
            count = trio.run(submit, addr, args.jobs, args.array)
            elapsed = time.perf_counter() - start
            time.sleep(1.0)
            after = rss_bytes(ctl.pid)
        finally:
            ctl.terminate()
            try:
                ctl.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ctl.kill()
    per_job = (after - before) / count
    print(
        f"  controller RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB with {count} queued"
        f" jobs: {per_job:.0f} bytes/job (submitted at {count / elapsed:.0f} jobs/s)"
    )
    return per_job


if __name__ == "__main__":
    main()
