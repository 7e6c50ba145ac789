"""burstd.transport with a real server on 127.0.0.1 (port 0) and real clients: ours, grpcio."""

from __future__ import annotations

import concurrent.futures
import functools
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio
from loguru import logger

from burstd import transport
from burstd.limits import ConnectionLimits
from burstd.transport import Channel, RpcError, Service, StatusCode
from burstd.transport.mux import MAX_IN_FLIGHT, Pending
from proto.burst.v1 import mux_pb2
from proto.grpc.health.v1 import health_pb2

# Any small message type does for these tests: its one string field carries the payload.
Msg = health_pb2.HealthCheckRequest
SVC = "burst.test.Echo"
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


class Calls:
    """What the test service saw."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.handler_cancelled = trio.Event()
        self.release = trio.Event()


def echo_service(calls: Calls) -> Service:
    service = Service(SVC)

    async def echo(request: Msg, metadata: Mapping[str, str]) -> Msg:
        suffix = metadata.get("x-tag", "")
        return Msg(service=request.service + suffix)

    async def slow_echo(request: Msg, metadata: Mapping[str, str]) -> Msg:
        calls.in_flight += 1
        calls.max_in_flight = max(calls.max_in_flight, calls.in_flight)
        try:
            await calls.release.wait()
            return Msg(service=request.service)
        finally:
            calls.in_flight -= 1

    async def hang(request: Msg, metadata: Mapping[str, str]) -> Msg:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            calls.cancelled += 1
            calls.handler_cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def huge(request: Msg, metadata: Mapping[str, str]) -> Msg:
        return Msg(service="x" * (32 * 2**20 + 1))

    async def not_found(request: Msg, metadata: Mapping[str, str]) -> Msg:
        raise transport.NotFound(f"job {request.service!r} is unknown")

    async def crash(request: Msg, metadata: Mapping[str, str]) -> Msg:
        return Msg(service=str(1 // 0))

    async def grouped(request: Msg, metadata: Mapping[str, str]) -> Msg:
        async def fail() -> None:
            raise transport.FailedPrecondition("stale lease")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return Msg()

    async def count(request: Msg, metadata: Mapping[str, str]) -> AsyncIterator[Msg]:
        for i in range(int(request.service)):
            yield Msg(service=str(i))

    async def big(request: Msg, metadata: Mapping[str, str]) -> AsyncIterator[Msg]:
        for i in range(4):  # 12 MiB in all: more than the client's 8 MiB stream window
            yield Msg(service=str(i) * (3 << 20))

    async def count_then_fail(request: Msg, metadata: Mapping[str, str]) -> AsyncIterator[Msg]:
        yield Msg(service="0")
        yield Msg(service="1")
        raise transport.ResourceExhausted("queue full")

    async def endless(request: Msg, metadata: Mapping[str, str]) -> AsyncIterator[Msg]:
        try:
            i = 0
            while True:
                yield Msg(service=str(i))
                i += 1
                await trio.sleep(0.01)
        except trio.Cancelled:
            calls.cancelled += 1
            calls.handler_cancelled.set()
            raise

    async def finish_anyway(request: Msg, metadata: Mapping[str, str]) -> Msg:
        # Ends once released, even if the client gave up meanwhile (as a poll that leased
        # jobs in the pass that saw the client's reset).
        with trio.CancelScope(shield=True):
            await calls.release.wait()
        return Msg(service=request.service)

    for name, handler in [
        ("FinishAnyway", finish_anyway),
        ("Echo", echo),
        ("SlowEcho", slow_echo),
        ("Hang", hang),
        ("NotFound", not_found),
        ("Huge", huge),
        ("Crash", crash),
        ("Grouped", grouped),
    ]:
        service.unary(name, Msg, handler)
    service.server_stream("Count", Msg, count)
    service.server_stream("Big", Msg, big)
    service.server_stream("CountThenFail", Msg, count_then_fail)
    service.server_stream("Endless", Msg, endless)
    return service


@asynccontextmanager
async def server(
    calls: Calls, port: int = 0, *, serving: list[bool] | None = None
) -> AsyncIterator[int]:
    state = serving if serving is not None else [True]
    services = [echo_service(calls), transport.health_service(lambda: state[0])]
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, HOST, port, services)
        yield bound
        nursery.cancel_scope.cancel()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture(params=[False, True], ids=["plain", "mux"])
def mux(request: pytest.FixtureRequest) -> bool:
    """Unary calls as HTTP/2 streams of their own, or over one Calls stream: same promises."""
    return bool(request.param)


async def echo(channel: Channel, text: str, timeout: float = 5.0) -> str:
    reply = await channel.unary(SVC, "Echo", Msg(service=text), Msg, timeout=timeout)
    return reply.service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- unary and streams ----------------------------------------------------------------------------


async def test_echo_unary_with_metadata(calls: Calls, mux: bool) -> None:
    async with (
        server(calls) as port,
        Channel(HOST, port, metadata={"x-tag": "!"}, multiplex=mux) as channel,
    ):
        assert await echo(channel, "hello") == "hello!"
        reply = await channel.unary(
            SVC, "Echo", Msg(service="a"), Msg, timeout=5, metadata={"x-tag": "?"}
        )
        assert reply.service == "a?"


async def test_server_stream(calls: Calls) -> None:
    async with server(calls) as port, Channel(HOST, port) as channel:
        replies = channel.server_stream(SVC, "Count", Msg(service="5"), Msg, timeout=5)
        assert [reply.service async for reply in replies] == ["0", "1", "2", "3", "4"]
        empty = channel.server_stream(SVC, "Count", Msg(service="0"), Msg)
        assert [reply async for reply in empty] == []


async def test_replies_beyond_the_flow_control_window_arrive_whole(calls: Calls) -> None:
    """The server waits for the slow reader's flow-control credit, then sends the rest."""
    async with server(calls) as port, Channel(HOST, port) as channel:
        got = []
        async for reply in channel.server_stream(SVC, "Big", Msg(), Msg, timeout=30):
            await trio.sleep(0.2)  # the server is meanwhile blocked on the window
            got.append(reply.service)
        assert got == [str(i) * (3 << 20) for i in range(4)]
        large = "x" * (3 << 20)  # and a large request
        assert await echo(channel, large, timeout=30) == large


