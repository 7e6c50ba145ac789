"""What a client puts in a call's headers besides gRPC's own: its metadata, checked, and its
deadline (``grpc-timeout``). Shared by both clients (``channel`` and ``oneshot``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta

_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_RESERVED_KEYS = frozenset({"content-type", "te", "user-agent", "host", "connection"})


def check_metadata(metadata: Mapping[str, str]) -> None:
    """ValueError naming the first key or value that cannot travel as custom metadata."""
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


def grpc_timeout(seconds: float) -> timedelta:
    """The deadline sent for a call of ``seconds``."""
    # grpc-timeout allows at most 8 digits: below 10 s send microseconds, above whole seconds.
    # Rounding up keeps the server's deadline at or after the client's.
    if seconds < 10:
        return timedelta(microseconds=math.ceil(seconds * 1_000_000))
    return timedelta(seconds=math.ceil(seconds))


def timeout_header(seconds: float) -> str:
    """The ``grpc-timeout`` value of a call of ``seconds`` (``2500000u``, ``30S``)."""
    delta = grpc_timeout(seconds)
    if delta.microseconds:
        return f"{delta // timedelta(microseconds=1)}u"
    return f"{int(delta.total_seconds())}S"
