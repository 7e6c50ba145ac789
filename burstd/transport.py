"""burst's gRPC transport: the only module that imports purerpc (and anyio).

Everything else (controller service, worker, client) speaks through this small API, so that the
wire library can be swapped without touching them:

* server side: :class:`Service` (unary and server-streaming methods whose handlers receive
  decoded protobuf messages plus the call's metadata) and :func:`serve`, which listens on one
  configured host and port and runs until cancelled;
* errors: :class:`RpcError` and one subclass per status code we use (:class:`InvalidArgument`,
  :class:`NotFound`, ...). A handler raises them; a client call raises them;
* client side: :class:`Channel`, one HTTP/2 connection shared by concurrent calls, every call
  bounded by a timeout;
* :func:`open_channel` and the standard health service (:func:`health_service`).

purerpc 0.8 is used only for its HTTP/2 + gRPC framing (``GRPCConnection``, over h2). Its
socket and stream classes are replaced by lighter ones here (one writer task per connection that
sends each scheduling round's frames in one write, calls that wait without allocating events or
memory channels); its ``Server``, ``ConnectionHandler`` and client stubs are not used, because
they carry the traps this module exists to close (see docs/architecture.md and the design,
section 4):

1. ``Server.serve_async`` binds every interface with SO_REUSEPORT, so a second server on a busy
   port starts silently. :func:`serve` binds only the configured host, without reuse-port, and a
   busy port is a :class:`TransportError` naming the address.
2. purerpc answers a handler's exception with CANCELLED and a Python repr. Here a
   :class:`RpcError` becomes its status; anything else is logged with its traceback on the server
   and reaches the client as INTERNAL "internal error", nothing more.
3. purerpc parses the request before our code runs, so a corrupt message becomes CANCELLED with a
   traceback. Here requests are taken as raw bytes and decoded by us: a DecodeError is
   INVALID_ARGUMENT "malformed <message type>".
4. Handlers get the call's metadata (``Mapping[str, str]``) as their second argument.
5. purerpc's client has no deadline, and ignores RST_STREAM and a dead connection, so a call
   could wait forever. Every call here has a timeout (sent to the server as ``grpc-timeout`` and
   enforced on both sides); a lost connection fails the calls on it with UNAVAILABLE; a cancelled
   call resets its HTTP/2 stream so the server stops working on it.
6. purerpc logs normal cancellations as warnings through the standard ``logging`` module; none
   of that code runs here, and :func:`quiet_purerpc_logging` (called at import) raises its
   logger to ERROR anyway.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import functools
import logging
import math
import os
import re
import socket
import struct
import types
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

import anyio
import anyio.abc
import h2.exceptions  # type: ignore[import-untyped]
import trio
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from loguru import logger
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import (
    MessageReceived,
    RequestEnded,
    RequestReceived,
    ResponseEnded,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import ProtocolError
from purerpc.grpclib.status import Status

from burstd.config import parse_hostport
from proto.burst.v1 import mux_pb2
from proto.grpc.health.v1 import health_pb2

__all__ = [
    "DEFAULT_PORT",
    "HEALTH_SERVICE",
    "MUX_SERVICE",
    "Aborted",
    "AlreadyExists",
    "Channel",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcError",
    "Service",
    "StatusCode",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "health_service",
    "open_channel",
    "quiet_purerpc_logging",
    "rpc_error",
    "serve",
]

DEFAULT_PORT = 50051
HEALTH_SERVICE = "grpc.health.v1.Health"
# Unary calls over one standing stream (proto/burst/v1/mux.proto): every server has it.
MUX_SERVICE = "burst.v1.Mux"
_MUX_METHOD = "Calls"

Metadata = Mapping[str, str]
"""A call's custom metadata (HTTP/2 headers other than gRPC's own); binary ``-bin`` keys are
not passed on."""

# Longer status messages are cut: they travel in an HTTP/2 trailer, and peers cap the header
# block (8 KiB here and in grpcio); percent-encoding can triple a message's size.
_MAX_STATUS_MESSAGE = 1024
# HTTP/2 error code sent with RST_STREAM when our side abandons a call.
_H2_CANCEL = 0x8
# 8 opaque bytes carried by our liveness PINGs.
_PING_PAYLOAD = b"burst-pg"
# Calls in flight on one Calls stream; more are refused (RESOURCE_EXHAUSTED) until some end, as
# a server bounds the streams of one HTTP/2 connection.
_MUX_MAX_IN_FLIGHT = 1024


def quiet_purerpc_logging() -> None:
    """Raise purerpc's standard-library logger to ERROR.

    purerpc reports a normal cancellation (shutdown, a client gone) as a WARNING with a stack
    trace. This module does not run those code paths, but other code might import purerpc, and
    a shutdown must print nothing alarming. Idempotent; called at import.
    """
    logging.getLogger("purerpc").setLevel(logging.ERROR)


quiet_purerpc_logging()


# -- status errors ---------------------------------------------------------------------------


class StatusCode(enum.IntEnum):
    """gRPC status codes (the numbers are the wire values)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> StatusCode:
        """The code for a wire value; a value gRPC does not define is UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class RpcError(Exception):
    """A call ended with a status other than OK.

    Raised by handlers to answer with that status, and by client calls when the server (or the
    transport) answered so. ``code`` is a :class:`StatusCode`, ``message`` the human-readable
    text sent with it. ``str(error)`` is ``"NOT_FOUND: job 7 is unknown"``.
    """

    code: StatusCode
    message: str

    def __init__(self, code: StatusCode, message: str = "") -> None:
        if code is StatusCode.OK:
            raise ValueError("RpcError needs a status other than OK")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class _CodedError(RpcError):
    """An RpcError whose class fixes the code, so callers can ``except NotFound``."""

    CODE: ClassVar[StatusCode]

    def __init__(self, message: str = "") -> None:
        super().__init__(self.CODE, message)
        self.args = (message,)


class InvalidArgument(_CodedError):
    """The request is wrong whatever the server's state (the message should name the field)."""

    CODE = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(_CodedError):
    """The call did not finish within its timeout."""

    CODE = StatusCode.DEADLINE_EXCEEDED


class NotFound(_CodedError):
    CODE = StatusCode.NOT_FOUND


class AlreadyExists(_CodedError):
    CODE = StatusCode.ALREADY_EXISTS


class PermissionDenied(_CodedError):
    CODE = StatusCode.PERMISSION_DENIED