async def test_leaving_a_channel_stops_its_connection_at_once(calls: Calls) -> None:
    """The channel stops its reader itself rather than waiting for its 1 s cap on closing (a
    CLI command would take a second longer)."""
    async with server(calls) as port:
        started = trio.current_time()
        async with Channel(HOST, port) as channel:
            assert await echo(channel, "x") == "x"
        assert trio.current_time() - started < 0.9


async def test_server_stream_error_after_replies(calls: Calls) -> None:
    async with server(calls) as port, Channel(HOST, port) as channel:
        got = []
        with pytest.raises(transport.ResourceExhausted, match="queue full"):
            async for reply in channel.server_stream(SVC, "CountThenFail", Msg(), Msg, timeout=5):
                got.append(reply.service)
        assert got == ["0", "1"]


async def test_leaving_a_stream_early_stops_the_handler(calls: Calls) -> None:
    async with server(calls) as port, Channel(HOST, port) as channel:
        async with aclosing(channel.server_stream(SVC, "Endless", Msg(), Msg)) as replies:
            async for reply in replies:
                if reply.service == "3":
                    break
        with trio.fail_after(5):
            await calls.handler_cancelled.wait()
        assert await echo(channel, "still fine") == "still fine"
        # a plain `break` too: trio finalizes the abandoned generator, which resets the call
        # (and warns that aclosing would have done it at once)
        with pytest.warns(ResourceWarning, match="aclosing"):
            async for reply in channel.server_stream(SVC, "Endless", Msg(), Msg):
                if reply.service == "2":
                    break
        with trio.fail_after(5):
            while calls.cancelled < 2:
                await trio.sleep(0.01)


