"""burstd.transport.oneshot (the blocking channel of short-lived programs) against the real trio
server of tests/test_transport.py: the same replies and errors as the trio channel's unary calls.
The blocking calls run in a thread, the server in the test's trio loop."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

from burstd import transport
from burstd.transport import oneshot
from tests.test_transport import HOST, SVC, Calls, Msg, free_port, server

T = TypeVar("T")


async def blocking(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def call(port: int, method: str, text: str = "", *, timeout: float = 5.0, **options: object) -> str:
    with oneshot.Channel(HOST, port, **options) as channel:  # type: ignore[arg-type]
        reply = oneshot.run(channel.unary(SVC, method, Msg(service=text), Msg, timeout=timeout))
    return str(reply.service)


@pytest.fixture
def calls() -> Calls:
    return Calls()


async def test_calls_with_metadata_and_beyond_the_flow_control_window(calls: Calls) -> None:
    big = "x" * (3 << 20)  # request and reply well over HTTP/2's initial 64 KiB windows

    def session() -> list[str]:
        with oneshot.Channel(HOST, port, metadata={"x-tag": "!"}) as channel:
            replies = [
                oneshot.run(channel.unary(SVC, "Echo", Msg(service=text), Msg, timeout=5))
                for text in ("hello", big, "again")
            ]
            tagged = oneshot.run(
                channel.unary(
                    SVC, "Echo", Msg(service="a"), Msg, timeout=5, metadata={"x-tag": "?"}
                )
            )
        return [reply.service for reply in (*replies, tagged)]

    async with server(calls) as port:
        assert await blocking(session) == ["hello!", big + "!", "again!", "a?"]


async def test_status_errors_arrive_as_their_rpc_errors(calls: Calls) -> None:
    async with server(calls) as port:
        with pytest.raises(transport.NotFound) as caught:
            await blocking(lambda: call(port, "NotFound", "job-7"))
        assert str(caught.value) == "NOT_FOUND: job 'job-7' is unknown"
        with pytest.raises(transport.Unimplemented, match=r"/burst\.test\.Echo/Nope"):
            await blocking(lambda: call(port, "Nope"))


async def test_a_call_past_its_timeout_is_deadline_exceeded_and_the_server_told(
    calls: Calls,
) -> None:
    async with server(calls) as port:
        with pytest.raises(transport.DeadlineExceeded, match="Hang"):
            await blocking(lambda: call(port, "Hang", timeout=0.3))
        with trio.fail_after(5):  # the deadline travelled as grpc-timeout
            await calls.handler_cancelled.wait()


async def test_an_unreachable_port_is_unavailable_as_on_the_trio_channel() -> None:
    port = free_port()
    with pytest.raises(transport.Unavailable) as caught:
        await blocking(lambda: call(port, "Echo"))
    assert str(caught.value) == (
        f"UNAVAILABLE: cannot reach controller at 127.0.0.1:{port}: Connection refused"
    )


async def test_a_server_that_hangs_up_is_a_lost_connection() -> None:
    """As a TLS controller does to a clear-text client: the CLI names the cause from this."""
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(1 << 16)  # (closing with unread bytes would reset the connection instead)
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(transport.Unavailable, match="closed by peer"):
            await blocking(lambda: call(port, "Echo"))
    finally:
        thread.join()
        listener.close()


def test_run_refuses_a_coroutine_that_waits() -> None:
    async def waits() -> None:
        await trio.sleep(0)

    with pytest.raises(RuntimeError, match="waited"):
        oneshot.run(waits())
