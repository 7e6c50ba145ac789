"""Unary calls on a blocking socket, for a program that makes a few calls and exits.

A ``burst status`` makes one call; with :class:`~burstd.transport.Channel` it would spend most of
its run importing trio, anyio and purerpc and starting an event loop. This module needs only h2
and the standard library.

:class:`Channel` has the ``unary`` method of the trio channel, so ``burstd.client.Client`` runs
on either; here it is a coroutine that never suspends (it blocks the thread for the call), and
:func:`run` drives such a coroutine to its end without an event loop. A coroutine that awaits
anything else (a trio sleep, a stream) makes :func:`run` raise RuntimeError: a program uses this
channel only for work made of unary calls.

Promises, those of the trio channel's ``unary`` that a caller sees:

* connecting is bounded by ``connect_timeout``: a server that is not there raises
  :class:`Unavailable` "cannot reach controller at ADDR: REASON";
* every call is bounded by its ``timeout`` (:class:`DeadlineExceeded`), which the server is told
  (``grpc-timeout``);
* a status other than OK raises its :class:`RpcError` subclass; a lost connection
  :class:`Unavailable` naming the cause.

Each call is an HTTP/2 stream of its own on one connection (no multiplexing: a few calls gain
nothing from it); ``metadata`` is sent with every call.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.parse
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import h2.exceptions  # type: ignore[import-untyped]

from burstd.transport.errors import (
    DeadlineExceeded,
    Internal,
    RpcError,
    StatusCode,
    Unavailable,
    reset_error,
    rpc_error,
)
from burstd.transport.headers import check_metadata, timeout_header
from burstd.transport.messages import Message, ResponseT, decode_reply
from burstd.transport.sockets import format_addr, reason

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")

# The gRPC message prefix: compressed or not, then the length (big-endian).
_MESSAGE_PREFIX = struct.Struct(">?I")
_RECEIVE_SIZE = 65536


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of ``coroutine``, which must finish without suspending (it awaits only this
    module's calls)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a coroutine run without an event loop waited for something")


class _Reply:
    """What the server sent on one call's stream so far."""

    __slots__ = ("body", "ended", "headers", "reset")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}  # the reply's headers, then its trailers
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None


