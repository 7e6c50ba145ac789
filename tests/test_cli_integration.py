"""The `burst` command line end to end: real `burst`, controller and worker processes on free
loopback ports (tests/cluster.py), for what only real processes show."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from burstd import __version__
from burstd.client import BlockingClient, process
from tests.cluster import Cluster, Daemon, environment, free_port, program


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


def test_exit_codes_of_real_commands(cluster: Cluster, tmp_path: Path) -> None:
    """The table of cli/exitcodes.py, each code from real processes."""
    cluster.controller()
    cluster.worker("w1")

    def code(*argv: str) -> int:
        run = cluster.burst(*argv, check=False)
        assert "Traceback" not in run.stderr
        return run.returncode

    def submit(*argv: str) -> str:
        (job_id,) = cluster.burst("submit", *argv).stdout.split()
        return job_id

    ok, failing, sleeper = (
        submit("process", "true"),
        submit("process", "false"),
        submit("process", "sleep", "60"),
    )
    assert code("wait", ok) == 0
    assert code("wait", failing) == 1
    assert code("wait", ok, failing) == 1
    assert code("wait", "--timeout", "0.5", sleeper) == 5
    assert code("wait", "--timeout", "0.5", failing, sleeper) == 5
    assert code("cancel", sleeper) == 0
    assert code("wait", sleeper) == 1  # cancelled
    assert code("submit", "--retries", "x", "process", "true") == 2
    assert code("submit", "process", " ") == 2  # INVALID_ARGUMENT from the controller
    assert code("status", "nonsense") == 4
    assert code("status", "--job-id", ok, "--job-id", "job-99999999") == 4
    assert code("cancel", "job-99999999") == 4
    assert code("wait", ok, "job-99999999") == 4
    assert code("status", ok) == 0

    dead = f"127.0.0.1:{free_port()}"
    for argv in (["status", ok], ["wait", "--all"], ["submit", "process", "true"]):
        run = subprocess.run(
            [*program("burst"), "--controller", dead, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=cluster.env,
        )
        assert run.returncode == 3 and "cannot reach" in run.stderr, run


def test_version_of_both_programs(tmp_path: Path) -> None:
    for name in ("burst", "burstd"):
        run = subprocess.run(
            [*program(name), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=environment(),
        )
        assert (run.returncode, run.stdout, run.stderr) == (0, f"{name} {__version__}\n", "")


def test_the_prototypes_flags_and_burstd_errors_in_one_line(cluster: Cluster) -> None:
    cluster.controller()
    worker = Daemon(
        "proto-w",
        ["worker", "--worker-id", "proto-w", "--controller", cluster.addr],
        cluster.tmp / "proto-w.log",
        cluster.tmp,
        cluster.env,
    )
    cluster.daemons.append(worker)
    cluster.wait_workers(1)
    assert [
        w["worker_id"]
        for w in map(json.loads, cluster.burst("workers", "--json").stdout.splitlines())
    ] == ["proto-w"]
    (job_id,) = cluster.burst("submit", "process", "true").stdout.split()
    cluster.burst("wait", job_id)
    assert cluster.burst("status", "--job-id", job_id).stdout == f"{job_id} succeeded\n"

    for argv in (["worker", "--slots", "x"], ["worker", "--bogus"], ["nonsense"]):
        run = subprocess.run(
            [*program("burstd"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cluster.tmp,
            env=environment(),
        )
        assert run.returncode == 2, run
        assert run.stderr.startswith("burstd: error: ") and run.stderr.count("\n") == 1, run


def test_relative_paths_resolve_where_burst_submit_runs(cluster: Cluster) -> None:
    """As in Slurm and HyperQueue: `./simulate`, `python analyse.py`, `--cwd` and `--output-dir`
    mean the directory `burst submit` ran in (the workers run elsewhere: cluster.tmp)."""
    cluster.controller()
    cluster.worker("w1")
    project = cluster.tmp / "project"
    (project / "sub").mkdir(parents=True)
    (project / "simulate").write_text('#!/bin/sh\necho "simulate $* in $(pwd)"\n')
    (project / "simulate").chmod(0o755)
    (project / "analyse.py").write_text("import os\nprint('analyse in', os.getcwd())\n")

    def submit(*argv: str) -> dict[str, Any]:
        (job_id,) = cluster.burst("submit", *argv, cwd=project).stdout.split()
        cluster.burst("wait", job_id, check=False)
        return cluster.status(job_id)

    info = submit("process", "./simulate", "--seed", "42")
    assert info["state"] == "succeeded", info
    assert Path(info["stdout_path"]).read_text() == f"simulate --seed 42 in {project}\n"
    info = submit("python", "analyse.py")
    assert Path(info["stdout_path"]).read_text() == f"analyse in {project}\n"
    info = submit("--cwd", "sub", "--output-dir", "out", "process", "../simulate")
    assert Path(info["stdout_path"]) == project / "sub" / "out" / f"{info['job_id']}.stdout"
    assert Path(info["stdout_path"]).read_text() == f"simulate  in {project / 'sub'}\n"

    # a working directory missing on the worker fails the job, naming it and the worker
    info = submit("--cwd", "gone", "process", "true")
    assert (info["state"], info["reason"]) == ("failed", "spawn")
    assert (
        info["error_message"] == f"working directory {project / 'gone'} does not exist on worker w1"
    )

    # a job without a working directory (the prototype's clients, the Python client's default)
    # runs in the worker's
    with BlockingClient(cluster.addr, token=cluster.token()) as client:
        (job_id,) = client.submit_many([process("pwd")])
        list(client.wait([job_id]))
        assert Path(client.status(job_id).stdout_path).read_text() == f"{cluster.tmp}\n"


def test_each_attempt_keeps_its_output_and_status_names_them(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    script = 'echo "out $BURST_ATTEMPT"; echo "err $BURST_ATTEMPT" >&2; [ $BURST_ATTEMPT -ge 3 ]'
    (job_id,) = cluster.burst(
        "submit", "--retries", "2", "process", "sh", "-c", script
    ).stdout.split()
    cluster.burst("wait", job_id)
    info = cluster.status(job_id)
    files = [
        (a["attempt"], a["worker_id"], Path(a["stdout_path"]), Path(a["stderr_path"]))
        for a in info["attempts"]
    ]
    out = cluster.output
    assert files == [
        (1, "w1", out / f"{job_id}.stdout", out / f"{job_id}.stderr"),
        (2, "w1", out / f"{job_id}.2.stdout", out / f"{job_id}.2.stderr"),
        (3, "w1", out / f"{job_id}.3.stdout", out / f"{job_id}.3.stderr"),
    ]
    for attempt, _, stdout, stderr in files:
        assert (stdout.read_text(), stderr.read_text()) == (f"out {attempt}\n", f"err {attempt}\n")
    assert (info["stdout_path"], info["stderr_path"]) == (str(files[-1][2]), str(files[-1][3]))
