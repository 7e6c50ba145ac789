"""burstd.transport against frames our own Channel and server never send: a bare HTTP/2 client
and a bare gRPC server (h2 over trio sockets) talk to the real server and the real Channel.

These reach the paths where the transport replaces purerpc's framer (resets, GOAWAY, data for
streams no longer known, malformed headers, oversized messages), the stream-id exhaustion of a
long-lived connection, and the Wakeup primitive every waiting task uses.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import struct
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.errors  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import pytest
import trio

from burstd import transport
from burstd.limits import ConnectionLimits
from burstd.transport import Channel
from burstd.transport.connection import CLIENT_CONFIG, SERVER_CONFIG
from burstd.transport.mux import MuxClient
from burstd.transport.wakeup import Wakeup
from tests.test_transport import HOST, SVC, Calls, Msg, echo, echo_service, server

ECHO = f"/{SVC}/Echo"
IDLE_CONNECTIONS = int(os.environ.get("BURST_IDLE_CONNECTIONS", "200"))


def framed(payload: bytes, length: int | None = None) -> bytes:
    """A gRPC message: not compressed, its length, the bytes."""
    return struct.pack(">?I", False, len(payload) if length is None else length) + payload


# -- Wakeup ---------------------------------------------------------------------------------------


async def test_a_wake_up_before_the_wait_is_kept() -> None:
    wakeup = Wakeup()
    wakeup.wake()
    with trio.fail_after(1):
        await wakeup.wait()  # returns at once: the wake-up came first
    wakeup.wake()
    wakeup.wake()
    await wakeup.wait()
    with trio.move_on_after(0.05) as scope:
        await wakeup.wait()  # wake-ups are not counted: two released one wait
    assert scope.cancelled_caught


async def test_a_wake_up_between_reschedule_and_run_is_not_kept_twice() -> None:
    """Woken twice before it runs, a waiter checks its condition once: no stale wake-up is left
    to return the next wait at once."""
    wakeup = Wakeup()
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await wakeup.wait()
        woken += 1
        await wakeup.wait()
        woken += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert wakeup.waiting
        wakeup.wake()
        wakeup.wake()  # rescheduled already, not yet run
        await trio.testing.wait_all_tasks_blocked()
        assert woken == 1 and wakeup.waiting
        wakeup.wake()
    assert woken == 2


# -- a bare HTTP/2 client against the real server --------------------------------------------------


class RawClient:
    """One HTTP/2 connection driven frame by frame."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.headers: dict[int, dict[str, str]] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}

    async def flush(self) -> None:
        await self.sock.send_all(self.h2.data_to_send())

    def request(self, path: str, *, end: bool = False, encoding: str = "") -> int:
        stream_id: int = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", HOST),
            ("te", "trailers"),
            ("content-type", "application/grpc+proto"),
        ]
        if encoding:
            headers.append(("grpc-encoding", encoding))
        self.h2.send_headers(stream_id, headers, end_stream=end)
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` on the stream, waiting for flow-control credit as needed."""
        while data:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                await self.receive(lambda: self.h2.local_flow_control_window(stream_id) > 0)
                continue
            self.h2.send_data(stream_id, data[:window])
            data = data[window:]
        if end:
            self.h2.end_stream(stream_id)
        await self.flush()

    async def call(self, path: str, payload: bytes) -> int:
        stream_id = self.request(path)
        await self.send(stream_id, framed(payload), end=True)
        return stream_id

    async def receive(self, done: Callable[[], bool]) -> None:
        """Read frames until ``done()``."""
        with trio.fail_after(5):
            while not done():
                chunk = await self.sock.receive_some()
                assert chunk, "the server closed the connection"
                for event in self.h2.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        self.headers.setdefault(event.stream_id, {}).update(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        self.data[event.stream_id] = (
                            self.data.get(event.stream_id, b"") + event.data
                        )
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        self.ended.add(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets[event.stream_id] = event.error_code
                await self.flush()

    async def status(self, stream_id: int) -> tuple[int, str]:
        await self.receive(lambda: stream_id in self.ended)
        headers = self.headers[stream_id]
        return int(headers["grpc-status"]), urllib.parse.unquote(headers.get("grpc-message", ""))


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    async with await trio.open_tcp_stream(HOST, port) as sock:
        client = RawClient(sock)
        client.h2.initiate_connection()
        await client.flush()
        yield client


async def check_still_serving(client: RawClient) -> None:
    """A normal call on the same connection is answered: the connection survived."""
    stream_id = await client.call(ECHO, Msg(service="still here").SerializeToString())
    assert await client.status(stream_id) == (0, "")
    assert Msg.FromString(client.data[stream_id][5:]).service == "still here"


async def test_a_request_ended_with_its_headers_is_refused_alone() -> None:
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(ECHO, end=True)
        await client.flush()
        code, message = await client.status(stream_id)
        assert code == transport.StatusCode.INTERNAL
        assert message == "bad gRPC request: Stream ended before data was sent"
        await check_still_serving(client)


@pytest.mark.parametrize(
    ("path", "why"),
    [("no-slash", "Path should be"), ("/one-part", "not enough values to unpack")],
)
async def test_a_request_with_malformed_headers_is_refused_alone(path: str, why: str) -> None:
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(path)
        await client.flush()
        code, message = await client.status(stream_id)
        assert code == transport.StatusCode.INTERNAL
        assert message.startswith(f"bad gRPC request: {why}")
        await check_still_serving(client)


async def test_data_for_a_finished_stream_is_dropped_and_its_credit_returned() -> None:
    """A client that goes on sending after the server answered (here RESOURCE_EXHAUSTED for an
    oversized message): the server no longer knows the stream; it drops the data, and gives the
    flow-control credit back, so the connection is not starved. More than the connection's
    whole initial window (64 KiB) is sent."""
    limit = SERVER_CONFIG.max_message_length
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(ECHO)
        await client.send(stream_id, framed(b"", length=limit + 1))
        assert (await client.status(stream_id))[0] == transport.StatusCode.RESOURCE_EXHAUSTED
        await client.send(stream_id, b"x" * 300_000, end=True)
        await check_still_serving(client)


async def test_an_oversized_message_fails_its_call_alone() -> None:
    """A message whose prefix announces more than the limit is refused when its prefix arrives
    (the client's own Channel refuses to send one): RESOURCE_EXHAUSTED for that call."""
    limit = SERVER_CONFIG.max_message_length
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(ECHO)
        await client.send(stream_id, framed(b"abc", length=limit + 1))
        code, message = await client.status(stream_id)
        assert code == transport.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in message
        await client.send(stream_id, b"more of the message", end=True)  # dropped
        await check_still_serving(client)


async def test_a_message_with_an_unknown_compression_fails_its_call_alone() -> None:
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(ECHO, encoding="identity")
        compressed = b"\x01" + framed(b"abc")[1:]
        await client.send(stream_id, compressed, end=True)
        code, message = await client.status(stream_id)
        assert code == transport.StatusCode.RESOURCE_EXHAUSTED
        assert "Unsupported compression" in message
        await check_still_serving(client)


# -- a bare gRPC server against the real Channel ---------------------------------------------------


def grpc_headers() -> list[tuple[str, str]]:
    return [(":status", "200"), ("content-type", "application/grpc+proto")]


class RawServer:
    """Answers each call by what its method name asks for; counts the connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.goaway_due = False
        self.refused = 0

    async def handle(self, sock: trio.SocketStream) -> None:
        self.connections += 1
        with contextlib.suppress(trio.BrokenResourceError):  # a client closing with data unread
            await self.serve(sock)

    async def serve(self, sock: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        await sock.send_all(conn.data_to_send())
        paths: dict[int, str] = {}
        self.goaway_due = False
        while True:
            # A GOAWAY goes out on its own, once the client has had the reply before it.
            with trio.move_on_after(0.2 if self.goaway_due else math.inf) as idle:
                chunk = await sock.receive_some()
            if idle.cancelled_caught:
                conn.close_connection()
                await sock.send_all(conn.data_to_send())
                self.goaway_due = False
                continue
            if not chunk:
                return
            if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                continue  # after our GOAWAY: keep the socket open, read nothing more
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = dict(event.headers)[":path"]
                    if paths[event.stream_id] == f"/{transport.MUX_SERVICE}/Calls":
                        # No Mux service here: refused at once, as grpcio does, before the
                        # client's first MuxCall arrives.
                        unimplemented = [*grpc_headers(), ("grpc-status", "12")]
                        conn.send_headers(event.stream_id, unimplemented, end_stream=True)
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.answer(conn, event.stream_id, paths[event.stream_id].rsplit("/", 1)[1])
            await sock.send_all(conn.data_to_send())

    def answer(self, conn: h2.connection.H2Connection, stream_id: int, method: str) -> None:
        grpc = grpc_headers()
        reply = framed(Msg(service=f"{method} {self.connections}").SerializeToString())
        limit = CLIENT_CONFIG.max_message_length
        if method == "Refuse" or (method == "RefuseTwice" and self.refused < 2):
            self.refused += 1
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif method == "Calm":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        elif method == "Html":
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/html")])
            conn.send_data(stream_id, b"<html></html>", end_stream=True)
        elif method == "NoStatus":
            conn.send_headers(stream_id, grpc)
            conn.send_data(stream_id, reply)
            conn.send_headers(stream_id, [("x-no-status", "1")], end_stream=True)
        elif method == "Oversized":
            # The client fails the call when the prefix arrives and forgets the stream: the
            # rest of the message and the trailers are for a stream it no longer knows.
            conn.send_headers(stream_id, grpc)
            conn.send_data(stream_id, framed(b"x" * 100_000, length=limit + 1))
            conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        else:
            conn.send_headers(stream_id, grpc)
            conn.send_data(stream_id, reply)
            conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
            self.goaway_due = method == "GoAway"


@asynccontextmanager
async def raw_server() -> AsyncIterator[tuple[RawServer, int]]:
    raw = RawServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=HOST), raw.handle, 0)
        yield raw, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def raw_call(channel: Channel, method: str, timeout: float = 5.0) -> str:
    reply = await channel.unary("t.Raw", method, Msg(), Msg, timeout=timeout)
    return reply.service


async def test_a_reset_from_the_server_fails_that_call_with_its_status() -> None:
    async with raw_server() as (_, port), Channel(HOST, port) as channel:
        with pytest.raises(transport.ResourceExhausted, match=r"HTTP/2 code 11"):
            await raw_call(channel, "Calm")
        assert await raw_call(channel, "Echo") == "Echo 1"  # same connection


async def test_a_refused_call_is_made_again_until_its_timeout() -> None:
    """REFUSED_STREAM: the server did not start the call (over one of its limits), so the
    client makes it again, as gRPC clients do."""
    async with raw_server() as (raw, port), Channel(HOST, port) as channel:
        assert await raw_call(channel, "RefuseTwice") == "RefuseTwice 1"
        assert raw.refused == 2
        with trio.fail_after(2):
            with pytest.raises(transport.DeadlineExceeded):
                await raw_call(channel, "Refuse", timeout=0.5)
        assert raw.refused > 3
        with pytest.raises(transport.DeadlineExceeded):  # a server stream alike
            async with aclosing(
                channel.server_stream("t.Raw", "Refuse", Msg(), Msg, timeout=0.3)
            ) as replies:
                async for _ in replies:
                    pass


async def test_a_malformed_reply_fails_that_call_alone() -> None:
    async with raw_server() as (_, port), Channel(HOST, port) as channel:
        with pytest.raises(transport.Internal, match="bad reply: Content type"):
            await raw_call(channel, "Html")
        with pytest.raises(transport.Internal, match="bad reply: Expected grpc-status"):
            await raw_call(channel, "NoStatus")
        assert await raw_call(channel, "Echo") == "Echo 1"


async def test_after_goaway_the_channel_opens_a_new_connection() -> None:
    """A GOAWAY that comes when no call is left closes the connection; the next call opens a
    new one."""
    async with raw_server() as (raw, port), Channel(HOST, port) as channel:
        assert await raw_call(channel, "GoAway") == "GoAway 1"
        first = channel._connection
        assert first is not None and first.usable
        with trio.fail_after(5):
            await first.finished.wait()
        assert first.goaway
        assert await raw_call(channel, "Echo") == "Echo 2"
        assert raw.connections == 2


async def test_an_oversized_reply_fails_that_call_and_the_rest_of_it_is_dropped() -> None:
    async with raw_server() as (_, port), Channel(HOST, port) as channel:
        with pytest.raises(transport.ResourceExhausted, match="larger than max"):
            await raw_call(channel, "Oversized")
        assert await raw_call(channel, "Echo") == "Echo 1"  # same connection


async def test_a_refused_calls_stream_falls_back_even_if_its_first_send_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server without the Mux service may refuse and reset the Calls stream before the
    client's writer sends the first MuxCall: the send fails, and the calls still get the
    server's UNIMPLEMENTED (and fall back to plain calls), not "cannot send"."""
    run = MuxClient.run

    async def run_once_refused(mux: MuxClient) -> None:
        mux.connection.flush()  # the stream's headers, which the first MuxCall would carry
        with trio.fail_after(5):
            while not mux.stream.ending:
                await trio.sleep(0.01)
        await run(mux)

    monkeypatch.setattr(MuxClient, "run", run_once_refused)
    async with raw_server() as (_, port):
        # trio runs the stream's writer or reader first at random: 20 channels see both.
        for connections in range(1, 21):
            async with Channel(HOST, port, multiplex=True) as channel:
                assert await raw_call(channel, "Echo") == f"Echo {connections}"


async def test_a_calls_stream_carries_its_first_call_with_its_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server holds a Calls stream whose first message has not come as a pending request
    (for request_timeout_s at most, and max_pending_requests_per_peer per address). The first
    call leaves with the stream's headers, not at the stream's writer's first turn: on a client
    whose event loop is busy (hundreds of TLS handshakes) that turn comes late, and 1,000
    simulated workers behind one address went over the controller's limit."""
    run = MuxClient.run

    async def late_run(mux: MuxClient) -> None:
        mux.connection.flush()  # the connection's reader sent the headers meanwhile
        await trio.sleep(1.0)  # the stream's tasks start late
        await run(mux)

    monkeypatch.setattr(MuxClient, "run", late_run)
    limits = ConnectionLimits(request_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(transport.serve, limits=limits)
        port = await nursery.start(serve, HOST, 0, [echo_service(Calls())])
        async with Channel(HOST, port, multiplex=True) as channel:
            assert await echo(channel, "first") == "first"
        nursery.cancel_scope.cancel()


# -- stream ids ------------------------------------------------------------------------------------


async def test_a_connection_out_of_stream_ids_is_replaced() -> None:
    """HTTP/2 stream ids end at 2**31 - 1: a channel whose connection used the last one opens a
    new connection for the next call, and the old one closes once its calls are done."""
    async with server(Calls()) as port, Channel(HOST, port) as channel:
        assert await echo(channel, "first") == "first"
        old = channel._connection
        assert old is not None
        old.h2.highest_outbound_stream_id = 2**31 - 3
        assert await echo(channel, "last id") == "last id"  # stream 2**31 - 1
        assert channel._connection is old
        assert await echo(channel, "next") == "next"
        assert channel._connection is not old
        with trio.fail_after(5):
            await old.finished.wait()


# -- limits: what one client may make the server hold ----------------------------------------------


@asynccontextmanager
async def limited_server(**limits: Any) -> AsyncIterator[int]:
    services = [echo_service(Calls())]
    serve = functools.partial(transport.serve, limits=ConnectionLimits(**limits))
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve, HOST, 0, services)
        nursery.cancel_scope.cancel()


async def tcp_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to the server from the loopback address ``source`` (its peer address)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((HOST, port))
    return trio.SocketStream(sock)


async def closed_by_server(stream: trio.SocketStream, within: float = 5.0) -> bool:
    """Whether the server closes the connection within ``within`` seconds (what it sent first,
    SETTINGS or GOAWAY, is read and dropped)."""
    with trio.move_on_after(within):
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some():
                pass
        return True
    return False


async def test_the_limit_of_calls_per_connection_is_advertised() -> None:
    async with limited_server(max_streams_per_connection=7) as port, raw_client(port) as client:
        settings: list[h2.events.RemoteSettingsChanged] = []
        with trio.fail_after(5):
            while not settings:
                chunk = await client.sock.receive_some()
                events = client.h2.receive_data(chunk)
                settings += [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
        assert client.h2.remote_settings.max_concurrent_streams == 7


async def test_a_request_that_does_not_arrive_in_time_ends_its_call() -> None:
    async with limited_server(request_timeout_s=0.3) as port, raw_client(port) as client:
        stream_id = client.request(ECHO)  # headers only: the request never comes
        await client.flush()
        code, message = await client.status(stream_id)
        assert code == transport.StatusCode.DEADLINE_EXCEEDED
        assert message == "the request did not arrive within 0.3 s"
        await client.receive(lambda: stream_id in client.resets)  # and the stream is reset
        await check_still_serving(client)


async def test_a_peer_over_its_pending_requests_loses_the_connection() -> None:
    """Calls whose request never ends are held without a task, at most a few per peer: the
    connection that opens one more is closed, and so are the peer's new connections while it
    holds them and for a second after; another peer is served meanwhile, and the peer again
    after that second."""
    async with limited_server(max_pending_requests_per_peer=3) as port:
        async with raw_client(port) as client:
            for _ in range(3):
                client.request(ECHO)
            await client.flush()
            await trio.sleep(0.2)
            refused = await tcp_from(HOST, port)
            assert await closed_by_server(refused)
            other = RawClient(await tcp_from("127.0.0.2", port))  # another address is served
            other.h2.initiate_connection()
            await check_still_serving(other)
            await other.sock.aclose()
            client.request(ECHO)
            await client.flush()
            assert await closed_by_server(client.sock)
        with pytest.raises(transport.Unavailable):  # for a second, its new connections too
            async with Channel(HOST, port) as channel:
                await echo(channel, "at once", timeout=2)
        await trio.sleep(1.1)
        async with Channel(HOST, port) as channel:
            assert await echo(channel, "again") == "again"


async def test_a_peer_over_its_connections_has_new_ones_closed() -> None:
    async with limited_server(max_connections_per_peer=5) as port:
        held = [await tcp_from(HOST, port) for _ in range(5)]
        extra = await tcp_from(HOST, port)
        assert await closed_by_server(extra)
        assert not await closed_by_server(held[0], within=0.2)
        async with Channel(HOST, port) as channel:  # a sixth: refused
            pass
        other = await tcp_from("127.0.0.3", port)  # another address is served
        assert not await closed_by_server(other, within=0.2)
        await held.pop().aclose()
        await trio.sleep(0.1)
        async with Channel(HOST, port) as channel:
            assert await echo(channel, "fifth") == "fifth"
        for stream in [*held, extra, other]:
            await stream.aclose()


async def test_idle_connections_are_closed() -> None:
    """TCP connections that never send a byte (BURST_IDLE_CONNECTIONS, 2,000 in ``tox -e
    stress``, spread over 16 loopback addresses, under the limit per address) are all closed
    after the idle timeout; a channel whose connection idled out opens a new one at its next
    call."""
    async with limited_server(idle_timeout_s=1.0) as port, Channel(HOST, port) as channel:
        assert await echo(channel, "before") == "before"
        first = channel._connection
        idle = [await tcp_from(f"127.0.1.{i % 16 + 1}", port) for i in range(2000)]
        closed = 0

        async def watch(stream: trio.SocketStream) -> None:
            nonlocal closed
            done = await closed_by_server(stream, within=60)
            closed += done
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for stream in idle:
                nursery.start_soon(watch, stream)
        assert closed == 2000
        assert first is not None and first.finished.is_set()  # idled out too
        assert await echo(channel, "after") == "after"
        assert channel._connection is not first


async def test_a_closed_connection_leaves_no_cyclic_garbage() -> None:
    """What a connection held is freed when it closes, not at the next collection of cyclic
    garbage (which the controller runs rarely): h2's own reference cycles are broken."""
    async with server(Calls()) as port:
        async with Channel(HOST, port) as channel:  # warm up (imports, caches)
            assert await echo(channel, "x") == "x"
        await trio.sleep(0.2)
        gc.collect()
        gc.disable()
        try:
            async with Channel(HOST, port) as channel, Channel(HOST, port, multiplex=True) as mux:
                for _ in range(20):
                    assert await echo(channel, "x") == "x"
                    assert await echo(mux, "x") == "x"
            await trio.sleep(0.2)  # the server's ends close too
            assert gc.collect() == 0
        finally:
            gc.enable()
