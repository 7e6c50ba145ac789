"""Makespan of a batch of equal jobs with and without work stealing (issue 4's benchmark).

Starts a real controller and 4 workers (2 slots each) three times, each time on fresh ports:

* balanced: the ``roundrobin`` router, stealing on;
* biased + steal: the ``biased`` router (only the first half of the workers ever receive jobs),
  stealing on: the other half must steal to help;
* biased, no steal: the same router, stealing switched off (no peer address, ``--no-steal``).

Each run submits ``--jobs`` jobs of ``sleep --sleep`` at once and measures the makespan, from the
submission to the end of the last job. Prints the three makespans, how the jobs spread over the
workers, how many were stolen, and the two ratios against the balanced run (target: biased with
stealing at most 1.3 x balanced; without it about 2 x).

    python bench/steal_makespan.py [--jobs 64] [--sleep 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import burst_env, free_port, machine, wait_listening
from burstd.client import BlockingClient, process

WORKERS = 4
SLOTS = 2


@dataclass
class Run:
    name: str
    makespan: float
    per_worker: dict[str, int]
    stolen: int


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.burstd", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=burst_env(),
            start_new_session=True,
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # workers first, then the controller
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_once(name: str, router: str, steal: bool, jobs: int, sleep: float, tmp: Path) -> Run:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = tmp / f"{name}.toml"
    state = tmp / f"{name}-state"
    # The workers find the worker token the controller writes there (the config's state_dir).
    config.write_text(f'[controller]\nstore = "memory"\nstate_dir = "{state}"\n')
    procs = [
        start(
            ["controller", "--config", str(config), "--listen", addr, "--router", router],
            tmp / f"{name}-controller.log",
        )
    ]
    try:
        wait_listening(port)
        for i in range(1, WORKERS + 1):
            worker = ["worker", "--config", str(config), "--id", f"w{i}", "--controller", addr]
            worker += ["--slots", str(SLOTS), "--output-dir", str(tmp)]
            worker += ["--peer-listen", "127.0.0.1:0"] if steal else ["--no-steal"]
            procs.append(start(worker, tmp / f"{name}-w{i}.log"))
        with _connect(addr, (state / "admin.token").read_text().strip()) as client:
            deadline = time.monotonic() + 30
            while len(client.workers()) < WORKERS:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: the workers did not register; logs in {tmp}")
                time.sleep(0.05)
            time.sleep(1.5)  # every worker has heartbeated once since all registered
            began = time.time()
            ids = client.submit_array(process("sleep", str(sleep)), range(jobs))
            for update in client.wait(ids):
                if update.failed or update.cancelled:
                    raise SystemExit(f"{name}: jobs failed; logs in {tmp}")
            infos = [client.status(job_id) for job_id in ids]
        makespan = max(info.finished_at for info in infos) - began
        return Run(
            name,
            makespan,
            dict(sorted(Counter(info.worker_id for info in infos).items())),
            sum(info.stolen for info in infos),
        )
    finally:
        stop(procs)


def _connect(addr: str, token: str) -> BlockingClient:
    deadline = time.monotonic() + 30
    while True:
        try:
            return BlockingClient(addr, connect_timeout=1.0, token=token)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting (median taken)")
    options = parser.parse_args()
    settings = [
        ("balanced", "roundrobin", True),
        ("biased + steal", "biased", True),
        ("biased, no steal", "biased", False),
    ]
    print(
        f"# steal makespan: {WORKERS} workers x {SLOTS} slots, {options.jobs} x sleep "
        f"{options.sleep} s; {machine()}"
    )
    results: dict[str, list[Run]] = {name: [] for name, _, _ in settings}
    with tempfile.TemporaryDirectory(prefix="burst-steal-bench-") as tmp:
        for _ in range(options.repeat):
            for name, router, steal in settings:
                run = run_once(name, router, steal, options.jobs, options.sleep, Path(tmp))
                results[name].append(run)
                print(
                    f"{name:17} makespan {run.makespan:6.2f} s   jobs per worker "
                    f"{run.per_worker}   stolen {run.stolen}"
                )
    makespan = {name: statistics.median(r.makespan for r in runs) for name, runs in results.items()}
    ideal = options.jobs * options.sleep / (WORKERS * SLOTS)
    print(f"ideal balanced makespan {ideal:.2f} s")
    for name, value in makespan.items():
        print(f"makespan {name:17} {value:6.2f} s")
    base = makespan["balanced"]
    with_steal = makespan["biased + steal"] / base
    without = makespan["biased, no steal"] / base
    print(f"ratio biased + steal / balanced   {with_steal:.2f} (target <= 1.3)")
    print(f"ratio biased, no steal / balanced {without:.2f} (expected about 2)")


if __name__ == "__main__":
    main()
