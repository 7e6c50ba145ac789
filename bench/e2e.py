"""End to end: N ``/bin/true`` array jobs through ``burstd up --workers 2`` against the peers.

Each round runs, one after the other on the same machine:

- burst: ``burstd up --workers 2 --slots 2`` (controller with its durable store, 2 workers,
  output files captured per job), then one client submits an array of N jobs and waits for all
  of them; timed from the submission to the last job's end, cluster start-up not counted;
- ``xargs -P 2`` running ``/bin/true`` N times (no output capture): the spawn limit;
- HyperQueue (``peer_hq.py``, 2 cores, output files per task) and Dask (``peer_dask.py``, 2
  workers x 2 threads), each from its own cached venv; skipped with the reason if not installable.

Usage::

    python bench/e2e.py [--jobs 10000] [--rounds 3] [--peers hyperqueue,dask] [--slots N] [--tls]

``--tls``: burst's controller and peer ports serve TLS (``burstd up --tls-cert ...``), its
workers and the client use it.

Prints each run and the median jobs/s per system. The runs' files are deleted once all have run
(a deletion of many files slows the file creations of the runs after it on this machine).
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
    KEEP,
    PEERS,
    REPO,
    burst_env,
    cpu_seconds,
    free_port,
    load,
    machine,
    make_pki,
    median,
    peer_python,
    rate_of,
)


def daemon_cpu() -> dict[int, tuple[float, float]]:
    """CPU seconds of the daemons of the ``burstd up`` this client runs under (its siblings):
    each one's own, and with its descendants (the controller's store process, a worker's job
    guard; a job running at that instant adds its few hundred microseconds)."""
    import os

    up = os.getppid()
    children = Path(f"/proc/{up}/task/{up}/children").read_text().split()
    return {
        pid: (cpu_seconds(pid, descendants=False), cpu_seconds(pid))
        for pid in map(int, children)
        if pid != os.getpid()
    }


async def _submit_and_wait(addr: str, jobs: int) -> tuple[float, int]:
    """Submit the array and wait for it; returns seconds and failed jobs."""
    from burstd.client import Client, process

    async with Client.connect(addr) as client:
        start = time.perf_counter()
        ids = await client.submit_array(process("/bin/true"), range(jobs))
        async for _ in client.wait(ids):
            pass
        elapsed = time.perf_counter() - start
        failed = 0
        async for _ in client.list_jobs("failed"):
            failed += 1
    return elapsed, failed


def client_main(jobs: int) -> None:
    """Inside ``burstd up -- ...``: submit the array, wait for it, print the figure."""
    import os

    import trio

    cpu0, client0 = daemon_cpu(), time.process_time()
    elapsed, failed = trio.run(_submit_and_wait, os.environ["BURST_CONTROLLER"], jobs)
    cpu1, client = daemon_cpu(), (time.process_time() - client0) / jobs * 1e6
    # The first child of `burstd up` is the controller, the others are workers.
    pids = sorted(pid for pid in cpu1 if pid in cpu0)
    own = [(cpu1[pid][0] - cpu0[pid][0]) / jobs * 1e6 for pid in pids]
    kids = [(cpu1[pid][1] - cpu0[pid][1]) / jobs * 1e6 - own[i] for i, pid in enumerate(pids)]
    cpu = (
        f"controller {own[0]:.0f} + store {kids[0]:.0f},"
        f" workers {sum(own[1:]):.0f} + guards {sum(kids[1:]):.0f}, client {client:.0f}"
        if own
        else "n/a"
    )
    print(
        f"burst {jobs} jobs {elapsed:.2f} s {jobs / elapsed:.0f} jobs/s failed={failed}"
        f" (daemon CPU us/job: {cpu})"
    )


def run_burst(jobs: int, slots: int | None, tls: bool, keep: str) -> float | None:
    """One burst run; its state and output files stay in ``keep`` (see ``main``)."""
    tmp = tempfile.mkdtemp(prefix="burst-e2e-", dir=keep)
    cmd = [sys.executable, "-m", "cli.burstd", "up", "--workers", "2"]
    cmd += ["--listen", f"127.0.0.1:{free_port()}", "--state-dir", f"{tmp}/state"]
    cmd += ["--output-dir", f"{tmp}/out"]
    if tls:
        pki = make_pki(tmp)
        cmd += ["--tls-ca", f"{pki}/ca.pem", "--tls-cert", f"{pki}/server.pem"]
        cmd += ["--tls-key", f"{pki}/server-key.pem"]
    if slots:
        cmd += ["--slots", str(slots)]
    cmd += ["--", sys.executable, str(Path(__file__).resolve()), "--client", str(jobs)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=burst_env(), capture_output=True, text=True, timeout=1800
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("burst ")), "")
    if not line:
        print(f"  burst: failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return None
    outputs = sum(1 for _ in Path(tmp, "out").rglob("*.stdout"))
    print(f"  {line} outputs={outputs}")
    return rate_of(line)


def run_xargs(jobs: int) -> float:
    seq = "\n".join("x" for _ in range(jobs)) + "\n"
    start = time.perf_counter()
    subprocess.run(["xargs", "-P", "2", "-n", "1", "/bin/true"], input=seq, text=True, check=True)
    elapsed = time.perf_counter() - start
    print(f"  xargs -P 2 {jobs} jobs {elapsed:.2f} s {jobs / elapsed:.0f} jobs/s")
    return jobs / elapsed


def run_peer(name: str, jobs: int, keep: str) -> float | None:
    python, why = peer_python(name)
    if python is None:
        print(f"  {name}: skipped: {why}")
        return None
    peer = PEERS[name]
    proc = subprocess.run(
        [python, str(BENCH / peer.throughput), str(jobs), *peer.args],
        env={**os.environ, KEEP: keep},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or rate_of(line) is None:
        print(f"  {name}: failed (exit {proc.returncode}): {proc.stderr[-1000:]}")
        return None
    print(f"  {line}")
    return rate_of(line)


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default="hyperqueue,dask")
    parser.add_argument(
        "--slots", type=int, default=2, help="slots per burst worker (2 x 2, as Dask's 2 x 2)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="burst over TLS: the controller and the workers' peer ports serve it, all use it",
    )
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client_main(args.client)
        return {}
    peers = [p for p in args.peers.split(",") if p]
    tls = ", burst over TLS" if args.tls else ""
    print(f"end to end: {args.jobs} /bin/true jobs, {args.rounds} rounds{tls}; {machine()}")
    rates: dict[str, list[float]] = {}
    # Every run's files are deleted only once all have run: ext4 without a journal (this
    # machine's) skips inodes freed in the last minutes when it allocates one, so the tens of
    # thousands of output files one run deleted made each file the next run created cost the
    # worker several times more (docs/benchmarks.md).
    with tempfile.TemporaryDirectory(prefix="burst-e2e-") as keep:
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no} ({load()})")
            for name in ["burst", "xargs -P 2", *peers]:
                if name == "burst":
                    rate = run_burst(args.jobs, args.slots, args.tls, keep)
                elif name == "xargs -P 2":
                    rate = run_xargs(args.jobs)
                else:
                    rate = run_peer(name, args.jobs, keep)
                if rate is not None:
                    rates.setdefault(name, []).append(rate)
    summary = {name: median(values) for name, values in rates.items()}
    print("median jobs/s: " + ", ".join(f"{k} {v:.0f}" for k, v in summary.items()))
    best_peer = max((v for k, v in summary.items() if k not in ("burst", "xargs -P 2")), default=0)
    if "burst" in summary and best_peer:
        print(f"burst / best peer: {summary['burst'] / best_peer:.2f}")
    if "burst" in summary and "xargs -P 2" in summary:
        print(f"burst / xargs -P 2: {summary['burst'] / summary['xargs -P 2']:.2f}")
    return summary


if __name__ == "__main__":
    main()
