"""Services as a server registers them, and how one unary call's handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from burstd.logs import logger
from burstd.transport.errors import StatusCode, Unauthenticated, sole_rpc_error
from burstd.transport.messages import Message, Metadata, RequestT, decode_request

UNAUTHENTICATED_DELAY = 0.02
"""Seconds a call refused UNAUTHENTICATED waits for its answer (see :func:`authorized`)."""

Authorize = Callable[[str, Metadata], Any]
"""A service's guard: given a call's path (``/service/method``) and metadata, what its handler
gets as its second argument (the caller), or an :class:`RpcError` that ends the call."""


def _metadata_only(path: str, metadata: Metadata) -> Metadata:
    return metadata


@dataclass(frozen=True, slots=True)
class Method:
    request_type: type[Any]
    handler: Callable[[Any, Any], Any]
    streaming: bool
    authorize: Authorize = _metadata_only
    # The Calls method of the Mux service: the handler takes the whole stream (see mux.py).
    mux: bool = False


class Service:
    """A named gRPC service: a set of methods and their handlers.

    ``Service("burst.v1.ControllerRpc")``; the name is the proto's package plus service name,
    as it appears in the HTTP/2 path ``/burst.v1.ControllerRpc/SubmitJob``.

    With ``authorize``, every call of the service (plain or multiplexed) is first given to it
    with its path and metadata, once its request arrived and before it is decoded: what it
    returns is the handler's second argument instead of the metadata, and an :class:`RpcError`
    it raises ends the call (see :data:`Authorize`). A connection whose calls were refused
    UNAUTHENTICATED ``MAX_UNAUTHENTICATED`` times is closed (GOAWAY).
    """

    def __init__(self, name: str, authorize: Authorize = _metadata_only) -> None:
        if not name or "/" in name:
            raise ValueError(f"bad service name {name!r}")
        self.name = name
        self.authorize = authorize
        self.methods: dict[str, Method] = {}

    def unary(
        self,
        method_name: str,
        request_type: type[RequestT],
        handler: Callable[[RequestT, Any], Awaitable[Message]],
    ) -> None:
        """Register a unary method: ``await handler(request, metadata)`` returns the reply
        (the caller instead of the metadata with ``authorize``).

        The handler gets the request decoded as ``request_type`` (a malformed one never reaches
        it: the client gets INVALID_ARGUMENT). It answers an error by raising :class:`RpcError`;
        any other exception is logged here and reaches the client as INTERNAL. It is cancelled
        if the client cancels the call, disconnects, or its deadline passes.
        """
        self._add(method_name, Method(request_type, handler, False, self.authorize))

    def server_stream(
        self,
        method_name: str,
        request_type: type[RequestT],
        handler: Callable[[RequestT, Any], AsyncIterator[Message]],
    ) -> None:
        """Register a server-streaming method: ``handler(request, metadata)`` is an async
        iterator (typically an async generator) whose items are sent as they come.

        Errors as for :meth:`unary`; an RpcError raised after some replies ends the stream with
        that status. The iterator is closed (``aclose``) however the call ends.
        """
        self._add(method_name, Method(request_type, handler, True, self.authorize))

    def _add(self, method_name: str, method: Method) -> None:
        if not method_name or "/" in method_name:
            raise ValueError(f"bad method name {method_name!r}")
        if method_name in self.methods:
            raise ValueError(f"method {self.name}/{method_name} registered twice")
        self.methods[method_name] = method


async def authorized(method: Method, path: str, metadata: Metadata) -> Any:
    """What the service's guard makes of the call (its handler's second argument). A call it
    refuses UNAUTHENTICATED is answered only after UNAUTHENTICATED_DELAY: one that guesses
    tokens gets a few dozen answers a second per connection, and its connection is closed after
    MAX_UNAUTHENTICATED of them (``Connection.refused``)."""
    try:
        return method.authorize(path, metadata)
    except Unauthenticated:
        await trio.sleep(UNAUTHENTICATED_DELAY)
        raise


async def run_unary(method: Method, path: str, data: bytes, metadata: Metadata) -> bytes:
    """A unary handler's reply to the encoded request, encoded; errors propagate. The service's
    guard sees the call before the request is decoded."""
    caller = await authorized(method, path, metadata)
    reply = await method.handler(decode_request(method.request_type, data), caller)
    payload: bytes = reply.SerializeToString()
    return payload


def status_of(error: Exception, path: str) -> tuple[StatusCode, str]:
    """The status a handler's exception answers: its RpcError's, or INTERNAL (logged here)."""
    status = sole_rpc_error(error)
    if status is not None:
        return status.code, status.message
    logger.exception("{} failed with an unexpected error", path)
    return StatusCode.INTERNAL, "internal error"
