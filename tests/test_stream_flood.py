"""A real controller under a flood of HTTP/2 streams that never finish (issue 18, item 4).

Attackers on 127.0.0.2 open connections that each open many streams (headers only: no request
ever arrives) and keep them open; a client on 127.0.0.1 makes calls meanwhile. The controller's
memory (RSS, from /proc) is measured before, during and after; the client's latency during the
flood is printed beside its latency idle. Asserted: every call of the client is answered; once
the attackers are gone the controller's RSS is back within 20% of its baseline, or within
ALLOCATOR_SLACK_MB of it (a fresh controller's baseline is ~45 MB, and CPython's allocator keeps
arenas it has freed objects in: 20% of 45 MB is below that granularity, unlike the issue's 260 MB
controller); and a second flood of the same size leaves RSS where the first left it, so what a
connection held is freed, not leaked.

The normal suite floods with BURST_FLOOD_CONNECTIONS = 40 connections of BURST_FLOOD_STREAMS =
100 streams; ``tox -e stress`` with 400 of 100 (as many as the controller lets one connection
open), then 400 of 1,000 (the issue's figures). Latency is printed, never asserted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import trio

from burstd import transport, wire
from proto.burst.v1 import job_pb2
from tests.cluster import Cluster

CONNECTIONS = int(os.environ.get("BURST_FLOOD_CONNECTIONS", "40"))
STREAMS = [int(n) for n in os.environ.get("BURST_FLOOD_STREAMS", "100").split(",")]
ATTACKER = "127.0.0.2"
ALLOCATOR_SLACK_MB = 16.0
LEAK_SLACK_MB = 4.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def flood_bytes(streams: int) -> bytes:
    """A client preface, then ``streams`` calls' headers, none ever followed by a request (the
    same bytes do for every connection: HPACK's state starts afresh on each)."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/{wire.CONTROLLER_SERVICE}/ListJobs"),
        (":authority", "controller"),
        ("te", "trailers"),
        ("content-type", "application/grpc+proto"),
    ]
    for _ in range(streams):
        conn.send_headers(conn.get_next_available_stream_id(), headers)
    data: bytes = conn.data_to_send()
    return data


@contextmanager
def flood(port: int, connections: int, streams: int) -> Iterator[None]:
    data = flood_bytes(streams)
    socks: list[socket.socket] = []
    try:
        for _ in range(connections):
            sock = socket.socket()
            sock.bind((ATTACKER, 0))
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # the controller may close it meanwhile
                sock.send(data)
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


async def latencies(port: int, token: str, calls: int) -> list[float]:
    """Seconds per ListJobs call of a client of its own (each answered, or the test fails)."""
    taken = []
    metadata = {"authorization": f"Bearer {token}"}
    async with transport.Channel("127.0.0.1", port, multiplex=True, metadata=metadata) as channel:
        for _ in range(calls):
            start = time.perf_counter()
            await channel.unary(
                wire.CONTROLLER_SERVICE,
                "ListJobs",
                job_pb2.ListJobsRequest(),
                job_pb2.ListJobsResponse,
                timeout=30,
            )
            taken.append(time.perf_counter() - start)
    return taken


def settle(pid: int, files: int, timeout: float = 60.0) -> None:
    """Wait until the controller has closed the attackers' connections."""
    deadline = time.monotonic() + timeout
    while open_files(pid) > files and time.monotonic() < deadline:
        time.sleep(0.2)


def test_unfinished_streams_do_not_eat_memory(cluster: Cluster) -> None:
    controller = cluster.controller()
    pid, port = controller.pid, cluster.port
    token = cluster.token()
    idle = trio.run(latencies, port, token, 50)  # also warms the controller up
    time.sleep(0.5)
    baseline, files = rss_mb(pid), open_files(pid)
    p50 = statistics.median(idle) * 1e3
    print(f"\ncontroller RSS at rest: {baseline:.1f} MB; ListJobs p50 {p50:.2f} ms idle")
    for streams in STREAMS:
        left = []
        for round_ in (1, 2):
            with flood(port, CONNECTIONS, streams):
                busy = trio.run(latencies, port, token, 50)
                during = rss_mb(pid)
            settle(pid, files)
            time.sleep(1.0)
            after = rss_mb(pid)
            left.append(after)
            ratio = statistics.median(busy) / statistics.median(idle)
            print(
                f"{CONNECTIONS} connections x {streams} unfinished streams, round {round_}: RSS "
                f"{during:.1f} MB during, {after:.1f} MB after ({after / baseline - 1:+.0%}); "
                f"ListJobs p50 {statistics.median(busy) * 1e3:.2f} ms during ({ratio:.1f} x "
                f"idle), max {max(busy) * 1e3:.0f} ms"
            )
            allowed = max(baseline * 1.2, baseline + ALLOCATOR_SLACK_MB)
            assert after <= allowed, f"RSS {after:.1f} MB after, {baseline:.1f} MB before"
        grew = f"RSS grew from {left[0]:.1f} to {left[1]:.1f} MB"
        assert left[1] <= left[0] + LEAK_SLACK_MB, grew
    assert controller.proc.poll() is None
