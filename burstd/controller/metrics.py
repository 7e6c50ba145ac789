"""The controller's Prometheus metrics (``--metrics-listen``; names in docs/operations.md).

Counts are read from the job table when Prometheus scrapes (``TableCollector``): the table
counts its transitions by event in a dict, which is all a job's hot path pays. Queue wait and
run time are observed once a second, as one batch, for the jobs that ended meanwhile (the
table's ``finished_log``), store commits as each is written (one per batch of changes), RPCs as
each is answered; each into plain numbers (``burstd.metrics.Histogram``) published at scrape
time.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from burstd.controller.table import Event, JobState, JobTable, WorkerEvent
from burstd.metrics import Histogram, LoopLag, RpcMetrics

__all__ = ["ControllerMetrics"]

# How often the jobs that ended are observed into the queue-wait and run-time histograms.
OBSERVE_INTERVAL = 1.0
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_ROW_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000)

# The events that end a job, by the outcome label they count under.
_ENDS = {
    "succeeded": Event.SUCCEED,
    "failed": Event.FAIL,
    "worker_lost": Event.CRASH_LIMIT,
    "cancelled": Event.CANCEL,
    "dependency_failed": Event.DEPENDENCY_FAILED,
}
# A job ended or retried straight from LEASED was started all the same: a worker announces the
# start of a job only when it is still running at its next report (short jobs report the end).
_STARTED_UNANNOUNCED = (Event.SUCCEED, Event.FAIL, Event.RETRY, Event.DEFER)
# Jobs entering as submitted: queued, or waiting for their dependencies (stored already or not).
_SUBMITTED = (Event.ENQUEUE, Event.ADMIT, Event.AWAIT, Event.ADMIT_AWAIT)


class TableCollector(Collector):
    """Job and worker figures, read from the table at scrape time."""

    def __init__(self, table: JobTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        table = self.table
        events: dict[Event, int] = dict.fromkeys(Event, 0)
        for (_, event), count in table.moves.items():
            events[event] += count
        started = events[Event.START] + sum(
            table.moves[JobState.LEASED, event] for event in _STARTED_UNANNOUNCED
        )
        jobs = GaugeMetricFamily(
            "burst_jobs", "Jobs by state (finished ones until forgotten).", labels=["state"]
        )
        for state in JobState:
            jobs.add_metric([state.value], table.counts[state])
        yield jobs
        workers = GaugeMetricFamily(
            "burst_workers", "Registered workers by state.", labels=["state"]
        )
        by_state: dict[str, int] = {"registered": 0, "draining": 0}
        capacity = 0
        for worker in table.workers.values():
            if worker.state is not None:
                by_state[worker.state.value] = by_state.get(worker.state.value, 0) + 1
            capacity += worker.capacity
        for state_name, count in by_state.items():
            workers.add_metric([state_name], count)
        yield workers
        yield GaugeMetricFamily(
            "burst_worker_capacity", "Jobs the registered workers hold at most, summed.", capacity
        )
        submitted = sum(events[event] for event in _SUBMITTED) - events[Event.WITHDRAW]
        yield _counter("burst_jobs_submitted", "Jobs submitted (and stored).", submitted)
        yield _counter("burst_jobs_started", "Job attempts started by a worker.", started)
        ended = CounterMetricFamily(
            "burst_jobs_ended", "Jobs ended, by outcome.", labels=["outcome"]
        )
        for outcome, ending in _ENDS.items():
            ended.add_metric([outcome], events[ending])
        yield ended
        yield _counter(
            "burst_job_retries",
            "Failed attempts queued again (retries), at once or after their delay.",
            events[Event.RETRY] + events[Event.DEFER],
        )
        yield _counter(
            "burst_lease_expiries",
            "Leases lost (their worker lost or gone, handed back, or never claimed after a"
            " restart): the job is queued again.",
            events[Event.LOSE],
        )
        yield _counter(
            "burst_steals", "Jobs moved from one worker to another.", events[Event.STEAL]
        )
        worker_events = table.worker_events
        yield _counter(
            "burst_workers_lost",
            "Workers declared lost (silent for longer than the lease TTL).",
            worker_events[WorkerEvent.EXPIRE],
        )
        yield _counter(
            "burst_worker_registrations",
            "Worker registrations.",
            worker_events[WorkerEvent.REGISTER],
        )


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class ControllerMetrics:
    """Every metric of one controller, in a registry of its own."""

    def __init__(self, table: JobTable) -> None:
        self.table = table
        self.registry = CollectorRegistry()
        self.registry.register(TableCollector(table))
        self.rpc = RpcMetrics(self.registry)
        self.loop_lag = LoopLag(self.registry)
        self.queue_wait = Histogram(
            "burst_job_queue_wait_seconds",
            "From submission to the start of the job's last attempt, for jobs that ended.",
            _DURATION_BUCKETS,
            self.registry,
        ).labels()
        self.run_time = Histogram(
            "burst_job_run_seconds",
            "From the start of the job's last attempt to its end, for jobs that ended.",
            _DURATION_BUCKETS,
            self.registry,
        ).labels()
        self.commit_latency = Histogram(
            "burst_store_commit_seconds",
            "Store commits, from sent to written (on disk).",
            _COMMIT_BUCKETS,
            self.registry,
        ).labels()
        self.commit_rows = Histogram(
            "burst_store_commit_rows",
            "Rows inserted or updated per store commit.",
            _ROW_BUCKETS,
            self.registry,
        ).labels()
        self._seen = table.finished_seq

    def committed(self, seconds: float, rows: int) -> None:
        """A store commit was written (``StoreWriter.on_commit``)."""
        self.commit_latency.observe(seconds)
        self.commit_rows.observe(rows)

    def observe_ended(self) -> None:
        """Observe the jobs that ended since the last call (those that slid out of the
        table's finished log meanwhile are skipped), those that never started left out."""
        ended = self.table.finished_since(self._seen) or []
        self._seen = self.table.finished_seq
        waits: list[float] = []
        runs: list[float] = []
        wait, run = waits.append, runs.append
        for job in ended:  # one pass: reading the jobs, long out of the cache, is most of it
            started = job.started_at
            if started:
                wait(started - job.submitted_at)
                run(job.finished_at - started)
        self.queue_wait.observe_all(waits)
        self.run_time.observe_all(runs)

    async def run(self) -> None:
        """Sample the event loop's lag and observe ended jobs, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.loop_lag.run)
            while True:
                await trio.sleep(OBSERVE_INTERVAL)
                self.observe_ended()
