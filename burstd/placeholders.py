"""Placeholders in a job's command, filled per job, as GNU parallel's ``{}``.

Every argument of the command (process: CMD and its ARGS; python: ENTRY and its ARGS; docker:
the arguments after IMAGE) may hold:

- ``{index}``: the job's array index (array jobs only), as BURST_ARRAY_INDEX;
- ``{entry}``: the job's entry (``--each-line`` jobs only), as BURST_ENTRY;
- ``{job_id}``: the job's id (``job-00000042``), as BURST_JOB_ID;
- ``{{`` and ``}}``: a literal ``{`` and ``}`` (``awk '{{print $1}}'``).

A shell's ``${...}`` (``sh -c 'echo ${HOME}'``) is left as it is. Any other ``{...}``, or a lone
brace, is refused at submission naming it. The controller checks
the template once (a million-job array stays one template); the worker fills each job's own
values at spawn, into the argv itself: never through a shell, so an entry is one argument
whatever it holds. Pure: no I/O, no protobuf.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Final

__all__ = ["PLACEHOLDERS", "check", "fill"]

PLACEHOLDERS: Final = ("index", "entry", "job_id")
# A shell's ${...} first (kept), then doubled braces, then placeholders, then lone braces.
_TOKEN: Final = re.compile(r"(?P<shell>\$\{[^{}]*\})|\{\{|\}\}|\{(?P<name>[^{}]*)\}|[{}]")
_KNOWN: Final = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)


def check(arg: str, given: Collection[str]) -> None:
    """Raise ``ValueError`` naming what ``arg`` holds that cannot be filled from ``given`` (the
    placeholders this job has values for)."""
    if "{" not in arg and "}" not in arg:
        return
    for match in _TOKEN.finditer(arg):
        token, name = match.group(0), match["name"]
        if match["shell"] or token in ("{{", "}}"):
            continue
        if name is None:
            raise ValueError(f"a lone {token!r} (write {token * 2} for a literal one)")
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {token} (known: {_KNOWN}; {{{{ and }}}} for literal braces)"
            )
        if name not in given:
            needs = "--array" if name == "index" else "--each-line"
            raise ValueError(f"{token} needs {needs}: this job has no {name}")


def fill(arg: str, values: Mapping[str, str]) -> str:
    """``arg`` with its placeholders replaced by ``values`` and ``{{``/``}}`` by one brace
    (``arg`` as :func:`check` passed it)."""
    if "{" not in arg and "}" not in arg:
        return arg

    def one(match: re.Match[str]) -> str:
        token, name = match.group(0), match["name"]
        if match["shell"]:
            return token
        return token[0] if name is None else values[name]

    return _TOKEN.sub(one, arg)
