"""burstd.transport against frames our own Channel and server never send: a bare HTTP/2 client
and a bare gRPC server (h2 over trio sockets) talk to the real server and the real Channel.

These reach the paths where the transport replaces purerpc's framer (resets, GOAWAY, data for
streams no longer known, malformed headers, oversized messages), the stream-id exhaustion of a
long-lived connection, and the Wakeup primitive every waiting task uses.
"""

from __future__ import annotations

import functools
import math
import struct
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.errors  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import pytest
import trio

from burstd import transport
from burstd.transport import Channel
from burstd.transport.connection import CLIENT_CONFIG, SERVER_CONFIG
from burstd.transport.mux import MuxClient
from burstd.transport.wakeup import Wakeup
from tests.test_transport import HOST, SVC, Calls, Msg, echo, server

ECHO = f"/{SVC}/Echo"


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
    """A client that goes on sending after the server answered (here UNIMPLEMENTED at once):
    the server no longer knows the stream; it drops the data, and gives the flow-control credit
    back, so the connection is not starved. More than the connection's whole window is sent."""
    async with server(Calls()) as port, raw_client(port) as client:
        stream_id = client.request(f"/{SVC}/Missing")
        await client.flush()
        assert (await client.status(stream_id))[0] == transport.StatusCode.UNIMPLEMENTED
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

    async def handle(self, sock: trio.SocketStream) -> None:
        self.connections += 1
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
        if method == "Refuse":
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
        with pytest.raises(transport.Unavailable, match=r"reset the call \(HTTP/2 code 7\)"):
            await raw_call(channel, "Refuse")
        with pytest.raises(transport.ResourceExhausted, match=r"HTTP/2 code 11"):
            await raw_call(channel, "Calm")
        assert await raw_call(channel, "Echo") == "Echo 1"  # same connection


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