class ResourceExhausted(_CodedError):
    """A limit was hit (a full queue, an oversized batch or message)."""

    CODE = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(_CodedError):
    """The server's state does not allow the request (for example a stale lease)."""

    CODE = StatusCode.FAILED_PRECONDITION


class Aborted(_CodedError):
    CODE = StatusCode.ABORTED


class Unimplemented(_CodedError):
    CODE = StatusCode.UNIMPLEMENTED


class Internal(_CodedError):
    """A bug or broken invariant on the server, or a reply that breaks the protocol."""

    CODE = StatusCode.INTERNAL


class Unavailable(_CodedError):
    """The server cannot be reached or the connection was lost: retrying later may work."""

    CODE = StatusCode.UNAVAILABLE


class Unauthenticated(_CodedError):
    CODE = StatusCode.UNAUTHENTICATED


_ERROR_CLASSES: dict[StatusCode, type[_CodedError]] = {
    cls.CODE: cls
    for cls in (
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        Unimplemented,
        Internal,
        Unavailable,
        Unauthenticated,
    )
}


def rpc_error(code: StatusCode, message: str = "") -> RpcError:
    """The most specific RpcError for ``code`` (``NotFound`` for NOT_FOUND, ...)."""
    cls = _ERROR_CLASSES.get(code)
    return cls(message) if cls is not None else RpcError(code, message)


class TransportError(OSError):
    """The server could not start listening (address in use, bad host, no permission).

    ``errno`` is the underlying error number when there is one.
    """


# -- messages ----------------------------------------------------------------------------------


class _Message(Protocol):
    """What this module needs of a protobuf message (google.protobuf ships no type stubs)."""

    def SerializeToString(self, **kwargs: Any) -> bytes: ...

    def ParseFromString(self, serialized: bytes) -> int | None: ...


RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT", bound=_Message)


def _type_name(message_type: type[Any]) -> str:
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", message_type.__name__))


def _decode(message_type: type[ResponseT], data: bytes) -> ResponseT:
    """Parse ``data`` as ``message_type``; DecodeError propagates."""
    message = message_type()
    message.ParseFromString(data)
    return message


# -- the HTTP/2 + gRPC layer, adapted from purerpc ---------------------------------------------
#
# purerpc's GRPCConnection turns bytes into gRPC events. Three of its behaviours would hang or
# kill a whole connection, so they are replaced: an RST_STREAM was dropped silently (a cancelled
# client call left the server working forever, a server reset left the client waiting forever),
# DATA for a stream it no longer knew raised KeyError (killing the connection), and a malformed
# request or response header or an oversized message raised out of the reader (killing every
# call on the connection). They now become per-stream events.


