"""Run every benchmark and print a summary table (``tox -e bench`` runs this).

Each benchmark is a script of its own in this folder and prints its figures as it goes; none is a
pass/fail test. The summary at the end puts the figures next to the targets of the issue.

Usage::

    python bench/run_all.py [--quick]
        [--skip e2e,capacity,metrics,latency,memory,rpc,restart,steal,cli,list,million]

``--quick`` runs smaller sizes (for a smoke run); the figures in docs/benchmarks.md come from a
full run. Peers (HyperQueue, Dask) are installed into cached venvs on first use (see _common.py).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._common import machine  # noqa: E402


def run(script: str, *args: str) -> str:
    """Run one benchmark script, echo its output, return it."""
    print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True, timeout=7200
    )
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        print(f"  ({script} exited {proc.returncode}) {proc.stderr[-2000:]}", flush=True)
    return proc.stdout


def grab(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="")
    parser.add_argument("--peers", default="hyperqueue,dask")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    q = args.quick
    rows: list[tuple[str, str, str]] = []
    print(f"burst benchmarks; {machine()}")

    if "e2e" not in skip:
        out = run(
            "e2e.py",
            "--jobs", "2000" if q else "10000",
            "--rounds", "1" if q else "3",
            "--peers", args.peers,
        )  # fmt: skip
        medians = grab(r"median jobs/s: (.*)", out)
        rows.append(("end to end jobs/s (median)", medians, ">= 1.5 x best peer, >= 0.5 x xargs"))
        rows.append(("  burst / best peer", grab(r"burst / best peer: ([0-9.]+)", out), ">= 1.5"))
        rows.append(("  burst / xargs -P 2", grab(r"burst / xargs -P 2: ([0-9.]+)", out), ">= 0.5"))
    if "capacity" not in skip:
        # 100,000 jobs a point: 1,000 workers hold 64,000, so fewer would measure the ramp.
        # The median of three runs a point: one run swings by 10-20% on a shared VM.
        for store in ("sqlite", "memory"):
            out = run(
                "controller_capacity.py",
                "--workers", "1,10,100" if q else "1,10,100,1000",
                "--jobs", "5000" if q else "100000",
                "--repeat", "1" if q else "3",
                "--store", store,
            )  # fmt: skip
            median = r"\s+(\d+) workers: median of \d+ runs: (\d+) jobs/s (\([\d, ]+\))"
            single = r"\s+(\d+) workers:\s+(\d+) jobs/s()"
            for line in out.splitlines():
                m = re.match(single if q else median, line)
                if m:
                    cpu = grab(r"controller CPU\s+(\d+) us", line)
                    runs = f" {m[3]}" if m[3] else ""
                    figure = f"{m[2]} jobs/s{runs}, {cpu} us CPU/job"
                    rows.append((f"controller ({store}), {m[1]} workers", figure, ">= 20000"))
    if "metrics" not in skip:
        # The capacity point of 100 workers with the controller's metrics off and on,
        # interleaved (the median of each): what serving and scraping them costs.
        out = run(
            "controller_capacity.py",
            "--metrics", "both",
            "--workers", "100",
            "--jobs", "5000" if q else "100000",
            "--repeat", "1" if q else "5",
        )  # fmt: skip
        rows.append(
            (
                "metrics on vs off, 100 workers (jobs/s)",
                grab(r"metrics cost ([+-][0-9.]+% jobs/s)", out),
                "<= 2%",
            )
        )
    if "latency" not in skip:
        out = run("latency.py", "--jobs", "100" if q else "300", "--peers", args.peers)
        rows.append(
            (
                "submit to start p50 / p99 (trio Client)",
                grab(r"submit-to-start (p50 [0-9.]+ ms p99 [0-9.]+ ms)", out),
                "<= 5 ms / <= 20 ms",
            )
        )
        rows.append(
            (
                "submit to finish p50 / p99 (trio Client)",
                grab(r"submit-to-finish (p50 [0-9.]+ ms p99 [0-9.]+ ms)", out),
                "-",
            )
        )
    if "memory" not in skip:
        out = run("memory.py", "--jobs", "100000" if q else "1000000")
        rows.append(("controller memory per queued job", grab(r"(\d+ bytes/job)", out), "<= 1024"))
    if "rpc" not in skip:
        out = run("rpc_cost.py", "--calls", "1000" if q else "3000")
        for kind, label in (("plain", "plain"), ("over one Calls stream", "multiplexed")):
            unary = rf"sequential unary, {kind}: (p50 [0-9.]+ ms p99 [0-9.]+ ms)"
            server_cpu = rf"16 callers, 1 channel, {kind}: [0-9,]+ calls/s, server CPU ([0-9]+ us)"
            rows.append((f"unary RPC latency, {label} (sequential)", grab(unary, out), "-"))
            rows.append(
                (
                    f"unary RPC, {label}, server CPU per call (16 callers)",
                    grab(server_cpu, out),
                    "-",
                )
            )
    if "restart" not in skip:
        jobs = 100_000 if q else 1_000_000
        out = run("restart.py", "--jobs", str(jobs))
        rows.append(
            (
                f"restart with {jobs:,} queued jobs: serves after",
                grab(r"restart: serves after ([0-9.]+ s)", out),
                "<= 5 s",
            )
        )
        loaded = grab(r"queue loaded after ([0-9.]+ s)", out)
        rows.append(("  its queue read back after", loaded, "-"))
    if "cli" not in skip:
        out = run("cli_start.py", "--runs", "5" if q else "20")
        for name, target in (("status", "<= 150 ms"), ("submit", "<= 200 ms")):
            wall = grab(rf"burst {name}: wall median (\d+ ms)", out)
            cpu = grab(rf"burst {name}: .* CPU median (\d+ ms)", out)
            rows.append((f"burst {name} start to end, wall (CPU)", f"{wall} ({cpu})", target))
    if "list" not in skip:
        # 1,000,000 jobs is the target's size; a quick run lists 100,000.
        out = run("list_speed.py", "--jobs", "100000" if q else "1000000")
        rows.append(
            (
                "burst list: first line after",
                grab(r"first line after ([0-9.]+ s)", out),
                "<= 1 s",
            )
        )
        rows.append(("burst list: lines/s", grab(r"([0-9,]+) lines/s", out), ">= 100,000"))
    if "million" not in skip:
        count, sample_at = (100_000, 10_000) if q else (1_000_000, 100_000)
        out = run("million.py", "--jobs", str(count), "--sample-at", str(sample_at))
        rows.append(
            (
                f"{count:,} jobs end to end: rate / 10,000-job rate",
                grab(r"jobs/s: ([0-9.]+) x the reference", out),
                ">= 0.9",
            )
        )
        for role in ("controller", "worker 1", "worker 2"):
            rows.append(
                (
                    f"  {role} RSS at the end / after {sample_at:,}",
                    grab(rf"RSS {role}: .*: ([0-9.]+|n/a) \[", out),
                    "<= 1.2",
                )
            )
        rows.append(("  burst wait RSS, largest", grab(r"at most (\d+ MiB)", out), "bounded"))
    if "steal" not in skip and (HERE / "steal_makespan.py").exists():
        run("steal_makespan.py")

    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\nsummary ({machine()})")
    print(f"{'benchmark'.ljust(width)}  figure  [target]")
    for name, figure, target in rows:
        print(f"{name.ljust(width)}  {figure}  [{target}]")


if __name__ == "__main__":
    main()
