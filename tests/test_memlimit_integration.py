"""A job's --mem enforced end to end: real `burstd` and `burst` processes, real cgroups.

These tests need a cgroup the test process may make children in (v2 with the memory
controller, or v1's memory hierarchy: CI runs as root with a writable v1 one); they are skipped,
saying so, only where neither is.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from burstd.worker.memlimit import MemLimits
from tests.cluster import Cluster, Daemon
from tests.test_worker_integration import (
    SHORT_TTL,
    poll,
    statuses,
    submit,
    wait_jobs,
    wait_workers,
    write_config,
)

GREEDY = "bytearray(400 * 2**20)"  # 400 MiB, four times the limit of the jobs below
MODEST = "bytearray(10 * 2**20)"


@pytest.fixture
def cgroups() -> Iterator[Path]:
    """The cgroup the workers the test starts are in (the test's own)."""
    limits = MemLimits.start(print)
    try:
        if limits.folder is None:
            pytest.skip("no writable cgroup (v1 memory or v2 with memory) here: RLIMIT_AS only")
        yield limits.folder.parent
    finally:
        limits.close()


def worker_folder(cgroups: Path, pid: int) -> Path:
    return cgroups / f"burst-worker-{pid}"


@contextlib.contextmanager
def showing_log(daemon: Daemon) -> Iterator[None]:
    """Print the daemon's log if the test fails (pytest shows what a failed test printed)."""
    try:
        yield
    except BaseException:
        print(daemon.log())
        raise


def job_cgroups(folder: Path) -> list[str]:
    """The jobs' cgroups in a worker's folder (v2's ``worker`` leaf is the worker's own)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "worker")


def test_a_job_past_its_mem_ends_with_reason_memory(cluster: Cluster, cgroups: Path) -> None:
    cluster.controller()
    worker = cluster.worker("w1")
    with showing_log(worker):
        mem_job_runs(cluster, worker, cgroups)


def mem_job_runs(cluster: Cluster, worker: Daemon, cgroups: Path) -> None:
    wait_workers(cluster, "w1")
    folder = worker_folder(cgroups, worker.pid)
    assert folder.is_dir()
    greedy, modest = (
        submit(cluster, "--mem", "100M", "process", sys.executable, "-c", code)[0]
        for code in (GREEDY, MODEST)
    )
    assert wait_jobs(cluster, [greedy, modest]) != 0
    failed, succeeded = statuses(cluster, greedy, modest)
    print(failed["error_message"])
    assert (failed["state"], failed["reason"]) == ("failed", "memory")
    assert "100M" in failed["error_message"]
    assert succeeded["state"] == "succeeded"
    shown = cluster.burst("info", greedy).stdout
    print(shown)
    assert f"job {greedy} (failed, memory)" in shown
    assert job_cgroups(folder) == []
    assert "enforced by cgroup" in worker.log()
    assert worker.stop() == 0
    assert not folder.exists()


def test_a_job_stopped_when_its_lease_lapses_leaves_no_cgroup(
    cluster: Cluster, cgroups: Path
) -> None:
    controller = cluster.controller("--config", write_config(cluster, "c.toml", SHORT_TTL))
    worker = cluster.worker("w1")
    with showing_log(worker):
        lapse_kills(cluster, controller, worker, cgroups)


def lapse_kills(cluster: Cluster, controller: Daemon, worker: Daemon, cgroups: Path) -> None:
    wait_workers(cluster, "w1")
    folder = worker_folder(cgroups, worker.pid)
    assert folder.is_dir()
    submit(cluster, "--mem", "100M", "process", "sleep", "60")
    poll(lambda: job_cgroups(folder), 30, "the job's cgroup")
    controller.signal(signal.SIGSTOP)
    try:
        # The worker stops the job when its lease lapses (or its job guard does, should the
        # worker be late on a loaded machine); either way the worker reaps it.
        poll(lambda: not job_cgroups(folder), 30, "the job's cgroup to go")
        assert "job guard" in worker.log() or "stopping 1 running jobs" in worker.log()
    finally:
        controller.signal(signal.SIGCONT)
    assert worker.stop() == 0
    assert not folder.exists()
