"""Logging set-up shared by every burst program (loguru to stderr).

Call :func:`setup_logging` once at start-up. Code logs with ``from loguru import logger`` and
binds context where it has it: ``logger.bind(job_id=..., worker_id=...)`` or
``logger.contextualize(...)``; the line shows those extras when present and nothing when
absent. Code that the ``burst`` CLI imports (the transport) logs with this module's
:data:`logger` instead: the same logger, imported at its first use, so that a command that logs
nothing does not pay for loguru's import (docs/benchmarks.md). Records of the standard
``logging`` module (purerpc, trio, h2) are routed through loguru; purerpc's own logger is raised
to ERROR because it reports a normal cancellation (shutdown, client gone) as a warning.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from loguru import Logger, Message, Record

__all__ = ["LOG_FORMATS", "InterceptHandler", "LogFormat", "logger", "setup_logging"]

LogFormat = Literal["human", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("human", "json")

LOG_ENV = "BURST_LOG"
"""Variable that overrides the level given to :func:`setup_logging` (e.g. ``BURST_LOG=debug``)."""

_QUIET_LOGGERS: dict[str, int] = {
    "purerpc": logging.ERROR,  # "Got exception in main dispatch loop" on every normal cancellation
    "h2": logging.WARNING,  # frame-by-frame DEBUG chatter
    "hpack": logging.WARNING,
}

_CONTEXT_KEYS = ("worker_id", "job_id")

# loguru's levels (the names setup_logging accepts), known without importing it
_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

# A set-up that setup_logging(defer=True) left for loguru's first use: (level, component, format)
_deferred: tuple[str, str, LogFormat] | None = None


def _loguru() -> Logger:
    """loguru's logger, imported now if it was not, with a deferred set-up applied first."""
    global _deferred
    from loguru import logger as real

    if _deferred is not None:
        pending, _deferred = _deferred, None
        _configure(real, *pending)
    return real


class _LazyLogger:
    """Stands for loguru's logger and imports it at its first use (see the module's doc)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_loguru(), name)


logger = cast("Logger", _LazyLogger())
"""loguru's logger, imported at its first use."""


def _format(record: Record) -> str:
    """``2026-01-02 03:04:05.678 INFO  controller [worker_id=w1 job_id=j7] message``."""
    extra = record["extra"]
    context = " ".join(f"{key}={{extra[{key}]}}" for key in _CONTEXT_KEYS if key in extra)
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra[component]}</cyan> "
        + (f"[{context}] " if context else "")
        + "<level>{message}</level>\n{exception}"
    )


def _json_line(record: Record) -> str:
    """One flat JSON object: ``time`` (ISO 8601 with offset), ``level``, ``component``,
    ``message``, every bound extra (``job_id``, ``worker_id``...) as a field of its own, and
    ``exception`` (the formatted traceback) when the record carries one."""
    fields: dict[str, object] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    fields.update(record["extra"])
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        fields["exception"] = "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        )
    # default=str: an extra bound by some library may be any object; the line must still parse
    return json.dumps(fields, default=str, ensure_ascii=False)


def _json_sink(message: Message) -> None:
    # sys.stderr looked up at each write: a test's capture (or a reopened stderr) is honoured
    sys.stderr.write(_json_line(message.record) + "\n")
    sys.stderr.flush()


class InterceptHandler(logging.Handler):
    """Hands standard-library log records to loguru, keeping level and caller."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # find the caller that issued the record, skipping the logging module's own frames
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(
    level: str = "INFO", *, component: str, log_format: LogFormat = "human", defer: bool = False
) -> None:
    """Send loguru's output to stderr, one line per record: human-readable, or with
    ``log_format="json"`` one flat JSON object per line (see :func:`_json_line`).

    ``component`` (``controller``, ``worker``, ``cli``...) is bound to every record. ``BURST_LOG``,
    if set, overrides ``level`` (case-insensitive); an unknown level name is a ValueError naming it.
    At TRACE the quietened third-party loggers are left at full volume. Calling again replaces the
    previous set-up.

    With ``defer``, loguru is set up at the first use of :data:`logger` instead (for a program
    whose only logging goes through it: the ``burst`` CLI).
    """
    global _deferred
    chosen = os.environ.get(LOG_ENV, "").strip() or level
    name = chosen.upper()
    if name not in _LEVELS:
        source = LOG_ENV if os.environ.get(LOG_ENV, "").strip() else "log level"
        raise ValueError(f"{source}: unknown level {chosen!r} (valid: {', '.join(_LEVELS)})")
    if defer and "loguru" not in sys.modules:
        _deferred = (name, component, log_format)
    else:
        _deferred = None
        _configure(_loguru(), name, component, log_format)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for logger_name, floor in _QUIET_LOGGERS.items():
        # TRACE shows everything, purerpc's warnings included (for debugging the transport)
        logging.getLogger(logger_name).setLevel(logging.NOTSET if name == "TRACE" else floor)


def _configure(real: Logger, name: str, component: str, log_format: LogFormat) -> None:
    """Replace loguru's sinks with one to stderr at level ``name``."""
    real.remove()
    real.configure(extra={"component": component})
    if log_format == "json":
        real.add(_json_sink, level=name, backtrace=False, diagnose=False)
    else:
        real.add(sys.stderr, level=name, format=_format, backtrace=False, diagnose=False)
