"""The gRPC server: listen on one address, serve each connection's calls.

:func:`serve` binds only the configured host, without SO_REUSEPORT, so that a busy port is a
clear start-up error (trap 1 in the package's docstring); each connection runs in a task of its
own and each call in a task of the connection's, bounded by the call's deadline and cancelled
when the client resets it or goes away.
"""

from __future__ import annotations

import errno
import functools
import math
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast

import anyio
import anyio.abc
import h2.exceptions  # type: ignore[import-untyped]
import trio
from loguru import logger
from purerpc.grpclib.events import MessageReceived, RequestEnded, RequestReceived
from purerpc.grpclib.status import Status

from burstd.transport.connection import (
    Connection,
    Stream,
    StreamFailed,
    end_quietly,
    format_addr,
    reason,
)
from burstd.transport.errors import InvalidArgument, StatusCode, TransportError, rpc_error
from burstd.transport.messages import Message, decode_request
from burstd.transport.methods import Method, Service, authorized, run_unary, status_of
from burstd.transport.mux import MUX_METHOD, serve_mux
from burstd.wire import MUX_SERVICE
from proto.burst.v1 import mux_pb2

# Longer status messages are cut: they travel in an HTTP/2 trailer, and peers cap the header
# block (8 KiB here and in grpcio); percent-encoding can triple a message's size.
_MAX_STATUS_MESSAGE = 1024

