"""TLS contexts for servers and clients: HTTP/2 negotiated by ALPN ``h2``, as gRPC requires.

A server with a client CA asks every client for a certificate signed by it (mutual TLS) and
refuses one without. A server issues no TLS 1.3 session tickets: burst's clients keep one
connection open and do not resume sessions, and a resumed TLS 1.3 handshake (PSK with ECDHE)
would save the server nothing (docs/security.md). Errors (a missing file, a key that does not
match its certificate) are :class:`TransportError` naming the file.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from burstd.transport.errors import TransportError

ALPN = "h2"
# What a metrics endpoint speaks (Prometheus scrapes HTTP/1.1).
HTTP1 = "http/1.1"

T = TypeVar("T")


def _load(what: str, path: Path, load: Callable[[], T]) -> T:
    try:
        return load()
    except (OSError, ssl.SSLError, ValueError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
        raise TransportError(f"cannot load the TLS {what} {path}: {reason}") from None


def server_context(
    cert: Path, key: Path, client_ca: Path | None = None, *, alpn: str = ALPN
) -> ssl.SSLContext:
    """The context of a server presenting ``cert`` (with ``key``) and speaking ``alpn``; with
    ``client_ca``, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([alpn])
    # Tickets cost the server a quarter of a full handshake's CPU, for clients that never use
    # them (docs/benchmarks.md).
    context.num_tickets = 0
    _load("certificate or key", cert, lambda: context.load_cert_chain(cert, key))
    if client_ca is not None:
        _load("client CA", client_ca, lambda: context.load_verify_locations(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The context of a client trusting ``ca`` alone (default: the system's CAs) that
    presents ``cert`` (with ``key``) if given."""
    if ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # Not the system's CAs besides: a certificate any public CA issued for the cluster's
        # host names would pass, and loading them costs 30 ms a context (every CLI call).
        context = _load(
            "CA", ca, lambda: ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN])
    if cert is not None:
        _load("certificate or key", cert, lambda: context.load_cert_chain(cert, key))
    return context
