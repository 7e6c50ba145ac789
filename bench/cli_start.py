"""How fast the `burst` CLI starts: `burst status ID` and a one-job `burst submit` against an idle
local controller, wall time and CPU time per command (medians of N), beside the targets; then the
imports that cost `burst status` most (``python -X importtime``, the least of 5 runs each).

A real `burstd controller` (durable store, no workers) on a free port; every command is a fresh
`python -m cli.burst` process with the controller's admin token found in its state directory, as a
user's would be. The Python files are compiled once before the timed runs (``__pycache__``), as an
installed burst's are, whatever ``PYTHONDONTWRITEBYTECODE`` says.

Usage::

    python bench/cli_start.py [--runs 20] [--top 15]
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, cli_env, machine, median, running_controller

TARGETS = {"status": 0.150, "submit": 0.200}
"""Wall time of each command, seconds (issue 24)."""


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stdout of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def top_imports(command: list[str], env: dict[str, str], top: int, runs: int = 5) -> list[str]:
    """The modules imported at the top level of ``command`` (and their own imports) that cost
    most, cumulative microseconds, the least of ``runs`` runs (``-X importtime``)."""
    best: dict[str, int] = {}
    order: list[str] = []
    for _ in range(runs):
        proc = subprocess.run(
            [command[0], "-X", "importtime", *command[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
            if match and len(match[2]) <= 1:  # imported by the program itself, not by a module
                name, cumulative = match[3], int(match[1])
                if name not in best:
                    order.append(name)
                best[name] = min(best.get(name, cumulative), cumulative)
    ranked = sorted(order, key=lambda name: -best[name])[:top]
    total = sum(best.values())
    lines = [f"  {best[name] / 1000:7.1f} ms  {name}" for name in ranked]
    return [*lines, f"  {total / 1000:7.1f} ms  all top-level imports"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(f"CLI start-up; {machine()}")
    env = cli_env()
    burst = [sys.executable, "-m", "cli.burst"]
    with running_controller("sqlite", 1_000_000, "burst-cli-start-") as (_ctl, port, tmp):
        env["BURST_CONTROLLER"] = f"127.0.0.1:{port}"
        env["BURST_STATE_DIR"] = f"{tmp}/state"
        submit = [*burst, "submit", "process", "true"]
        _, _, out = _timed(submit, env)  # compiles and caches every module on the path
        status = [*burst, "status", out.split()[0]]
        _timed(status, env)
        for name, command in (("status", status), ("submit", submit)):
            walls, cpus = [], []
            for _ in range(args.runs):
                wall, cpu, _ = _timed(command, env)
                walls.append(wall)
                cpus.append(cpu)
            print(
                f"burst {name}: wall median {median(walls) * 1000:.0f} ms"
                f" (min {min(walls) * 1000:.0f}) [target <= {TARGETS[name] * 1000:.0f} ms],"
                f" CPU median {median(cpus) * 1000:.0f} ms, {args.runs} runs",
                flush=True,
            )
        python = [sys.executable, "-c", "pass"]
        walls = [_timed(python, env)[0] for _ in range(args.runs)]
        print(f"python -c pass: wall median {median(walls) * 1000:.0f} ms (the floor)")
        print("imports of `burst status`, cumulative (least of 5 runs):")
        for line in top_imports(status, env, args.top):
            print(line)


if __name__ == "__main__":
    main()