@dataclass(frozen=True, slots=True)
class _StreamReset:
    """The peer reset one stream (RST_STREAM)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class _StreamFailed:
    """One stream broke the protocol; the call ends with this status."""

    stream_id: int
    code: StatusCode
    message: str


@dataclass(frozen=True, slots=True)
class _GoAway:
    """The peer will accept no new streams on this connection (GOAWAY)."""


class _Connection(GRPCConnection):  # type: ignore[misc]
    def _stream_reset(self, event: Any) -> list[object]:
        self.message_read_buffers.pop(event.stream_id, None)
        return [_StreamReset(event.stream_id, int(event.error_code))]

    def _connection_terminated(self, event: Any) -> list[object]:
        return [_GoAway()]

    def _data_received(self, event: Any) -> list[object]:
        buffer = self.message_read_buffers.get(event.stream_id)
        if buffer is None:
            # The stream is finished on our side: give its flow-control credit back, drop it.
            self.h2_connection.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
            return []
        try:
            buffer.data_received(event.data, event.flow_controlled_length)
        except ProtocolError as error:  # message over the size limit, unknown compression
            del self.message_read_buffers[event.stream_id]
            self.h2_connection.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
            return [_StreamFailed(event.stream_id, StatusCode.RESOURCE_EXHAUSTED, str(error))]
        return [
            MessageReceived(event.stream_id, message, length)
            for message, length in buffer.read_all_complete_messages_flowcontrol()
        ]

    def _request_received(self, event: Any) -> list[object]:
        try:
            events: list[object] = super()._request_received(event)
        except (ProtocolError, KeyError, ValueError) as error:
            # A request we cannot route: answer it alone, keep the connection.
            status = Status(StatusCode.INTERNAL.value, f"bad gRPC request: {error}")
            self.respond_status(event.stream_id, status)
            return []
        return events

    def _response_received(self, event: Any) -> list[object]:
        try:
            events: list[object] = super()._response_received(event)
        except (ProtocolError, KeyError, ValueError) as error:
            return [_StreamFailed(event.stream_id, StatusCode.INTERNAL, f"bad reply: {error}")]
        return events

    def _trailers_received(self, event: Any) -> list[object]:
        try:
            events: list[object] = super()._trailers_received(event)
        except (ProtocolError, KeyError, ValueError) as error:
            return [_StreamFailed(event.stream_id, StatusCode.INTERNAL, f"bad reply: {error}")]
        return events


class _ConnectionLost(Exception):
    """The connection under a call is gone (or, when sending, the peer reset the stream)."""


# TCP keepalive: a peer that vanished without closing is noticed after ~7.5 minutes idle, as
# purerpc configured its sockets (calls with a deadline notice sooner: see Channel._watch).
_KEEPALIVE_OPTIONS = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 300),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
)
# The gRPC message prefix: not compressed, then the length (big-endian).
_MESSAGE_PREFIX = struct.Struct(">?I")


_SERVER_CONFIG = GRPCConfiguration(client_side=False)
_CLIENT_CONFIG = GRPCConfiguration(client_side=True)
# Requests up to this size go over a Calls stream (see Channel.unary_raw).
_MUX_MAX_REQUEST = _CLIENT_CONFIG.max_message_length - 65536
# Bytes asked of the socket per read (purerpc asked for 1 MiB, which CPython allocates on every
# read before it shrinks the buffer to what came).
_RECEIVE_SIZE = 65536


class _Wakeup:
    """Where one task at a time waits until another wakes it.

    Like a trio.Event that resets itself, but allocating nothing per wait. A wake-up with no
    task waiting is not remembered: the waiter checks its condition just before waiting.
    """

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None  # cancelled: rescheduled by trio, it must not be woken again
        return trio.lowlevel.Abort.SUCCEEDED

    @property
    def waiting(self) -> bool:
        return self._task is not None

    def wake(self) -> None:
        if self._task is not None:
            trio.lowlevel.reschedule(self._task)
            self._task = None


class _Stream:
    """One call on a connection. Requests and replies travel as raw bytes: decoding is ours
    (trap 3).

    The events the connection's reader hands over wait in a plain deque, and a task waiting
    for them or for flow-control credit is parked and rescheduled directly (no memory channel
    or trio.Event per call).
    """

    __slots__ = (
        "_events",
        "_lost",
        "_reader",
        "_socket",
        "_window",
        "cancel_scope",
        "ended",
        "request",
        "reset",
        "response_started",
        "stream_id",
        "take_message",
    )

    def __init__(self, socket_: _Socket, stream_id: int) -> None:
        self._socket = socket_
        self.stream_id = stream_id
        self._events: collections.deque[object] = collections.deque()
        self._reader = _Wakeup()  # for the call's task waiting for an event
        self._window = _Wakeup()  # for the call's task waiting for flow-control credit
        self._lost = False  # the connection is gone: no more events will come
        self.ended = False  # the peer's side is complete (end, status, reset or failure seen)
        self.reset = False  # the peer reset the stream
        self.response_started = False  # server side: the reply's headers are out
        self.cancel_scope: trio.CancelScope | None = None  # server side: the handler's scope
        self.request: RequestReceived | None = None  # server side: the call's headers
        # Takes a message at once, in the connection's reader (True if it did), instead of
        # queueing it for the call's task: a Calls stream's (``_serve_mux``, ``_Mux``).
        self.take_message: Callable[[bytes], bool] | None = None

    def put(self, event: object) -> None:
        """Hand an event from the connection's reader to the call."""
        self._events.append(event)
        self._reader.wake()

    def lose(self) -> None:
        """The connection is gone: wake whoever waits on this call."""
        self._lost = True
        self._reader.wake()
        self._window.wake()

    def window_updated(self) -> None:
        self._window.wake()

    async def _receive(self) -> object:
        """The next event; raises _ConnectionLost once the connection is gone and drained."""
        if self._events:
            # A cancellation point, not a schedule point: queued events are taken at once.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            if self._lost:
                await trio.lowlevel.checkpoint()
                raise _ConnectionLost
            await self._reader.wait()
            if not self._events:
                raise _ConnectionLost
        event = self._events.popleft()
        if isinstance(event, MessageReceived):
            self._socket.h2.acknowledge_received_data(event.flow_controlled_length, self.stream_id)
            self._socket.flush()
        elif isinstance(event, RequestEnded | ResponseEnded | _StreamReset | _StreamFailed):
            self.ended = True
        return event

    async def send_bytes(self, data: bytes, *, end: bool = False) -> None:
        """Send one length-prefixed message (flow-controlled); ``end`` also ends our side.

        Raises _ConnectionLost if the stream is reset or the connection lost while waiting for
        flow-control credit (on the server, Cancelled when the reset cancelled the handler).
        """
        connection = self._socket.grpc
        limit = connection.config.max_message_length
        if len(data) > limit:
            # purerpc would raise its own MessageTooLargeError; the peer would refuse it anyway
            raise ResourceExhausted(f"message of {len(data)} bytes is over the {limit}-byte limit")
        if self.reset:
            # The handler's scope is cancelled: raise Cancelled here rather than let h2 raise
            # StreamClosedError for a stream the peer already abandoned.
            await trio.lowlevel.checkpoint_if_cancelled()
        message = _MESSAGE_PREFIX.pack(False, len(data)) + data
        sent = 0
        while True:
            window = connection.flow_control_window(self.stream_id)
            if window <= 0:
                self._socket.flush()  # what is queued must go out for the peer to give credit
                await self._window.wait()
                if self.reset or self._lost:
                    # On the server a reset has cancelled the handler's scope: end with
                    # Cancelled, not with an error that would be logged as the handler's failure.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    raise _ConnectionLost("the stream was reset or the connection lost")
                continue
            chunk = (
                message if sent == 0 and window >= len(message) else message[sent : sent + window]
            )
            sent += len(chunk)
            last = sent == len(message)
            connection.send_data(self.stream_id, chunk, end_stream=end and last)
            if last:
                break
        self._socket.flush()

    def send_now(self, data: bytes) -> bool:
        """Send one message at once if the flow-control window takes it whole; False (nothing
        sent) if it must wait, through ``send_bytes``."""
        connection = self._socket.grpc
        size = _MESSAGE_PREFIX.size + len(data)
        if (
            self.reset
            or self._lost
            or len(data) > connection.config.max_message_length
            or connection.flow_control_window(self.stream_id) < size
        ):
            return False
        connection.send_data(self.stream_id, _MESSAGE_PREFIX.pack(False, len(data)) + data)
        self._socket.flush()
        return True

    def start_response(self) -> None:
        """Send the reply's headers (server side)."""
        self._socket.grpc.start_response(self.stream_id, "+proto")
        self.response_started = True
        self._socket.flush()

    def end(self, status: Status) -> None:
        """End the call with ``status`` (server side): trailers, or a trailers-only reply."""
        if self.response_started:
            self._socket.grpc.end_response(self.stream_id, status)
        else:
            self._socket.grpc.respond_status(self.stream_id, status)
        self._socket.flush()


