"""gRPC status errors: what a handler raises to answer with a status, and what a call raises."""

from __future__ import annotations

import enum
from typing import ClassVar


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


class StreamRefused(Unavailable):
    """The server refused the call before starting it (RST_STREAM REFUSED_STREAM): a client may
    make it again at once, as gRPC clients do."""


# RST_STREAM error codes: a call refused before it started (a client may make it again), and the
# statuses of the others, as gRPC maps them.
H2_REFUSED_STREAM = 0x7
RESET_CODES = {
    0x8: StatusCode.CANCELLED,
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def reset_error(path: str, error_code: int) -> RpcError:
    """What a call to ``path`` that the server reset (RST_STREAM ``error_code``) raises."""
    message = f"{path}: the server reset the call (HTTP/2 code {error_code})"
    if error_code == H2_REFUSED_STREAM:
        return StreamRefused(message)
    return rpc_error(RESET_CODES.get(error_code, StatusCode.INTERNAL), message)


class TransportError(OSError):
    """The server could not start listening (address in use, bad host, no permission).

    ``errno`` is the underlying error number when there is one.
    """


def sole_rpc_error(error: BaseException) -> RpcError | None:
    """The RpcError a handler meant, also when a nursery wrapped it in an ExceptionGroup."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, RpcError) else None
