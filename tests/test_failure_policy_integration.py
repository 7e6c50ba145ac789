"""Failure policy with real processes: `burst submit --retry-on-exit` and `--crash-limit`."""

from __future__ import annotations

import datetime
import json

from tests.cluster import Cluster, eventually
from tests.test_controller_integration import start_controller


def submit(cluster: Cluster, *args: str) -> str:
    (job_id,) = cluster.burst("submit", *args).stdout.split()
    return job_id


def test_retry_on_exit_retries_only_the_codes_it_names(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    options = ("--retries", "2", "--retry-on-exit", "3,75")
    again = submit(cluster, *options, "process", "sh", "-c", "exit 75")
    final = submit(cluster, *options, "process", "sh", "-c", "exit 4")
    plain = submit(cluster, "--retries", "2", "process", "sh", "-c", "exit 4")
    cluster.burst("wait", "--timeout", "30", again, final, plain, check=False)
    assert [(cluster.status(j)["retried"], cluster.status(j)["exit_code"]) for j in
            (again, final, plain)] == [(2, 75), (0, 4), (2, 4)]  # fmt: skip
    for value in ("3,x", "256"):
        refused = cluster.burst(
            "submit", "--retries", "1", "--retry-on-exit", value, "process", "true", check=False
        )
        assert refused.returncode == 2 and "--retry-on-exit" in refused.stderr


def test_a_submissions_crash_limit_overrides_the_controllers(cluster: Cluster) -> None:
    # A 2 s lease, not the 0.5 s of FAST_LEASES: with a crash limit of 1, one lease lapse of a
    # loaded machine before both jobs are seen running fails `once` early (it did in CI).
    start_controller(cluster, crash_limit=5, lease_ttl_ms=2000, heartbeat_interval_ms=300)
    worker = cluster.worker("w1")
    cluster.wait_workers(1)
    once = submit(cluster, "--crash-limit", "1", "process", "sleep", "60")
    default = submit(cluster, "process", "sleep", "60")
    eventually(
        lambda: all(cluster.status(j)["state"] == "running" for j in (once, default)) or None,
        "both jobs running",
    )
    worker.kill9()
    eventually(lambda: cluster.status(once)["state"] == "failed" or None, "once failed")
    info = cluster.status(once)
    assert info["reason"] == "worker_lost" and "crash limit 1" in info["error_message"]
    other = cluster.status(default)
    assert other["state"] == "queued" and other["lost_count"] == 1


def test_a_retry_waits_out_its_delay(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    flaky = cluster.tmp / "flaky"
    job_id = submit(
        cluster,
        "--retries",
        "1",
        "--retry-delay",
        "2",
        "process",
        "sh",
        "-c",
        f"if [ -e {flaky} ]; then exit 0; fi; touch {flaky}; exit 1",
    )
    eventually(lambda: cluster.status(job_id)["state"] == "waiting" or None, "a waiting retry")
    cluster.burst("wait", "--timeout", "30", job_id)
    info = cluster.status(job_id)
    first_end = info["attempts"][0]["finished_at"]
    started = info["attempts"][1]["started_at"]
    delay = datetime.datetime.fromisoformat(started) - datetime.datetime.fromisoformat(first_end)
    print(f"retried {delay.total_seconds():.2f} s after the first attempt ended (delay 2 s)")
    assert info["retried"] == 1 and info["attempt"] == 2 and info["state"] == "succeeded"
    assert delay.total_seconds() >= 2.0  # never before the delay
    refused = cluster.burst("submit", "--retry-delay", "-1", "process", "true", check=False)
    assert refused.returncode == 2 and "--retry-delay" in refused.stderr


def test_max_fails_cancels_the_rest_of_the_submission(cluster: Cluster) -> None:
    """The third failure of the submission cancels the rest of it, the job still running
    included; the limit survives a controller restart (stored with the jobs)."""
    controller = cluster.controller()  # no worker before the restart: all of it is queued
    (submission,) = cluster.burst(
        "submit", "--quiet", "--max-fails", "3", "--array", "1-20",
        "process", "sh", "-c", "sleep 0.3; exit 1",
    ).stdout.split()  # fmt: skip
    controller.stop()
    cluster.controller()
    cluster.worker("w1", slots=2)
    waited = cluster.burst("wait", "--timeout", "60", submission, check=False)
    assert waited.returncode != 0
    counts = json.loads(cluster.burst("status", "--json", submission).stdout)
    assert (counts["total"], counts["failed"], counts["cancelled"]) == (20, 3, 17)
    assert counts["max_fails"] == 3
    jobs = cluster.burst("list", "--submission", submission, "--state", "cancelled").stdout
    first_cancelled = jobs.split()[0]
    info = cluster.status(first_cancelled)
    assert info["error_message"] == "cancelled: 3 jobs of its submission failed (max_fails 3)"
