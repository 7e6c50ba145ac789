"""What an operator reads from real daemons: JSON log lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.cluster import Cluster, environment, program


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
