"""A million jobs end to end: memory stays flat, the rate holds, `burst wait` stays small.

One ``burstd up --workers 2 --slots 2`` cluster (durable store, output files per job, as
``e2e.py``) driven by the CLI as a user would: first a reference run, ``burst submit --array``
of 10,000 ``/bin/true`` jobs and ``burst wait --all``; then N more (1,000,000) the same way. While
the big run's ``burst wait --all`` reports progress (a line a second on its stderr), the RSS of
the controller (its store process apart), of each worker and of ``burst wait`` itself are read
from /proc: once the first ``--sample-at`` (100,000) of the N jobs have ended, and at the end.
Printed beside the targets: each daemon's RSS at the end over the sample (<= 1.2), the big run's
jobs/s over the reference's (within 10%), ``burst wait``'s largest RSS.

Usage::

    python bench/million.py [--jobs 1000000] [--sample-at 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, burst_env, free_port, machine, wait_listening

REFERENCE = 10_000
"""Jobs of the reference run (the end-to-end benchmark's size)."""
RSS_TARGET = 1.2
RATE_TARGET = 0.9

_PROGRESS = re.compile(r"burst: (\d+)/(\d+) done")


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) / 1024 if match else 0.0


def children(pid: int) -> list[int]:
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def daemons(up: int) -> dict[str, int]:
    """The processes of ``burstd up`` by role: its first child is the controller (whose child is
    its store process), the others are workers."""
    found = children(up)
    roles = {"controller": found[0]} if found else {}
    for child in children(found[0])[:1] if found else []:
        roles["store process"] = child
    roles.update((f"worker {n}", pid) for n, pid in enumerate(found[1:], 1))
    return roles


def burst(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "cli.burst", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=3600,
    )


class Callback:
    """Samples the daemons' RSS once ``sample_at`` of the big run's jobs have ended, and tracks
    ``burst wait``'s largest RSS."""

    def __init__(self, roles: dict[str, int], sample_at: int) -> None:
        self.roles = roles
        self.sample_at = sample_at
        self.sampled: dict[str, float] | None = None
        self.wait_max = 0.0
        self.wait_at_sample = 0.0

    def __call__(self, done: int, wait_pid: int) -> None:
        wait_rss = rss_mib(wait_pid)
        self.wait_max = max(self.wait_max, wait_rss)
        if self.sampled is None and done >= self.sample_at:
            self.sampled = {role: rss_mib(pid) for role, pid in self.roles.items()}
            self.wait_at_sample = wait_rss
            shown = ", ".join(f"{role} {rss:.0f}" for role, rss in self.sampled.items())
            print(f"after {done:,} jobs: RSS MiB {shown}; burst wait {wait_rss:.0f}", flush=True)


def submit_and_wait(
    env: dict[str, str], jobs: int, before: int, on_progress: Callback | None = None
) -> float:
    """``burst submit --array 0-(jobs-1)`` then ``burst wait --all``; seconds from the submission
    to the end of the wait. ``before``: jobs the controller already had (all ended)."""
    start = time.perf_counter()
    burst(env, "submit", "--array", f"0-{jobs - 1}", "process", "/bin/true")
    wait = subprocess.Popen(
        [sys.executable, "-m", "cli.burst", "wait", "--all"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait.stderr is not None
    for line in wait.stderr:
        match = _PROGRESS.search(line)
        if match and on_progress is not None:
            on_progress(int(match[1]) - before, wait.pid)
    if wait.wait() != 0:
        raise RuntimeError(f"burst wait --all exited {wait.returncode}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--sample-at", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{args.jobs:,} jobs end to end (sampled after {args.sample_at:,}); {machine()}")
    with tempfile.TemporaryDirectory(prefix="burst-million-") as tmp:
        port = free_port()
        env = burst_env()
        env.update(BURST_CONTROLLER=f"127.0.0.1:{port}", BURST_STATE_DIR=f"{tmp}/state")
        command = [sys.executable, "-m", "cli.burstd", "up", "--workers", "2", "--slots", "2"]
        command += ["--listen", f"127.0.0.1:{port}", "--state-dir", f"{tmp}/state"]
        command += ["--output-dir", f"{tmp}/out", "--log-level", "WARNING"]
        up = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
        try:
            wait_listening(port)
            roles: dict[str, int] = {}
            deadline = time.monotonic() + 60
            while len(roles) < 4 and time.monotonic() < deadline:  # controller, store, 2 workers
                time.sleep(0.2)
                roles = daemons(up.pid)
            took = submit_and_wait(env, REFERENCE, 0)
            reference = REFERENCE / took
            print(f"reference: {REFERENCE:,} jobs in {took:.1f} s, {reference:,.0f} jobs/s")
            sampler = Callback(roles, args.sample_at)
            took = submit_and_wait(env, args.jobs, REFERENCE, sampler)
            rate = args.jobs / took
            end = {role: rss_mib(pid) for role, pid in roles.items()}
            print(
                f"big run: {args.jobs:,} jobs in {took:.1f} s, {rate:,.0f} jobs/s:"
                f" {rate / reference:.2f} x the reference [target >= {RATE_TARGET}]"
            )
            for role, rss in end.items():
                before = (sampler.sampled or {}).get(role, 0.0)
                ratio = f"{rss / before:.2f}" if before else "n/a"
                print(
                    f"RSS {role}: {before:.0f} MiB after {args.sample_at:,}, {rss:.0f} MiB at"
                    f" the end: {ratio} [target <= {RSS_TARGET}]"
                )
            print(
                f"burst wait RSS: {sampler.wait_at_sample:.0f} MiB after {args.sample_at:,},"
                f" at most {sampler.wait_max:.0f} MiB"
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()


if __name__ == "__main__":
    main()
