"""Resources: what a worker offers and what a job asks for, and the arithmetic on them. No I/O.

Rules:

1. Amounts are non-negative integers per resource name: ``cpus`` (whole CPUs), ``mem`` (bytes),
   ``gpus`` (devices) and any named resource (``scratch``, ``licence``...: a count, or bytes when
   written with a size suffix). A name absent from a mapping is an amount of 0.
2. A job asks for one CPU and nothing else unless it says otherwise. That request is the *plain*
   one, written ``None`` where requests are stored (``Request | None``), so that the hot paths of
   the controller and the worker test one ``is None`` for the jobs that ask for nothing special.
3. A request fits a worker when every amount it asks for is at most what the worker has free;
   a request whose amounts exceed a worker's totals never fits that worker (``fits_total``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "CPUS",
    "GPUS",
    "MEM",
    "PLAIN",
    "Grant",
    "Pool",
    "Request",
    "charge",
    "describe",
    "fits",
    "format_size",
    "gpu_list",
    "make_request",
    "missing",
    "parse_amount",
    "parse_named",
    "parse_size",
]

CPUS, MEM, GPUS = "cpus", "mem", "gpus"

Request = Mapping[str, int]
"""Amounts per resource name (rule 1); read-only once made (``make_request``)."""

PLAIN: Request = MappingProxyType({CPUS: 1})
"""What a job asks for when it says nothing: one CPU (rule 2)."""

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5GiB``, ``100000`` (suffixes are powers of 1024, as
    ``free`` and cgroups count). Raises ValueError naming the text."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number with K, M, G, T or P")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(amount: int) -> str:
    """The largest unit that writes ``amount`` bytes exactly, as ``parse_size`` reads it."""
    for unit in "PTGMK":
        if amount and amount % _UNITS[unit.lower()] == 0:
            return f"{amount // _UNITS[unit.lower()]}{unit}"
    return str(amount)


def parse_amount(name: str, text: str) -> int:
    """The amount of resource ``name`` written ``text``: bytes for ``mem``, a size or a count
    for named resources, a count for ``cpus`` and ``gpus``. Raises ValueError naming both."""
    try:
        amount = parse_size(text) if name not in (CPUS, GPUS) else int(text.strip())
    except ValueError:
        what = "a whole number" if name in (CPUS, GPUS) else "a number or a size such as 100G"
        raise ValueError(f"{name}={text}: expected {what}") from None
    if amount < 0:
        raise ValueError(f"{name}={text}: must not be negative")
    return amount


def parse_named(items: Iterable[str]) -> dict[str, int]:
    """``NAME=AMOUNT`` items (``--resource``) as amounts; a name given twice, a built-in name
    (use its own flag) or a malformed item raises ValueError naming it."""
    named: dict[str, int] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(
                f"invalid resource {item!r}: expected NAME=AMOUNT, NAME in lower case letters,"
                " digits, '_', '.' and '-'"
            )
        if name in (CPUS, MEM, GPUS):
            raise ValueError(f"invalid resource {item!r}: use --{name} for {name}")
        if name in named:
            raise ValueError(f"resource {name!r} given twice")
        named[name] = parse_amount(name, text)
    return named


def gpu_list(text: str) -> list[str]:
    """GPUs as a worker's ``--gpus`` gives them: a number is a count (ids 0 to N-1), a list
    (with a comma, ``0,2`` or ``3,``) names them. Raises ValueError naming the text."""
    text = text.strip()
    if "," not in text:
        if not text.isdigit():
            raise ValueError(f"gpus: expected a count or a list of ids such as 0,2, got {text!r}")
        return [str(i) for i in range(int(text))]
    ids = [item.strip() for item in text.split(",") if item.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"gpus: {text!r} names a GPU twice")
    return ids


def make_request(
    cpus: int = 1, mem: int = 0, gpus: int = 0, named: Mapping[str, int] | None = None
) -> Request | None:
    """A job's request, or None for the plain one (rule 2). Zero amounts are left out."""
    if cpus < 1:
        raise ValueError(f"cpus={cpus}: a job needs at least one CPU")
    amounts = {CPUS: cpus, MEM: mem, GPUS: gpus, **(named or {})}
    request = {name: amount for name, amount in amounts.items() if amount}
    return None if request == PLAIN else MappingProxyType(request)


def fits(request: Request, free: Mapping[str, int]) -> bool:
    """Whether every amount of ``request`` is at most what ``free`` has (rule 3)."""
    return all(amount <= free.get(name, 0) for name, amount in request.items())


def missing(request: Request, total: Mapping[str, int]) -> list[str]:
    """The amounts of ``request`` beyond ``total``, as ``4 cpus (of 2)``: empty if it fits."""
    return [
        f"{_show(name, amount)} (of {_show(name, total.get(name, 0))})"
        for name, amount in request.items()
        if amount > total.get(name, 0)
    ]


def describe(request: Request | None) -> str:
    """``2 cpus, 4G mem, 1 gpus``: a request as status shows it."""
    return ", ".join(_show(name, amount) for name, amount in (request or PLAIN).items())


def _show(name: str, amount: int) -> str:
    return f"{format_size(amount)} {name}" if name == MEM else f"{amount} {name}"


def charge(extra: dict[str, int], request: Request, sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) what ``request`` uses beyond the plain one CPU to a
    worker's ``extra``: a lease counts one CPU on its own."""
    for name, amount in request.items():
        extra[name] = extra.get(name, 0) + sign * (amount - 1 if name == CPUS else amount)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one running job holds of its worker: CPUs and GPUs by id, other amounts."""

    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()
    amounts: Mapping[str, int] = field(default_factory=dict)


class Pool:
    """A worker's resources and what its running jobs hold of them: each job gets CPUs and
    GPUs of its own (the lowest ids free), never shared with another running job."""

    def __init__(self, cpus: Iterable[int], gpus: Iterable[str], amounts: Mapping[str, int]):
        self._cpus = sorted(cpus)
        self._gpus = list(gpus)
        self._free = dict(amounts)

    def grant(self, request: Request | None) -> Grant | None:
        """Take what ``request`` asks for (the plain one: one CPU); None if it is not free."""
        request = request or PLAIN
        if not self.fits(request):
            return None
        cpus, gpus = request.get(CPUS, 1), request.get(GPUS, 0)
        others = {k: v for k, v in request.items() if k not in (CPUS, GPUS)}
        taken = Grant(tuple(self._cpus[:cpus]), tuple(self._gpus[:gpus]), others)
        del self._cpus[:cpus], self._gpus[:gpus]
        for name, amount in others.items():
            self._free[name] -= amount
        return taken

    def release(self, grant: Grant) -> None:
        self._cpus = sorted((*self._cpus, *grant.cpus))
        self._gpus = sorted((*self._gpus, *grant.gpus), key=_natural)
        for name, amount in grant.amounts.items():
            self._free[name] += amount

    def free(self) -> dict[str, int]:
        """What is free now: how many CPUs and GPUs, and the other amounts."""
        return {**self._free, CPUS: len(self._cpus), GPUS: len(self._gpus)}

    def fits(self, request: Request | None) -> bool:
        """Whether ``grant`` would succeed now."""
        request = request or PLAIN
        if request.get(CPUS, 1) > len(self._cpus) or request.get(GPUS, 0) > len(self._gpus):
            return False
        return all(
            amount <= self._free.get(name, 0)
            for name, amount in request.items()
            if name not in (CPUS, GPUS)
        )


def _natural(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)
