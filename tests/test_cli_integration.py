"""The `burst` command line end to end: real `burst`, controller and worker processes on free
loopback ports (tests/cluster.py), for what only real processes show."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import Cluster


def test_a_submission_with_3000_env_options(cluster: Cluster) -> None:
    """Parsed in linear time (it took minutes of CPU), every variable reaching the job."""
    cluster.controller()
    cluster.worker("w1")
    env = [t for i in range(3000) for t in ("--env", f"K{i}=v{i}")]
    (job_id,) = cluster.burst(
        "submit", *env, "process", "sh", "-c", "echo $K0 $K2999"
    ).stdout.split()
    cluster.burst("wait", job_id)
    assert Path(cluster.status(job_id)["stdout_path"]).read_text() == "v0 v2999\n"
