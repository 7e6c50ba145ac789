"""Unary calls multiplexed over one standing Calls stream (proto/burst/v1/mux.proto): both ends.

A ``burst.v1.Mux/Calls`` stream carries MuxCall messages from the client and MuxReply messages
back, matched by call id. Every server has the service; a channel with ``multiplex`` uses it for
unary calls that add no metadata of their own, which costs both sides a fraction of the CPU of an
HTTP/2 stream per call. The promises of a plain call hold alike: a deadline per call (sent as
``timeout_ms``), a cancelled call cancels its handler (a MuxCall with ``cancel``), errors as
statuses. A server bounds the calls in flight on one stream as it bounds the streams of one
HTTP/2 connection.

Neither end waits for a pass of the event loop to the stream's own tasks: the server's
connection reader starts each call and a call's task sends its reply while the sender idles;
the client's caller sends its call while the writer idles and the connection's reader hands the
reply over.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping

import h2.exceptions  # type: ignore[import-untyped]
import trio
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from purerpc.grpclib.events import MessageReceived, RequestEnded

from burstd.transport.connection import (
    CLIENT_CONFIG,
    SERVER_CONFIG,
    Connection,
    ConnectionLost,
    Stream,
    StreamFailed,
)
from burstd.transport.errors import Internal, RpcError, StatusCode, Unavailable, rpc_error
from burstd.transport.messages import Metadata, decode, decode_request
from burstd.transport.methods import Method, run_unary, status_of
from burstd.transport.wakeup import Wakeup
from burstd.wire import MUX_SERVICE
from proto.burst.v1 import mux_pb2

MUX_METHOD = "Calls"
PATH = f"/{MUX_SERVICE}/{MUX_METHOD}"
# Calls in flight on one Calls stream; more are refused (RESOURCE_EXHAUSTED) until some end, as
# a server bounds the streams of one HTTP/2 connection.
MAX_IN_FLIGHT = 1024
# Requests up to this size go over a Calls stream: wrapped in a MuxCall, larger ones could be
# over the message size limit, and one oversized message would end the whole stream.
MAX_REQUEST = CLIENT_CONFIG.max_message_length - 65536


# -- server end ----------------------------------------------------------------------------------


async def serve_mux(unary: Mapping[str, Method], stream: Stream, metadata: Metadata) -> None:
    """Serve a Calls stream until the client ends its side.

    Each MuxCall runs the unary handler it names in a task of its own, with the stream's
    metadata and the call's own deadline, exactly as the unary call would; its MuxReply is sent
    when it ends. The connection's reader starts the calls (``take``) and a call's task sends its
    reply while the sender idles, so neither waits for a pass of the event loop to this task or
    the sender. A cancel message cancels that handler and no reply is sent. When the client
    ends its side, the calls in flight finish and are answered before the stream ends OK.
    """
    connection = stream.connection
    replies: collections.deque[bytes] = collections.deque()
    replies_ready = Wakeup()
    scopes: dict[int, trio.CancelScope] = {}
    reading = True

    def answer(call_id: int, code: StatusCode, message: str = "", reply: bytes = b"") -> None:
        data = mux_pb2.MuxReply(
            id=call_id, code=code.value, message=message, reply=reply
        ).SerializeToString()
        if len(data) > SERVER_CONFIG.max_message_length:
            # Refused alone, as a plain call's would be: sent, it would end the whole stream.
            limit = SERVER_CONFIG.max_message_length
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
                reply = await run_unary(method, method_path, data, metadata)
        except Exception as error:
            code, message = status_of(error, method_path)
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
        connection.refused(code)

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
        elif len(scopes) >= MAX_IN_FLIGHT:
            answer(call.id, StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
        else:
            deadline = math.inf
            if call.timeout_ms:
                deadline = trio.current_time() + call.timeout_ms / 1000
            scope = scopes[call.id] = trio.CancelScope(deadline=deadline)
            nursery.start_soon(run, call.id, call.method, call.request, scope)

    def taken(data: bytes) -> bool:
        try:
            call = decode(mux_pb2.MuxCall, data)
        except DecodeError:
            return False  # left to this task, which ends the stream with the error
        take(call)
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        stream.take_message = taken
        try:
            while True:
                event = await stream.receive()
                if isinstance(event, RequestEnded):
                    break
                if isinstance(event, StreamFailed):
                    raise rpc_error(event.code, event.message)
                if isinstance(event, MessageReceived):
                    take(decode_request(mux_pb2.MuxCall, event.data))
        finally:
            stream.take_message = None
        reading = False
        replies_ready.wake()


# -- client end ----------------------------------------------------------------------------------


class Pending:
    """One call in flight on a Calls stream: its task waits here for the reply."""

    __slots__ = ("reply", "wakeup")

    def __init__(self) -> None:
        self.reply: mux_pb2.MuxReply | RpcError | None = None
        self.wakeup = Wakeup()


class MuxClient:
    """The client's end of one Calls stream: calls wait in ``pending`` by id for the reader to
    hand them their reply; what they send is queued for the writer. :meth:`run` (a task of the
    channel's) reads and writes until the stream ends."""

    def __init__(self, connection: Connection, stream: Stream, peer: str, address: str) -> None:
        self.connection = connection
        self.stream = stream
        self.peer = peer  # "controller", for error messages
        self.address = address
        self.pending: dict[int, Pending] = {}
        self.outgoing: collections.deque[bytes] = collections.deque()
        self.writer = Wakeup()
        # Until the writer's first turn, a call's message goes out with the stream's headers.
        self.writer_started = False
        self.last_id = 0
        self.failure: RpcError | None = None  # the stream ended: no call may use it any more

    async def call(self, path: str, data: bytes, timeout: float) -> bytes | None:
        """Call the unary method ``path`` with the encoded request; return the encoded reply,
        or None if the server has no Mux service (the caller then makes a plain call).

        The caller bounds the wait by ``timeout`` (sent to the server as the call's deadline);
        a call cancelled or out of time tells the server to stop its handler.
        """
        self.last_id += 1
        call_id = self.last_id
        call = self.pending[call_id] = Pending()
        self.send(
            mux_pb2.MuxCall(
                id=call_id, method=path, request=data, timeout_ms=math.ceil(timeout * 1000)
            )
        )
        try:
            while call.reply is None:
                await call.wakeup.wait()
        finally:
            if call.reply is None:  # cancelled, or out of time: the server should stop
                del self.pending[call_id]
                if self.failure is None:
                    self.send(mux_pb2.MuxCall(id=call_id, cancel=True))
        reply = call.reply
        if isinstance(reply, RpcError):
            if reply.code is StatusCode.UNIMPLEMENTED:
                return None
            raise rpc_error(StatusCode.of(reply.code), f"{path}: {reply.message}")
        if reply.code:
            raise rpc_error(StatusCode.of(reply.code), reply.message)
        payload: bytes = reply.reply
        return payload

    def send(self, message: mux_pb2.MuxCall) -> None:
        data = message.SerializeToString()
        if not self.outgoing and (self.writer.waiting or not self.writer_started):
            # The writer is idle: the caller sends it, a pass of the event loop sooner (what
            # must wait for credit, or fails, is left to the writer). The stream's first call
            # leaves in the same write as the stream's headers: a server holds a Calls stream
            # whose first message has not come as a pending request, and a client whose event
            # loop is busy (hundreds of TLS handshakes) would otherwise keep it pending until
            # its writer's turn, over the server's limit of pending requests per address.
            with contextlib.suppress(h2.exceptions.H2Error):
                if self.stream.send_now(data):
                    return
        self.outgoing.append(data)
        self.writer.wake()

    def take(self, data: bytes) -> bool:
        """Hand a reply to its call; False if it is malformed."""
        try:
            reply = decode(mux_pb2.MuxReply, data)
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

    async def run(self) -> None:
        """Hand each reply to its call, and send what calls queue, until the stream ends;
        then fail the calls still waiting on it (a later call opens a new stream)."""

        async def write() -> None:
            self.writer_started = True
            try:
                while True:
                    while self.outgoing:
                        await self.stream.send_bytes(self.outgoing.popleft())
                    await self.writer.wait()
            except (ConnectionLost, h2.exceptions.H2Error) as error:
                if self.stream.ending:
                    # The server ended or reset the stream (a server without the Mux service
                    # answers UNIMPLEMENTED at once): the reader ends it with the server's
                    # status, which the calls must get (UNIMPLEMENTED makes them fall back).
                    await trio.sleep_forever()
                self.fail(Unavailable(f"{PATH}: cannot send to {self.peer} ({error})"))

        async def read() -> None:
            # The connection's reader hands most replies over itself, a pass of the event loop
            # sooner; this task sees the rest (those queued behind others, a malformed one) and
            # the end of the stream.
            self.stream.take_message = self.take
            try:
                while True:
                    data = await self.stream.next_reply(PATH, f"{self.peer} at {self.address}")
                    if data is None:
                        raise Unavailable(f"{PATH}: {self.peer} ended the stream")
                    if not self.take(data):
                        raise Internal(f"{PATH}: malformed burst.v1.MuxReply")
            except RpcError as error:
                self.fail(error)
            finally:
                self.stream.take_message = None

        async def run(task: Callable[[], Awaitable[None]], done: trio.CancelScope) -> None:
            await task()
            done.cancel()  # either one ending ends the stream

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, write, nursery.cancel_scope)
                nursery.start_soon(run, read, nursery.cancel_scope)
        finally:
            self.fail(Unavailable(f"the channel to {self.peer} at {self.address} is closed"))
            self.connection.finish(self.stream)
