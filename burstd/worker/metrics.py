"""A worker's Prometheus metrics (``--metrics-listen``; names in docs/operations.md): read from
the worker's state at scrape time, so that a job pays one dict increment for its outcome."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from burstd.metrics import LoopLag
from burstd.worker.state import WorkerState

__all__ = ["WorkerMetrics", "outcome_of"]


def outcome_of(reason: str, exit_code: int) -> str:
    """The ``outcome`` label of a job's result: succeeded, failed (exited non-zero), or the
    reason it ended otherwise (signal, timeout, spawn, memory, returned, cancelled)."""
    if reason == "exit":
        return "succeeded" if exit_code == 0 else "failed"
    return reason


class _StateCollector(Collector):
    def __init__(self, state: WorkerState, ended: collections.Counter[str]) -> None:
        self.state = state
        self.ended = ended

    def collect(self) -> Iterator[Metric]:
        state = self.state
        yield GaugeMetricFamily(
            "burst_worker_slots", "Jobs this worker runs at once, at most.", state.config.slots
        )
        yield GaugeMetricFamily(
            "burst_worker_slots_in_use", "Jobs running now.", len(state.running)
        )
        yield GaugeMetricFamily(
            "burst_worker_jobs_held",
            "Jobs this worker holds (running, waiting for a slot, or to report).",
            len(state.local.jobs),
        )
        yield GaugeMetricFamily(
            "burst_worker_queue_capacity", "Jobs this worker holds at most.", state.local.capacity
        )
        yield GaugeMetricFamily(
            "burst_worker_draining",
            "1 while the worker drains (takes no new work).",
            int(state.draining),
        )
        ran = CounterMetricFamily(
            "burst_worker_jobs_run", "Jobs run, by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(self.ended.items()):
            ran.add_metric([outcome], count)
        yield ran


class WorkerMetrics:
    """Every metric of one worker, in a registry of its own."""

    def __init__(self, state: WorkerState, ended: collections.Counter[str]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(state, ended))
        self.loop_lag = LoopLag(self.registry)
