"""One HTTP/2 connection carrying gRPC calls, either side, on purerpc's framer.

purerpc 0.8 is used only for its HTTP/2 + gRPC framing (``GRPCConnection``, over h2). Its
socket and stream classes are replaced by lighter ones here: one writer task per connection
that sends each scheduling round's frames in one write (:class:`Connection`), and calls that
wait without allocating events or memory channels (:class:`Stream`).

purerpc's GRPCConnection turns bytes into gRPC events. Three of its behaviours would hang or
kill a whole connection, so :class:`Framer` replaces them: an RST_STREAM was dropped silently (a
cancelled client call left the server working forever, a server reset left the client waiting
forever), DATA for a stream it no longer knew raised KeyError (killing the connection), and a
malformed request or response header or an oversized message raised out of the reader (killing
every call on the connection). They now become per-stream events; GOAWAY becomes an event too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import h2.exceptions  # type: ignore[import-untyped]
import trio
from anyio.streams.tls import TLSStream
from h2.settings import SettingCodes  # type: ignore[import-untyped]
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

from burstd.limits import ConnectionLimits
from burstd.logs import logger
from burstd.transport.errors import (
    H2_REFUSED_STREAM,
    ResourceExhausted,
    StatusCode,
    Unavailable,
    reset_error,
    rpc_error,
)
from burstd.transport.wakeup import Wakeup

# HTTP/2 error code sent with RST_STREAM: our side abandons a call.
_H2_CANCEL = 0x8
# HTTP/2 error code of the GOAWAY that disconnects a peer over its limits, or for its refused
# calls.
_H2_ENHANCE_YOUR_CALM = 0xB
MAX_UNAUTHENTICATED = 8
"""Calls refused UNAUTHENTICATED on one connection after which the server closes it."""


def quiet_purerpc_logging() -> None:
    """Raise purerpc's standard-library logger to ERROR.

    purerpc reports a normal cancellation (shutdown, a client gone) as a WARNING with a stack
    trace. The transport does not run those code paths, but other code might import purerpc,
    and a shutdown must print nothing alarming. Idempotent; called at import.
    """
    logging.getLogger("purerpc").setLevel(logging.ERROR)


quiet_purerpc_logging()


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset one stream (RST_STREAM)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """One stream broke the protocol; the call ends with this status."""

    stream_id: int
    code: StatusCode
    message: str


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer will accept no new streams on this connection (GOAWAY)."""


class Framer(GRPCConnection):  # type: ignore[misc]
    def _stream_reset(self, event: Any) -> list[object]:
        self.message_read_buffers.pop(event.stream_id, None)
        return [StreamReset(event.stream_id, int(event.error_code))]

    def _connection_terminated(self, event: Any) -> list[object]:
        return [GoAway()]

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
            return [StreamFailed(event.stream_id, StatusCode.RESOURCE_EXHAUSTED, str(error))]
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
            return [StreamFailed(event.stream_id, StatusCode.INTERNAL, f"bad reply: {error}")]
        return events

    def _trailers_received(self, event: Any) -> list[object]:
        try:
            events: list[object] = super()._trailers_received(event)
        except (ProtocolError, KeyError, ValueError) as error:
            return [StreamFailed(event.stream_id, StatusCode.INTERNAL, f"bad reply: {error}")]
        return events


class ConnectionLost(Exception):
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


SERVER_CONFIG = GRPCConfiguration(client_side=False)
CLIENT_CONFIG = GRPCConfiguration(client_side=True)
# Bytes asked of the socket per read (purerpc asked for 1 MiB, which CPython allocates on every
# read before it shrinks the buffer to what came).
_RECEIVE_SIZE = 65536
# Bytes queued for a connection's socket past which a sender waits for the writer: HTTP/2 flow
# control alone lets a peer with a large window (and a slow socket) make us queue its whole
# window in memory, e.g. a large output relayed to a slow reader.
OUTGOING_HIGH = 1 << 20


_END_EVENTS = (RequestEnded, ResponseEnded, StreamReset, StreamFailed)