async def test_a_reply_to_a_call_the_client_gave_up_on_is_dropped_quietly(calls: Calls) -> None:
    """Found by tests/test_fuzz.py: a handler that returned after the client reset its call
    raised h2's StreamClosedError from the reply's headers, logged as an unexpected error."""
    records: list[str] = []
    sink = logger.add(records.append, level="ERROR", format="{message}\n{exception}")
    try:
        async with server(calls) as port, Channel(HOST, port) as channel:
            with pytest.raises(transport.DeadlineExceeded):
                await channel.unary(SVC, "FinishAnyway", Msg(service="x"), Msg, timeout=0.2)
            await trio.sleep(0.1)  # the server reads the reset
            calls.release.set()
            assert await echo(channel, "still fine") == "still fine"
    finally:
        logger.remove(sink)
    assert records == []


# -- errors ---------------------------------------------------------------------------------------


async def test_status_error_reaches_client(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        with pytest.raises(transport.NotFound) as caught:
            await channel.unary(SVC, "NotFound", Msg(service="job-7"), Msg, timeout=5)
        assert caught.value.code is StatusCode.NOT_FOUND
        assert caught.value.message == "job 'job-7' is unknown"
        assert str(caught.value) == "NOT_FOUND: job 'job-7' is unknown"
        # raised inside a nursery in the handler: still the handler's status, not INTERNAL
        with pytest.raises(transport.FailedPrecondition, match="stale lease"):
            await channel.unary(SVC, "Grouped", Msg(), Msg, timeout=5)
        with pytest.raises(transport.Unimplemented, match=r"/burst\.test\.Echo/Nope"):
            await channel.unary(SVC, "Nope", Msg(), Msg, timeout=5)


async def test_unexpected_exception_is_internal_and_logged(calls: Calls, mux: bool) -> None:
    records: list[str] = []
    sink = logger.add(records.append, level="ERROR", format="{message}\n{exception}")
    try:
        async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
            with pytest.raises(transport.Internal) as caught:
                await channel.unary(SVC, "Crash", Msg(), Msg, timeout=5)
    finally:
        logger.remove(sink)
    assert caught.value.code is StatusCode.INTERNAL
    assert caught.value.message == "internal error"
    assert "Traceback" not in str(caught.value) and "ZeroDivision" not in str(caught.value)
    assert len(records) == 1
    assert "/burst.test.Echo/Crash failed" in records[0]
    assert "ZeroDivisionError" in records[0] and "Traceback" in records[0]


async def test_corrupt_request_is_invalid_argument(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        with pytest.raises(transport.InvalidArgument) as caught:
            await channel.unary_raw(SVC, "Echo", b"\xff\xff\xff\xff", timeout=5)
        assert caught.value.message == "malformed grpc.health.v1.HealthCheckRequest"
        assert await echo(channel, "after") == "after"


async def test_oversized_request_is_resource_exhausted(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        with pytest.raises(transport.ResourceExhausted, match="over the 33554432-byte limit"):
            await channel.unary_raw(SVC, "Echo", bytes(32 * 2**20 + 1), timeout=5)
        assert await echo(channel, "after") == "after"


async def test_busy_port_is_a_clear_start_up_error(calls: Calls) -> None:
    async with server(calls) as port:
        with pytest.raises(transport.TransportError) as caught:
            await transport.serve(HOST, port, [echo_service(calls)])
        assert str(caught.value) == f"address 127.0.0.1:{port} is already in use"
        assert isinstance(caught.value, OSError)


async def test_deadline_exceeded_and_handler_cancelled(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        start = trio.current_time()
        with pytest.raises(transport.DeadlineExceeded, match="Hang"):
            await channel.unary(SVC, "Hang", Msg(), Msg, timeout=0.2)
        assert trio.current_time() - start < 2
        with trio.fail_after(5):
            await calls.handler_cancelled.wait()
        assert await echo(channel, "next") == "next"
        with pytest.raises(transport.DeadlineExceeded):
            async for _ in channel.server_stream(SVC, "Endless", Msg(), Msg, timeout=0.2):
                pass


async def test_unreachable_port_is_unavailable() -> None:
    port = free_port()
    with pytest.raises(transport.Unavailable) as caught:
        async with Channel(HOST, port):
            pass
    assert str(caught.value) == (
        f"UNAVAILABLE: cannot reach controller at 127.0.0.1:{port}: Connection refused"
    )


async def test_cancelled_call_keeps_the_channel_usable(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        with trio.move_on_after(0.2) as scope:
            await channel.unary(SVC, "Hang", Msg(), Msg, timeout=60)  # a long-poll
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await calls.handler_cancelled.wait()  # the server stopped working on it
        assert await echo(channel, "again") == "again"
        assert calls.cancelled == 1


async def test_200_concurrent_calls_on_one_channel(calls: Calls, mux: bool) -> None:
    results: dict[int, str] = {}

    async def one(channel: Channel, i: int) -> None:
        reply = await channel.unary(SVC, "SlowEcho", Msg(service=str(i)), Msg, timeout=30)
        results[i] = reply.service

    async with (
        server(calls) as port,
        Channel(HOST, port, multiplex=mux) as channel,
        trio.open_nursery() as calls_,
    ):
        for i in range(200):
            calls_.start_soon(one, channel, i)
        # Plain calls beyond the server's limit of streams per connection wait for a stream.
        at_once = 200 if mux else ConnectionLimits().max_streams_per_connection
        with trio.fail_after(20):
            while calls.in_flight < at_once:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert calls.in_flight == at_once
        assert len(channel._live) == 1
        calls.release.set()
    assert calls.max_in_flight == at_once
    assert results == {i: str(i) for i in range(200)}


async def test_health_check(calls: Calls, mux: bool) -> None:
    serving = [True]
    request = health_pb2.HealthCheckRequest()
    response = health_pb2.HealthCheckResponse
    async with (
        server(calls, serving=serving) as port,
        Channel(HOST, port, multiplex=mux) as channel,
    ):
        reply = await channel.unary(transport.HEALTH_SERVICE, "Check", request, response, timeout=5)
        assert reply.status == response.SERVING
        serving[0] = False
        reply = await channel.unary(transport.HEALTH_SERVICE, "Check", request, response, timeout=5)
        assert reply.status == response.NOT_SERVING
        with pytest.raises(transport.NotFound):
            other = health_pb2.HealthCheckRequest(service="nope")
            await channel.unary(transport.HEALTH_SERVICE, "Check", other, response, timeout=5)


async def test_multiplexed_calls_share_one_stream(calls: Calls) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=True) as channel:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(echo, channel, str(i))
        with pytest.raises(transport.NotFound):
            await channel.unary(SVC, "NotFound", Msg(service="j"), Msg, timeout=5)
        assert await echo(channel, "last") == "last"
        mux = channel._mux
        assert mux is not None and mux.failure is None
        assert mux.last_id == 22  # one stream carried every call, the failed one included
        assert list(mux.connection._streams) == [mux.stream.stream_id]


async def start_slow_call(channel: Channel, calls: Calls, nursery: trio.Nursery) -> None:
    """Start a SlowEcho call of "s" and return once its handler runs (until calls.release)."""
    nursery.start_soon(
        functools.partial(channel.unary, timeout=30), SVC, "SlowEcho", Msg(service="s"), Msg
    )
    with trio.fail_after(5):
        while calls.in_flight < 1:
            await trio.sleep(0.01)


async def test_a_reply_over_the_size_limit_fails_that_call_alone(calls: Calls, mux: bool) -> None:
    async with server(calls) as port, Channel(HOST, port, multiplex=mux) as channel:
        async with trio.open_nursery() as nursery:
            await start_slow_call(channel, calls, nursery)
            with pytest.raises(transport.ResourceExhausted, match="over the 33554432-byte limit"):
                await channel.unary(SVC, "Huge", Msg(), Msg, timeout=30)
            calls.release.set()  # the call in flight beside it is answered as usual
        assert await echo(channel, "after") == "after"


async def test_multiplexed_calls_beyond_the_in_flight_limit_are_refused(calls: Calls) -> None:
    refused: list[transport.RpcError] = []

    async def one(channel: Channel, i: int) -> None:
        try:
            await channel.unary(SVC, "SlowEcho", Msg(service=str(i)), Msg, timeout=30)
        except transport.ResourceExhausted as error:
            refused.append(error)

    async with (
        server(calls) as port,
        Channel(HOST, port, multiplex=True) as channel,
        trio.open_nursery() as nursery,
    ):
        for i in range(MAX_IN_FLIGHT + 1):
            nursery.start_soon(one, channel, i)
        with trio.fail_after(20):
            while not refused:
                await trio.sleep(0.01)
        calls.release.set()
    assert calls.max_in_flight == MAX_IN_FLIGHT
    assert [error.message for error in refused] == ["too many calls in flight"]


async def test_a_call_id_in_flight_is_not_reused(calls: Calls) -> None:
    """A client that sends a second call with the id of one in flight gets INVALID_ARGUMENT for
    it; the first call is unaffected."""
    async with server(calls) as port, Channel(HOST, port, multiplex=True) as channel:
        async with trio.open_nursery() as nursery:
            await start_slow_call(channel, calls, nursery)
            mux = channel._mux
            assert mux is not None
            (call_id,) = mux.pending
            first = mux.pending.pop(call_id)
            second = mux.pending[call_id] = Pending()
            request = Msg(service="again").SerializeToString()
            mux.send(mux_pb2.MuxCall(id=call_id, method=f"/{SVC}/Echo", request=request))
            with trio.fail_after(5):
                while second.reply is None:
                    await second.wakeup.wait()
            assert isinstance(second.reply, mux_pb2.MuxReply)
            assert second.reply.code == StatusCode.INVALID_ARGUMENT
            assert second.reply.message == f"call id {call_id} is in flight"
            mux.pending[call_id] = first
            calls.release.set()
        assert first.reply is not None and not isinstance(first.reply, RpcError)
        assert Msg.FromString(first.reply.reply).service == "s"


async def test_a_malformed_call_message_ends_its_stream_alone(calls: Calls) -> None:
    """Bytes that are no MuxCall on a Calls stream (the connection's reader leaves them to the
    stream's task) end that stream with INVALID_ARGUMENT for the calls on it, whose handlers
    stop; the channel's next call opens a new stream."""
    failed = trio.Event()

    async def slow_call(channel: Channel) -> None:
        with pytest.raises(transport.InvalidArgument, match=r"malformed burst\.v1\.MuxCall"):
            await channel.unary(SVC, "SlowEcho", Msg(service="s"), Msg, timeout=30)
        failed.set()

    async with server(calls) as port, Channel(HOST, port, multiplex=True) as channel:
        assert await echo(channel, "before") == "before"
        mux = channel._mux
        assert mux is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_call, channel)
            with trio.fail_after(5):
                while calls.in_flight < 1:
                    await trio.sleep(0.01)
                mux.outgoing.append(b"\xff\xff\xff\xff")
                mux.writer.wake()
                await failed.wait()
                while calls.in_flight:  # the handler was cancelled with its stream
                    await trio.sleep(0.01)
        assert await echo(channel, "after") == "after"
        assert channel._mux is not mux


async def test_multiplexing_falls_back_to_plain_calls_on_a_server_without_it() -> None:
    """A gRPC server that has no burst.v1.Mux service (grpcio here; the prototype's too)."""
    grpc = pytest.importorskip("grpc")
    seen: list[str] = []

    def echo_handler(request: Msg, context: object) -> Msg:
        return Msg(service=request.service + "!")

    class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: object) -> object:
            method = str(getattr(details, "method", ""))
            seen.append(method)
            if method != f"/{SVC}/Echo":
                return None
            return grpc.unary_unary_rpc_method_handler(
                echo_handler,
                request_deserializer=Msg.FromString,
                response_serializer=Msg.SerializeToString,
            )

    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    grpc_server.add_generic_rpc_handlers((Handlers(),))
    port = grpc_server.add_insecure_port(f"{HOST}:0")
    grpc_server.start()
    try:
        async with Channel(HOST, port, multiplex=True) as channel:
            assert await echo(channel, "a") == "a!"
            assert await echo(channel, "b") == "b!"
    finally:
        grpc_server.stop(None)
    assert seen == [f"/{transport.MUX_SERVICE}/Calls", f"/{SVC}/Echo", f"/{SVC}/Echo"]


# -- hops: what needs no pass of the event loop to another task ----------------------------------


class Steps(trio.abc.Instrument):
    """Counts the steps of tasks by name, and who spawned each task."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.spawned_by: dict[str, set[str]] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        parent = trio.lowlevel.current_task().name
        self.spawned_by.setdefault(task.name, set()).add(parent)


async def test_multiplexed_calls_take_no_hop_through_the_streams_tasks(calls: Calls) -> None:
    """On a Calls stream, a call is sent by its caller while the client's writer idles, started
    by the server's connection reader, its reply sent by its handler's task while the server's
    sender idles, and handed to the caller by the client's connection reader: no message waits
    for a pass of the event loop to one of the stream's own tasks."""
    steps = Steps()
    async with server(calls) as port, Channel(HOST, port, multiplex=True) as channel:
        assert await echo(channel, "first") == "first"
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(20):
                assert await echo(channel, str(i)) == str(i)
        finally:
            trio.lowlevel.remove_instrument(steps)
    handler = "burstd.transport.mux.serve_mux.<locals>.run"
    assert steps.spawned_by[handler] == {"burstd.transport.server._serve_connection"}
    assert steps.steps.get("burstd.transport.mux.serve_mux.<locals>.send", 0) == 0
    # The client's writer and reader of the stream (both run by this wrapper).
    assert steps.steps.get("burstd.transport.mux.MuxClient.run.<locals>.run", 0) == 0


# -- connection loss ------------------------------------------------------------------------------


async def test_lost_connection_fails_calls_and_the_channel_reconnects(mux: bool) -> None:
    port = free_port()
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run_server(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            async with server(Calls(), port):
                task_status.started()
                await trio.sleep_forever()
        stopped.set()

    async def stop_server_soon() -> None:
        await trio.sleep(0.2)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_server)
        async with Channel(HOST, port, multiplex=mux) as channel:
            assert await echo(channel, "one") == "one"
            nursery.start_soon(stop_server_soon)
            with pytest.raises(transport.Unavailable, match=r"connection to controller .* lost"):
                await channel.unary(SVC, "Hang", Msg(), Msg, timeout=10)
            await stopped.wait()
            with pytest.raises(transport.Unavailable, match="cannot reach"):
                await echo(channel, "nobody there")
            async with server(Calls(), port):
                assert await echo(channel, "two") == "two"  # same channel, new connection


async def test_silent_peer_is_dropped_after_a_deadline(mux: bool) -> None:
    """A peer that accepts TCP but never answers (a half-open connection)."""
    accepted: list[trio.SocketStream] = []

    async def black_hole(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        while await stream.receive_some():
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=HOST), black_hole, 0)
        port = listeners[0].socket.getsockname()[1]
        async with Channel(HOST, port, ping_timeout=0.2, multiplex=mux) as channel:
            with pytest.raises(transport.DeadlineExceeded):
                await echo(channel, "x", timeout=0.2)
            await trio.sleep(0.5)  # the ping goes unanswered: the connection is dropped
            with pytest.raises(transport.DeadlineExceeded):
                await echo(channel, "y", timeout=0.2)
        assert len(accepted) == 2  # the second call opened a new connection
        nursery.cancel_scope.cancel()


# -- interoperability and shutdown ----------------------------------------------------------------


async def test_official_grpcio_client_interoperates(calls: Calls) -> None:
    grpc = pytest.importorskip("grpc")

    def call_with_grpcio(port: int) -> list[object]:
        out: list[object] = []
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:

            def method(name: str, serializer: object = Msg.SerializeToString) -> object:
                return channel.unary_unary(
                    f"/{SVC}/{name}",
                    request_serializer=serializer,
                    response_deserializer=Msg.FromString,
                )

            reply = method("Echo")(Msg(service="hi"), timeout=5, metadata=[("x-tag", "+")])
            out.append(reply.service)
            for name, payload, serializer in [
                ("NotFound", Msg(service="j1"), Msg.SerializeToString),
                ("Crash", Msg(), Msg.SerializeToString),
                ("Echo", b"\xff\xff\xff", bytes),
                ("Missing", Msg(), Msg.SerializeToString),
            ]:
                try:
                    method(name, serializer)(payload, timeout=5)
                except grpc.RpcError as error:
                    out.append((error.code(), error.details()))
            try:
                method("Hang")(Msg(), timeout=0.3)
            except grpc.RpcError as error:
                out.append(error.code())
        return out

    async with server(calls) as port:
        result = await trio.to_thread.run_sync(call_with_grpcio, port)
    code = grpc.StatusCode
    assert result == [
        "hi+",
        (code.NOT_FOUND, "job 'j1' is unknown"),
        (code.INTERNAL, "internal error"),
        (code.INVALID_ARGUMENT, "malformed grpc.health.v1.HealthCheckRequest"),
        (code.UNIMPLEMENTED, f"unknown method /{SVC}/Missing"),
        code.DEADLINE_EXCEEDED,
    ]


@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "mux"])
def test_shutdown_prints_nothing(multiplex: bool) -> None:
    """Cancel a server with calls in flight: no warning or traceback on stderr."""
    script = textwrap.dedent(
        f"""
        import logging, sys, trio
        from loguru import logger
        logger.remove(); logger.add(sys.stderr, level="INFO")
        logging.basicConfig(level=logging.WARNING)  # shows purerpc's warnings, if any
        sys.path.insert(0, {str(ROOT)!r})
        from burstd import transport
        from tests.test_transport import Calls, Msg, SVC, echo_service

        async def main():
            async with trio.open_nursery() as nursery:
                port = await nursery.start(transport.serve, "127.0.0.1", 0, [echo_service(Calls())])
                channel = transport.Channel("127.0.0.1", port, multiplex={multiplex})
                async with channel:
                    async def hang():
                        await channel.unary(SVC, "Hang", Msg(), Msg, timeout=30)
                    nursery.start_soon(hang)
                    async for _ in channel.server_stream(SVC, "Count", Msg(service="3"), Msg):
                        pass
                    await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()
            print("done")

        trio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.stdout == "done\n", done.stderr
    assert done.stderr == ""


# -- small pieces ---------------------------------------------------------------------------------


def test_rpc_error_classes() -> None:
    assert isinstance(transport.rpc_error(StatusCode.NOT_FOUND, "x"), transport.NotFound)
    error = transport.rpc_error(StatusCode.DATA_LOSS, "gone")
    assert type(error) is RpcError and error.code is StatusCode.DATA_LOSS
    assert transport.ResourceExhausted("full").code is StatusCode.RESOURCE_EXHAUSTED
    assert transport.PermissionDenied().code is StatusCode.PERMISSION_DENIED
    assert transport.Unauthenticated("token").code is StatusCode.UNAUTHENTICATED
    assert StatusCode.of(99) is StatusCode.UNKNOWN
    with pytest.raises(ValueError):
        RpcError(StatusCode.OK)


def test_registration_mistakes() -> None:
    service = Service(SVC)
    service.unary("Echo", Msg, echo_service(Calls()).methods["Echo"].handler)
    with pytest.raises(ValueError, match="twice"):
        service.unary("Echo", Msg, echo_service(Calls()).methods["Echo"].handler)
    with pytest.raises(ValueError):
        Channel(HOST, 1, metadata={"grpc-timeout": "1"})


# -- a guarded service: the authorize hook, and peers that keep sending bad tokens ---------------


def guarded_service() -> Service:
    """Calls need metadata x-key: "good" (its caller is "alice"), "other" is known but not
    allowed; what the hook returns is the handler's second argument."""

    def authorize(path: str, metadata: Mapping[str, str]) -> str:
        key = metadata.get("x-key", "")
        if key == "other":
            raise transport.PermissionDenied(f"not {path}")
        if key != "good":
            raise transport.Unauthenticated("unknown key")
        return "alice"

    async def whoami(request: Msg, caller: str) -> Msg:
        return Msg(service=f"{caller}:{request.service}")

    service = Service("burst.test.Guarded", authorize)
    service.unary("WhoAmI", Msg, whoami)
    return service


@asynccontextmanager
async def guarded_server() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(transport.serve, HOST, 0, [guarded_service()])
        nursery.cancel_scope.cancel()


async def whoami(channel: Channel, text: str = "x") -> str:
    reply = await channel.unary("burst.test.Guarded", "WhoAmI", Msg(service=text), Msg, timeout=5)
    return reply.service


async def test_the_guard_sees_every_call_before_its_request_is_decoded(mux: bool) -> None:
    async with guarded_server() as port:
        good = Channel(HOST, port, multiplex=mux, metadata={"x-key": "good"})
        other = Channel(HOST, port, multiplex=mux, metadata={"x-key": "other"})
        async with good, other, Channel(HOST, port, multiplex=mux) as none:
            assert await whoami(good, "hi") == "alice:hi"
            with pytest.raises(
                transport.PermissionDenied, match=r"not /burst\.test\.Guarded/WhoAmI"
            ):
                await whoami(other)
            with pytest.raises(transport.Unauthenticated):
                await whoami(none)
            # A malformed request is refused for its missing key, not decoded.
            with pytest.raises(transport.Unauthenticated):
                await none.unary_raw("burst.test.Guarded", "WhoAmI", b"\xff\xff", timeout=5)
            with pytest.raises(transport.InvalidArgument):
                await good.unary_raw("burst.test.Guarded", "WhoAmI", b"\xff\xff", timeout=5)


async def test_a_connection_that_keeps_failing_authentication_is_closed(mux: bool) -> None:
    """After MAX_UNAUTHENTICATED refused calls the server sends GOAWAY and hangs up: the next
    call needs a new connection. A known but refused key (PERMISSION_DENIED) does not count, and
    other connections keep being served."""
    async with guarded_server() as port:
        good = Channel(HOST, port, multiplex=mux, metadata={"x-key": "good"})
        other = Channel(HOST, port, multiplex=mux, metadata={"x-key": "other"})
        async with good, other, Channel(HOST, port, multiplex=mux) as bad:
            first = bad._connection
            for _ in range(transport.MAX_UNAUTHENTICATED - 1):
                with pytest.raises(transport.Unauthenticated):
                    await whoami(bad)
            assert bad._connection is first and first is not None and first.usable
            with pytest.raises((transport.Unauthenticated, transport.Unavailable)):
                await whoami(bad)
            with trio.fail_after(5):
                while first.usable:
                    await trio.sleep(0.01)
            with pytest.raises(transport.Unauthenticated):
                await whoami(bad)  # refused again, on a new connection
            assert bad._connection is not first
            for _ in range(2 * transport.MAX_UNAUTHENTICATED):
                with pytest.raises(transport.PermissionDenied):
                    await whoami(other)
            assert other._connection is not None and other._connection.usable
            assert await whoami(good) == "alice:x"


async def test_an_address_that_guessed_has_its_new_connections_held(
    mux: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a connection was closed for guessing (MAX_UNAUTHENTICATED refusals), the address's
    new connections wait HOLD before they are read, whatever their token: a guesser that
    reconnects gets MAX_UNAUTHENTICATED answers per HOLD. The connections open already keep
    being served at once, and after the hold a new connection is served again."""
    monkeypatch.setattr(transport.server, "HOLD", 2.0)
    async with guarded_server() as port:
        good = Channel(HOST, port, multiplex=mux, metadata={"x-key": "good"})
        async with good, Channel(HOST, port, multiplex=mux) as bad:
            first = bad._connection
            for _ in range(transport.MAX_UNAUTHENTICATED - 1):
                with pytest.raises(transport.Unauthenticated):
                    await whoami(bad)
            with pytest.raises((transport.Unauthenticated, transport.Unavailable)):
                await whoami(bad)
            with trio.fail_after(5):
                while first is not None and first.usable:
                    await trio.sleep(0.01)
            began = trio.current_time()
            assert await whoami(good) == "alice:x"  # open already: not held
            served_at_once = trio.current_time() - began
            late = Channel(HOST, port, multiplex=mux, metadata={"x-key": "good"})
            async with late:
                began = trio.current_time()
                assert await whoami(late) == "alice:x"
                held = trio.current_time() - began
            with pytest.raises(transport.Unauthenticated):
                await whoami(bad)  # the hold is over: a new connection is read again
    print(f"\nopen connection {served_at_once:.3f} s, new one held {held:.3f} s")
    assert held >= 1.9 and served_at_once < held
