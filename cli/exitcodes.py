"""The exit codes of every ``burst`` command: the one table, and which error gets which code.

The README and ``burst --help`` show :func:`table`; a test checks that they do.
"""

from __future__ import annotations

import os
import sys
from enum import IntEnum
from typing import NoReturn

__all__ = ["ExitCode", "die", "for_status", "reader_gone", "table"]


class ExitCode(IntEnum):
    """What a ``burst`` command's exit status says (``meaning``, in words)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    NO_SUCH_JOB = 4
    TIMEOUT = 5

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "a job failed or was cancelled, or the controller refused the request for "
    "a reason not below (e.g. RESOURCE_EXHAUSTED: its queue is full)",
    ExitCode.USAGE: "usage or configuration error (a bad flag, file or key; a job spec the "
    "controller refused as invalid; no or a wrong token)",
    ExitCode.UNREACHABLE: "the controller cannot be reached (or stopped answering)",
    ExitCode.NO_SUCH_JOB: "no such job (an id the controller does not know)",
    ExitCode.TIMEOUT: "timeout: --timeout expired before the jobs ended",
}

# gRPC status codes (by name) that say something more specific than FAILED.
_BY_STATUS = {
    "INVALID_ARGUMENT": ExitCode.USAGE,
    "UNAUTHENTICATED": ExitCode.USAGE,
    "NOT_FOUND": ExitCode.NO_SUCH_JOB,
    "UNAVAILABLE": ExitCode.UNREACHABLE,
    "DEADLINE_EXCEEDED": ExitCode.UNREACHABLE,
}


def for_status(status: str) -> ExitCode:
    """The exit code for a call the controller answered with the gRPC status named ``status``."""
    return _BY_STATUS.get(status, ExitCode.FAILED)


def table() -> str:
    """The table as Markdown: the README's."""
    rows = [f"| {code.value} | {code.meaning} |" for code in ExitCode]
    return "\n".join(["| exit | meaning |", "|---|---|", *rows])


def die(program: str, message: str, code: int = ExitCode.USAGE) -> NoReturn:
    """End ``program`` with ``code`` after one line on stderr, the one error style:
    ``burstd: error: <message>``."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(code)


def reader_gone() -> NoReturn:
    """End quietly when stdout's reader closed it early (``burst list | head``): not an error
    of ours. Later writes, and Python's flush at exit, go to /dev/null instead of raising
    BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(ExitCode.FAILED)
