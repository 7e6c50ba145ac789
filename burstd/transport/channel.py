"""The gRPC client: a channel to one server, every call bounded by a timeout."""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack
from typing import Any, Self, cast

import anyio
import anyio.abc
import h2.exceptions  # type: ignore[import-untyped]
import trio
from anyio.streams.tls import TLSStream

from burstd.config import parse_hostport
from burstd.logs import logger
from burstd.transport.connection import (
    Connection,
    ConnectionLost,
    Stream,
    end_quietly,
)
from burstd.transport.errors import DeadlineExceeded, Internal, StreamRefused, Unavailable
from burstd.transport.headers import check_metadata, grpc_timeout
from burstd.transport.messages import Message, ResponseT, decode_reply
from burstd.transport.mux import MAX_REQUEST, MUX_METHOD, MuxClient
from burstd.transport.sockets import format_addr, reason
from burstd.wire import MUX_SERVICE

# 8 opaque bytes carried by our liveness PINGs.
_PING_PAYLOAD = b"burst-pg"
# Seconds between two attempts of a call the server refused again (see Channel._call).
_REFUSED_PAUSE = 0.05


class Channel:
    """A client connection to one gRPC server, shared by any number of concurrent calls.

    ``async with Channel("127.0.0.1", 50051) as channel:`` connects (raising
    :class:`Unavailable` "cannot reach controller at 127.0.0.1:50051: Connection refused" when
    the server is not there within ``connect_timeout``) and keeps ONE HTTP/2 connection open;
    calls from several trio tasks run concurrently on it as separate HTTP/2 streams. Leaving the
    block closes the connection.

    Promises:

    * every call is bounded: :meth:`unary` needs a ``timeout`` in seconds and raises
      :class:`DeadlineExceeded` when it passes; the server is told the deadline (grpc-timeout)
      and stops the handler then;
    * a call cancelled midway (a trio cancel scope around a long-poll) resets its own stream:
      the server's handler is cancelled, and the channel stays usable for later calls;
    * a lost connection (server restart, network cut) fails the calls in flight on it with
      :class:`Unavailable`, and the next call opens a new connection transparently (failing
      with Unavailable if the server is still away). A peer that stops answering (half-open
      TCP) is detected when a call's deadline passes: the channel then sends a PING, and if
      nothing comes back within ``ping_timeout`` it drops that connection;
    * status errors from the server arrive as the matching :class:`RpcError` subclass.

    ``metadata`` is sent with every call (for example an auth token); calls may add their own.
    ``peer`` names the server in error messages.

    With ``multiplex``, unary calls that add no metadata of their own travel as messages on one
    standing Calls stream (proto/burst/v1/mux.proto) instead of an HTTP/2 stream each, which
    costs both sides a fraction of the CPU; the promises above hold alike. A server without the
    Mux service (UNIMPLEMENTED) gets plain calls from then on.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        ping_timeout: float = 5.0,
        metadata: Mapping[str, str] | None = None,
        peer: str = "controller",
        multiplex: bool = False,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {port}")
        if connect_timeout <= 0 or ping_timeout <= 0:
            raise ValueError("connect_timeout and ping_timeout must be positive")
        self.host = host
        self.port = port
        self.address = format_addr(host, port)
        self.peer = peer
        self._where = f"{peer} at {self.address}"  # for error messages
        self._connect_timeout = connect_timeout
        self._ping_timeout = ping_timeout
        self._metadata = dict(metadata or {})
        check_metadata(self._metadata)
        self._connection: Connection | None = None  # the one new calls use
        self._live: set[Connection] = set()  # open connections (old ones finish their calls)
        self._connect_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._closed = False
        self._multiplex = multiplex
        self._tls = tls
        self._server_hostname = server_hostname or host
        self._mux: MuxClient | None = None
        self._mux_lock = trio.Lock()

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            # Connections run in this nursery, so they live exactly as long as the channel.
            # Their tasks swallow their own errors: nothing here can cancel the caller's body.
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._exit_stack = stack.pop_all()
        try:
            await self._connect()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # The body's exception is deliberately not passed to the nursery: trio would wrap it in
        # an ExceptionGroup, and `except NotFound` around `async with Channel(...)` must work.
        await self._close()

    async def _close(self) -> None:
        # Must run in the task that entered the channel (it exits the channel's nursery).
        if self._exit_stack is None or self._nursery is None:
            return
        self._closed = True
        for connection in list(self._live):
            connection.fail_streams()
        # A peer that stops reading must not hold up the close for long.
        self._nursery.cancel_scope.deadline = trio.current_time() + 1.0
        stack, self._exit_stack = self._exit_stack, None
        await stack.aclose()

    async def _connect(self) -> Connection:
        """The open connection, making a new one if there is none or it cannot take calls."""
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and connection.usable:
                return connection
            if self._closed or self._nursery is None:
                raise Unavailable(f"the channel to {self.peer} at {self.address} is closed")
            with trio.move_on_after(self._connect_timeout) as scope:
                try:
                    sock = await self._dial()
                except ssl.SSLError as error:
                    raise Unavailable(
                        f"cannot reach {self._where}: TLS: {error.reason or error}"
                    ) from None
                except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as error:
                    raise Unavailable(f"cannot reach {self._where}: {reason(error)}") from None
            if scope.cancelled_caught:
                raise Unavailable(
                    f"cannot reach {self._where}: no answer within {self._connect_timeout:g} s"
                )
            try:
                connection = cast(Connection, await self._nursery.start(self._run_connection, sock))
            except BaseException:
                await anyio.aclose_forcefully(sock)
                raise
            self._connection = connection
            return connection

    async def _dial(self) -> anyio.abc.SocketStream | TLSStream:
        """A new TCP connection to the server, over TLS (handshake done) with a context."""
        if self._tls is None:
            return await anyio.connect_tcp(self.host, self.port)
        return await anyio.connect_tcp(
            self.host,
            self.port,
            ssl_context=self._tls,
            tls_standard_compatible=False,
            tls_hostname=self._server_hostname,
        )

    async def _run_connection(
        self, sock: anyio.abc.SocketStream | TLSStream, task_status: trio.TaskStatus[Connection]
    ) -> None:
        started = False
        conn: Connection | None = None
        try:
            async with sock, trio.open_nursery() as tasks:
                conn = Connection(True, sock)
                tasks.start_soon(conn.write)
                tasks.start_soon(conn.read)
                self._live.add(conn)
                try:
                    task_status.started(conn)
                    started = True
                    await conn.finished.wait()
                finally:
                    self._live.discard(conn)
                conn.close()
        except BaseException as error:
            if not started:
                raise
            end_quietly(error, f"connection to {self.address}")
        finally:
            if conn is not None:
                conn.dispose()

    async def _watch(self, connection: Connection) -> None:
        """Drop the connection unless the peer answers a PING within ping_timeout."""
        probe = connection.probe = trio.Event()
        try:
            connection.h2.ping(_PING_PAYLOAD)
            connection.flush()
        except h2.exceptions.H2Error:
            return  # the connection is closing anyway
        with trio.move_on_after(self._ping_timeout):
            await probe.wait()
            connection.probe = None
            return
        logger.debug("{} at {} did not answer a ping: reconnecting", self.peer, self.address)
        connection.failure = f"no answer to a ping within {self._ping_timeout:g} s"
        connection.fail_streams()

    def _suspect(self, connection: Connection | None) -> None:
        """A call's deadline passed: check the peer is alive (once at a time)."""
        if (
            connection is not None
            and connection.usable
            and connection.probe is None
            and self._nursery is not None
            and not self._closed
        ):
            self._nursery.start_soon(self._watch, connection)

    async def _open(
        self,
        service: str,
        method: str,
        metadata: Mapping[str, str] | None,
        timeout: float | None,
    ) -> tuple[Connection, Stream]:
        headers = self._metadata
        if metadata:
            check_metadata(metadata)
            headers = {**self._metadata, **metadata}
        fresh = False
        while True:
            connection = await self._connect()
            try:
                stream = connection.start_request(
                    service,
                    method,
                    self.address,
                    None if timeout is None else grpc_timeout(timeout),
                    tuple(headers.items()),
                )
            except h2.exceptions.TooManyStreamsError:
                # As many calls as the server allows on one connection are open: wait for one
                # to end (the caller's timeout bounds the wait), as gRPC clients do.
                await connection.stream_freed()
                continue
            except h2.exceptions.H2Error as error:
                # Stream ids used up, or the peer sent GOAWAY: this connection takes no more
                # calls; try once on a fresh one.
                connection.retired = True
                if not connection._streams:
                    connection.finished.set()
                if fresh:
                    raise Unavailable(f"cannot start a call to {self.address}: {error}") from None
                fresh = True
                continue
            return connection, stream

    @staticmethod
    async def _send_request(stream: Stream, data: bytes) -> None:
        # The server ended or reset the call before taking the whole request (an early error
        # status), or the connection died: the events read next say which.
        with contextlib.suppress(h2.exceptions.H2Error, ConnectionLost):
            # The request and END_STREAM in one DATA frame: one frame fewer on both sides.
            await stream.send_bytes(data, end=True)

    async def unary_raw(
        self,
        service: str,
        method: str,
        data: bytes,
        *,
        timeout: float,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """A unary call with an already-encoded request; returns the reply's bytes.

        For tests and tools (sending bytes that are not a valid message); see :meth:`unary`.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        path = f"/{service}/{method}"
        # Requests near the size limit go as plain calls: wrapped in a MuxCall they could be
        # over it, and one oversized message would end the whole stream.
        if self._multiplex and not metadata and len(data) < MAX_REQUEST:
            reply = await self._mux_call(path, data, timeout)
            if reply is not None:
                return reply
        used: list[Connection] = []
        with trio.move_on_after(timeout):
            connection, stream, reply = await self._call(
                service, method, data, metadata, timeout, used
            )
            try:
                if reply is None:
                    raise Internal(f"{path}: the server ended the call without a reply")
                if await stream.next_reply(path, self._where) is not None:
                    raise Internal(f"{path}: the server sent several replies to a unary call")
                return reply
            finally:
                connection.finish(stream)
        self._suspect(used[-1] if used else None)
        raise DeadlineExceeded(f"{path}: no reply from {self.peer} within {timeout:g} s")

    async def _call(
        self,
        service: str,
        method: str,
        data: bytes,
        metadata: Mapping[str, str] | None,
        timeout: float | None,
        used: list[Connection],
    ) -> tuple[Connection, Stream, bytes | None]:
        """Start a call and wait for its first reply (None: it ended OK without one); a call the
        server refused before starting it (over one of its limits) is made again, at once the
        first time, then after a short pause, until the caller's timeout. The caller finishes
        the stream; ``used`` gets each connection tried (to check after a deadline)."""
        path = f"/{service}/{method}"
        pause = 0.0
        while True:
            connection, stream = await self._open(service, method, metadata, timeout)
            used.append(connection)
            try:
                await self._send_request(stream, data)
                return connection, stream, await stream.next_reply(path, self._where)
            except StreamRefused:
                connection.finish(stream)
            except BaseException:
                connection.finish(stream)
                raise
            await trio.sleep(pause)
            pause = _REFUSED_PAUSE

    async def _mux_call(self, path: str, data: bytes, timeout: float) -> bytes | None:
        """A unary call over the Calls stream: its reply, or None if the server has no Mux
        service (the caller then makes a plain call)."""
        mux: MuxClient | None = None
        with trio.move_on_after(timeout):
            mux = await self._mux_stream()
            reply = await mux.call(path, data, timeout)
            if reply is None:
                self._multiplex = False
            return reply
        self._suspect(None if mux is None else mux.connection)
        raise DeadlineExceeded(f"{path}: no reply from {self.peer} within {timeout:g} s")

    async def _mux_stream(self) -> MuxClient:
        """The open Calls stream, opening one if there is none, the last one ended, or its
        connection takes nothing more (a GOAWAY: h2 then refuses to send on its streams)."""
        mux = self._mux
        if mux is not None and mux.failure is None and mux.connection.usable:
            return mux
        async with self._mux_lock:
            mux = self._mux
            if mux is not None and mux.failure is None and mux.connection.usable:
                return mux
            connection, stream = await self._open(MUX_SERVICE, MUX_METHOD, None, None)
            mux = self._mux = MuxClient(connection, stream, self.peer, self.address)
            assert self._nursery is not None  # _open raises on a closed channel
            self._nursery.start_soon(mux.run)
            return mux

    async def unary(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float,
        metadata: Mapping[str, str] | None = None,
    ) -> ResponseT:
        """Call ``/service/method`` with ``request``; return the reply as ``response_type``.

        Raises :class:`DeadlineExceeded` after ``timeout`` seconds (connecting included),
        :class:`Unavailable` if the server cannot be reached or the connection is lost, the
        server's :class:`RpcError` otherwise. Cancelling the caller resets the call.
        """
        reply = await self.unary_raw(
            service, method, request.SerializeToString(), timeout=timeout, metadata=metadata
        )
        return decode_reply(f"/{service}/{method}", response_type, reply)

    async def server_stream(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[ResponseT, None]:
        """Call a server-streaming method; iterate over the replies as they arrive.

        ``timeout`` (seconds) bounds the whole call, None leaves it open (a peer that dies
        silently is then only noticed by TCP keepalive). Errors as for :meth:`unary`, raised
        from the iteration. Leaving the loop early (``break``, cancellation) resets the call
        so the server stops; use ``contextlib.aclosing(channel.server_stream(...))`` to make
        that immediate (otherwise trio does it when the generator is collected, and warns).
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        path = f"/{service}/{method}"
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        late = DeadlineExceeded(f"{path}: not finished within {timeout:g} s" if timeout else "")
        connection: Connection | None = None
        stream: Stream | None = None
        try:
            # The deadline is applied around each wait, never around the yield: a cancel scope
            # must not span a yield in an async generator.
            data: bytes | None = None
            used: list[Connection] = []
            with trio.move_on_at(deadline) as scope:
                connection, stream, data = await self._call(
                    service, method, request.SerializeToString(), metadata, timeout, used
                )
            if scope.cancelled_caught or connection is None or stream is None:
                self._suspect(used[-1] if used else None)
                raise late
            while True:
                if data is None:
                    return
                yield decode_reply(path, response_type, data)
                with trio.move_on_at(deadline) as scope:
                    data = await stream.next_reply(path, self._where)
                if scope.cancelled_caught:
                    self._suspect(connection)
                    raise late
        finally:
            if connection is not None and stream is not None:
                connection.finish(stream)


def open_channel(addr: str, **options: Any) -> Channel:
    """``Channel`` for ``host:port`` (or ``http://host:port``): ``async with open_channel(a)``."""
    host, port = parse_hostport(addr)
    return Channel(host, port, **options)