class _Socket:
    """One HTTP/2 connection, either side: the frame reader and the socket writer.

    Whoever changes the HTTP/2 state calls :meth:`flush`, which moves the bytes h2 queued to the
    writer and wakes it only when there are some; the writer sends everything queued meanwhile
    in one ``send``, so the replies of one scheduling round go out together.
    """

    def __init__(self, client_side: bool, sock: anyio.abc.SocketStream) -> None:
        self.client_side = client_side
        config = _CLIENT_CONFIG if client_side else _SERVER_CONFIG
        connection = _Connection(config=config)
        # The headers we send are purerpc's own, well formed: checking each one again on every
        # call costs CPU for nothing (h2 in pure Python). Inbound headers stay checked on the
        # server, which must not trust its clients.
        h2_config = connection.h2_connection.config
        h2_config.validate_outbound_headers = False
        if client_side:
            h2_config.validate_inbound_headers = False
        # Plain literals instead of Huffman-coded ones (both are valid HPACK): Huffman coding in
        # pure Python costs more CPU per call than the few bytes it saves on a local network.
        encoder = connection.h2_connection.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)
        raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
        for level, option, value in _KEEPALIVE_OPTIONS:
            raw.setsockopt(level, option, value)
        # Reads and writes go to the (non-blocking) socket itself: anyio's and trio's stream
        # wrappers cost a schedule point per send and a failed recv per read.
        self._raw: socket.socket = raw
        self.grpc = connection
        self.h2 = connection.h2_connection
        self._streams: dict[int, _Stream] = {}
        self._outgoing: list[bytes] = []
        self._writer = _Wakeup()  # for the writer task, when it has sent everything
        self._writing = True  # cleared to let the writer send what is left and return
        self._reading = trio.CancelScope()  # around the client's reader task
        self.finished = trio.Event()  # set when the connection must close
        self.goaway = False  # the peer takes no new streams here
        self.retired = False  # take no new calls here (stream ids used up, or dead peer)
        self.failure = "connection closed by peer"
        self.probe: trio.Event | None = None  # set on any data received while a ping is out
        connection.initiate_connection()
        self.flush()

    @property
    def usable(self) -> bool:
        """Whether a new call may start on this connection."""
        return not (self.finished.is_set() or self.goaway or self.retired)

    def flush(self) -> None:
        """Have what h2 queued sent. Never blocks and is no checkpoint: safe anywhere."""
        data = self.h2.data_to_send()
        if data:
            self._outgoing.append(data)
            self._writer.wake()

    def close(self) -> None:
        """Stop the client's reader; let the writer send what is queued, then return."""
        self._reading.cancel()
        self._writing = False
        self._writer.wake()

    async def write(self) -> None:
        """The connection's writer task: runs until :meth:`close` (or cancelled)."""
        while True:
            if self._outgoing:
                data = memoryview(b"".join(self._outgoing))
                self._outgoing.clear()
                while data:
                    try:
                        data = data[self._raw.send(data) :]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(self._raw)
            elif not self._writing:
                return
            else:
                await self._writer.wait()

    def start_request(
        self,
        service: str,
        method: str,
        authority: str,
        timeout: timedelta | None,
        metadata: Sequence[tuple[str, str]],
    ) -> _Stream:
        """Open a call (client side); h2.exceptions.H2Error if this connection takes no more."""
        stream_id = self.h2.get_next_available_stream_id()
        self.grpc.start_request(
            stream_id, "http", service, method, None, authority, timeout, "+proto", metadata
        )
        stream = self._streams[stream_id] = _Stream(self, stream_id)
        return stream

    def forget(self, stream: _Stream) -> None:
        """Drop a finished call's state; later frames for it are acknowledged and ignored."""
        self._streams.pop(stream.stream_id, None)
        self.grpc.message_read_buffers.pop(stream.stream_id, None)
        if not self.usable and not self._streams:
            self.finished.set()

    def reset_stream(self, stream: _Stream) -> None:
        """Tell the peer we abandoned this call (RST_STREAM CANCEL), if it is still open."""
        # h2 refuses if the stream is already closed at the HTTP/2 level: nothing to reset then
        with contextlib.suppress(h2.exceptions.H2Error):
            self.grpc.reset_stream(stream.stream_id, _H2_CANCEL)

    def fail_streams(self) -> None:
        """Wake every waiting call: the connection is gone (their receive raises)."""
        self.finished.set()
        for stream in self._streams.values():
            stream.lose()

    async def listen(self) -> AsyncIterator[_Stream]:
        """Read frames until the peer closes; yield each new call (server side)."""
        # purerpc's loop, with the per-stream events above, and ignoring streams we no longer
        # track instead of raising KeyError.
        while True:
            await trio.lowlevel.wait_readable(self._raw)
            try:
                data = self._raw.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # reset by the peer
                return
            if not data:
                return
            if self.probe is not None:
                self.probe.set()
            events = self.grpc.receive_data(data)
            for event in events:
                if isinstance(event, WindowUpdated):
                    if event.stream_id == 0:
                        for one in list(self._streams.values()):
                            one.window_updated()
                    else:
                        target = self._streams.get(event.stream_id)
                        if target is not None:
                            target.window_updated()
                    continue
                if isinstance(event, _GoAway):
                    self.goaway = True
                    continue
                if isinstance(event, RequestReceived):
                    if self.client_side:
                        raise ProtocolError("the server opened a stream")
                    new = self._streams[event.stream_id] = _Stream(self, event.stream_id)
                    new.request = event
                    yield new
                    continue
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    if isinstance(event, MessageReceived):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    continue
                if (
                    stream.take_message is not None
                    and isinstance(event, MessageReceived)
                    and not stream._events
                    and stream.take_message(event.data)
                ):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
                if isinstance(event, _StreamReset):
                    stream.reset = True
                    stream.window_updated()
                    if stream.cancel_scope is not None:
                        stream.cancel_scope.cancel()
                stream.put(event)
            self.flush()  # h2's answers (SETTINGS and PING acks, window updates, refusals)

    async def read(self) -> None:
        """The client's reader task. A reader that ends (EOF, reset, protocol error) must not
        leave calls waiting forever: it fails them all, and the channel opens a new connection
        next time."""
        try:
            with self._reading:
                async for _ in self.listen():
                    pass
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self.fail_streams()


def _end_quietly(error: BaseException, what: str) -> None:
    """End a connection task: log its ordinary errors at DEBUG (a peer going away is normal),
    re-raise the rest (trio.Cancelled, KeyboardInterrupt) so cancellation unwinds as it came."""
    errors: BaseException | None
    others: BaseException | None
    if isinstance(error, BaseExceptionGroup):
        errors, others = error.split(Exception)
    elif isinstance(error, Exception):
        errors, others = error, None
    else:
        errors, others = None, error
    if errors is not None:
        logger.debug("{} ended: {!r}", what, errors)
    if others is error:
        raise error
    if others is not None:
        raise others


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(error: BaseException) -> str:
    """A short reason for a socket error: "Connection refused", "Name or service not known"."""
    cause: BaseException | None = error
    while cause is not None:  # anyio wraps the attempts' errors: use the first one
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
            continue
        if isinstance(cause, socket.gaierror) and cause.strerror:
            return cause.strerror
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    return str(error) or type(error).__name__


