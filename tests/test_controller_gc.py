"""The controller process's garbage collector policy (``burstd.controller.daemon.tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from burstd.controller import daemon


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection from now on; the collector's settings restored."""
    saved = gc.get_threshold()
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*saved)


def _cycles(count: int) -> None:
    for _ in range(count):
        pair: list[object] = []
        pair.append([pair])  # garbage only the collector can free


def test_the_controller_collects_rarely_yet_frees_piled_up_cycles(
    collections: list[int],
) -> None:
    """Thousands of objects that live on (queued jobs) or die young cost no collection; cyclic
    garbage is still collected once enough has piled up."""
    daemon.tune_gc()
    kept = [{"job": i} for i in range(20_000)]
    assert collections == []
    _cycles(2 * daemon.GC_THRESHOLDS[0])
    assert collections and set(collections) == {0}
    # What the automatic collections left: never more than one threshold's worth.
    assert gc.collect() < daemon.GC_THRESHOLDS[0]
    del kept
