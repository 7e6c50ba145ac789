"""The worker daemon end to end: real `burstd` and `burst` processes on free loopback ports.

Covers: a thousand array jobs over two workers with their output files; how a job fails (exit
code, signal, missing binary, timeout); cancel of a job and its grandchild; kill -9 of a worker
mid-run (its jobs re-run elsewhere, its guard stops the ones it ran); a controller restart;
Docker jobs (run and cancel, against a real engine); the drain on SIGTERM and a second SIGTERM;
`burstd up` with a command, stopped by SIGTERM and by Ctrl-C, and killed. At the end, tests with the
controller and a worker in the test's own trio loop: the drain grace, jobs leased during a
drain, cancel of a job waiting for a slot.

Timing: every wait polls for a condition with a generous deadline (a loaded 2-core machine);
measured latencies are logged, not asserted tightly.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from burstd.client import Client, process
from burstd.config import ControllerConfig, WorkerConfig
from burstd.controller.daemon import run_controller
from burstd.worker.daemon import Worker
from tests.cluster import Cluster, Daemon, environment, program
from tests.docker_engine import IMAGE, docker_available

T = TypeVar("T")

# A short lease TTL, so that a killed worker is declared lost within seconds.
SHORT_TTL = """\
[controller]
lease_ttl_ms = 1500
heartbeat_interval_ms = 300
"""


# -- helpers ------------------------------------------------------------------------------------


def poll(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """``condition()`` once it is truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def write_config(cluster: Cluster, name: str, text: str) -> str:
    path = cluster.tmp / name
    path.write_text(text)
    return str(path)


def submit(cluster: Cluster, *args: str) -> list[str]:
    return cluster.burst("submit", *args).stdout.split()


def statuses(cluster: Cluster, *ids: str) -> list[dict[str, Any]]:
    """``burst status --json`` of the jobs, in one call."""
    return [
        json.loads(line)
        for line in cluster.burst("status", "--json", *ids).stdout.split("\n")
        if line
    ]


def jobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every job the controller knows, by id (``burst list --json``)."""
    lines = cluster.burst("list", "--json").stdout.splitlines()
    return {info["job_id"]: info for info in map(json.loads, lines)}


def workers(cluster: Cluster) -> list[dict[str, Any]]:
    lines = cluster.burst("workers", "--json", check=False).stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_workers(cluster: Cluster, *ids: str, timeout: float = 30.0) -> None:
    poll(
        lambda: set(ids) <= {w["worker_id"] for w in workers(cluster)},
        timeout,
        f"workers {', '.join(ids)} to register",
    )


def wait_jobs(cluster: Cluster, ids: list[str], timeout: float = 90.0) -> int:
    """``burst wait`` on the jobs; its exit code (0: all succeeded)."""
    result = cluster.burst(
        "wait", *ids, "--timeout", str(timeout), check=False, timeout=timeout + 30
    )
    assert "timed out" not in result.stderr, result.stderr
    return result.returncode


def proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def alive(pid: int) -> bool:
    # A zombie is gone for our purpose: pid 1 in this sandbox does not reap orphans.
    return proc_state(pid) not in (None, "Z")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


@pytest.fixture
def strays() -> Iterator[set[int]]:
    """Pids (job processes orphaned by a killed worker...) to SIGKILL when the test ends."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_clean_log(daemon: Daemon) -> None:
    log = daemon.log()
    for bad in ("Traceback", "ERROR", "CRITICAL"):
        assert bad not in log, f"{daemon.name} log has {bad}:\n{log[-4000:]}"


# -- 1. throughput and output capture -----------------------------------------------------------


def test_thousand_array_jobs_over_two_workers(cluster: Cluster) -> None:
    cluster.controller()
    w1 = cluster.worker("w1")
    w2 = cluster.worker("w2")
    wait_workers(cluster, "w1", "w2")
    script = 'echo "$BURST_ARRAY_INDEX $BURST_JOB_ID $BURST_WORKER_ID $BURST_ATTEMPT"'
    started = time.monotonic()
    ids = submit(cluster, "--array", "0-999", "process", "sh", "-c", script)
    assert len(ids) == len(set(ids)) == 1000
    assert wait_jobs(cluster, ids, timeout=150) == 0
    print(f"1,000 jobs in {time.monotonic() - started:.1f} s")

    infos = jobs(cluster)
    by_worker: dict[str, int] = {}
    for index, job_id in enumerate(ids):
        info = infos[job_id]
        assert info["state"] == "succeeded", info
        assert info["exit_code"] == 0
        by_worker[info["worker_id"]] = by_worker.get(info["worker_id"], 0) + 1
        stdout = cluster.output / f"{job_id}.stdout"
        assert info["stdout_path"] == str(stdout)
        expected = f"{index} {job_id} {info['worker_id']} {info['attempt']}\n"
        assert stdout.read_text() == expected
        assert (cluster.output / f"{job_id}.stderr").read_text() == ""
    print(f"jobs per worker: {by_worker}")
    assert set(by_worker) == {"w1", "w2"}
    assert_clean_log(w1)
    assert_clean_log(w2)