# -- server ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Method:
    request_type: type[Any]
    handler: Callable[[Any, Metadata], Any]
    streaming: bool
    # The Calls method of the Mux service: the handler takes the whole stream (see _serve_mux).
    mux: bool = False


class Service:
    """A named gRPC service: a set of methods and their handlers.

    ``Service("burst.v1.ControllerRpc")``; the name is the proto's package plus service name,
    as it appears in the HTTP/2 path ``/burst.v1.ControllerRpc/SubmitJob``.
    """

    def __init__(self, name: str) -> None:
        if not name or "/" in name:
            raise ValueError(f"bad service name {name!r}")
        self.name = name
        self._methods: dict[str, _Method] = {}

    def unary(
        self,
        method_name: str,
        request_type: type[RequestT],
        handler: Callable[[RequestT, Metadata], Awaitable[_Message]],
    ) -> None:
        """Register a unary method: ``await handler(request, metadata)`` returns the reply.

        The handler gets the request decoded as ``request_type`` (a malformed one never reaches
        it: the client gets INVALID_ARGUMENT). It answers an error by raising :class:`RpcError`;
        any other exception is logged here and reaches the client as INTERNAL. It is cancelled
        if the client cancels the call, disconnects, or its deadline passes.
        """
        self._add(method_name, _Method(request_type, handler, streaming=False))

    def server_stream(
        self,
        method_name: str,
        request_type: type[RequestT],
        handler: Callable[[RequestT, Metadata], AsyncIterator[_Message]],
    ) -> None:
        """Register a server-streaming method: ``handler(request, metadata)`` is an async
        iterator (typically an async generator) whose items are sent as they come.

        Errors as for :meth:`unary`; an RpcError raised after some replies ends the stream with
        that status. The iterator is closed (``aclose``) however the call ends.
        """
        self._add(method_name, _Method(request_type, handler, streaming=True))

    def _add(self, method_name: str, method: _Method) -> None:
        if not method_name or "/" in method_name:
            raise ValueError(f"bad method name {method_name!r}")
        if method_name in self._methods:
            raise ValueError(f"method {self.name}/{method_name} registered twice")
        self._methods[method_name] = method


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
    methods: dict[tuple[str, str], _Method] = {}
    for service in services:
        for name, method in service._methods.items():
            if (service.name, name) in methods:
                raise ValueError(f"method {service.name}/{name} served twice")
            methods[service.name, name] = method
    unary = {f"/{s}/{m}": method for (s, m), method in methods.items() if not method.streaming}
    methods[MUX_SERVICE, _MUX_METHOD] = _Method(
        mux_pb2.MuxCall, functools.partial(_serve_mux, unary), streaming=True, mux=True
    )

    address = _format_addr(host or "*", port)
    try:
        listener = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            message = f"address {address} is already in use"
        else:
            message = f"cannot listen on {address}: {_reason(error)}"
        failure = TransportError(message)
        failure.errno = error.errno
        raise failure from None

    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.debug("gRPC server listening on {}", _format_addr(host or "*", bound))
        async with trio.open_nursery() as nursery:
            for one in listener.listeners:
                nursery.start_soon(
                    _accept_loop, cast(anyio.abc.SocketListener, one), methods, nursery
                )
            task_status.started(bound)


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    methods: Mapping[tuple[str, str], _Method],
    nursery: trio.Nursery,
) -> None:
    while True:
        try:
            sock = await listener.accept()
        except OSError as error:
            if error.errno not in _ACCEPT_RETRY_ERRNOS:
                raise
            logger.warning("accept failed ({}); retrying in 0.1 s", _reason(error))
            await trio.sleep(0.1)
            continue
        nursery.start_soon(_serve_connection, sock, methods)


async def _serve_connection(
    sock: anyio.abc.SocketStream, methods: Mapping[tuple[str, str], _Method]
) -> None:
    try:
        peer = _format_addr(*sock.extra(anyio.abc.SocketAttribute.remote_address)[:2])
    except (OSError, TypeError):  # the peer may be gone already
        peer = "?"
    try:
        async with sock, trio.open_nursery() as tasks:
            connection = _Socket(False, sock)
            tasks.start_soon(connection.write)
            async with trio.open_nursery() as calls:
                async for stream in connection.listen():
                    calls.start_soon(_serve_stream, connection, stream, methods)
                # The client closed the connection: nobody is left to read any reply.
                calls.cancel_scope.cancel()
            connection.close()
    except BaseException as error:
        _end_quietly(error, f"connection from {peer}")


