"""What one client may make a gRPC server hold (design promise 9), and the defaults.

The controller's ``[controller]`` keys of the same names set them (``burstd/config.py``); a
worker's peer server uses the defaults. This module imports only the standard library, so that
the configuration and the transport can both use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits a server applies to every client connection and every peer address.

    * ``max_streams_per_connection``: calls open at once on one connection, advertised as
      HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; a client that opens more loses the connection
      (a PROTOCOL_ERROR in HTTP/2's terms; before it has seen the limit, the calls over it are
      refused one by one, and clients make them again). Calls multiplexed over one Calls stream
      count as one.
    * ``max_connections_per_peer``: connections open at once from one IP address; more are
      closed as soon as they are accepted.
    * ``max_pending_requests_per_peer``: calls of one IP address whose request has not arrived
      in full (a Calls stream: its first call). A connection that opens one more is closed
      (GOAWAY ENHANCE_YOUR_CALM): requests of well-behaved clients arrive whole. Such a call
      holds no task, and what it holds is bounded by this limit, whatever the number of
      connections and streams.
    * ``request_timeout_s``: the time a call's request may take to arrive in full after its
      headers; then the call ends with DEADLINE_EXCEEDED.
    * ``idle_timeout_s``: a connection with no call open for this long is closed (GOAWAY); a
      client reconnects when it next calls.
    """

    max_streams_per_connection: int = 100
    max_connections_per_peer: int = 128
    max_pending_requests_per_peer: int = 128
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
