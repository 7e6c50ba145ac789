"""The metrics kept in plain numbers publish what prometheus_client's own metrics would.

Each histogram is checked against a ``prometheus_client.Histogram`` fed the same values: every
bucket, the count and the sum must be equal, so a collector that publishes a wrong number fails
here (the integration tests in test_ops_integration.py read the metrics of a real cluster).
"""

from __future__ import annotations

import functools
import http.client
import ssl
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from burstd import certs, transport
from burstd.controller.metrics import _DURATION_BUCKETS, ControllerMetrics
from burstd.controller.table import Held, JobState, JobTable, NewJob, Result
from burstd.metrics import Histogram, RpcMetrics, serve_metrics
from burstd.transport import tls
from burstd.transport.errors import NotFound
from tests.cluster import parse_samples, scrape

BOUNDS = (0.01, 0.5, 1, 5, 3600)


def samples(registry: CollectorRegistry, prefix: str) -> dict[str, float]:
    """The registry's samples whose name starts with ``prefix``, as scraped (``_created``
    ones left out: only prometheus_client's own metrics have them)."""
    scraped = parse_samples(generate_latest(registry).decode())
    return {
        key: value
        for key, value in scraped.items()
        if key.startswith(prefix) and not key.split("{")[0].endswith("_created")
    }


def reference(name: str, bounds: tuple[float, ...], values: list[float]) -> dict[str, float]:
    """What a prometheus_client Histogram fed ``values`` publishes."""
    registry = CollectorRegistry()
    histogram = prometheus_client.Histogram(name, "doc", buckets=bounds, registry=registry)
    for value in values:
        histogram.observe(value)
    return samples(registry, name)


# Values on the bounds (a bucket holds the values equal to its bound), between them, below the
# first and above the last; binary fractions, so that every sum is exact in any order.
VALUES = [0.0, 0.0078125, 0.5, 0.5, 0.75, 1.0, 4.0, 5.0, 3600.0, 7200.0, 0.25]


def test_observe_one_at_a_time_publishes_what_prometheus_client_does() -> None:
    registry = CollectorRegistry()
    buckets = Histogram("h_seconds", "doc", BOUNDS, registry).labels()
    for value in VALUES:
        buckets.observe(value)
    published = samples(registry, "h_seconds")
    assert published == reference("h_seconds", BOUNDS, VALUES)
    assert published['h_seconds_bucket{le="0.5"}'] == 5  # 0.5 twice: on the bound, inside
    assert published["h_seconds_count"] == len(VALUES)


def test_observe_all_publishes_the_same_as_one_at_a_time_negatives_as_zero() -> None:
    registry = CollectorRegistry()
    buckets = Histogram("h_seconds", "doc", BOUNDS, registry).labels()
    # In two batches, unsorted, with negative values (clocks of two machines): each one
    # counts as 0 (the first bucket, nothing added to the sum).
    buckets.observe_all([7200.0, 0.5, -2.0, 1.0, 0.0078125])
    buckets.observe_all([3600.0, 0.5, 4.0, -0.25, 5.0, 0.75, 0.25])
    expected = [max(0.0, v) for v in [7200.0, 0.5, -2.0, 1.0, 0.0078125]]
    expected += [max(0.0, v) for v in [3600.0, 0.5, 4.0, -0.25, 5.0, 0.75, 0.25]]
    assert samples(registry, "h_seconds") == reference("h_seconds", BOUNDS, expected)
    buckets.observe_all([])
    assert samples(registry, "h_seconds") == reference("h_seconds", BOUNDS, expected)


def test_a_histogram_without_labels_is_published_before_its_first_observation() -> None:
    registry = CollectorRegistry()
    Histogram("h_seconds", "doc", BOUNDS, registry)
    assert samples(registry, "h_seconds") == reference("h_seconds", BOUNDS, [])


def test_rpcs_are_counted_by_method_and_errors_by_method_and_code() -> None:
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry)
    service = transport.Service("test.v1.Test")

    async def ok(request: Any, caller: Any) -> Any:
        await trio.sleep(0)
        return request

    async def missing(request: Any, caller: Any) -> Any:
        raise NotFound("no such thing")

    async def broken(request: Any, caller: Any) -> Any:
        raise ValueError("a bug")

    for name, handler in (("Ok", ok), ("Missing", missing), ("Broken", broken), ("Idle", ok)):
        service.unary(name, object, handler)
    timed = rpc.instrument(service)
    assert timed.name == service.name and timed.methods.keys() == service.methods.keys()

    async def calls() -> None:
        for _ in range(3):
            assert await timed.methods["Ok"].handler("request", None) == "request"
        for name, error in (("Missing", NotFound), ("Missing", NotFound), ("Broken", ValueError)):
            with pytest.raises(error):
                await timed.methods[name].handler("request", None)

    trio.run(calls)
    published = samples(registry, "burst_rpc_")
    counts = {
        key: value for key, value in published.items() if key.startswith("burst_rpc_duration")
    }
    assert {key: value for key, value in counts.items() if "_count" in key} == {
        'burst_rpc_duration_seconds_count{method="Ok"}': 3,
        'burst_rpc_duration_seconds_count{method="Missing"}': 2,
        'burst_rpc_duration_seconds_count{method="Broken"}': 1,
    }  # a method never called is not published
    assert published['burst_rpc_duration_seconds_bucket{le="+Inf",method="Ok"}'] == 3
    assert 0 < published['burst_rpc_duration_seconds_sum{method="Ok"}'] < 10
    assert {key: value for key, value in published.items() if "errors" in key} == {
        'burst_rpc_errors_total{code="NOT_FOUND",method="Missing"}': 2,
        'burst_rpc_errors_total{code="INTERNAL",method="Broken"}': 1,
    }


