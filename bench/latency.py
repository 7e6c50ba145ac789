"""Latency on an idle cluster: submit to start and submit to finish, p50 and p99.

A ``burstd up --workers 2`` cluster (defaults otherwise) runs this script's client part, which
submits one ``/bin/true`` job at a time through the Python client library (``burstd.client``, so
no CLI start-up is counted) and waits for it to end before submitting the next: first with the
trio ``Client``, then with ``BlockingClient``. Per job:

- submit to start: the job's ``started_at`` (worker clock) minus the time taken just before the
  SubmitJob call (same machine, same clock);
- submit to finish: from just before SubmitJob until the client saw the job end (WaitJobs);

Usage::

    python bench/latency.py [--jobs 300] [--peers hyperqueue,dask]

The peers' own latency scripts (submit to finish) run after, when installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    BENCH,
    PEERS,
    REPO,
    burst_env,
    free_port,
    machine,
    peer_python,
    percentile,
)

WARM_UP = 5  # jobs not counted: connections and caches warming up


def _line(label: str, start_ms: list[float], finish_ms: list[float]) -> str:
    return (
        f"burst ({label}) latency n={len(start_ms)} submit-to-start p50"
        f" {percentile(start_ms, 0.5):.1f} ms p99 {percentile(start_ms, 0.99):.1f} ms;"
        f" submit-to-finish p50 {percentile(finish_ms, 0.5):.1f} ms"
        f" p99 {percentile(finish_ms, 0.99):.1f} ms"
    )


async def _async_client(addr: str, jobs: int) -> tuple[list[float], list[float]]:
    from burstd.client import Client, process

    spec = process("/bin/true")
    start_ms: list[float] = []
    finish_ms: list[float] = []
    async with Client.connect(addr) as burst:
        for i in range(jobs + WARM_UP):
            t0 = time.time()
            job_id = await burst.submit(spec)
            async for update in burst.wait([job_id]):
                if update.pending == 0:
                    break
            t1 = time.time()
            info = await burst.status(job_id)
            if i >= WARM_UP:
                start_ms.append((info.started_at - t0) * 1000)
                finish_ms.append((t1 - t0) * 1000)
    return start_ms, finish_ms


def _blocking_client(addr: str, jobs: int) -> tuple[list[float], list[float]]:
    from burstd.client import BlockingClient, process

    spec = process("/bin/true")
    start_ms: list[float] = []
    finish_ms: list[float] = []
    with BlockingClient(addr) as burst:
        for i in range(jobs + WARM_UP):
            t0 = time.time()
            job_id = burst.submit(spec)
            for update in burst.wait([job_id]):
                if update.pending == 0:
                    break
            t1 = time.time()
            info = burst.status(job_id)
            if i >= WARM_UP:
                start_ms.append((info.started_at - t0) * 1000)
                finish_ms.append((t1 - t0) * 1000)
    return start_ms, finish_ms


def client_main(jobs: int) -> None:
    """Both ways of using the client library, one after the other: the trio ``Client`` (what an
    async program or the CLI uses) and ``BlockingClient`` (a trio thread behind blocking calls,
    which adds two thread hand-offs per call)."""
    import trio

    addr = os.environ["BURST_CONTROLLER"]
    print(_line("trio Client", *trio.run(_async_client, addr, jobs)), flush=True)
    print(_line("BlockingClient", *_blocking_client(addr, jobs)), flush=True)


def main() -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--peers", default="hyperqueue,dask")
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client_main(args.client)
        return {}
    print(f"latency: {args.jobs} sequential /bin/true jobs on an idle cluster; {machine()}")
    lines: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="burst-lat-") as tmp:
        cmd = [sys.executable, "-m", "cli.burstd", "up", "--workers", "2"]
        cmd += ["--listen", f"127.0.0.1:{free_port()}", "--state-dir", f"{tmp}/state"]
        cmd += ["--output-dir", f"{tmp}/out", "--"]
        cmd += [sys.executable, str(Path(__file__).resolve()), "--client", str(args.jobs)]
        proc = subprocess.run(
            cmd, cwd=REPO, env=burst_env(), capture_output=True, text=True, timeout=900
        )
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("burst ")]
        for line in found or ["burst: failed: " + proc.stderr[-2000:]]:
            print(f"  {line}")
        lines["burst"] = found[0] if found else ""
    for name in [p for p in args.peers.split(",") if p]:
        python, why = peer_python(name)
        if python is None:
            print(f"  {name}: skipped: {why}")
            continue
        peer = PEERS[name]
        out = subprocess.run(
            [python, str(BENCH / peer.latency), str(peer.latency_jobs)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        print(f"  {line or name + ': failed: ' + out.stderr[-1000:]}")
        lines[name] = line
    return lines


if __name__ == "__main__":
    main()
