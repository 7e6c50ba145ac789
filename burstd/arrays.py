"""Array specs: which BURST_ARRAY_INDEX values an array submission makes, as Slurm writes them.

A spec is a comma-separated list of items, each ``N``, ``A-B`` (inclusive) or ``A-B:S`` (every
S-th index from A up to B): ``1-100:2``, ``1,3,7-9``, ``1-10:3,20,30-32``. Indices are integers
>= 0; the jobs come in the order written, and an index written twice is refused (two jobs that
would see the same BURST_ARRAY_INDEX are almost always a typo). Pure: no I/O, no protobuf.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["ArraySpecError", "parse"]

_ITEM = re.compile(r"(?P<start>\d+)(?:-(?P<stop>\d+)(?::(?P<step>\d+))?)?")


class ArraySpecError(ValueError):
    """A malformed array spec; the message says which item and why."""


def _item(text: str) -> range:
    match = _ITEM.fullmatch(text.strip())
    if match is None:
        raise ArraySpecError(f"item {text.strip()!r}: expected N, START-END or START-END:STEP")
    start = int(match["start"])
    stop = int(match["stop"]) if match["stop"] is not None else start
    step = int(match["step"]) if match["step"] is not None else 1
    if stop < start:
        raise ArraySpecError(f"item {text.strip()!r}: END is below START")
    if step == 0:
        raise ArraySpecError(f"item {text.strip()!r}: STEP must be at least 1")
    return range(start, stop + 1, step)


def _first_shared(ranges: Sequence[range]) -> int | None:
    """The smallest index two of ``ranges`` share, if any. Ranges whose bounds do not overlap
    are told apart by their bounds alone: a spec of a few large ranges costs nothing here."""
    spans = sorted(ranges, key=lambda r: r[0])
    shared: set[int] = set()
    for i, outer in enumerate(spans):
        for inner in spans[i + 1 :]:
            if inner[0] > outer[-1]:
                break
            shared.update(set(outer).intersection(inner))
    return min(shared) if shared else None


def parse(text: str) -> list[range]:
    """The ranges of the spec ``text``, in order (each non-empty). Raises ``ArraySpecError``."""
    if not text.strip():
        raise ArraySpecError("empty: expected N, START-END or START-END:STEP, comma-separated")
    ranges = [_item(item) for item in text.split(",")]
    shared = _first_shared(ranges)
    if shared is not None:
        raise ArraySpecError(f"index {shared} is listed twice")
    return ranges
