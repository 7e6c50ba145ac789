"""Placeholders in a job's command, filled per job, as GNU parallel's ``{}``.

Every argument of the command (process: CMD and its ARGS; python: ENTRY and its ARGS; docker:
the arguments after IMAGE) may hold:

- ``{index}``: the job's array index (array jobs only), as BURST_ARRAY_INDEX;
- ``{entry}``: the job's entry (``--each-line`` jobs only), as BURST_ENTRY;
- ``{job_id}``: the job's id (``job-00000042``), as BURST_JOB_ID;
- ``{{index}}``, ``{{entry}}``, ``{{job_id}}``: the literal text ``{index}`` and so on.

Nothing else is touched: ``awk '{print $1}'``, a shell's ``${HOME}`` or ``{a,b}``, JSON and
template languages' ``{{ }}`` pass as they are, so that commands written for the prototype (which
had no placeholders) and for shells keep working. A known placeholder the job has no value for
(``{index}`` without an array) is refused at submission, naming it. The controller checks the
template once (a million-job array stays one template); the worker fills each job's own values at
spawn, into the argv itself: never through a shell, so an entry is one argument whatever it holds.
Pure: no I/O, no protobuf.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Final

__all__ = ["PLACEHOLDERS", "check", "fill"]

PLACEHOLDERS: Final = ("index", "entry", "job_id")
_NAMES: Final = "|".join(PLACEHOLDERS)
# The doubled form first, so that {{index}} is taken whole as a literal rather than as {index}
# inside braces.
_TOKEN: Final = re.compile(rf"\{{\{{(?P<literal>{_NAMES})\}}\}}|\{{(?P<name>{_NAMES})\}}")


def check(arg: str, given: Collection[str]) -> None:
    """Raise ``ValueError`` naming a placeholder of ``arg`` that cannot be filled from ``given``
    (the placeholders this job has values for)."""
    if "{" not in arg:
        return
    for match in _TOKEN.finditer(arg):
        name = match["name"]
        if name is not None and name not in given:
            needs = "--array" if name == "index" else "--each-line"
            raise ValueError(f"{{{name}}} needs {needs}: this job has no {name}")


def fill(arg: str, values: Mapping[str, str]) -> str:
    """``arg`` with its placeholders replaced by ``values`` and ``{{name}}`` by ``{name}``
    (``arg`` as :func:`check` passed it)."""
    if "{" not in arg:
        return arg

    def one(match: re.Match[str]) -> str:
        literal = match["literal"]
        return f"{{{literal}}}" if literal is not None else values[match["name"]]

    return _TOKEN.sub(one, arg)
