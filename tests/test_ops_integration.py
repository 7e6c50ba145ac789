"""What an operator reads from real daemons: JSON log lines, Prometheus metrics."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.cluster import (
    REPO,
    Cluster,
    environment,
    eventually,
    free_port,
    health,
    program,
    scrape,
)
from tests.test_worker_integration import kill_up, start_up
from tests.test_worker_integration import workers as up_workers


def _records(text: str) -> list[dict[str, Any]]:
    """Every line of a daemon's log as a JSON object (a line that does not parse fails)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "message", "component"} <= record.keys(), line
        records.append(record)
    return records


def test_json_logs_of_both_daemons(cluster: Cluster) -> None:
    controller = cluster.controller("--log-format", "json")
    worker = cluster.worker("w1", "--log-format", "json", "--log-level", "debug")
    cluster.wait_workers(1)
    (job_id,) = cluster.burst("submit", "process", "true").stdout.split()
    assert cluster.burst("wait", job_id, check=False).returncode == 0
    assert worker.stop() == 0
    assert controller.stop() == 0

    controller_records = _records(controller.log())
    assert controller_records and {r["component"] for r in controller_records} == {"controller"}
    # the controller logs the worker's registration with its id as a field
    assert any(r.get("worker_id") == "w1" for r in controller_records), controller_records

    worker_records = _records(worker.log())
    assert {r["component"] for r in worker_records} == {"worker"}
    ours = [r for r in worker_records if r["logger"].startswith("burstd.worker")]
    assert ours and all(r.get("worker_id") == "w1" for r in ours), ours
    job_lines = [r for r in worker_records if "job_id" in r]
    assert job_lines and {r["job_id"] for r in job_lines} == {job_id}, job_lines
    assert any(r["level"] == "DEBUG" for r in worker_records)