class Channel:
    """One blocking HTTP/2 connection to a gRPC server: ``with Channel(host, port) as ch:``
    connects, leaving the block closes it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        metadata: Mapping[str, str] | None = None,
        peer: str = "controller",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {port}")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.host = host
        self.port = port
        self.address = format_addr(host, port)
        self.peer = peer
        self._where = f"{peer} at {self.address}"
        self._connect_timeout = connect_timeout
        self._metadata = tuple(dict(metadata or {}).items())
        check_metadata(dict(self._metadata))
        self._tls = tls
        self._server_hostname = server_hostname or host
        self._sock: socket.socket | None = None
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            # The headers we send are well formed; the reply's are checked where they are read.
            validate_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._replies: dict[int, _Reply] = {}

    def __enter__(self) -> Self:
        try:
            sock = socket.create_connection((self.host, self.port), self._connect_timeout)
        except TimeoutError:
            raise Unavailable(
                f"cannot reach {self._where}: no answer within {self._connect_timeout:g} s"
            ) from None
        except OSError as error:
            raise Unavailable(f"cannot reach {self._where}: {reason(error)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._handshake(sock, self._tls)
        except TimeoutError:
            sock.close()
            raise Unavailable(
                f"cannot reach {self._where}: no answer within {self._connect_timeout:g} s"
            ) from None
        except OSError as error:
            sock.close()
            raise Unavailable(f"cannot reach {self._where}: {reason(error)}") from None
        self._sock = sock
        self._h2.initiate_connection()
        return self

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """``sock`` over TLS; :mod:`ssl` is imported here, as its context was (a program
        without TLS does not import it)."""
        import ssl

        try:
            return context.wrap_socket(sock, server_hostname=self._server_hostname)
        except ssl.SSLError as error:
            sock.close()
            raise Unavailable(f"cannot reach {self._where}: TLS: {error.reason or error}") from None

    def __exit__(self, *exc_info: object) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            self._h2.close_connection()
            sock.settimeout(0)
            sock.send(self._h2.data_to_send())
        except (OSError, h2.exceptions.H2Error):
            pass  # a goodbye the server may miss: it notices the closed socket anyway
        finally:
            sock.close()

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

        Blocks until the reply; errors as the trio channel's ``unary``.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        headers = self._metadata
        if metadata:
            check_metadata(metadata)
            headers = (*headers, *metadata.items())
        path = f"/{service}/{method}"
        reply = self._call(path, request.SerializeToString(), timeout, headers)
        return decode_reply(path, response_type, reply)

    def _call(
        self, path: str, data: bytes, timeout: float, metadata: tuple[tuple[str, str], ...]
    ) -> bytes:
        if self._sock is None:
            raise Unavailable(f"the channel to {self._where} is not open")
        deadline = time.monotonic() + timeout
        connection = self._h2
        try:
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", path),
                    (":authority", self.address),
                    ("grpc-timeout", timeout_header(timeout)),
                    ("te", "trailers"),
                    ("content-type", "application/grpc+proto"),
                    *metadata,
                ],
            )
        except h2.exceptions.H2Error as error:
            raise Unavailable(f"cannot start a call to {self.address}: {error}") from None
        reply = self._replies[stream_id] = _Reply()
        try:
            unsent = memoryview(_MESSAGE_PREFIX.pack(False, len(data)) + data)
            while not reply.ended:
                if unsent:
                    unsent = self._send_some(stream_id, unsent)
                self._flush(path, deadline)
                if not reply.ended and (not unsent or self._blocked(stream_id)):
                    self._receive(path, deadline)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{path}: no reply from {self.peer} within {timeout:g} s"
            ) from None
        finally:
            del self._replies[stream_id]
        return self._message(path, reply)

    def _send_some(self, stream_id: int, unsent: memoryview) -> memoryview:
        """Queue as much of ``unsent`` as flow control allows (with END_STREAM after its last
        byte); what is left. A server that ended the call early takes no more."""
        connection = self._h2
        try:
            size = min(
                len(unsent),
                connection.local_flow_control_window(stream_id),
                connection.max_outbound_frame_size,
            )
            if size or not unsent:
                connection.send_data(
                    stream_id, bytes(unsent[:size]), end_stream=size == len(unsent)
                )
        except h2.exceptions.H2Error:
            return unsent[:0]  # the stream is closed: its reply says why
        return unsent[size:]

    def _blocked(self, stream_id: int) -> bool:
        try:
            return bool(self._h2.local_flow_control_window(stream_id) == 0)
        except h2.exceptions.H2Error:
            return False

    @staticmethod
    def _remaining(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def _flush(self, path: str, deadline: float) -> None:
        data = self._h2.data_to_send()
        if not data:
            return
        assert self._sock is not None
        try:
            self._sock.settimeout(self._remaining(deadline))
            self._sock.sendall(data)
        except TimeoutError:
            raise
        except OSError as error:
            raise self._lost(path, f"{type(error).__name__}: {error}") from None

    def _receive(self, path: str, deadline: float) -> None:
        """Read what the server sent once, and file it under its calls (TimeoutError past the
        deadline)."""
        assert self._sock is not None
        try:
            self._sock.settimeout(self._remaining(deadline))
            data = self._sock.recv(_RECEIVE_SIZE)
        except TimeoutError:
            raise
        except OSError as error:
            raise self._lost(path, f"{type(error).__name__}: {error}") from None
        if not data:
            raise self._lost(path, "connection closed by peer")
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.H2Error as error:
            raise self._lost(path, f"protocol error: {error}") from None
        for event in events:
            reply = self._replies.get(getattr(event, "stream_id", 0))
            if isinstance(event, h2.events.ConnectionTerminated):
                raise self._lost(path, "the server closed the connection")
            if reply is None:
                continue
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                reply.headers.update(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                reply.body += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reply.reset = int(event.error_code)
                reply.ended = True
            elif isinstance(event, h2.events.StreamEnded):
                reply.ended = True

    def _lost(self, path: str, cause: str) -> Unavailable:
        self._sock = None  # unusable: later calls fail at once
        return Unavailable(f"{path}: connection to {self._where} lost ({cause})")

    @staticmethod
    def _message(path: str, reply: _Reply) -> bytes:
        """The one reply message, or the call's error."""
        if reply.reset is not None:
            raise reset_error(path, reply.reset)
        try:
            code = StatusCode.of(int(reply.headers["grpc-status"]))
        except (KeyError, ValueError):
            raise Internal(f"{path}: bad reply: Expected grpc-status in trailers") from None
        if code is not StatusCode.OK:
            message = urllib.parse.unquote(reply.headers.get("grpc-message", ""))
            error: RpcError = rpc_error(code, message)
            raise error
        body = bytes(reply.body)
        if not body:
            raise Internal(f"{path}: the server ended the call without a reply")
        if len(body) < _MESSAGE_PREFIX.size:
            raise Internal(f"{path}: bad reply: a truncated message")
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if compressed:
            raise Internal(f"{path}: bad reply: a compressed message")
        if len(body) > _MESSAGE_PREFIX.size + length:
            raise Internal(f"{path}: the server sent several replies to a unary call")
        if len(body) < _MESSAGE_PREFIX.size + length:
            raise Internal(f"{path}: bad reply: a truncated message")
        return body[_MESSAGE_PREFIX.size :]