async def _serve_stream(
    connection: _Socket, stream: _Stream, methods: Mapping[tuple[str, str], _Method]
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
    finally:
        connection.forget(stream)


def _path(request: RequestReceived) -> str:
    return f"/{request.service_name}/{request.method_name}"


async def _answer(
    stream: _Stream, request: RequestReceived, method: _Method
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
            await _send_stream(
                stream, method.handler(_decode_request(method.request_type, data), metadata)
            )
        else:
            payload = await _run_unary(method, data, metadata)
            stream.start_response()
            await stream.send_bytes(payload)
        return StatusCode.OK, ""
    except Exception as error:
        return _status_of(error, path)


def _decode_request(request_type: type[ResponseT], data: bytes) -> ResponseT:
    try:
        return _decode(request_type, data)
    except DecodeError:
        raise InvalidArgument(f"malformed {_type_name(request_type)}") from None


async def _run_unary(method: _Method, data: bytes, metadata: Metadata) -> bytes:
    """A unary handler's reply to the encoded request, encoded; errors propagate."""
    reply = await method.handler(_decode_request(method.request_type, data), metadata)
    payload: bytes = reply.SerializeToString()
    return payload


def _status_of(error: Exception, path: str) -> tuple[StatusCode, str]:
    """The status a handler's exception answers: its RpcError's, or INTERNAL (logged here)."""
    status = _sole_rpc_error(error)
    if status is not None:
        return status.code, status.message
    logger.exception("{} failed with an unexpected error", path)
    return StatusCode.INTERNAL, "internal error"


async def _serve_mux(unary: Mapping[str, _Method], stream: _Stream, metadata: Metadata) -> None:
    """Serve a Calls stream (proto/burst/v1/mux.proto) until the client ends its side.

    Each MuxCall runs the unary handler it names in a task of its own, with the stream's
    metadata and the call's own deadline, exactly as the unary call would; its MuxReply is sent
    when it ends. The connection's reader starts the calls (``take``) and a call's task sends its
    reply while the sender idles, so neither waits for a pass of the event loop to this task or
    the sender. A cancel message cancels that handler and no reply is sent. When the client
    ends its side, the calls in flight finish and are answered before the stream ends OK.
    """
    replies: collections.deque[bytes] = collections.deque()
    replies_ready = _Wakeup()
    scopes: dict[int, trio.CancelScope] = {}
    reading = True

    def answer(call_id: int, code: StatusCode, message: str = "", reply: bytes = b"") -> None:
        data = mux_pb2.MuxReply(
            id=call_id, code=code.value, message=message, reply=reply
        ).SerializeToString()
        if len(data) > _SERVER_CONFIG.max_message_length:
            # Refused alone, as a plain call's would be: sent, it would end the whole stream.
            limit = _SERVER_CONFIG.max_message_length
            data = mux_pb2.MuxReply(
                id=call_id,
                code=StatusCode.RESOURCE_EXHAUSTED.value,
                message=f"message of {len(data)} bytes is over the {limit}-byte limit",
            ).SerializeToString()
        if not replies and replies_ready.waiting:
            # The sender is idle: the caller sends it, a pass of the event loop sooner (what
            # must wait for credit, or fails, is left to the sender).
            with contextlib.suppress(h2.exceptions.H2Error):
                if stream.send_now(data):
                    if not reading and not scopes:
                        replies_ready.wake()  # the sender ends once no call is left
                    return
        replies.append(data)
        replies_ready.wake()

    async def run(call_id: int, method_path: str, data: bytes, scope: trio.CancelScope) -> None:
        method = unary[method_path]
        code, message, reply = StatusCode.OK, "", b""
        try:
            with scope:
                reply = await _run_unary(method, data, metadata)
        except Exception as error:
            code, message = _status_of(error, method_path)
        finally:
            scopes.pop(call_id, None)
        if scope.cancelled_caught:
            if scope.deadline == math.inf:
                # The client cancelled the call: nobody waits for its reply. The sender ends
                # once no call is left.
                replies_ready.wake()
                return
            code, message = StatusCode.DEADLINE_EXCEEDED, f"{method_path}: deadline exceeded"
        answer(call_id, code, message, reply)

    async def send() -> None:
        # A client that reset the stream already has cancelled us: h2 would refuse the headers.
        await trio.lowlevel.checkpoint_if_cancelled()
        stream.start_response()
        while True:
            while replies:
                await stream.send_bytes(replies.popleft())
            if not reading and not scopes:
                return
            await replies_ready.wait()

    def take(call: mux_pb2.MuxCall) -> None:
        if call.cancel:
            if (scope := scopes.pop(call.id, None)) is not None:
                scope.deadline = math.inf
                scope.cancel()
            return
        method = unary.get(call.method)
        if method is None:
            answer(call.id, StatusCode.UNIMPLEMENTED, f"unknown unary method {call.method}")
        elif call.id in scopes:
            answer(call.id, StatusCode.INVALID_ARGUMENT, f"call id {call.id} is in flight")
        elif len(scopes) >= _MUX_MAX_IN_FLIGHT:
            answer(call.id, StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
        else:
            deadline = math.inf
            if call.timeout_ms:
                deadline = trio.current_time() + call.timeout_ms / 1000
            scope = scopes[call.id] = trio.CancelScope(deadline=deadline)
            nursery.start_soon(run, call.id, call.method, call.request, scope)

    def taken(data: bytes) -> bool:
        try:
            call = _decode(mux_pb2.MuxCall, data)
        except DecodeError:
            return False  # left to this task, which ends the stream with the error
        take(call)
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        stream.take_message = taken
        try:
            while True:
                event = await stream._receive()
                if isinstance(event, RequestEnded):
                    break
                if isinstance(event, _StreamFailed):
                    raise rpc_error(event.code, event.message)
                if isinstance(event, MessageReceived):
                    take(_decode_request(mux_pb2.MuxCall, event.data))
        finally:
            stream.take_message = None
        reading = False
        replies_ready.wake()


def _sole_rpc_error(error: BaseException) -> RpcError | None:
    """The RpcError a handler meant, also when a nursery wrapped it in an ExceptionGroup."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, RpcError) else None


async def _read_request(stream: _Stream) -> bytes:
    """The call's single request message, once the client ended its side."""
    data: bytes | None = None
    while True:
        event = await stream._receive()
        if isinstance(event, MessageReceived):
            if data is not None:
                raise InvalidArgument("expected one request message, got several")
            data = event.data
        elif isinstance(event, RequestEnded):
            break
        elif isinstance(event, _StreamFailed):
            raise rpc_error(event.code, event.message)
    if data is None:
        raise InvalidArgument("no request message")
    return data


async def _send_stream(stream: _Stream, replies: AsyncIterator[_Message]) -> None:
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


# -- health --------------------------------------------------------------------------------------


def health_service(is_serving: Callable[[], bool], *, services: Sequence[str] = ()) -> Service:
    """The standard ``grpc.health.v1.Health`` service (``Check`` only).

    ``Check`` with an empty service name, or one in ``services``, answers SERVING when
    ``is_serving()`` is true and NOT_SERVING otherwise; any other name is NOT_FOUND, as the
    gRPC health protocol prescribes. Works with ``grpc_health_probe`` and similar tools.
    """
    known = frozenset(services)

    async def check(
        request: health_pb2.HealthCheckRequest, metadata: Metadata
    ) -> health_pb2.HealthCheckResponse:
        if request.service and request.service not in known:
            raise NotFound(f"unknown service {request.service!r}")
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=serving if is_serving() else not_serving)

    service = Service(HEALTH_SERVICE)
    service.unary("Check", health_pb2.HealthCheckRequest, check)
    return service


# -- client --------------------------------------------------------------------------------------

_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_RESERVED_KEYS = frozenset({"content-type", "te", "user-agent", "host", "connection"})
_RESET_CODES = {  # RST_STREAM error code -> status, as gRPC maps them
    0x7: StatusCode.UNAVAILABLE,  # REFUSED_STREAM: the server did not start the call
    0x8: StatusCode.CANCELLED,
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def _check_metadata(metadata: Mapping[str, str]) -> None:
    for key, value in metadata.items():
        if (
            not _METADATA_KEY.fullmatch(key)
            or key.startswith("grpc-")
            or key.endswith("-bin")
            or key in _RESERVED_KEYS
        ):
            raise ValueError(f"metadata key {key!r} is not allowed (lowercase token, not grpc-*)")
        if not isinstance(value, str) or not value.isprintable() or not value.isascii():
            raise ValueError(f"metadata value for {key!r} must be printable ASCII text")


def _grpc_timeout(seconds: float) -> timedelta:
    # grpc-timeout allows at most 8 digits: below 10 s send microseconds, above whole seconds.
    # Rounding up keeps the server's deadline at or after the client's.
    if seconds < 10:
        return timedelta(microseconds=math.ceil(seconds * 1_000_000))
    return timedelta(seconds=math.ceil(seconds))


class _Pending:
    """One call in flight on a Calls stream: its task waits here for the reply."""

    __slots__ = ("reply", "wakeup")

    def __init__(self) -> None:
        self.reply: mux_pb2.MuxReply | RpcError | None = None
        self.wakeup = _Wakeup()


class _Mux:
    """The client's end of a Calls stream (proto/burst/v1/mux.proto): calls wait in ``pending``
    by id for the reader to hand them their reply; what they send is queued for the writer."""

    def __init__(self, connection: _Socket, stream: _Stream) -> None:
        self.connection = connection
        self.stream = stream
        self.pending: dict[int, _Pending] = {}
        self.outgoing: collections.deque[bytes] = collections.deque()
        self.writer = _Wakeup()
        self.last_id = 0
        self.failure: RpcError | None = None  # the stream ended: no call may use it any more

    def send(self, message: mux_pb2.MuxCall) -> None:
        data = message.SerializeToString()
        if not self.outgoing and self.writer.waiting:
            # The writer is idle: the caller sends it, a pass of the event loop sooner (what
            # must wait for credit, or fails, is left to the writer).
            with contextlib.suppress(h2.exceptions.H2Error):
                if self.stream.send_now(data):
                    return
        self.outgoing.append(data)
        self.writer.wake()

    def take(self, data: bytes) -> bool:
        """Hand a reply to its call; False if it is malformed."""
        try:
            reply = _decode(mux_pb2.MuxReply, data)
        except DecodeError:
            return False
        call = self.pending.pop(reply.id, None)
        if call is not None:
            call.reply = reply
            call.wakeup.wake()
        return True

    def fail(self, error: RpcError) -> None:
        """The stream is over: every call waiting on it gets ``error``."""
        if self.failure is None:
            self.failure = error
        pending, self.pending = self.pending, {}
        for call in pending.values():
            call.reply = self.failure
            call.wakeup.wake()


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
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {port}")
        if connect_timeout <= 0 or ping_timeout <= 0:
            raise ValueError("connect_timeout and ping_timeout must be positive")
        self.host = host
        self.port = port
        self.address = _format_addr(host, port)
        self.peer = peer
        self._connect_timeout = connect_timeout
        self._ping_timeout = ping_timeout
        self._metadata = dict(metadata or {})
        _check_metadata(self._metadata)
        self._connection: _Socket | None = None  # the one new calls use
        self._live: set[_Socket] = set()  # open connections (old ones finish their calls)
        self._connect_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._closed = False
        self._multiplex = multiplex
        self._mux: _Mux | None = None
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

    async def _connect(self) -> _Socket:
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
            where = f"{self.peer} at {self.address}"
            with trio.move_on_after(self._connect_timeout) as scope:
                try:
                    sock = await anyio.connect_tcp(self.host, self.port)
                except OSError as error:
                    raise Unavailable(f"cannot reach {where}: {_reason(error)}") from None
            if scope.cancelled_caught:
                raise Unavailable(
                    f"cannot reach {where}: no answer within {self._connect_timeout:g} s"
                )
            try:
                connection = cast(_Socket, await self._nursery.start(self._run_connection, sock))
            except BaseException:
                await anyio.aclose_forcefully(sock)
                raise
            self._connection = connection
            return connection

    async def _run_connection(
        self, sock: anyio.abc.SocketStream, task_status: trio.TaskStatus[_Socket]
    ) -> None:
        started = False
        try:
            async with sock, trio.open_nursery() as tasks:
                conn = _Socket(True, sock)
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
            _end_quietly(error, f"connection to {self.address}")

    async def _watch(self, connection: _Socket) -> None:
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

    def _suspect(self, connection: _Socket | None) -> None:
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
    ) -> tuple[_Socket, _Stream]:
        headers = self._metadata
        if metadata:
            _check_metadata(metadata)
            headers = {**self._metadata, **metadata}
        for attempt in (1, 2):
            connection = await self._connect()
            try:
                stream = connection.start_request(
                    service,
                    method,
                    self.address,
                    None if timeout is None else _grpc_timeout(timeout),
                    tuple(headers.items()),
                )
            except h2.exceptions.H2Error as error:
                # Stream ids used up, or the peer sent GOAWAY: this connection takes no more
                # calls; try once on a fresh one.
                connection.retired = True
                if not connection._streams:
                    connection.finished.set()
                if attempt == 2:
                    raise Unavailable(f"cannot start a call to {self.address}: {error}") from None
                continue
            return connection, stream
        raise AssertionError("unreachable")

    @staticmethod
    async def _send_request(stream: _Stream, data: bytes) -> None:
        # The server ended or reset the call before taking the whole request (an early error
        # status), or the connection died: the events read next say which.
        with contextlib.suppress(h2.exceptions.H2Error, _ConnectionLost):
            # The request and END_STREAM in one DATA frame: one frame fewer on both sides.
            await stream.send_bytes(data, end=True)

    def _finish(self, connection: _Socket, stream: _Stream) -> None:
        if not stream.ended and not connection.finished.is_set():
            connection.reset_stream(stream)  # abandoned midway: the server should stop
            connection.flush()
        connection.forget(stream)

    async def _next(self, connection: _Socket, stream: _Stream, path: str) -> bytes | None:
        """The next reply message, or None when the call ended with OK."""
        while True:
            try:
                event = await stream._receive()
            except _ConnectionLost:
                raise Unavailable(
                    f"{path}: connection to {self.peer} at {self.address} lost "
                    f"({connection.failure})"
                ) from None
            if isinstance(event, MessageReceived):
                data: bytes = event.data
                return data
            if isinstance(event, ResponseEnded):
                if event.status.int_value == 0:
                    return None
                raise rpc_error(StatusCode.of(event.status.int_value), event.status.status_message)
            if isinstance(event, _StreamReset):
                code = _RESET_CODES.get(event.error_code, StatusCode.INTERNAL)
                raise rpc_error(
                    code, f"{path}: the server reset the call (HTTP/2 code {event.error_code})"
                )
            if isinstance(event, _StreamFailed):
                raise rpc_error(event.code, f"{path}: {event.message}")
            # ResponseReceived (the reply's headers): nothing to do

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
        if self._multiplex and not metadata and len(data) < _MUX_MAX_REQUEST:
            reply = await self._mux_call(path, data, timeout)
            if reply is not None:
                return reply
        connection: _Socket | None = None
        with trio.move_on_after(timeout):
            connection, stream = await self._open(service, method, metadata, timeout)
            try:
                await self._send_request(stream, data)
                reply = await self._next(connection, stream, path)
                if reply is None:
                    raise Internal(f"{path}: the server ended the call without a reply")
                if await self._next(connection, stream, path) is not None:
                    raise Internal(f"{path}: the server sent several replies to a unary call")
                return reply
            finally:
                self._finish(connection, stream)
        self._suspect(connection)
        raise DeadlineExceeded(f"{path}: no reply from {self.peer} within {timeout:g} s")

    async def _mux_call(self, path: str, data: bytes, timeout: float) -> bytes | None:
        """A unary call over the Calls stream: its reply, or None if the server has no Mux
        service (the caller then makes a plain call)."""
        mux: _Mux | None = None
        with trio.move_on_after(timeout):
            mux = await self._mux_stream()
            mux.last_id += 1
            call_id = mux.last_id
            call = mux.pending[call_id] = _Pending()
            mux.send(
                mux_pb2.MuxCall(
                    id=call_id, method=path, request=data, timeout_ms=math.ceil(timeout * 1000)
                )
            )
            try:
                while call.reply is None:
                    await call.wakeup.wait()
            finally:
                if call.reply is None:  # cancelled, or out of time: the server should stop
                    del mux.pending[call_id]
                    if mux.failure is None:
                        mux.send(mux_pb2.MuxCall(id=call_id, cancel=True))
            reply = call.reply
            if isinstance(reply, RpcError):
                if reply.code is StatusCode.UNIMPLEMENTED:
                    self._multiplex = False
                    return None
                raise rpc_error(StatusCode.of(reply.code), f"{path}: {reply.message}")
            if reply.code:
                raise rpc_error(StatusCode.of(reply.code), reply.message)
            payload: bytes = reply.reply
            return payload
        self._suspect(None if mux is None else mux.connection)
        raise DeadlineExceeded(f"{path}: no reply from {self.peer} within {timeout:g} s")

    async def _mux_stream(self) -> _Mux:
        """The open Calls stream, opening one if there is none or the last one ended."""
        mux = self._mux
        if mux is not None and mux.failure is None:
            return mux
        async with self._mux_lock:
            mux = self._mux
            if mux is not None and mux.failure is None:
                return mux
            connection, stream = await self._open(MUX_SERVICE, _MUX_METHOD, None, None)
            mux = self._mux = _Mux(connection, stream)
            assert self._nursery is not None  # _open raises on a closed channel
            self._nursery.start_soon(self._run_mux, mux)
            return mux

    async def _run_mux(self, mux: _Mux) -> None:
        """Hand each reply to its call, and send what calls queue, until the stream ends;
        then fail the calls still waiting on it (a later call opens a new stream)."""
        path = f"/{MUX_SERVICE}/{_MUX_METHOD}"

        async def write() -> None:
            try:
                while True:
                    while mux.outgoing:
                        await mux.stream.send_bytes(mux.outgoing.popleft())
                    await mux.writer.wait()
            except (_ConnectionLost, h2.exceptions.H2Error) as error:
                mux.fail(Unavailable(f"{path}: cannot send to {self.peer} ({error})"))

        async def read() -> None:
            # The connection's reader hands most replies over itself, a pass of the event loop
            # sooner; this task sees the rest (those queued behind others, a malformed one) and
            # the end of the stream.
            mux.stream.take_message = mux.take
            try:
                while True:
                    data = await self._next(mux.connection, mux.stream, path)
                    if data is None:
                        raise Unavailable(f"{path}: {self.peer} ended the stream")
                    if not mux.take(data):
                        raise Internal(f"{path}: malformed burst.v1.MuxReply")
            except RpcError as error:
                mux.fail(error)
            finally:
                mux.stream.take_message = None

        async def run(task: Callable[[], Awaitable[None]], done: trio.CancelScope) -> None:
            await task()
            done.cancel()  # either one ending ends the stream

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, write, nursery.cancel_scope)
                nursery.start_soon(run, read, nursery.cancel_scope)
        finally:
            mux.fail(Unavailable(f"the channel to {self.peer} at {self.address} is closed"))
            self._finish(mux.connection, mux.stream)

    async def unary(
        self,
        service: str,
        method: str,
        request: _Message,
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
        try:
            return _decode(response_type, reply)
        except DecodeError:
            raise Internal(
                f"/{service}/{method}: malformed {_type_name(response_type)} in the reply"
            ) from None

    async def server_stream(
        self,
        service: str,
        method: str,
        request: _Message,
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
        connection: _Socket | None = None
        stream: _Stream | None = None
        try:
            # The deadline is applied around each wait, never around the yield: a cancel scope
            # must not span a yield in an async generator.
            with trio.move_on_at(deadline) as scope:
                connection, stream = await self._open(service, method, metadata, timeout)
                await self._send_request(stream, request.SerializeToString())
            if scope.cancelled_caught or connection is None or stream is None:
                self._suspect(connection)
                raise late
            while True:
                data: bytes | None = None
                with trio.move_on_at(deadline) as scope:
                    data = await self._next(connection, stream, path)
                if scope.cancelled_caught:
                    self._suspect(connection)
                    raise late
                if data is None:
                    return
                try:
                    reply = _decode(response_type, data)
                except DecodeError:
                    raise Internal(
                        f"{path}: malformed {_type_name(response_type)} in the reply"
                    ) from None
                yield reply
        finally:
            if connection is not None and stream is not None:
                self._finish(connection, stream)


def open_channel(addr: str, **options: Any) -> Channel:
    """``Channel`` for ``host:port`` (or ``http://host:port``): ``async with open_channel(a)``."""
    host, port = parse_hostport(addr)
    return Channel(host, port, **options)
