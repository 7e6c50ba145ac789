"""How fast `burst list` prints many jobs: time to its first line and lines per second.

A real `burstd controller` (durable store, no workers) holds N queued `/bin/true` jobs (one array,
submitted through the client library before the clock starts); then `burst list` runs as a user
would, its stdout read through a pipe: seconds from its start to the first line, to the last, the
lines per second, and the CPU time per line of the controller (its store process included) and of
`burst list` itself (its start-up included).

Usage::

    python bench/list_speed.py [--jobs 1000000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, cli_env, cpu_seconds, machine, running_controller

FIRST_LINE_TARGET = 1.0
"""Seconds to the first line (issue 24)."""
RATE_TARGET = 100_000
"""Lines per second (issue 24)."""


async def _submit(addr: str, jobs: int) -> None:
    from burstd.client import Client, process

    async with Client.connect(addr) as client:
        await client.submit_array(process("/bin/true"), range(jobs))


def _list(env: dict[str, str]) -> tuple[float, float, int, float]:
    """Seconds to the first line and to the end of one `burst list`, its lines, and its CPU
    seconds."""
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.burst", "list"], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.perf_counter() - start
    lines = 1 if first else 0
    for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
        lines += chunk.count(b"\n")
    if proc.wait() != 0:
        raise RuntimeError(f"burst list exited {proc.returncode}")
    took = time.perf_counter() - start
    # The controller, also a child, has not ended: the waited-for children's time is the CLI's.
    return first_at, took, lines, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"burst list of {args.jobs:,} jobs; {machine()}")
    env = cli_env()
    capacity = max(2 * args.jobs, 1_000_000)
    with running_controller("sqlite", capacity, "burst-list-") as (ctl, port, tmp):
        addr = f"127.0.0.1:{port}"
        env["BURST_CONTROLLER"] = addr
        env["BURST_STATE_DIR"] = f"{tmp}/state"
        started = time.perf_counter()
        trio.run(_submit, addr, args.jobs)
        print(f"submitted in {time.perf_counter() - started:.1f} s", flush=True)
        for round_ in range(1, args.rounds + 1):
            cpu = cpu_seconds(ctl.pid)
            first_at, took, lines, cli_cpu = _list(env)
            cpu = cpu_seconds(ctl.pid) - cpu
            print(
                f"round {round_}: {lines:,} lines; first line after {first_at:.2f} s"
                f" [target <= {FIRST_LINE_TARGET:g} s]; {took:.1f} s in all,"
                f" {lines / took:,.0f} lines/s [target >= {RATE_TARGET:,}];"
                f" CPU {cpu / max(lines, 1) * 1e6:.1f} us/line controller,"
                f" {cli_cpu / max(lines, 1) * 1e6:.1f} us/line burst list",
                flush=True,
            )


if __name__ == "__main__":
    main()
