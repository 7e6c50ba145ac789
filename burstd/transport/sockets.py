"""Sockets as both clients and the server name them: addresses in messages, reasons of errors.

Standard library only, so that the one-shot client (``oneshot``) shares them without trio.
"""

from __future__ import annotations

import os
import socket


def format_addr(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reason(error: BaseException) -> str:
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
