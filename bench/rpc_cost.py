"""The transport's cost per RPC: latency, throughput and server CPU per call, over loopback.

A server subprocess runs ``burstd.transport.serve`` with two trivial methods: the standard health
``Check`` (unary) and ``bench.Rpc/Stream`` (server-streaming: as many replies as the request's
``service`` field says, as a decimal number). This process then measures, as a client:

- latency: p50 and p99 of ``--calls`` sequential unary calls on one channel;
- throughput: unary calls/s with ``--callers`` concurrent callers on one channel (these two
  phases as plain calls, then multiplexed over one Calls stream), then the same plain callers
  spread over ``--channels`` channels;
- streaming: replies/s of one server stream of ``--messages`` replies;

and, per phase, the server's CPU time (user + system, from /proc) per call or message, and this
client process's CPU time per call. Nothing is pass/fail; compare figures within one run, or
as interleaved pairs of trees (the machine is shared and noisy).

Usage::

    python bench/rpc_cost.py [--calls 3000] [--callers 16] [--channels 4] [--messages 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, burst_env, cpu_seconds, machine, percentile

STREAM_SERVICE = "bench.Rpc"


async def serve_main() -> None:
    """The server side: print the bound port, serve until killed."""
    from loguru import logger

    from burstd import transport
    from proto.grpc.health.v1 import health_pb2

    logger.remove()  # the transport's per-connection DEBUG lines are not part of the cost

    async def stream(
        request: health_pb2.HealthCheckRequest, metadata: Mapping[str, str]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        reply = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        for _ in range(int(request.service)):
            yield reply

    streaming = transport.Service(STREAM_SERVICE)
    streaming.server_stream("Stream", health_pb2.HealthCheckRequest, stream)
    services = [transport.health_service(lambda: True), streaming]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(transport.serve, "127.0.0.1", 0, services)
        print(port, flush=True)


class Phase:
    """CPU time of the server and of this process over one phase of the benchmark."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.server0 = cpu_seconds(server_pid)
        self.client0 = time.process_time()
        self.wall0 = time.perf_counter()

    def report(self, what: str, count: int, unit: str) -> None:
        wall = time.perf_counter() - self.wall0
        server_us = (cpu_seconds(self.server_pid) - self.server0) / count * 1e6
        client_us = (time.process_time() - self.client0) / count * 1e6
        print(
            f"  {what}: {count / wall:,.0f} {unit}/s, server CPU {server_us:.0f} us/{unit[:-1]},"
            f" client CPU {client_us:.0f} us/{unit[:-1]}",
            flush=True,
        )


async def client_main(port: int, server_pid: int, args: argparse.Namespace) -> None:
    from burstd import transport
    from proto.grpc.health.v1 import health_pb2

    request = health_pb2.HealthCheckRequest()
    reply_type = health_pb2.HealthCheckResponse

    def caller(channel: transport.Channel, calls: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for _ in range(calls):
                await channel.unary(
                    transport.HEALTH_SERVICE, "Check", request, reply_type, timeout=30
                )

        return run

    for multiplex in (False, True):
        kind = "over one Calls stream" if multiplex else "plain"
        async with transport.Channel("127.0.0.1", port, multiplex=multiplex) as channel:
            await caller(channel, 200)()  # warm-up: imports, first connection, caches
            latencies: list[float] = []
            phase = Phase(server_pid)
            for _ in range(args.calls):
                t0 = time.perf_counter()
                await channel.unary(
                    transport.HEALTH_SERVICE, "Check", request, reply_type, timeout=30
                )
                latencies.append((time.perf_counter() - t0) * 1000)
            print(
                f"  sequential unary, {kind}: p50 {percentile(latencies, 0.5):.3f} ms"
                f" p99 {percentile(latencies, 0.99):.3f} ms",
                flush=True,
            )
            phase.report(f"sequential unary, {kind}", args.calls, "calls")

            per_caller = args.calls // args.callers
            phase = Phase(server_pid)
            async with trio.open_nursery() as nursery:
                for _ in range(args.callers):
                    nursery.start_soon(caller(channel, per_caller))
            phase.report(
                f"{args.callers} callers, 1 channel, {kind}", per_caller * args.callers, "calls"
            )

    async with transport.Channel("127.0.0.1", port) as channel:
        phase = Phase(server_pid)
        stream_request = health_pb2.HealthCheckRequest(service=str(args.messages))
        received = 0
        async for _ in channel.server_stream(
            STREAM_SERVICE, "Stream", stream_request, reply_type, timeout=300
        ):
            received += 1
        phase.report("one server stream", received, "messages")

    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(transport.Channel("127.0.0.1", port))
            for _ in range(args.channels)
        ]
        phase = Phase(server_pid)
        async with trio.open_nursery() as nursery:
            for i in range(args.callers):
                nursery.start_soon(caller(channels[i % args.channels], per_caller))
        phase.report(
            f"{args.callers} callers, {args.channels} channels", per_caller * args.callers, "calls"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve_main)
        return
    print(f"rpc cost: transport server in a subprocess, client here; {machine()}", flush=True)
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        cwd=REPO,
        env=burst_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        trio.run(client_main, port, server.pid, args)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