def test_bad_log_options_are_one_line_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in environment().items() if k != "BURST_LOG"}
    for args in (["--log-format", "xml"], ["--log-level", "loud"]):
        run = subprocess.run(
            [*program("burstd"), "controller", "--state-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )
        assert run.returncode == 2 and "Traceback" not in run.stderr, run
        assert run.stderr.startswith("burstd: error:") and run.stderr.count("\n") == 1, run


def test_metrics_count_a_known_workload(cluster: Cluster) -> None:
    ctl_metrics, worker_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster.controller("--metrics-listen", ctl_metrics)
    cluster.worker("w1", "--metrics-listen", worker_metrics)
    cluster.wait_workers(1)

    def submit(*argv: str) -> str:
        (job_id,) = cluster.burst("submit", *argv).stdout.split()
        return job_id

    ok = [submit("process", "true") for _ in range(5)]
    failing = [submit("process", "false") for _ in range(3)]
    retried = submit("--retries", "1", "process", "false")
    sleeper = submit("process", "sleep", "60")
    cluster.burst("wait", *ok, *failing, retried, check=False)
    eventually(lambda: cluster.status(sleeper)["state"] == "running", "the sleeper to start")
    cluster.burst("cancel", sleeper)
    cluster.burst("wait", sleeper, check=False)

    ended = 10  # every job; one of them twice started (its retry)

    def settled() -> bool:
        samples = scrape(ctl_metrics)
        return (
            samples.get("burst_job_run_seconds_count") == ended
            and samples.get("burst_event_loop_lag_seconds_count", 0) > 0
        )

    eventually(settled, "the ended jobs to be observed")
    ctl = scrape(ctl_metrics)
    assert ctl['burst_jobs{state="succeeded"}'] == 5
    assert ctl['burst_jobs{state="failed"}'] == 4
    assert ctl['burst_jobs{state="cancelled"}'] == 1
    assert ctl['burst_jobs{state="queued"}'] == ctl['burst_jobs{state="running"}'] == 0
    assert ctl["burst_jobs_submitted_total"] == 10
    assert ctl["burst_jobs_started_total"] == 11
    assert ctl['burst_jobs_ended_total{outcome="succeeded"}'] == 5
    assert ctl['burst_jobs_ended_total{outcome="failed"}'] == 4
    assert ctl['burst_jobs_ended_total{outcome="cancelled"}'] == 1
    assert ctl['burst_jobs_ended_total{outcome="worker_lost"}'] == 0
    assert ctl["burst_job_retries_total"] == 1
    assert ctl["burst_lease_expiries_total"] == ctl["burst_steals_total"] == 0
    assert ctl["burst_workers_lost_total"] == 0
    assert ctl['burst_workers{state="registered"}'] == 1
    assert ctl["burst_job_queue_wait_seconds_count"] == ended
    assert ctl["burst_store_commit_seconds_count"] > 0
    assert ctl["burst_store_commit_rows_sum"] >= 10  # every job inserted once at least
    assert ctl['burst_rpc_duration_seconds_count{method="SubmitJob"}'] == 10
    assert ctl['burst_rpc_duration_seconds_count{method="PollJob"}'] > 0

    eventually(
        lambda: scrape(worker_metrics).get("burst_event_loop_lag_seconds_count", 0) > 0,
        "a worker loop-lag sample",
    )
    worker = scrape(worker_metrics)
    assert worker['burst_worker_jobs_run_total{outcome="succeeded"}'] == 5
    assert worker['burst_worker_jobs_run_total{outcome="failed"}'] == 5
    assert worker['burst_worker_jobs_run_total{outcome="cancelled"}'] == 1
    assert worker["burst_worker_slots"] == 2
    assert worker["burst_worker_slots_in_use"] == 0


def test_a_worker_answers_health_checks_on_its_peer_port(cluster: Cluster) -> None:
    """SERVING while registered with the controller; NOT_SERVING once it has lost it."""
    peer = f"127.0.0.1:{free_port()}"
    controller = cluster.controller()
    cluster.worker("w1", "--peer-listen", peer)
    cluster.wait_workers(1)
    assert eventually(lambda: health(peer) == "SERVING", "the worker to say SERVING")
    controller.kill9()
    eventually(lambda: health(peer) == "NOT_SERVING", "the worker to say NOT_SERVING")
    cluster.controller()  # the same address and state: the worker registers again
    eventually(lambda: health(peer) == "SERVING", "the worker to serve again")


def test_drain_a_worker_no_new_work_running_jobs_finish(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1", slots=1)
    cluster.wait_workers(1)
    (running,) = cluster.burst("submit", "process", "sleep", "4").stdout.split()
    eventually(lambda: cluster.status(running)["state"] == "running", "the job to start", 3.5)

    as_worker = {**cluster.env, "BURST_TOKEN": cluster.token("worker")}
    refused = cluster.burst("drain", "w1", check=False, env=as_worker)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused
    unknown = cluster.burst("drain", "nobody", check=False)
    assert unknown.returncode == 4 and "nobody" in unknown.stderr, unknown

    drained = cluster.burst("drain", "w1")
    assert drained.stdout.startswith("w1: draining"), drained
    (workers,) = [
        json.loads(line) for line in cluster.burst("workers", "--json").stdout.split("\n") if line
    ]
    assert workers["state"] == "draining", workers
    (waiting,) = cluster.burst("submit", "process", "true").stdout.split()
    assert cluster.burst("wait", running, check=False).returncode == 0  # it ran to its end
    time.sleep(1.5)  # w1 has a free slot now, and polls: it gets nothing
    assert cluster.status(waiting)["state"] == "queued"

    cluster.worker("w2", slots=1)  # another worker takes the job
    assert cluster.burst("wait", waiting, "--timeout", "30", check=False).returncode == 0
    assert cluster.status(waiting)["worker_id"] == "w2"


def _free_ports(count: int) -> int:
    """A loopback port free with the ``count - 1`` ports above it."""
    while True:
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


DASHBOARD = REPO / "deploy" / "grafana" / "burst.json"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


def _queried_names(dashboard: dict[str, Any]) -> set[str]:
    """The metric names in every query of the dashboard's panels."""
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\bburst_[a-z_]+\b", target["expr"]))
    return names


def test_burstd_up_serves_the_metrics_the_dashboard_queries(cluster: Cluster) -> None:
    """`burstd up --metrics-listen` gives the controller that address and worker N the port
    above it by N; after a workload, every name deploy/grafana/burst.json queries is one the
    daemons export, and deploy/prometheus/prometheus.yml scrapes those addresses."""
    port = _free_ports(3)
    addrs = [f"127.0.0.1:{port + n}" for n in range(3)]
    proc = start_up(cluster, options=["--metrics-listen", addrs[0]])
    try:
        eventually(lambda: len(up_workers(cluster)) == 2, "`burstd up` to be ready")
        ok = cluster.burst("submit", "--array", "1-6", "process", "true").stdout.split()
        (bad,) = cluster.burst("submit", "--retries", "1", "process", "false").stdout.split()
        cluster.burst("wait", *ok, bad, check=False)
        cluster.burst("drain", "nobody", check=False)  # an RPC error (NOT_FOUND), counted
        samples: dict[str, float] = {}
        for addr in addrs:
            eventually(
                lambda addr=addr: scrape(addr).get("burst_event_loop_lag_seconds_count", 0) > 0,
                f"a loop-lag sample of {addr}",
            )
            samples |= scrape(addr)
    finally:
        kill_up(proc)
    exported = {name.partition("{")[0] for name in samples}
    queried = _queried_names(json.loads(DASHBOARD.read_text()))
    assert len(queried) > 20, queried
    assert queried <= exported, sorted(queried - exported)
    assert samples['burst_jobs_ended_total{outcome="succeeded"}'] == 6

    scrape_config = SCRAPE_CONFIG.read_text()
    targets = re.findall(r'"(127\.0\.0\.1:\d+)"', scrape_config)
    ports = [int(target.rpartition(":")[2]) for target in targets]
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2], targets
    job_names = set(re.findall(r"job_name: (\S+)", scrape_config))
    defaults = {
        v["name"]: v["query"]
        for v in json.loads(DASHBOARD.read_text())["templating"]["list"]
        if v["type"] == "custom"
    }
    assert job_names == {defaults["controller"], defaults["workers"]}, (job_names, defaults)


def test_a_drained_worker_stays_drained_across_restarts_until_undrained(cluster: Cluster) -> None:
    """The drain is stored: a restarted worker, and a restarted controller, keep it; `burst
    undrain` ends it."""
    controller = cluster.controller()
    worker = cluster.worker("w1", slots=1)
    cluster.wait_workers(1)
    assert cluster.burst("drain", "w1").stdout.startswith("w1: draining")

    def state() -> str:
        lines = cluster.burst("workers", "--json").stdout.splitlines()
        if not lines:  # a restarted controller before w1 registered again
            return "not registered"
        (info,) = [json.loads(line) for line in lines]
        return str(info["state"])

    assert worker.stop() == 0
    worker = cluster.worker("w1", slots=1)
    cluster.wait_workers(1)
    (job_id,) = cluster.burst("submit", "process", "true").stdout.split()
    time.sleep(1.5)  # w1 registered and polls: it gets nothing
    assert state() == "draining"
    assert cluster.status(job_id)["state"] == "queued"

    assert controller.stop() == 0
    cluster.controller()
    eventually(lambda: state() == "draining", "w1 to register again, drained")
    time.sleep(1.5)
    assert cluster.status(job_id)["state"] == "queued"

    as_worker = {**cluster.env, "BURST_TOKEN": cluster.token("worker")}
    refused = cluster.burst("undrain", "w1", check=False, env=as_worker)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused
    assert cluster.burst("undrain", "w1").stdout.startswith("w1: taking work")
    assert cluster.burst("wait", job_id, "--timeout", "30", check=False).returncode == 0
    assert state() == "alive"
    again = cluster.burst("undrain", "w1", check=False)
    assert again.returncode == 4 and "no drained worker 'w1'" in again.stderr, again