# -- 2. how jobs fail ---------------------------------------------------------------------------


def test_failures_carry_their_detail(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1", slots=4)
    wait_workers(cluster, "w1")
    (exit3,) = submit(cluster, "process", "sh", "-c", "echo oops >&2; exit 3")
    (killed,) = submit(cluster, "process", "sh", "-c", "kill -9 $$")
    (missing,) = submit(cluster, "process", "no-such-binary-burst-test", "arg")
    (slow,) = submit(cluster, "--timeout", "1", "process", "sleep", "30")
    ids = [exit3, killed, missing, slow]
    assert wait_jobs(cluster, ids, timeout=60) == 1  # failures: exit 1

    infos = statuses(cluster, *ids)
    info, signalled, missed, timed_out = infos
    assert (info["state"], info["reason"], info["exit_code"], info["signal"]) == (
        "failed",
        "exit",
        3,
        0,
    )
    assert info["error_message"] == "exited with code 3"
    assert Path(info["stderr_path"]).read_text() == "oops\n"

    info = signalled
    assert (info["state"], info["reason"], info["signal"]) == ("failed", "signal", 9)
    assert info["exit_code"] is None  # no exit code for a signal death
    assert "SIGKILL" in info["error_message"]

    info = missed
    assert (info["state"], info["reason"]) == ("failed", "spawn")
    assert info["error_message"] == "command not found: no-such-binary-burst-test"

    info = timed_out
    assert (info["state"], info["reason"]) == ("failed", "timeout")
    assert info["error_message"] == "timed out after 1.0 s"
    ran = datetime.fromisoformat(info["finished_at"]) - datetime.fromisoformat(info["started_at"])
    assert ran.total_seconds() < 20  # not the full 30 s
    # A failing exit is not retried.
    assert [i["attempt"] for i in infos] == [1, 1, 1, 1]


# -- 3. cancel ----------------------------------------------------------------------------------


def test_cancel_kills_the_job_and_its_grandchild(cluster: Cluster, strays: set[int]) -> None:
    cluster.controller()
    cluster.worker("w1")
    wait_workers(cluster, "w1")
    pid_file = cluster.tmp / "grandchild.pid"
    (job_id,) = submit(cluster, "process", "sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait")
    text = poll(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the pid file")
    grandchild = int(text)
    strays.add(grandchild)
    assert alive(grandchild)
    poll(lambda: cluster.status(job_id)["state"] == "running", 20, "the job to run")

    started = time.monotonic()
    assert cluster.burst("cancel", job_id).stdout.split() == [job_id, "cancelled"]
    poll(lambda: not alive(grandchild), 30, "the grandchild to die", interval=0.02)
    elapsed = time.monotonic() - started
    print(f"grandchild gone {elapsed:.2f} s after `burst cancel` was started")
    assert elapsed < 5.0

    info = poll(
        lambda: (i := cluster.status(job_id))["reason"] == "cancelled" and i,
        10,
        "the cancelled state",
    )
    assert info["state"] == "cancelled"
    # The worker confirms it stopped the job: its lease is released, capacity back.
    poll(
        lambda: [(w["worker_id"], w.get("leased", 0)) for w in workers(cluster)] == [("w1", 0)],
        20,
        "the lease to be released",
    )


# -- 4. kill -9 of a worker ---------------------------------------------------------------------


def test_worker_killed_mid_run_loses_no_job(cluster: Cluster, strays: set[int]) -> None:
    config = write_config(cluster, "short-ttl.toml", SHORT_TTL)
    cluster.controller("--config", config)
    w1 = cluster.worker("w1")
    cluster.worker("w2")
    wait_workers(cluster, "w1", "w2")
    # Long enough that a job seen running on w1 still runs when w1 is killed, on a loaded
    # machine too (with 3 s, one listed as running had ended before the kill: lost_count 0).
    ids = submit(cluster, "--array", "0-7", "process", "sh", "-c", "sleep 6")

    def running_on_w1() -> list[str]:
        return [
            i
            for i, info in jobs(cluster).items()
            if info["worker_id"] == "w1" and info["state"] == "running"
        ]

    poll(running_on_w1, 30, "jobs running on w1")
    before = jobs(cluster)
    on_w1 = [
        i
        for i, info in before.items()
        if info["worker_id"] == "w1" and info["state"] in ("leased", "running")
    ]
    was_running = [i for i in on_w1 if before[i]["state"] == "running"]
    strays.update(descendants(w1.pid))  # should its guard fail to stop its jobs
    w1.kill9()

    assert wait_jobs(cluster, ids, timeout=90) == 0
    after = jobs(cluster)
    assert all(after[i]["state"] == "succeeded" for i in ids)
    for job_id in on_w1:
        info = after[job_id]
        assert info["worker_id"] == "w2", info
        assert info["attempt"] >= 2, info
    for job_id in was_running:
        assert after[job_id]["lost_count"] == 1, after[job_id]
    assert [w["worker_id"] for w in workers(cluster)] == ["w2"]


def test_a_killed_workers_running_jobs_are_stopped_by_its_guard(
    cluster: Cluster, strays: set[int]
) -> None:
    """kill -9 leaves a worker no chance to stop its jobs; its guard process does, so they do
    not run on beside their next attempt on another worker."""
    cluster.controller()
    w1 = cluster.worker("w1")
    wait_workers(cluster, "w1")
    (job_id,) = submit(cluster, "process", "sh", "-c", "sleep 300 & wait")
    poll(lambda: jobs(cluster)[job_id]["state"] == "running", 30, "the job running")
    below = poll(lambda: len(descendants(w1.pid)) >= 3 and descendants(w1.pid), 10, "processes")
    strays.update(below)  # the guard, the job's shell and its sleep
    w1.kill9()
    poll(lambda: not any(alive(pid) for pid in below), 30, "the dead worker's processes gone")
    assert "job guard: the worker" in w1.log() and "1 jobs running" in w1.log()


# -- 5. controller restart ----------------------------------------------------------------------


def test_workers_survive_a_controller_restart(cluster: Cluster) -> None:
    first = cluster.controller()
    w1 = cluster.worker("w1")
    w2 = cluster.worker("w2")
    wait_workers(cluster, "w1", "w2")
    ids = submit(cluster, "--array", "1-4", "process", "true")
    assert wait_jobs(cluster, ids) == 0

    assert first.stop(timeout=30) == 0
    time.sleep(0.5)  # the workers notice the controller is gone
    cluster.controller()  # a new one on the same address
    wait_workers(cluster, "w1", "w2", timeout=40)  # they registered again by themselves

    ids = submit(cluster, "--array", "1-20", "process", "sh", "-c", "echo $BURST_WORKER_ID")
    assert wait_jobs(cluster, ids, timeout=60) == 0
    ran_on = {info["worker_id"] for info in jobs(cluster).values()}
    print(f"after the restart, jobs ran on {sorted(ran_on)}")
    assert ran_on and ran_on <= {"w1", "w2"}
    for worker in (w1, w2):
        assert worker.proc.poll() is None
        assert "Traceback" not in worker.log()


# -- 6. Docker ----------------------------------------------------------------------------------


def require_docker() -> str:
    cli = docker_available()
    if cli is None:
        message = f"no Docker engine with {IMAGE}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must provide one (.ci/setup-docker.sh)")
        pytest.skip(message)
    return cli


def docker_names(cli: str) -> list[str]:
    """Running containers' names, without the per-worker-process token at their end."""
    done = subprocess.run(
        [cli, "ps", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [name.rpartition("-")[0] for name in done.stdout.split()]


@pytest.fixture
def docker_cli() -> str:
    return require_docker()


def test_docker_jobs_run_and_cancel_in_real_containers(cluster: Cluster, docker_cli: str) -> None:
    config = write_config(cluster, "docker.toml", f'[worker]\ndocker = "{docker_cli}"\n')
    cluster.controller()
    cluster.worker("w1", "--config", config)
    wait_workers(cluster, "w1")
    names: list[str] = []
    try:
        (hello,) = submit(cluster, "docker", IMAGE, "echo", "hi")
        names.append(f"burst-{hello}-1")
        assert wait_jobs(cluster, [hello], timeout=120) == 0, cluster.status(hello)
        assert (cluster.output / f"{hello}.stdout").read_text() == "hi\n"

        (sleeper,) = submit(cluster, "docker", IMAGE, "sleep", "300")
        name = f"burst-{sleeper}-1"
        names.append(name)
        poll(lambda: name in docker_names(docker_cli), 120, f"container {name}", interval=0.5)
        started = time.monotonic()
        cluster.burst("cancel", sleeper)
        poll(lambda: name not in docker_names(docker_cli), 60, f"{name} to stop", interval=0.2)
        print(f"container gone {time.monotonic() - started:.2f} s after `burst cancel`")
        info = poll(
            lambda: (i := cluster.status(sleeper))["reason"] == "cancelled" and i, 30, "cancel"
        )
        assert info["state"] == "cancelled"
    finally:
        for name in names:
            found = subprocess.run(
                [docker_cli, "ps", "-aq", "--filter", f"name=^{name}-"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for container in found.stdout.split():
                subprocess.run([docker_cli, "rm", "-f", container], capture_output=True, timeout=60)


def containers_of(cli: str, *job_ids: str) -> list[str]:
    """The containers the engine holds of the jobs' first attempts, running or not."""
    found = []
    for job_id in job_ids:
        done = subprocess.run(
            [cli, "ps", "-a", "--format", "{{.Names}}", "--filter", f"name=^burst-{job_id}-1-"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        found += done.stdout.split()
    return found


def test_a_docker_job_past_its_mem_ends_with_reason_memory(
    cluster: Cluster, docker_cli: str
) -> None:
    """The container's OOM kill, asked of the engine; no container is left, also of a job
    cancelled or of one whose worker is killed."""
    config = write_config(cluster, "docker.toml", f'[worker]\ndocker = "{docker_cli}"\n')
    cluster.controller()
    worker = cluster.worker("w1", "--config", config)
    wait_workers(cluster, "w1")
    ids: list[str] = []
    try:
        # dd reads each block into a buffer of the block's size: 256 MiB against 64 MiB.
        dd = ("dd", "if=/dev/zero", "of=/dev/null", "count=2")
        greedy, modest = (
            submit(cluster, "--mem", "64M", "docker", IMAGE, *dd, f"bs={size}")[0]
            for size in ("256M", "8M")
        )
        ids += [greedy, modest]
        assert wait_jobs(cluster, [greedy, modest], timeout=120) != 0
        failed, succeeded = statuses(cluster, greedy, modest)
        print(failed["error_message"])
        assert (failed["state"], failed["reason"]) == ("failed", "memory"), failed
        assert failed["error_message"].startswith("killed for memory: over its --mem of 64M")
        assert succeeded["state"] == "succeeded", succeeded
        assert containers_of(docker_cli, greedy, modest) == []

        (sleeper,) = submit(cluster, "--mem", "64M", "docker", IMAGE, "sleep", "300")
        ids.append(sleeper)
        name = f"burst-{sleeper}-1"
        poll(lambda: name in docker_names(docker_cli), 120, f"container {name} to run")
        cluster.burst("cancel", sleeper)
        poll(lambda: not containers_of(docker_cli, sleeper), 60, "the container to go")

        (orphan,) = submit(cluster, "--mem", "64M", "docker", IMAGE, "sleep", "300")
        ids.append(orphan)
        name = f"burst-{orphan}-1"
        poll(lambda: name in docker_names(docker_cli), 120, f"container {name} to run")
        worker.signal(signal.SIGKILL)  # its job guard removes the container
        poll(lambda: not containers_of(docker_cli, orphan), 60, "the guard to remove it")
        assert_clean_log(worker)
    finally:
        for leftover in containers_of(docker_cli, *ids):
            subprocess.run([docker_cli, "rm", "-f", leftover], capture_output=True, timeout=60)


# -- 7. drain on SIGTERM ------------------------------------------------------------------------


def test_sigterm_drains_a_worker(cluster: Cluster) -> None:
    config = write_config(cluster, "short-ttl.toml", SHORT_TTL)
    cluster.controller("--config", config)
    w1 = cluster.worker("w1", slots=1)  # holds 2: one running, one waiting for the slot
    wait_workers(cluster, "w1")
    marker = cluster.tmp / "long.started"
    release = cluster.tmp / "long.release"
    # The long job runs until the test releases it after the SIGTERM, so that a slow machine
    # cannot let it end before the drain begins.
    script = f"touch {marker}; while [ ! -e {release} ]; do sleep 0.05; done; echo done"
    (long,) = submit(cluster, "process", "sh", "-c", script)
    rest = submit(cluster, "--array", "1-3", "process", "true")
    poll(marker.exists, 30, "the long job to start", interval=0.02)
    poll(
        lambda: sum(jobs(cluster)[job_id]["worker_id"] == "w1" for job_id in rest) == 1,
        30,
        "a second job leased to w1",
    )
    time.sleep(0.3)  # the lease, stored, reaches the worker
    w1.signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.5)
    release.touch()

    assert w1.proc.wait(timeout=60) == 0
    print(f"w1 exited {time.monotonic() - signalled:.2f} s after SIGTERM")
    info = cluster.status(long)
    assert (info["state"], info["worker_id"], info["attempt"]) == ("succeeded", "w1", 1)
    assert (cluster.output / f"{long}.stdout").read_text() == "done\n"
    assert_clean_log(w1)
    assert "handing back 1 unstarted jobs" in w1.log()

    cluster.worker("w2")
    assert wait_jobs(cluster, rest, timeout=60) == 0
    after = jobs(cluster)
    for job_id in rest:
        assert after[job_id]["worker_id"] == "w2", after[job_id]
        # Handed back unstarted is not a lost worker: no lost attempt counted.
        assert after[job_id]["lost_count"] == 0, after[job_id]
    # The one w1 held was leased again. (More attempts than that: the controller does not know
    # w1 is leaving and routes jobs to it until its lease TTL is over.)
    attempts = sorted(after[job_id]["attempt"] for job_id in rest)
    print(f"attempts of the other jobs: {attempts}")
    assert attempts[-1] >= 2


def test_second_sigterm_stops_a_worker_at_once_and_kills_its_jobs(
    cluster: Cluster, strays: set[int]
) -> None:
    cluster.controller()
    w1 = cluster.worker("w1", slots=1)
    wait_workers(cluster, "w1")
    pid_file = cluster.tmp / "grandchild.pid"
    submit(cluster, "process", "sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait")
    text = poll(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the pid file")
    grandchild = int(text)
    strays.add(grandchild)
    w1.signal(signal.SIGTERM)  # drain: the job may run to its end...
    poll(lambda: "draining" in w1.log(), 20, "the drain to begin", interval=0.05)
    w1.signal(signal.SIGTERM)  # ...but a second signal stops the worker now
    assert w1.proc.wait(timeout=60) == 0
    assert not alive(grandchild)
    assert "Traceback" not in w1.log()


# -- 8. burstd up -------------------------------------------------------------------------------


def up_env(tmp: Path) -> dict[str, str]:
    """The environment of `burstd up`: `burst` on PATH even without an installed package."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "burst"
    shim.write_text("#!/bin/sh\nexec " + " ".join(program("burst")) + ' "$@"\n')
    shim.chmod(0o755)
    env = environment()
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("BURST_CONTROLLER", None)
    return env


def start_up(
    cluster: Cluster, *command: str, options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`burstd up` with two workers on the cluster's address, its output folder, and the state
    folder of ``cluster.controller()`` (not the user's own store); ``options``: more of its
    options."""
    args = ["up", "--workers", "2", "--listen", cluster.addr, "--output-dir", str(cluster.output)]
    args += ["--state-dir", str(cluster.tmp / "state"), *options]
    if command:
        args += ["--", *command]
    log = (cluster.tmp / "up.log").open("wb")
    return subprocess.Popen(
        [*program("burstd"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cluster.tmp,
        env=up_env(cluster.tmp),
        start_new_session=True,
    )


def kill_up(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `burstd up` and everything below it (its daemons have process groups of their
    own)."""
    below = descendants(proc.pid)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def up_log(cluster: Cluster) -> str:
    return (cluster.tmp / "up.log").read_text(errors="replace")


def test_burstd_up_runs_a_command_and_exits_with_its_code(cluster: Cluster) -> None:
    command = "burst submit --array 1-20 process true && burst wait --all"
    proc = start_up(cluster, "sh", "-c", command)
    try:
        code = proc.wait(timeout=120)
    finally:
        kill_up(proc)
    log = up_log(cluster)
    assert code == 0, log
    assert "20/20 done: 20 succeeded" in log
    assert "Traceback" not in log
    assert len(list(cluster.output.glob("*.stdout"))) == 20


def test_sigterm_stops_burstd_up_and_leaves_no_process(cluster: Cluster) -> None:
    proc = start_up(cluster)
    try:
        poll(lambda: len(workers(cluster)) == 2, 60, "`burstd up` to be ready", interval=0.3)
        children = descendants(proc.pid)
        assert len(children) >= 3, children  # controller and two workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        poll(lambda: not any(alive(p) for p in children), 20, "every child to exit")
    finally:
        kill_up(proc)
    assert "Traceback" not in up_log(cluster)


def test_a_killed_burstd_up_takes_its_cluster_and_jobs_with_it(cluster: Cluster) -> None:
    """SIGKILL leaves `burstd up` no chance to stop its daemons: the kernel stops them (the
    workers' job guards their running jobs), so nothing lives on unseen."""
    proc = start_up(cluster)
    children: set[int] = set()
    try:
        poll(lambda: len(workers(cluster)) == 2, 60, "`burstd up` to be ready", interval=0.3)
        (job_id,) = submit(cluster, "process", "sh", "-c", "sleep 300 & wait")
        poll(lambda: jobs(cluster)[job_id]["state"] == "running", 30, "the job to start")
        children = descendants(proc.pid)
        assert len(children) >= 7, children  # controller, store, 2 workers, 2 guards, the job
        proc.kill()
        proc.wait()
        poll(lambda: not any(alive(p) for p in children), 30, "every process below it to exit")
    finally:
        kill_up(proc)
        for pid in children:  # no longer below it once it is dead
            if alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    # The controller stopped cleanly: its store opens, with the job as it was last recorded.
    cluster.controller()
    assert cluster.status(job_id)["state"] == "running"


def test_ctrl_c_stops_burstd_up_after_its_running_jobs(cluster: Cluster) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the running job
    still finishes and is recorded before the controller stops."""
    proc = start_up(cluster)
    try:
        poll(lambda: len(workers(cluster)) == 2, 60, "`burstd up` to be ready", interval=0.3)
        (job_id,) = submit(cluster, "process", "sh", "-c", "sleep 2; echo done")
        stdout = cluster.output / f"{job_id}.stdout"
        poll(stdout.exists, 30, "the job to start", interval=0.05)
        children = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        poll(lambda: not any(alive(p) for p in children), 20, "every child to exit")
    finally:
        kill_up(proc)
    log = up_log(cluster)
    assert "Traceback" not in log, log
    assert "stopping now" not in log, log  # no worker was stopped without its drain
    assert stdout.read_text() == "done\n"
    # The result reached the controller's store before it stopped.
    cluster.controller()
    assert cluster.status(job_id)["state"] == "succeeded"


# -- drain details, in process (a real controller and worker in this trio loop) -----------------


@asynccontextmanager
async def in_process_controller(
    tmp: Path, **settings: Any
) -> AsyncIterator[tuple[str, trio.Nursery]]:
    config = ControllerConfig(
        bind_addr="127.0.0.1:0", store="memory", state_dir=tmp / "state", **settings
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_controller, config)
        yield f"127.0.0.1:{port}", nursery
        nursery.cancel_scope.cancel()


def in_process_worker(addr: str, tmp: Path, slots: int, drain_grace: float) -> Worker:
    config = WorkerConfig(
        worker_id="w1", controller_addr=addr, slots=slots, output_dir=tmp, kill_grace_s=0.5
    )
    return Worker(config, drain_grace=drain_grace, token=in_process_token(tmp, "worker"))


def in_process_token(tmp: Path, role: str) -> str:
    """A token the in-process controller wrote (``admin`` or ``worker``)."""
    return (tmp / "state" / f"{role}.token").read_text().strip()


async def run_worker(nursery: trio.Nursery, worker: Worker) -> trio.Event:
    """Start the worker; the event is set once its run() has returned."""
    done = trio.Event()

    async def run() -> None:
        await worker.run()
        done.set()

    nursery.start_soon(run)
    return done


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def test_drain_grace_over_stops_jobs_and_hands_them_back(tmp_path: Path) -> None:
    """A job still running when the drain grace is over is killed and reported as handed back
    (re-queued, not counted as a lost worker), before the worker stops."""
    pid_file = tmp_path / "job.pid"
    async with in_process_controller(tmp_path, lease_ttl_ms=60_000) as (addr, nursery):
        worker = in_process_worker(addr, tmp_path, slots=1, drain_grace=0.5)
        stopped = await run_worker(nursery, worker)
        async with Client.connect(addr, token=in_process_token(tmp_path, "admin")) as client:
            job_id = await client.submit(process("sh", "-c", f"echo $$ > {pid_file}; sleep 60"))
            await until(lambda: _has_text(pid_file), 30, "the job to start")
            pid = int(pid_file.read_text())
            worker.drain()
            with trio.fail_after(30):
                await stopped.wait()
            assert not alive(pid)
            info = await client.status(job_id)
            # Handed back: queued again for another worker (or leased again: the controller
            # does not know the worker is leaving), no lost attempt counted.
            assert info.state in ("queued", "leased"), info
            assert info.lost_count == 0, info


async def test_jobs_leased_during_a_drain_are_not_started(tmp_path: Path) -> None:
    """The lease loop may be in a long poll when the drain begins: jobs it still receives are
    handed back, not run."""
    async with in_process_controller(tmp_path, lease_ttl_ms=60_000) as (addr, nursery):
        worker = in_process_worker(addr, tmp_path, slots=2, drain_grace=30)
        stopped = await run_worker(nursery, worker)
        marker = tmp_path / "long.started"
        async with Client.connect(addr, token=in_process_token(tmp_path, "admin")) as client:
            long = await client.submit(process("sh", "-c", f"touch {marker}; sleep 1.5"))
            await until(lambda: _has_text(marker, empty_ok=True), 30, "the long job to start")
            await trio.sleep(0.2)  # the lease loop asks for more (room 3) and waits
            worker.drain()
            late = await client.submit_array(process("true"), range(2))
            with trio.fail_after(30):
                await stopped.wait()
            assert (await client.status(long)).state == "succeeded"
            for job_id in late:
                info = await client.status(job_id)
                assert info.state in ("queued", "leased"), info  # not run by the draining worker
                assert info.lost_count == 0
            assert not list(tmp_path.glob(f"{late[0]}.*"))  # never started: no output files


async def _has_text(path: Path, empty_ok: bool = False) -> bool:
    try:
        return empty_ok or bool(path.read_text().strip())
    except FileNotFoundError:
        return False


async def test_cancel_of_a_job_waiting_for_a_slot_frees_its_place_at_once(tmp_path: Path) -> None:
    """A cancelled job still waiting for a slot on the worker ends at once: it does not hold its
    place in the worker's capacity until a running job ends."""
    marker = tmp_path / "long.started"
    async with in_process_controller(tmp_path, lease_ttl_ms=60_000) as (addr, nursery):
        worker = in_process_worker(addr, tmp_path, slots=1, drain_grace=0.5)
        stopped = await run_worker(nursery, worker)
        async with Client.connect(addr, token=in_process_token(tmp_path, "admin")) as client:
            await client.submit(process("sh", "-c", f"touch {marker}; sleep 60"))
            await until(lambda: _has_text(marker, empty_ok=True), 30, "the long job to start")
            waiting = await client.submit(process("true"))

            async def leased(count: int) -> bool:
                return [w.leased for w in await client.workers()] == [count]

            await until(lambda: leased(2), 30, "both jobs to be leased")
            await trio.sleep(0.2)  # the lease reaches the worker
            assert await client.cancel([waiting]) == ["cancelled"]
            await until(lambda: leased(1), 10, "the cancelled job's lease to be released")
            info = await client.status(waiting)
            assert (info.state, info.reason) == ("cancelled", "cancelled")
            assert not list(tmp_path.glob(f"{waiting}.*"))  # never started
            worker.drain()
            with trio.fail_after(30):
                await stopped.wait()


async def test_worker_heartbeats_at_the_paced_interval(tmp_path: Path) -> None:
    """A controller over its heartbeat budget hands out a longer interval, and the worker keeps
    to it (its lease TTL is stretched alike, so it stays registered)."""
    # A budget of 1 heartbeat a second at 100 ms: a lone worker beats once a second.
    settings = {"lease_ttl_ms": 500, "heartbeat_interval_ms": 100, "heartbeat_budget": 1}
    async with in_process_controller(tmp_path, **settings) as (addr, nursery):
        worker = in_process_worker(addr, tmp_path, slots=1, drain_grace=0.5)
        stopped = await run_worker(nursery, worker)
        async with Client.connect(addr, token=in_process_token(tmp_path, "admin")) as client:

            async def silence() -> float:
                return max(0.0, *(w.last_seen_ago for w in await client.workers()))

            await until(lambda: _registered(client), 30, "the worker to register")
            await trio.sleep(1.2)  # its first heartbeat, timed before it registered
            longest = 0.0
            with trio.move_on_after(2.5):
                while True:
                    longest = max(longest, await silence())
                    await trio.sleep(0.02)
            assert 0.6 < longest < 1.5
        worker.drain()
        with trio.fail_after(30):
            await stopped.wait()


async def _registered(client: Client) -> bool:
    return bool(await client.workers())


# -- 8. leases: a worker out of touch stops its jobs ----------------------------------------------

# A job that stamps the time into a file of its own attempt every 50 ms while it runs: the
# stamps show when each attempt ran, also one that was killed.
STAMP = """\
import os, sys, time
name = os.environ["BURST_JOB_ID"] + "." + os.environ["BURST_ATTEMPT"]
end = time.time() + float(sys.argv[2])
with open(os.path.join(sys.argv[1], name), "a") as out:
    while True:
        out.write(f"{time.time()}\\n")
        out.flush()
        if time.time() >= end:
            break
        time.sleep(0.05)
"""


def stamped(cluster: Cluster, seconds: float) -> list[str]:
    """The arguments of ``burst submit`` for a stamping job of ``seconds``."""
    folder = cluster.tmp / "stamps"
    folder.mkdir(exist_ok=True)
    script = cluster.tmp / "stamp.py"
    script.write_text(STAMP)
    return ["process", sys.executable, str(script), str(folder), str(seconds)]


def attempts_ran(cluster: Cluster) -> dict[str, dict[int, tuple[float, float]]]:
    """Each job's attempts that ran: attempt -> (first stamp, last stamp)."""
    ran: dict[str, dict[int, tuple[float, float]]] = {}
    for path in (cluster.tmp / "stamps").iterdir():
        job_id, _, attempt = path.name.rpartition(".")
        stamps = [float(line) for line in path.read_text().split()]
        ran.setdefault(job_id, {})[int(attempt)] = (stamps[0], stamps[-1])
    return ran


def assert_no_job_ran_twice_at_once(cluster: Cluster) -> None:
    for job_id, runs in attempts_ran(cluster).items():
        spans = sorted(runs.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start, f"{job_id}: two attempts ran at once: {runs}"


def test_a_frozen_worker_stops_its_jobs_before_they_run_elsewhere(
    cluster: Cluster, strays: set[int]
) -> None:
    """SIGSTOP a worker past its lease TTL: its running job is stopped (by its job guard, as
    the worker is frozen) before the controller leases it to another worker, and once woken it
    starts none of the jobs it held (they ran elsewhere), its late results are refused, and it
    takes work again."""
    ttl = "[controller]\nlease_ttl_ms = 3000\nheartbeat_interval_ms = 300\n"
    cluster.controller("--config", write_config(cluster, "ttl.toml", ttl))
    frozen = cluster.worker("w1", slots=1)  # it holds 2 jobs: one runs, one waits for the slot
    wait_workers(cluster, "w1")
    (long,) = submit(cluster, *stamped(cluster, 15))
    poll(lambda: jobs(cluster)[long]["state"] == "running", 30, "the long job running")
    (short,) = submit(cluster, *stamped(cluster, 0))
    poll(lambda: jobs(cluster)[short]["worker_id"] == "w1", 30, "the short job leased to w1")
    time.sleep(0.5)  # the short job's lease reached w1
    strays.update(descendants(frozen.pid))  # should nothing stop its job
    frozen.signal(signal.SIGSTOP)
    try:
        cluster.worker("w2")
        poll(lambda: jobs(cluster)[short]["state"] == "succeeded", 60, "the short job elsewhere")
        poll(
            lambda: (i := jobs(cluster)[long])["state"] == "running" and i["worker_id"] == "w2",
            60,
            "the long job running elsewhere",
        )
        time.sleep(1.0)
    finally:
        frozen.signal(signal.SIGCONT)
    assert wait_jobs(cluster, [long, short]) == 0
    after = jobs(cluster)
    for job_id in (long, short):
        assert (after[job_id]["worker_id"], after[job_id]["attempt"]) == ("w2", 2), after[job_id]
    ran = attempts_ran(cluster)
    assert set(ran[long]) == {1, 2}
    assert_no_job_ran_twice_at_once(cluster)
    assert set(ran[short]) == {2}, "w1 started a job that had run elsewhere"
    # It takes work again (registered anew), and nothing was lost.
    more = submit(cluster, "--array", "0-19", "process", "sh", "-c", "sleep 0.2")
    assert wait_jobs(cluster, more) == 0
    assert "w1" in {jobs(cluster)[i]["worker_id"] for i in more}
    assert "stopping 1 running jobs" in frozen.log() or "let its leases lapse" in frozen.log()
    assert "Traceback" not in frozen.log()


def test_a_second_worker_with_the_same_id_replaces_the_first(
    cluster: Cluster, strays: set[int]
) -> None:
    """A worker id is held by one process: the second registration replaces the first, whose
    calls are refused; it stops its jobs and exits with an error naming the id (no flapping),
    and no job runs twice at once (the first's jobs run elsewhere only once its lease TTL has
    passed)."""
    ttl = "[controller]\nlease_ttl_ms = 3000\nheartbeat_interval_ms = 300\n"
    cluster.controller("--config", write_config(cluster, "ttl.toml", ttl))
    first = cluster.worker("twin")
    wait_workers(cluster, "twin")
    # Long enough to still run when the second process has started and registered.
    ids = submit(cluster, "--array", "0-1", *stamped(cluster, 25))
    poll(lambda: all(jobs(cluster)[i]["state"] == "running" for i in ids), 30, "jobs running")
    strays.update(descendants(first.pid))
    second = cluster.worker("twin")
    assert first.proc.wait(timeout=60) == 2
    assert "worker id 'twin' is held by another worker process" in first.log()
    assert second.proc.poll() is None
    ids += submit(cluster, "--array", "0-5", *stamped(cluster, 0.5))
    assert wait_jobs(cluster, ids) == 0
    ran = attempts_ran(cluster)
    assert all(set(ran[i]) == {1, 2} for i in ids[:2]), ran  # stopped, then run again
    assert_no_job_ran_twice_at_once(cluster)
    assert [w["worker_id"] for w in workers(cluster)] == ["twin"]
    for daemon in (first, second):
        assert "Traceback" not in daemon.log()
