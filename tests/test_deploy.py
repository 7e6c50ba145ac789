"""Deployment as docs/deploy.md gives it (root; ``tox -e deploy``): the image built from the
Dockerfile on a base made here (.ci/make-base-image.sh: no registry is reachable), a compose
cluster of three workers from compose.yaml, and the Slurm batch script on a one-node Slurm
(.ci/setup-slurm.sh), each pushing 1,000 jobs through.

The prerequisites are installed and started by .ci/run; without them these tests skip, except in
CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import REPO, Cluster, environment, free_port, program

pytestmark = pytest.mark.deploy

BASE = os.environ.get("BURST_BASE", "burst-base:bookworm")
JOBS = 1000


def require(*tools: str) -> None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    reason = f"needs {', '.join(absent)}" if absent else None
    if os.geteuid() != 0:
        reason = "needs root"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"deployment tests: {reason} (.ci/run installs it)")
    pytest.skip(reason)


def run(
    *args: str, timeout: float = 600, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done}")
    return done.stdout


# -- the image and compose --------------------------------------------------------------------


@pytest.fixture
def build_context(tmp_path: Path) -> Path:
    """The repository's files (as a clone has them) and wheels of burst and everything it needs,
    so the image builds without reaching an index from inside the build."""
    context = tmp_path / "context"
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in files.splitlines():
        if (REPO / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, context / name)
    wheels = context / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(context))
    # the build backend, for pip's isolated build of burst inside the image
    run(sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--dest",
        str(wheels), "setuptools>=68")  # fmt: skip
    return context


@pytest.fixture
def compose(build_context: Path) -> Iterator[list[str]]:
    require("docker", "docker-compose")
    docker = os.environ.get("DOCKER", "docker")
    if subprocess.run([docker, "image", "inspect", BASE], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"no base image {BASE} (.ci/make-base-image.sh makes it)")
        pytest.skip(f"no base image {BASE}")
    project = f"bursttest{os.getpid()}"
    os.environ.update(
        BURST_IMAGE=f"burst-test:{project}",
        BURST_BASE=BASE,
        BURST_PIP_OPTIONS="--no-index --find-links /src/wheels",
        BURST_PORT=str(free_port()),
    )
    command = ["docker-compose", "-p", project, "-f", str(build_context / "compose.yaml")]
    try:
        yield command
    finally:
        subprocess.run([*command, "down", "-v", "--rmi", "local"], capture_output=True, timeout=300)
        subprocess.run([docker, "rmi", os.environ["BURST_IMAGE"]], capture_output=True)
        subprocess.run(
            [docker, "image", "prune", "-f", "--filter", "label=org.burst.stage=build"],
            capture_output=True,
        )


def test_compose_cluster_of_three_workers_runs_1000_jobs(compose: list[str]) -> None:
    run(*compose, "build")
    run(*compose, "up", "-d")
    burst = [*compose, "exec", "-T", "controller", "burst"]

    deadline = time.monotonic() + 120
    while len(run(*burst, "workers", "--json").splitlines()) < 3:
        assert time.monotonic() < deadline, "the workers did not register"
        time.sleep(1)
    out = run(*burst, "submit", "--wait", "--array", f"0-{JOBS - 1}", "process", "sh", "-c",
              'echo "$BURST_JOB_ID $BURST_WORKER_ID"')  # fmt: skip
    assert len(out.split()) == JOBS
    jobs = [json.loads(line) for line in run(*burst, "list", "--json").splitlines()]
    assert [j["state"] for j in jobs] == ["succeeded"] * JOBS
    assert {j["worker_id"] for j in jobs} == {"worker-1", "worker-2", "worker-3"}
    # every job's output is in the shared volume, where the client (in the controller) reads it
    job = jobs[-1]
    assert run(*burst[:-1], "cat", job["stdout_path"]).split() == [job["job_id"], job["worker_id"]]
    # and burst logs fetches it through the controller from the worker that ran it
    assert run(*burst, "logs", job["job_id"]).split() == [job["job_id"], job["worker_id"]]
    # the daemons run as the unprivileged user of the image
    assert run(*burst[:-1], "id", "-un").strip() == "burst"


# -- Slurm ------------------------------------------------------------------------------------


def slurm_job_state(job: str) -> str:
    return run("squeue", "-h", "-j", job, "-o", "%T").strip()


@pytest.fixture
def sbatch(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Submits deploy/slurm/burst-workers.sbatch (with sbatch's options given) against a running
    controller of ``cluster``; returns the Slurm job id. Cancels every such job at the end."""
    require("sbatch", "squeue", "scancel", "sinfo")
    if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail("Slurm does not answer (.ci/setup-slurm.sh starts it)")
    cluster.controller()
    burstd = cluster.tmp / "burstd"
    burstd.write_text(f'#!/bin/sh\nexec {" ".join(program("burstd"))} "$@"\n')
    burstd.chmod(0o755)
    script = REPO / "deploy" / "slurm" / "burst-workers.sbatch"
    jobs: list[str] = []

    def submit(*options: str) -> str:
        env = environment(BURSTD=str(burstd), BURST_STATE_DIR=str(cluster.tmp / "state"))
        job = run("sbatch", "--parsable", f"--chdir={cluster.tmp}", *options, str(script),
                  cluster.addr, env=env).strip()  # fmt: skip
        jobs.append(job)
        return job

    try:
        yield submit
    finally:
        for job in jobs:
            subprocess.run(["scancel", job], capture_output=True)


def wait_slurm_job_gone(job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while slurm_job_state(job):
        assert time.monotonic() < deadline, f"Slurm job {job} did not end"
        time.sleep(0.5)


def test_slurm_batch_script_runs_a_worker_that_takes_1000_jobs_and_drains(
    cluster: Cluster, sbatch: Callable[..., str]
) -> None:
    job = sbatch("--time=10")
    cluster.wait_workers(1, timeout=120)
    worker = json.loads(cluster.burst("workers", "--json").stdout.splitlines()[0])
    assert worker["worker_id"] == f"slurm-{job}-{os.uname().nodename.split('.')[0]}"
    assert worker["slots"] == os.cpu_count()
    cluster.burst("submit", "--wait", "--array", f"0-{JOBS - 1}", "process", "true",
                  timeout=600)  # fmt: skip

    # a drain (the time limit's --signal, sent by hand) lets a running job finish
    (slow,) = cluster.burst("submit", "process", "sleep", "4").stdout.split()
    deadline = time.monotonic() + 60
    while cluster.status(slow)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run("scancel", "--signal=TERM", "--batch", job)
    wait_slurm_job_gone(job)
    assert cluster.status(slow)["state"] == "succeeded"
    log = (cluster.tmp / f"burst-workers-{job}.log").read_text()
    assert "draining the workers" in log


def test_slurm_time_limit_drains_the_workers_before_it(
    cluster: Cluster, sbatch: Callable[..., str]
) -> None:
    """The script's own --signal (here 50 s ahead of a one-minute limit, which Slurm may send up
    to a minute early): the workers drain and the allocation ends before its limit."""
    job = sbatch("--time=1", "--signal=B:TERM@50")
    wait_slurm_job_gone(job, timeout=150)
    log = (cluster.tmp / f"burst-workers-{job}.log").read_text()
    assert "draining the workers" in log
    assert "draining: no new work" in log
    assert "TIME LIMIT" not in log
