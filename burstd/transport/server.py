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
import ssl
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast

import anyio
import anyio.abc
import h2.exceptions  # type: ignore[import-untyped]
import trio
from anyio.streams.tls import TLSStream
from purerpc.grpclib.events import MessageReceived, RequestEnded, RequestReceived
from purerpc.grpclib.status import Status

from burstd.limits import ConnectionLimits
from burstd.logs import logger
from burstd.transport.connection import (
    Connection,
    Peer,
    Stream,
    StreamFailed,
    end_quietly,
)
from burstd.transport.errors import InvalidArgument, StatusCode, TransportError, rpc_error
from burstd.transport.messages import Message, decode_request
from burstd.transport.methods import Method, Service, authorized, run_unary, status_of
from burstd.transport.mux import MUX_METHOD, serve_mux
from burstd.transport.sockets import format_addr, reason
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
    limits: ConnectionLimits | None = None,
    tls: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``services`` on ``host``:``port`` until cancelled.

    Binds only ``host`` (``""`` means every interface), without SO_REUSEPORT: if the address is
    taken this raises :class:`TransportError` "address 127.0.0.1:5005 is already in use" before
    ``task_status.started``. ``port`` 0 picks a free port; ``task_status.started(port)`` reports
    the bound one, so ``port = await nursery.start(serve, host, 0, services)`` works.

    Cancelling it closes the listener and every connection (calls in flight are cancelled) and
    prints nothing. A misbehaving client ends only its own connection (logged at DEBUG). Every
    client is held to ``limits`` (default: :class:`ConnectionLimits`'s defaults). With ``tls``
    (see ``burstd.transport.tls.server_context``) every connection is TLS, HTTP/2 by ALPN; a
    handshake that fails or takes longer than the request timeout closes the connection.
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
            clients = _Clients(limits or ConnectionLimits(), tls)
            for one in listener.listeners:
                nursery.start_soon(
                    _accept_loop, cast(anyio.abc.SocketListener, one), methods, clients, nursery
                )
            task_status.started(bound)


class _Clients:
    """The client addresses of one server, and the limits they are held to."""

    def __init__(self, limits: ConnectionLimits, tls: ssl.SSLContext | None) -> None:
        self.limits = limits
        self.tls = tls
        self._peers: dict[str, Peer] = {}

    def admit(self, host: str) -> Peer | None:
        """Count a new connection from ``host``; None if it is over its connection limit, or
        holds as many pending requests as it may (a connection from it would be closed at its
        first call anyway, after its frames were parsed: refusing it costs nothing)."""
        peer = self._peers.get(host)
        if peer is None:
            peer = self._peers[host] = Peer()
        elif not peer.connections and trio.current_time() >= peer.penalty_until:
            peer.penalty_until = -math.inf  # served its penalty
        limits = self.limits
        if (
            peer.connections >= limits.max_connections_per_peer
            or peer.pending >= limits.max_pending_requests_per_peer
            or trio.current_time() < peer.penalty_until
        ):
            if not peer.refusing:
                peer.refusing = True
                logger.warning(
                    "{} holds {} connections and {} pending requests (max_connections_per_peer "
                    "{}, max_pending_requests_per_peer {}): closing its new connections",
                    host,
                    peer.connections,
                    peer.pending,
                    limits.max_connections_per_peer,
                    limits.max_pending_requests_per_peer,
                )
            return None
        peer.connections += 1
        return peer

    def leave(self, host: str, peer: Peer, connection: Connection | None) -> None:
        """A connection from ``host`` closed. One closed for going over its limits has the
        peer's new connections closed for a while (each costs its first chunk of frames, parsed
        whole, before it can be closed); one closed for guessing tokens has them held (HOLD)."""
        peer.connections -= 1
        peer.refusing = False
        now = trio.current_time()
        if connection is not None and connection.over_limits:
            peer.penalty_until = now + _PENALTY
        if connection is not None and connection.guessing:
            peer.hold_until = now + HOLD
        if not peer.connections and now >= max(peer.penalty_until, peer.hold_until):
            del self._peers[host]


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    methods: Mapping[tuple[str, str], Method],
    clients: _Clients,
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
        try:
            remote = sock.extra(anyio.abc.SocketAttribute.remote_address)
        except OSError:  # the peer is gone already
            await anyio.aclose_forcefully(sock)
            continue
        host, port = (str(remote[0]), int(remote[1])) if isinstance(remote, tuple) else (remote, 0)
        peer = clients.admit(host)
        if peer is None:
            await anyio.aclose_forcefully(sock)
            continue
        nursery.start_soon(_serve_connection, sock, methods, clients, host, port, peer)


# Seconds during which a peer whose connection went over its limits has new ones closed.
_PENALTY = 1.0
HOLD = 1.0
"""Seconds during which the new connections of an address one of whose connections was closed
for guessing tokens (MAX_UNAUTHENTICATED refusals) are held before they are read: they cost
a socket and a sleeping task, no CPU, and are served after it (no TLS handshake, no frame
parsed before). A client that reconnects to guess more gets MAX_UNAUTHENTICATED answers per
connection and HOLD; valid calls on the address's open connections are not touched."""
# Seconds a closing connection's writer may take to send what is left.
_CLOSE_GRACE = 1.0
# A Calls stream's request is complete with its first message (the stream lasts).
_LONG_LIVED = frozenset({(MUX_SERVICE, MUX_METHOD)})


async def _serve_connection(
    sock: anyio.abc.SocketStream,
    methods: Mapping[tuple[str, str], Method],
    clients: _Clients,
    host: str,
    port: int,
    peer: Peer,
) -> None:
    where = format_addr(host, port)
    connection: Connection | None = None
    try:
        await trio.sleep_until(peer.hold_until)
        transport = sock if clients.tls is None else await _handshake(sock, clients, where)
        if transport is None:
            return
        async with transport, trio.open_nursery() as tasks:
            connection = Connection(
                False, transport, limits=clients.limits, peer=peer, long_lived=_LONG_LIVED
            )
            tasks.start_soon(connection.write)
            try:
                async with trio.open_nursery() as calls:
                    calls.start_soon(connection.expire_requests)
                    # Until the peer closes, refused() closes, or the connection idles.
                    with connection.reading, connection.idle:
                        async for stream in connection.listen():
                            calls.start_soon(_serve_stream, connection, stream, methods)
                    if connection.idle.cancelled_caught:
                        logger.debug("closing the idle connection from {}", where)
                        connection.go_away()
                    # The client closed the connection (or it idled): nobody is left to read
                    # any reply.
                    calls.cancel_scope.cancel()
            finally:
                connection.release()
            # A client that stops reading must not hold the connection open for long.
            tasks.cancel_scope.deadline = trio.current_time() + _CLOSE_GRACE
            connection.close()
    except BaseException as error:
        end_quietly(error, f"connection from {where}")
    finally:
        if connection is not None:
            connection.dispose()
        clients.leave(host, peer, connection)


async def _handshake(
    sock: anyio.abc.SocketStream, clients: _Clients, where: str
) -> TLSStream | None:
    """The TLS stream over ``sock``, or None (the socket closed) if the client did not finish
    its handshake within the request timeout."""
    timeout = clients.limits.request_timeout_s
    with trio.move_on_after(timeout):
        try:
            return await TLSStream.wrap(
                sock, server_side=True, ssl_context=clients.tls, standard_compatible=False
            )
        except BaseException:
            await anyio.aclose_forcefully(sock)
            raise
    logger.debug("TLS handshake from {} not finished within {:g} s", where, timeout)
    await anyio.aclose_forcefully(sock)
    return None


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
    except h2.exceptions.StreamClosedError:
        # The client reset the call while its reply was being made: nobody is left to answer
        # (``_serve_stream`` sends nothing to a reset stream).
        logger.debug("{}: the client gave up on the call before its reply", path)
        return StatusCode.CANCELLED, "the client cancelled the call"
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
