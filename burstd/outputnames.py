"""Names of a job's output files: the default ones and the patterns of ``--stdout``/``--stderr``.

A pattern is a file name (or a relative path) inside the job's output folder with placeholders:

- ``{job_id}``: the job's id (``job-00000042``);
- ``{index}``: its array index (array jobs only);
- ``{attempt}``: the attempt number (1 for the first run);
- ``{submission}``: the submission it came with (named by ``burst submit``).

A pattern never leaves the output folder: an absolute one, or one with a ``..`` part, is
refused; so is an unknown placeholder or a stray brace. The client, the controller and the
worker all check with ``check_pattern`` (the worker renders with ``render``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PLACEHOLDERS", "SUBMISSION", "check_pattern", "render", "uses"]

PLACEHOLDERS: Final = ("job_id", "index", "attempt", "submission")
_FIELD: Final = re.compile(r"\{([^{}]*)\}")
# A submission's name goes into file names: a plain name, as job ids are.
SUBMISSION: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` saying what is wrong with ``pattern`` (see the module's rules)."""
    if not pattern.strip():
        raise ValueError("is empty")
    if "\0" in pattern:
        raise ValueError("contains a NUL character")
    if pattern.startswith("/"):
        raise ValueError(f"must be relative to the output folder, not absolute: {pattern!r}")
    if ".." in pattern.split("/"):
        raise ValueError(f"may not leave the output folder ('..'): {pattern!r}")
    if pattern.endswith("/"):
        raise ValueError(f"names a folder, not a file: {pattern!r}")
    for name in _FIELD.findall(pattern):
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
    if "{" in _FIELD.sub("", pattern) or "}" in _FIELD.sub("", pattern):
        raise ValueError(f"has a brace that is not part of a placeholder: {pattern!r}")


def uses(pattern: str, placeholder: str) -> bool:
    """Whether ``pattern`` has ``{placeholder}``."""
    return f"{{{placeholder}}}" in pattern


def render(pattern: str, *, job_id: str, index: int | None, attempt: int, submission: str) -> str:
    """The file name ``pattern`` gives this attempt (checked: raises ``ValueError``)."""
    check_pattern(pattern)
    if index is None and uses(pattern, "index"):
        raise ValueError("uses {index}, but the job is not an array job")
    if uses(pattern, "submission") and SUBMISSION.fullmatch(submission) is None:
        raise ValueError(f"uses {{submission}}, but the submission name is invalid: {submission!r}")
    values = {
        "job_id": job_id,
        "index": "" if index is None else str(index),
        "attempt": str(attempt),
        "submission": submission,
    }
    return _FIELD.sub(lambda m: values[m.group(1)], pattern)
