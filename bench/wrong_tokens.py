"""What a client guessing tokens costs the others (issue 19: 10,000 wrong tokens from one client
slow others' calls by less than 20%).

A real controller; this process, as a client with a valid token, makes GetJobStatus calls one
after the other (5 ms apart) on one connection: first with the controller otherwise idle, then
while an attacker process sends ``--count`` calls with a wrong token, ``--tasks`` at a time on
one channel, as fast as the controller lets it (the channel reconnects whenever it is cut off).
Prints the good client's p50 and p99 latency in both phases, their ratio beside the 1.20 target,
what happened to the wrong calls (refused, cut off with their connection, connections opened),
the controller's CPU time per wrong call, and the load average.

The controller closes a connection after MAX_UNAUTHENTICATED refusals and holds the address's
next connections for ``transport.server.HOLD`` before reading them, so the attacker's pace is
about ``--tasks`` calls per HOLD. It runs at ``--attacker-nice`` (default 0): on this 2-core
machine its own CPU, which a real attacker spends on its own machine, competes with the
controller and the good client.

Usage::

    python bench/wrong_tokens.py [--count 10000] [--tasks 100] [--idle-seconds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, burst_env, cpu_seconds, load, machine, median, percentile

TARGET = 1.20
CALL_TIMEOUT = 20.0
WRONG_TOKEN = "burst_wrong"
BURST = (sys.executable, "-m", "cli.burst")


async def get_status(ch: Any, request: Any) -> None:
    from proto.burst.v1 import job_pb2

    await ch.unary(
        "burst.v1.ControllerRpc",
        "GetJobStatus",
        request,
        job_pb2.GetJobStatusResponse,
        timeout=CALL_TIMEOUT,
    )


async def attack(port: int, count: int, tasks: int) -> None:
    """The attacker: ``count`` GetJobStatus calls with a wrong token, ``tasks`` at a time, on a
    channel that reconnects whenever the server cuts it off. Prints ``refused cut_off
    connections unreachable`` (a call that found the server's door closed is unreachable)."""
    from burstd import auth, transport
    from burstd.logs import logger
    from proto.burst.v1 import job_pb2

    logger.remove()  # the channel's DEBUG line per connection cut off is not the figure
    seen = {"refused": 0, "cut off": 0, "unreachable": 0}
    connections = [0]
    last: list[object] = [None]
    request = job_pb2.GetJobStatusRequest(job_id="job-00000001")
    async with transport.Channel("127.0.0.1", port, metadata=auth.bearer(WRONG_TOKEN)) as ch:

        async def guess(calls: int) -> None:
            for _ in range(calls):
                if ch._connection is not last[0]:
                    connections[0] += 1
                    last[0] = ch._connection
                try:
                    await get_status(ch, request)
                except transport.Unauthenticated:
                    seen["refused"] += 1
                except transport.Unavailable as error:
                    gone = "cannot reach" in str(error)
                    seen["unreachable" if gone else "cut off"] += 1

        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(guess, count // tasks + (index < count % tasks))
    print(seen["refused"], seen["cut off"], connections[0], seen["unreachable"], flush=True)


async def latencies(port: int, token: str, job_id: str, stop: object) -> list[float]:
    """The good client's GetJobStatus latencies, one call every 5 ms, until ``stop()``."""
    from burstd import auth, transport
    from proto.burst.v1 import job_pb2

    times: list[float] = []
    request = job_pb2.GetJobStatusRequest(job_id=job_id)
    async with transport.Channel("127.0.0.1", port, metadata=auth.bearer(token)) as ch:
        while not stop():  # type: ignore[operator]
            began = time.perf_counter()
            await get_status(ch, request)
            times.append(time.perf_counter() - began)
            await trio.sleep(0.005)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--attacker-nice", type=int, default=0)
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        trio.run(attack, args.attack, args.count, args.tasks)
        return

    from bench._common import start_controller

    print(f"wrong tokens: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        ctl, port = start_controller(tmp, "sqlite", 1_000_000)
        try:
            token = Path(tmp, "state", "admin.token").read_text().strip()
            env = burst_env()
            submitted = subprocess.run(
                [*BURST, "--controller", f"127.0.0.1:{port}", "submit", "process", "true"],
                cwd=REPO,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            job_id = submitted.stdout.strip()
            calm_until = time.monotonic() + args.idle_seconds
            idle_cpu = cpu_seconds(ctl.pid)
            idle = trio.run(latencies, port, token, job_id, lambda: time.monotonic() > calm_until)
            idle_cpu = (cpu_seconds(ctl.pid) - idle_cpu) / args.idle_seconds
            print(
                f"  idle: p50 {median(idle) * 1e3:.2f} ms, p99 {percentile(idle, 0.99) * 1e3:.2f}"
                f" ms ({len(idle)} calls; controller {idle_cpu * 100:.0f}% of a core), {load()}"
            )
            cpu0, began = cpu_seconds(ctl.pid), time.perf_counter()
            attacker = subprocess.Popen(
                ["nice", "-n", str(args.attacker_nice), sys.executable, __file__,
                 "--attack", str(port), "--count", str(args.count), "--tasks", str(args.tasks)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            try:
                during = trio.run(
                    latencies, port, token, job_id, lambda: attacker.poll() is not None
                )
                out, _ = attacker.communicate(timeout=60)
            finally:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
            wall = time.perf_counter() - began
            cpu = cpu_seconds(ctl.pid) - cpu0
        finally:
            ctl.terminate()
            ctl.wait()
    refused, cut_off, connections, unreachable = map(int, out.split())
    ratio = median(during) / median(idle)
    print(
        f"  during {args.count:,} wrong tokens ({args.tasks} at a time, attacker nice "
        f"{args.attacker_nice}, {wall:.1f} s): p50 {median(during) * 1e3:.2f} ms, p99 "
        f"{percentile(during, 0.99) * 1e3:.2f} ms ({len(during)} calls), {load()}"
    )
    print(
        f"  wrong calls: {refused} refused, {cut_off} cut off with their connection, "
        f"{unreachable} found the door closed; {connections} connections; controller "
        f"{cpu / wall * 100:.0f}% of a core (with the good client's calls), "
        f"{(cpu - idle_cpu * wall) / args.count * 1e6:.0f} us per wrong call beyond idle"
    )
    print(f"  others' p50 during / idle: {ratio:.2f} (target < {TARGET:.2f})")


if __name__ == "__main__":
    main()
