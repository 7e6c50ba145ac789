"""Restart with a big queue: how long a controller whose state directory holds N queued jobs
takes from its start until it serves, and until every queued job is back in its queue.

The state directory is written directly (``Writes``, as the store process writes a submission),
N queued ``/bin/true`` jobs and ``--leased`` jobs leased to a worker that never comes back. Then
a real ``burstd controller`` starts on it; the figures are the time from its start until a
status call of the last queued job is answered (and what that job's status says), and until
the controller logs that its queue is loaded (a job not loaded yet is read from the store).

Usage::

    python bench/restart.py [--jobs 1000000] [--leased 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, burst_env, free_port, machine, median

BATCH = 100_000


def build(state_dir: Path, jobs: int, leased: int) -> str:
    """A store with ``jobs`` queued jobs and ``leased`` leased ones; returns the last id."""
    from burstd import wire
    from burstd.controller.store import Store, Writes, changed_row, inserts
    from burstd.controller.table import JobState, JobTable, NewJob
    from proto.burst.v1 import job_pb2

    spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="/bin/true")).SerializeToString()
    Store(state_dir).close()  # creates the schema
    writes = Writes.open(state_dir / "burst.db")
    table = JobTable(track_changes=False)
    try:
        total = jobs + leased
        for first in range(1, total + 1, BATCH):
            count = min(BATCH, total + 1 - first)
            made = table.new_jobs(first, [NewJob(spec)] * count, time.time())
            changed = []
            for job in made[max(0, jobs + 1 - first) :]:  # the last ``leased`` ones
                job.state, job.attempt, job.worker_id = JobState.LEASED, 1, "gone"
                changed.append(changed_row(job))
            rows, runs = inserts(made)
            writes.write(rows, changed, [], first + count, new_runs=runs)
    finally:
        writes.close()
    return wire.job_id(jobs)


async def first_answer(port: int, job_id: str, deadline: float) -> tuple[float, str]:
    """Poll until a status call of ``job_id`` is answered: (when, the state it says)."""
    from burstd.client import Client

    while time.monotonic() < deadline:
        try:
            async with Client.connect(f"127.0.0.1:{port}", connect_timeout=1.0) as client:
                info = await client.status(job_id)
                return time.monotonic(), info.state
        except Exception:
            await trio.sleep(0.02)
    raise RuntimeError("the controller did not answer")


def restart(state_dir: Path, last: str, log: Path) -> tuple[float, float, str]:
    """Start a controller on ``state_dir``: seconds until it answers, until its queue is
    loaded, and the state it gave for the last job."""
    port = free_port()
    command = ["controller", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state_dir)]
    with log.open("w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.burstd", *command],
            cwd=REPO,
            env={**burst_env(), "BURST_LOG": "info"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            answered, state = trio.run(first_answer, port, last, start + 600)
            loaded = answered  # a controller that loads everything before it serves
            while "loading" in log.read_text(errors="replace"):
                if "queue loaded" in log.read_text(errors="replace"):
                    loaded = time.monotonic()
                    break
                if time.monotonic() > start + 600:
                    raise RuntimeError("the queue was not loaded in 600 s")
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return answered - start, loaded - start, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--leased", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"restart with {args.jobs:,} queued and {args.leased:,} leased jobs; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp, "state")
        began = time.monotonic()
        last = build(state_dir, args.jobs, args.leased)
        print(f"  store written in {time.monotonic() - began:.1f} s", flush=True)
        serving, loaded = [], []
        for round_ in range(args.rounds):
            answered, done, state = restart(state_dir, last, Path(tmp, f"controller-{round_}.log"))
            serving.append(answered)
            loaded.append(done)
            print(
                f"  round {round_ + 1}: serves after {answered:.2f} s ({last} {state}),"
                f" queue loaded after {done:.2f} s",
                flush=True,
            )
        print(f"restart: serves after {median(serving):.2f} s (median), queue loaded after"
              f" {median(loaded):.2f} s")  # fmt: skip
        match = re.search(r"queue loaded[^\n]*", Path(tmp, "controller-0.log").read_text())
        if match:
            print(f"  controller: {match[0]}")


if __name__ == "__main__":
    main()