def test_queue_wait_and_run_time_of_a_known_workload_are_exact() -> None:
    """Jobs with known submission, start and end times, observed in two rounds: the queue wait
    and run time histograms are those of the jobs that started, to the bucket and the sum."""
    table = JobTable()
    metrics = ControllerMetrics(table)
    # (queue wait, run time) of each job, submitted at 64.0 (exact binary sums).
    timings = [(0.0078125, 0.5), (0.5, 1.0), (1.0, 0.25), (3.0, 7200.0), (-0.5, 40.0)]
    waits: list[float] = []
    runs: list[float] = []
    table.register("w1", slots=10, capacity=10, now=0.0, held=[])
    for round_jobs in (timings[:2], timings[2:]):
        ids = table.submit([NewJob(b"spec", 0, "j") for _ in round_jobs], 64.0, "")
        # One more job of the round never starts (cancelled while queued): not observed.
        [never] = table.submit([NewJob(b"spec", 0, "never")], 64.0, "")
        table.cancel(never, 64.0)
        _, leased = table.lease("w1", 10, 64.0)
        assert [job.job_id for job in leased] == ids
        for job_id, (wait, run) in zip(ids, round_jobs, strict=True):
            job = table.jobs[job_id]
            table.started("w1", Held(job_id, job.attempt), now=64.0 + wait)
            table.report("w1", Result(job_id, job.attempt, 0), now=64.0 + wait + run)
            waits.append(max(0.0, wait))
            runs.append(run)
        metrics.observe_ended()
    assert table.counts[JobState.SUCCEEDED] == 5 and table.counts[JobState.CANCELLED] == 2
    wait_name, run_name = "burst_job_queue_wait_seconds", "burst_job_run_seconds"
    published = samples(metrics.registry, wait_name) | samples(metrics.registry, run_name)
    assert published == reference(wait_name, _DURATION_BUCKETS, waits) | reference(
        run_name, _DURATION_BUCKETS, runs
    )
    assert published[f"{wait_name}_count"] == published[f"{run_name}_count"] == 5
    assert published[f"{wait_name}_sum"] == 0.0078125 + 0.5 + 1.0 + 3.0
    assert published[f'{run_name}_bucket{{le="1.0"}}'] == 3


def test_waiting_jobs_delayed_retries_and_dependency_failures_are_counted() -> None:
    """A job submitted with dependencies is submitted, a retry after a delay is a retry of an
    attempt that started, and a dependency's failure ends its dependent (outcome
    dependency_failed)."""
    table = JobTable()
    metrics = ControllerMetrics(table)
    table.register("w1", slots=2, capacity=2, now=0.0, held=[])
    [delayed] = table.submit([NewJob(b"d", retries=1, retry_delay=5.0)], 0.0)
    [failing] = table.submit([NewJob(b"f")], 0.0)
    [dependent] = table.submit([NewJob(b"w", after=failing)], 0.0)
    table.lease("w1", 10, 0.0)
    for job_id in (delayed, failing):
        table.report("w1", Result(job_id, table.jobs[job_id].attempt, 1), now=1.0)
    assert table.jobs[delayed].state is JobState.WAITING
    assert table.jobs[dependent].reason == "dependency_failed"
    expected = {
        "burst_jobs_submitted_total": 3,
        "burst_jobs_started_total": 2,
        "burst_job_retries_total": 1,
        'burst_jobs_ended_total{outcome="failed"}': 1,
        'burst_jobs_ended_total{outcome="dependency_failed"}': 1,
    }
    published = samples(metrics.registry, "burst_job")
    assert {name: published[name] for name in expected} == expected


def test_commits_are_observed_by_latency_and_rows() -> None:
    metrics = ControllerMetrics(JobTable())
    commits = [(0.001, 1), (0.25, 5000), (3.0, 100)]
    for seconds, rows in commits:
        metrics.committed(seconds, rows)
    published = samples(metrics.registry, "burst_store_commit_")
    assert published["burst_store_commit_rows_count"] == 3
    assert published["burst_store_commit_rows_sum"] == 5101
    assert published['burst_store_commit_rows_bucket{le="100.0"}'] == 2
    assert published['burst_store_commit_seconds_bucket{le="0.001"}'] == 1
    assert published['burst_store_commit_seconds_bucket{le="2.5"}'] == 2
    assert published["burst_store_commit_seconds_count"] == 3


async def test_metrics_over_mutual_tls_answer_scrapers_with_a_certificate_only(
    tmp_path: Path,
) -> None:
    """A daemon with ``tls_client_ca`` asks its scrapers for a certificate too; a scraper
    without one, or speaking plain HTTP, is dropped and the endpoint keeps serving."""
    pki = tmp_path / "pki"
    certs.init(pki, ["127.0.0.1"])
    server = tls.server_context(
        pki / "server.pem", pki / "server-key.pem", pki / "ca.pem", alpn=tls.HTTP1
    )
    without = ssl.create_default_context(cafile=pki / "ca.pem")
    with_cert = ssl.create_default_context(cafile=pki / "ca.pem")
    with_cert.load_cert_chain(pki / "client.pem", pki / "client-key.pem")
    registry = CollectorRegistry()
    RpcMetrics(registry)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_metrics, tls=server)
        port = await nursery.start(serve, "127.0.0.1:0", registry)
        addr = f"127.0.0.1:{port}"
        for refused in (without, None):
            with pytest.raises((OSError, http.client.HTTPException)):
                await trio.to_thread.run_sync(scrape, addr, refused)
        assert await trio.to_thread.run_sync(scrape, addr, with_cert) == {}
        nursery.cancel_scope.cancel()