class Stream:
    """One call on a connection. Requests and replies travel as raw bytes: decoding is ours
    (trap 3).

    The events the connection's reader hands over wait in a plain deque, and a task waiting
    for them or for flow-control credit is parked and rescheduled directly (no memory channel
    or trio.Event per call).
    """

    __slots__ = (
        "_connection",
        "_events",
        "_lost",
        "_reader",
        "_window",
        "cancel_scope",
        "ended",
        "long_lived",
        "pending",
        "request",
        "reset",
        "response_started",
        "stream_id",
        "take_message",
    )

    def __init__(self, connection: Connection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._events: collections.deque[object] = collections.deque()
        self._reader = Wakeup()  # for the call's task waiting for an event
        self._window = Wakeup()  # for the call's task waiting for flow-control credit
        self._lost = False  # the connection is gone: no more events will come
        self.ended = False  # the peer's side is complete (end, status, reset or failure seen)
        self.reset = False  # the peer reset the stream
        self.response_started = False  # server side: the reply's headers are out
        self.cancel_scope: trio.CancelScope | None = None  # server side: the handler's scope
        self.request: RequestReceived | None = None  # server side: the call's headers
        # Server side: the request has not arrived in full yet (the call has no task yet).
        self.pending = False
        # Server side: a Calls stream, whose request is complete with its first message.
        self.long_lived = False
        # Takes a message at once, in the connection's reader (True if it did), instead of
        # queueing it for the call's task: a Calls stream's (see mux.py).
        self.take_message: Callable[[bytes], bool] | None = None

    @property
    def connection(self) -> Connection:
        return self._connection

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

    @property
    def ending(self) -> bool:
        """Whether the call's end (the peer's status, a reset, a failure, the connection's loss)
        has come, received or still queued: what a sender failing to send should defer to."""
        return (
            self.ended
            or self._lost
            or any(isinstance(event, _END_EVENTS) for event in self._events)
        )

    async def receive(self) -> object:
        """The next event; raises ConnectionLost once the connection is gone and drained."""
        if self._events:
            # A cancellation point, not a schedule point: queued events are taken at once.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            while not self._events:
                if self._lost:
                    await trio.lowlevel.checkpoint()
                    raise ConnectionLost
                await self._reader.wait()
        event = self._events.popleft()
        if isinstance(event, MessageReceived):
            self._connection.h2.acknowledge_received_data(
                event.flow_controlled_length, self.stream_id
            )
            self._connection.flush()
        elif isinstance(event, _END_EVENTS):
            self.ended = True
        return event

    async def next_reply(self, path: str, peer: str) -> bytes | None:
        """The next reply message (client side), or None when the call ended with OK.

        A status other than OK raises its RpcError; a reset or lost connection raises the
        matching one (UNAVAILABLE for a lost connection, naming ``peer`` and the cause).
        """
        while True:
            try:
                event = await self.receive()
            except ConnectionLost:
                raise Unavailable(
                    f"{path}: connection to {peer} lost ({self._connection.failure})"
                ) from None
            if isinstance(event, MessageReceived):
                data: bytes = event.data
                return data
            if isinstance(event, ResponseEnded):
                if event.status.int_value == 0:
                    return None
                raise rpc_error(StatusCode.of(event.status.int_value), event.status.status_message)
            if isinstance(event, StreamReset):
                raise reset_error(path, event.error_code)
            if isinstance(event, StreamFailed):
                raise rpc_error(event.code, f"{path}: {event.message}")
            # ResponseReceived (the reply's headers): nothing to do

    async def send_bytes(self, data: bytes, *, end: bool = False) -> None:
        """Send one length-prefixed message (flow-controlled); ``end`` also ends our side.

        Raises ConnectionLost if the stream is reset or the connection lost while waiting for
        flow-control credit (on the server, Cancelled when the reset cancelled the handler).
        """
        connection = self._connection.grpc
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
                self._connection.flush()  # what is queued must go out for the peer to give credit
                await self._window.wait()
                if self.reset or self._lost:
                    # On the server a reset has cancelled the handler's scope: end with
                    # Cancelled, not with an error that would be logged as the handler's failure.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    raise ConnectionLost("the stream was reset or the connection lost")
                continue
            chunk = (
                message if sent == 0 and window >= len(message) else message[sent : sent + window]
            )
            sent += len(chunk)
            last = sent == len(message)
            connection.send_data(self.stream_id, chunk, end_stream=end and last)
            if last:
                break
        self._connection.flush()
        await self._connection.drain()

    def send_now(self, data: bytes) -> bool:
        """Send one message at once if the flow-control window takes it whole; False (nothing
        sent) if it must wait, through ``send_bytes``."""
        connection = self._connection.grpc
        size = _MESSAGE_PREFIX.size + len(data)
        if (
            self.reset
            or self._lost
            or len(data) > connection.config.max_message_length
            or connection.flow_control_window(self.stream_id) < size
        ):
            return False
        connection.send_data(self.stream_id, _MESSAGE_PREFIX.pack(False, len(data)) + data)
        self._connection.flush()
        return True

    def start_response(self) -> None:
        """Send the reply's headers (server side)."""
        self._connection.grpc.start_response(self.stream_id, "+proto")
        self.response_started = True
        self._connection.flush()

    def end(self, status: Status) -> None:
        """End the call with ``status`` (server side): trailers, or a trailers-only reply."""
        if self.response_started:
            self._connection.grpc.end_response(self.stream_id, status)
        else:
            self._connection.grpc.respond_status(self.stream_id, status)
        self._connection.flush()


class Peer:
    """What the connections of one client address hold on a server (see ConnectionLimits)."""

    __slots__ = ("connections", "hold_until", "penalty_until", "pending", "refusing")

    def __init__(self) -> None:
        self.connections = 0
        self.pending = 0  # calls whose request has not arrived in full
        self.refusing = False  # at its connection limit (logged once each time it gets there)
        # A connection of this peer went over its limits: its new ones are closed until then.
        self.penalty_until = -math.inf
        # A connection of this peer was closed for guessing tokens (``Connection.guessing``):
        # its new ones are held unread until then.
        self.hold_until = -math.inf


class Connection:
    """One HTTP/2 connection, either side: the frame reader and the socket writer.

    Whoever changes the HTTP/2 state calls :meth:`flush`, which moves the bytes h2 queued to the
    writer and wakes it only when there are some; the writer sends everything queued meanwhile
    in one ``send``, so the replies of one scheduling round go out together.

    A server's connection (``limits`` and ``peer`` given) holds a call without a task until its
    request has arrived in full (a Calls stream, named in ``long_lived``: its first message),
    at most ``max_pending_requests_per_peer`` such calls for the peer and each for at most
    ``request_timeout_s`` (:meth:`expire_requests`); and its :attr:`idle` scope's deadline is
    ``idle_timeout_s`` after its last call ended.
    """

    def __init__(
        self,
        client_side: bool,
        sock: anyio.abc.SocketStream | TLSStream,
        *,
        limits: ConnectionLimits | None = None,
        peer: Peer | None = None,
        long_lived: Container[tuple[str, str]] = (),
    ) -> None:
        self.client_side = client_side
        config = CLIENT_CONFIG if client_side else SERVER_CONFIG
        connection = Framer(config)
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
        # wrappers cost a schedule point per send and a failed recv per read. Over TLS they go
        # through the TLS stream.
        self._raw: socket.socket = raw
        self._tls = sock if isinstance(sock, TLSStream) else None
        self.grpc = connection
        self.h2 = connection.h2_connection
        self._streams: dict[int, Stream] = {}
        self._outgoing: list[bytes] = []
        self._queued = 0  # bytes in _outgoing and the writer's hands, not yet on the socket
        self._drained: trio.Event | None = None  # set when _queued falls to OUTGOING_HIGH
        self._writer = Wakeup()  # for the writer task, when it has sent everything
        self._writing = True  # cleared to let the writer send what is left and return
        self.reading = trio.CancelScope()  # around the reader (listen): close() cancels it
        self.finished = trio.Event()  # set when the connection must close
        self.goaway = False  # the peer takes no new streams here
        self.retired = False  # take no new calls here (stream ids used up, or dead peer)
        self.failure = "connection closed by peer"
        self.probe: trio.Event | None = None  # set on any data received while a ping is out
        self.unauthenticated = 0  # calls refused UNAUTHENTICATED (server side): see refused()
        self.guessing = False  # server side: closed for MAX_UNAUTHENTICATED refusals
        self._limits = limits or ConnectionLimits()
        self._peer = peer or Peer()
        self._long_lived = long_lived
        # Server side: calls whose request has not arrived, by stream id, with their deadline
        # (in the order they came, which is the order of their deadlines).
        self._pending: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._pending_added = Wakeup()  # for expire_requests, when nothing is pending
        self._refused = 0  # calls refused for the connection's limit of calls
        self.over_limits = False  # server side: closed for going over its limits
        self.idle = trio.CancelScope()  # server side: around the reader, see _idle_from_now
        if not client_side:
            self._idle_from_now()
        self._slots = trio.lowlevel.ParkingLot()  # client side: calls waiting for a stream
        connection.initiate_connection()
        if not client_side:
            # A setting of its own after the first SETTINGS frame: h2 enforces it (a client that
            # opens more loses the connection) only once the client acknowledged it; calls
            # opened before that, beyond the limit, are refused one by one (see _admit).
            self.h2.update_settings(
                {SettingCodes.MAX_CONCURRENT_STREAMS: self._limits.max_streams_per_connection}
            )
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
            self._queued += len(data)
            self._writer.wake()

    async def drain(self) -> None:
        """Wait while more than OUTGOING_HIGH bytes wait for the socket (or until the writer
        stops): a sender's memory is bounded by the socket's pace, not only the peer's window."""
        while self._queued > OUTGOING_HIGH and self._writing:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    def _sent(self, size: int) -> None:
        self._queued -= size
        if self._drained is not None and (self._queued <= OUTGOING_HIGH or not self._writing):
            self._drained.set()
            self._drained = None

    def close(self) -> None:
        """Stop the reader; let the writer send what is queued, then return."""
        self.reading.cancel()
        self._writing = False
        self._writer.wake()
        self._sent(0)  # senders waiting in drain() stop waiting

    def refused(self, code: StatusCode) -> None:
        """Count a call answered ``code`` (server side): a peer that keeps sending unknown
        tokens is sent GOAWAY and disconnected, and its address's next connections are held
        before they are read (see ``server.HOLD``), so one peer guessing cannot take the
        server's time from the others."""
        if code is not StatusCode.UNAUTHENTICATED:
            return
        self.unauthenticated += 1
        if self.unauthenticated == MAX_UNAUTHENTICATED:
            logger.debug(
                "a peer sent {} calls with no valid token: disconnected", self.unauthenticated
            )
            self.guessing = True
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(error_code=_H2_ENHANCE_YOUR_CALM)
            self.flush()
            self.close()

    async def write(self) -> None:
        """The connection's writer task: runs until :meth:`close` (or cancelled)."""
        while True:
            if self._outgoing:
                joined = b"".join(self._outgoing)
                self._outgoing.clear()
                if self._tls is not None:
                    await self._tls.send(joined)
                    self._sent(len(joined))
                    continue
                data = memoryview(joined)
                while data:
                    try:
                        data = data[self._raw.send(data) :]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(self._raw)
                self._sent(len(joined))
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
    ) -> Stream:
        """Open a call (client side); h2.exceptions.H2Error if this connection takes no more."""
        stream_id = self.h2.get_next_available_stream_id()
        self.grpc.start_request(
            stream_id, "http", service, method, None, authority, timeout, "+proto", metadata
        )
        stream = self._streams[stream_id] = Stream(self, stream_id)
        return stream

    async def stream_freed(self) -> None:
        """Wait until a call on this connection ends, or the connection (client side): for a
        call that found the server's limit of streams reached."""
        await self._slots.park()

    def forget(self, stream: Stream) -> None:
        """Drop a finished call's state; later frames for it are acknowledged and ignored."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self.grpc.message_read_buffers.pop(stream.stream_id, None)
        if stream.pending:
            self._started(stream)
        if self.client_side:
            self._slots.unpark()
        if not self._streams:
            if not self.usable:
                self.finished.set()
            if not self.client_side:
                self._idle_from_now()

    def _idle_from_now(self) -> None:
        self.idle.deadline = trio.current_time() + self._limits.idle_timeout_s

    def _admit(self, request: RequestReceived) -> bool:
        """A new call (server side): held without a task until its request is complete. Over
        the connection's limit of calls (a client that has not seen the limit yet), it is
        refused alone (REFUSED_STREAM: the client may make it again), up to as many as the
        limit. Over its peer's limit of pending calls, or refused too often, False: the
        connection must close (GOAWAY ENHANCE_YOUR_CALM), which frees what it held at once
        (legitimate requests arrive whole, and are not pending long)."""
        stream_id = request.stream_id
        if self._peer.pending >= self._limits.max_pending_requests_per_peer:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(_H2_ENHANCE_YOUR_CALM)
            return False
        if len(self._streams) >= self._limits.max_streams_per_connection:
            # A client may open more before it has seen the limit, but not twice as many.
            self._refused += 1
            if self._refused > self._limits.max_streams_per_connection:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.close_connection(_H2_ENHANCE_YOUR_CALM)
                return False
            self.grpc.message_read_buffers.pop(stream_id, None)
            with contextlib.suppress(h2.exceptions.H2Error):
                self.grpc.reset_stream(stream_id, H2_REFUSED_STREAM)
            return True
        stream = self._streams[stream_id] = Stream(self, stream_id)
        stream.request = request
        stream.long_lived = (request.service_name, request.method_name) in self._long_lived
        stream.pending = True
        self._peer.pending += 1
        self._pending[stream_id] = trio.current_time() + self._limits.request_timeout_s
        self._pending_added.wake()
        self.idle.deadline = math.inf
        return True

    def _started(self, stream: Stream) -> None:
        """The call's request is complete (or the call is gone): it holds no pending place."""
        stream.pending = False
        self._peer.pending -= 1
        del self._pending[stream.stream_id]

    async def expire_requests(self) -> None:
        """End the calls whose request did not arrive in time (server side; a task of the
        connection's): DEADLINE_EXCEEDED, then a reset, so the client stops sending."""
        timeout = self._limits.request_timeout_s
        while True:
            if not self._pending:
                await self._pending_added.wait()
                continue
            stream_id, deadline = next(iter(self._pending.items()))
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            stream = self._streams[stream_id]
            logger.debug("request of stream {} not received within {:g} s", stream_id, timeout)
            with contextlib.suppress(h2.exceptions.H2Error):
                message = f"the request did not arrive within {timeout:g} s"
                stream.end(Status(StatusCode.DEADLINE_EXCEEDED.value, message))
                self.grpc.reset_stream(stream_id, _H2_CANCEL)
            self.forget(stream)
            self.flush()

    def go_away(self) -> None:
        """Tell the client this connection takes no more calls (GOAWAY), before closing it."""
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection()
        self.flush()

    def finish(self, stream: Stream) -> None:
        """End a call on our side (client side): reset it if the server has not ended it (the
        call was abandoned midway: the server should stop), then forget it."""
        if not stream.ended and not self.finished.is_set():
            self.reset_stream(stream)
            self.flush()
        self.forget(stream)

    def reset_stream(self, stream: Stream) -> None:
        """Tell the peer we abandoned this call (RST_STREAM CANCEL), if it is still open."""
        # h2 refuses if the stream is already closed at the HTTP/2 level: nothing to reset then
        with contextlib.suppress(h2.exceptions.H2Error):
            self.grpc.reset_stream(stream.stream_id, _H2_CANCEL)

    def fail_streams(self) -> None:
        """Wake every waiting call: the connection is gone (their receive raises)."""
        self.finished.set()
        for stream in self._streams.values():
            stream.lose()
        self._slots.unpark_all()

    def dispose(self) -> None:
        """Break the HTTP/2 state's reference cycles once the connection is over: h2's frame
        dispatch table holds bound methods of its connection, and our encoder override a partial
        of the encoder. Without them the state is freed when the connection closes, not at the
        next collection of cyclic garbage (which the controller runs rarely)."""
        self.h2._frame_dispatch_table = {}
        vars(self.h2.encoder).pop("encode", None)
        self._streams.clear()  # calls still listed refer back to the connection

    def release(self) -> None:
        """Give back the pending places the connection's calls held (server side, when it
        closes)."""
        for stream in list(self._streams.values()):
            if stream.pending:
                self._started(stream)

    async def listen(self) -> AsyncIterator[Stream]:
        """Read frames until the peer closes; yield each new call once its request has arrived
        (server side)."""
        # purerpc's loop, with the per-stream events above, and ignoring streams we no longer
        # track instead of raising KeyError.
        while True:
            if self._tls is not None:
                try:
                    data = await self._tls.receive(_RECEIVE_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
                    return
            else:
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
                if isinstance(event, GoAway):
                    self.goaway = True
                    if not self._streams:
                        self.finished.set()  # no call left to finish: close it now
                    continue
                if isinstance(event, RequestReceived):
                    if self.client_side:
                        raise ProtocolError("the server opened a stream")
                    if not self._admit(event):
                        logger.debug("a client over its limits of calls: closing")
                        self.flush()
                        self.over_limits = True
                        return
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
                if isinstance(event, StreamReset):
                    if stream.pending:  # abandoned before it started: nothing to stop
                        self.forget(stream)
                        continue
                    stream.reset = True
                    stream.window_updated()
                    if stream.cancel_scope is not None:
                        stream.cancel_scope.cancel()
                stream.put(event)
                if stream.pending and (
                    isinstance(event, RequestEnded | StreamFailed)
                    or (stream.long_lived and isinstance(event, MessageReceived))
                ):
                    self._started(stream)
                    yield stream
            self.flush()  # h2's answers (SETTINGS and PING acks, window updates, refusals)

    async def read(self) -> None:
        """The client's reader task. A reader that ends (EOF, reset, protocol error) must not
        leave calls waiting forever: it fails them all, and the channel opens a new connection
        next time."""
        try:
            with self.reading:
                async for _ in self.listen():
                    pass
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self.fail_streams()


def end_quietly(error: BaseException, what: str) -> None:
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
