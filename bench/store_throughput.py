"""Submit throughput of a real controller with the durable store against the in-memory mode.

For each store (``sqlite`` in a fresh state directory on the local disk, then ``memory``) and each
scenario, a fresh ``burstd controller`` process is started from a config file, with no workers (the
jobs stay queued), and the submissions are timed through the Python client (``burstd.client``):

- ``SubmitJob loop``: one client, one job per call, one call after the other: every call pays a
  commit (fsync) of its own, the worst case for the durable store;
- ``SubmitJob x N clients``: N concurrent clients, one job per call: group commit lets one fsync
  cover every call that arrived during the previous one;
- ``SubmitJobs array x N clients``: N concurrent clients submitting arrays of 1,000 jobs per call.

Usage::

    python bench/store_throughput.py [--clients 20] [--scale 1.0] [--state-parent DIR]

``--scale`` multiplies the number of calls of every scenario. Prints jobs/s side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from burstd.client import Client, process  # noqa: E402

SPEC = process("true", output_dir="/tmp/burst-bench-out")


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs_per_call: int
    clients: int
    calls_per_client: int

    @property
    def total(self) -> int:
        return self.jobs_per_call * self.clients * self.calls_per_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def controller(store: str, work: Path) -> Iterator[str]:
    """A controller process with a fresh state directory; yields its address."""
    state = work / f"state-{store}"
    shutil.rmtree(state, ignore_errors=True)
    config = work / f"{store}.toml"
    config.write_text(
        "[controller]\n"
        f'store = "{store}"\n'
        f'state_dir = "{state}"\n'
        "submission_buffer_capacity = 100000000\n"
    )
    addr = f"127.0.0.1:{free_port()}"
    # Before the controller starts (a BURST_STATE_DIR left by another scenario would override
    # the file's state_dir); the clients then send its admin token.
    os.environ["BURST_STATE_DIR"] = str(state)
    env = {**os.environ, "PYTHONPATH": str(REPO), "BURST_LOG": "warning"}
    log = (work / f"controller-{store}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.burstd", "controller", "--config", str(config),
         "--listen", addr],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        host, port = addr.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"controller ({store}) exited: see {log.name}")
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"controller ({store}) did not listen") from None
                time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _run(addr: str, scenario: Scenario) -> float:
    """Jobs per second of the scenario against the controller at ``addr``.

    Every client connects and makes one warm-up call first; the clock runs from the moment all
    of them are ready until the last one is done.
    """
    go = trio.Event()
    ready = 0
    all_ready = trio.Event()
    counts: list[int] = []

    async def one_client() -> None:
        nonlocal ready
        async with Client.connect(addr, connect_timeout=10) as client:

            async def submit() -> int:
                if scenario.jobs_per_call == 1:
                    await client.submit(SPEC)
                    return 1
                return len(await client.submit_array(SPEC, range(scenario.jobs_per_call)))

            await submit()
            ready += 1
            if ready == scenario.clients:
                all_ready.set()
            await go.wait()
            counts.append(sum([await submit() for _ in range(scenario.calls_per_client)]))

    async with trio.open_nursery() as nursery:
        for _ in range(scenario.clients):
            nursery.start_soon(one_client)
        await all_ready.wait()
        started = time.perf_counter()
        go.set()
    elapsed = time.perf_counter() - started
    assert sum(counts) == scenario.total, (sum(counts), scenario.total)
    return scenario.total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--state-parent", type=Path, default=None, help="where the state directories go"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per scenario and store; the best is shown"
    )
    args = parser.parse_args()
    n: int = args.clients
    scale: float = args.scale

    def calls(count: float) -> int:
        return max(1, round(count * scale))

    scenarios = [
        Scenario("SubmitJob loop, 1 client", 1, 1, calls(1000)),
        Scenario(f"SubmitJob x {n} concurrent clients", 1, n, calls(200)),
        Scenario(f"SubmitJobs array of 1000 x {n} clients", 1000, n, calls(5)),
    ]
    work = Path(tempfile.mkdtemp(prefix="burst-bench-", dir=args.state_parent))
    try:
        results: dict[tuple[str, str], float] = {}
        # Interleaved, best of --repeat: other load on the machine hits both stores alike.
        for scenario in scenarios:
            for _ in range(args.repeat):
                for store in ("sqlite", "memory"):
                    with controller(store, work) as addr:
                        rate = trio.run(_run, addr, scenario)
                    key = scenario.name, store
                    results[key] = max(results.get(key, 0.0), rate)
                    print(
                        f"  {store:6}  {scenario.name:40} {scenario.total:>7} jobs {rate:>9,.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
        print()
        print(
            f"submit throughput, best of {args.repeat} (state dir on {fs_of(work)}; "
            f"{os.cpu_count()} CPUs; clients in one process)"
        )
        print(f"{'scenario':42} {'sqlite':>12} {'memory':>12} {'sqlite/memory':>14}")
        for scenario in scenarios:
            durable = results[scenario.name, "sqlite"]
            memory = results[scenario.name, "memory"]
            print(
                f"{scenario.name:42} {durable:>9,.0f}/s {memory:>9,.0f}/s {durable / memory:>13.0%}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fs_of(path: Path) -> str:
    """The device and file system type holding ``path`` (from /proc/mounts), for the record."""
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mountpoint, fstype, *_ = line.split()
            if str(path).startswith(mountpoint) and len(mountpoint) >= len(best[2]):
                best = (device, fstype, mountpoint)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


if __name__ == "__main__":
    main()
