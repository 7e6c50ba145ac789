"""Messages as the transport handles them: raw bytes on the wire, decoded by us.

purerpc would parse a request before any code of ours runs, so that a corrupt message came back
as CANCELLED with a traceback repr (trap 3 in the package's docstring). Requests and replies
travel as bytes; :func:`decode_request` turns a DecodeError into INVALID_ARGUMENT naming the
message type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from burstd.transport.errors import Internal, InvalidArgument

Metadata = Mapping[str, str]
"""A call's custom metadata (HTTP/2 headers other than gRPC's own); binary ``-bin`` keys are
not passed on."""


class Message(Protocol):
    """What the transport needs of a protobuf message (google.protobuf ships no type stubs)."""

    def SerializeToString(self, **kwargs: Any) -> bytes: ...

    def ParseFromString(self, serialized: bytes) -> int | None: ...


RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT", bound=Message)


def type_name(message_type: type[Any]) -> str:
    """The message type's full protobuf name (``burst.v1.MuxCall``)."""
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", message_type.__name__))


def decode(message_type: type[ResponseT], data: bytes) -> ResponseT:
    """Parse ``data`` as ``message_type``; DecodeError propagates."""
    message = message_type()
    message.ParseFromString(data)
    return message


def decode_request(request_type: type[ResponseT], data: bytes) -> ResponseT:
    """Parse a request; a malformed one is INVALID_ARGUMENT "malformed <message type>"."""
    try:
        return decode(request_type, data)
    except DecodeError:
        raise InvalidArgument(f"malformed {type_name(request_type)}") from None


def decode_reply(path: str, response_type: type[ResponseT], data: bytes) -> ResponseT:
    """Parse a reply of the call to ``path``; a malformed one is INTERNAL naming the type."""
    try:
        return decode(response_type, data)
    except DecodeError:
        raise Internal(f"{path}: malformed {type_name(response_type)} in the reply") from None
