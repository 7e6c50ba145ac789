"""burst's gRPC transport: the only package that imports purerpc (and anyio).

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

Other code imports only from ``burstd.transport``. Its modules, one job each:

* ``errors``: status codes and errors; ``messages``: raw bytes and their decoding;
* ``wakeup``: the allocation-free wake-up every waiting task uses;
* ``connection``: one HTTP/2 connection on purerpc's framer, either side (frames, flow control,
  per-stream events, the writer task);
* ``methods``: services as registered, and how a unary handler runs; ``server``: the listener,
  connections and calls; ``health``: the standard health service;
* ``channel``: the client;
* ``mux``: unary calls multiplexed over one standing stream, both ends;
* ``oneshot``: unary calls on a blocking socket, without trio or purerpc, for a short-lived
  program (the ``burst`` CLI's commands that make only unary calls);
* ``headers`` (a client's metadata and deadline headers) and ``sockets`` (addresses and socket
  errors in messages): shared by both clients, standard library only.

The package imports the errors at once and the rest at first use, so that ``oneshot`` and
whoever only names the errors do not import trio, anyio and purerpc.

purerpc 0.8 is used only for its HTTP/2 + gRPC framing (``GRPCConnection``, over h2). Its
socket and stream classes are replaced by lighter ones here (one writer task per connection that
sends each scheduling round's frames in one write, calls that wait without allocating events or
memory channels); its ``Server``, ``ConnectionHandler`` and client stubs are not used, because
they carry the traps this package exists to close (see docs/architecture.md and the design,
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
   of that code runs here, and :func:`quiet_purerpc_logging` (called when ``connection`` is
   imported) raises its
   logger to ERROR anyway.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from burstd.transport.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    StatusCode,
    TransportError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    rpc_error,
)
from burstd.wire import HEALTH_SERVICE, MUX_SERVICE

if TYPE_CHECKING:
    from burstd.transport.channel import Channel, open_channel
    from burstd.transport.connection import MAX_UNAUTHENTICATED, quiet_purerpc_logging
    from burstd.transport.health import health_service
    from burstd.transport.messages import Metadata
    from burstd.transport.methods import Authorize, Service
    from burstd.transport.server import serve

# What needs trio, anyio or purerpc is imported at its first use: a program that only names the
# errors (the `burst` CLI on its one-shot path, see ``oneshot``) does not pay for them.
_LAZY = {
    "Channel": "channel",
    "open_channel": "channel",
    "MAX_UNAUTHENTICATED": "connection",
    "quiet_purerpc_logging": "connection",
    "health_service": "health",
    "Metadata": "messages",
    "Authorize": "methods",
    "Service": "methods",
    "serve": "server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "HEALTH_SERVICE",
    "MAX_UNAUTHENTICATED",
    "MUX_SERVICE",
    "Aborted",
    "AlreadyExists",
    "Authorize",
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