# accept() errors that mean "out of resources for now": wait and accept again rather than
# stopping the whole server (as trio.serve_listeners does).
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def serve(
    host: str,
    port: int,
    services: Sequence[Service],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``services`` on ``host``:``port`` until cancelled.

    Binds only ``host`` (``""`` means every interface), without SO_REUSEPORT: if the address is
    taken this raises :class:`TransportError` "address 127.0.0.1:5005 is already in use" before
    ``task_status.started``. ``port`` 0 picks a free port; ``task_status.started(port)`` reports
    the bound one, so ``port = await nursery.start(serve, host, 0, services)`` works.

    Cancelling it closes the listener and every connection (calls in flight are cancelled) and
    prints nothing. A misbehaving client ends only its own connection (logged at DEBUG).
    """
    methods: dict[tuple[str, str], Method] = {}
    for service in services:
        for name, method in service.methods.items():
            if (service.name, name) in methods:
                raise ValueError(f"method {service.name}/{name} served twice")
            methods[service.name, name] = method
    unary = {f"/{s}/{m}": method for (s, m), method in methods.items() if not method.streaming}
    methods[MUX_SERVICE, MUX_METHOD] = Method(
        mux_pb2.MuxCall, functools.partial(serve_mux, unary), streaming=True, mux=True
    )

    address = format_addr(host or "*", port)
    try:
        listener = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            message = f"address {address} is already in use"
        else:
            message = f"cannot listen on {address}: {reason(error)}"
        failure = TransportError(message)
        failure.errno = error.errno
        raise failure from None

    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.debug("gRPC server listening on {}", format_addr(host or "*", bound))
        async with trio.open_nursery() as nursery:
            for one in listener.listeners:
                nursery.start_soon(
                    _accept_loop, cast(anyio.abc.SocketListener, one), methods, nursery
                )
            task_status.started(bound)


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    methods: Mapping[tuple[str, str], Method],
    nursery: trio.Nursery,
) -> None:
    while True:
        try:
            sock = await listener.accept()
        except OSError as error:
            if error.errno not in _ACCEPT_RETRY_ERRNOS:
                raise
            logger.warning("accept failed ({}); retrying in 0.1 s", reason(error))
            await trio.sleep(0.1)
            continue
        nursery.start_soon(_serve_connection, sock, methods)


async def _serve_connection(
    sock: anyio.abc.SocketStream, methods: Mapping[tuple[str, str], Method]
) -> None:
    try:
        peer = format_addr(*sock.extra(anyio.abc.SocketAttribute.remote_address)[:2])
    except (OSError, TypeError):  # the peer may be gone already
        peer = "?"
    try:
        async with sock, trio.open_nursery() as tasks:
            connection = Connection(False, sock)
            tasks.start_soon(connection.write)
            async with trio.open_nursery() as calls:
                with connection.reading:  # until the peer closes, or refused() closes
                    async for stream in connection.listen():
                        calls.start_soon(_serve_stream, connection, stream, methods)
                # The client closed the connection: nobody is left to read any reply.
                calls.cancel_scope.cancel()
            connection.close()
    except BaseException as error:
        end_quietly(error, f"connection from {peer}")


async def _serve_stream(
    connection: Connection, stream: Stream, methods: Mapping[tuple[str, str], Method]
) -> None:
    request = stream.request
    assert request is not None  # listen() sets it on every stream it yields
    try:
        method = methods.get((request.service_name, request.method_name))
        if method is None:
            code, message = StatusCode.UNIMPLEMENTED, f"unknown method {_path(request)}"
        else:
            deadline = math.inf
            if request.timeout is not None:  # the client's grpc-timeout header
                deadline = trio.current_time() + request.timeout.total_seconds()
            # One scope for both ends of a call: the deadline, and an RST_STREAM from the
            # client (the reader cancels it).
            with trio.CancelScope(deadline=deadline) as scope:
                stream.cancel_scope = scope
                code, message = await _answer(stream, request, method)
            if stream.reset:
                return  # the client abandoned the call: there is nobody to answer
            if scope.cancelled_caught:
                code, message = StatusCode.DEADLINE_EXCEEDED, f"{_path(request)}: deadline exceeded"
        if len(message) > _MAX_STATUS_MESSAGE:
            message = message[: _MAX_STATUS_MESSAGE - 3] + "..."
        try:
            stream.end(Status(code.value, message))
        except h2.exceptions.H2Error as error:  # the stream or connection closed meanwhile
            logger.debug("could not send the status of a call: {!r}", error)
        connection.refused(code)
    finally:
        connection.forget(stream)


def _path(request: RequestReceived) -> str:
    return f"/{request.service_name}/{request.method_name}"


async def _answer(
    stream: Stream, request: RequestReceived, method: Method
) -> tuple[StatusCode, str]:
    """Run the call's handler and send its replies; return the final status."""
    path = _path(request)
    try:
        metadata = types.MappingProxyType(
            {key: value for key, value in request.custom_metadata if isinstance(value, str)}
        )
        if method.mux:
            await method.handler(stream, metadata)
            return StatusCode.OK, ""
        data = await _read_request(stream)
        if method.streaming:
            caller = await authorized(method, path, metadata)
            await _send_stream(
                stream, method.handler(decode_request(method.request_type, data), caller)
            )
        else:
            payload = await run_unary(method, path, data, metadata)
            stream.start_response()
            await stream.send_bytes(payload)
        return StatusCode.OK, ""
    except Exception as error:
        return status_of(error, path)


async def _read_request(stream: Stream) -> bytes:
    """The call's single request message, once the client ended its side."""
    data: bytes | None = None
    while True:
        event = await stream.receive()
        if isinstance(event, MessageReceived):
            if data is not None:
                raise InvalidArgument("expected one request message, got several")
            data = event.data
        elif isinstance(event, RequestEnded):
            break
        elif isinstance(event, StreamFailed):
            raise rpc_error(event.code, event.message)
    if data is None:
        raise InvalidArgument("no request message")
    return data


async def _send_stream(stream: Stream, replies: AsyncIterator[Message]) -> None:
    try:
        async for reply in replies:
            payload = reply.SerializeToString()
            if not stream.response_started:
                stream.start_response()
            await stream.send_bytes(payload)
    finally:
        aclose = getattr(replies, "aclose", None)
        if aclose is not None:
            await aclose()
