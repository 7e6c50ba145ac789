"""How a worker sets up memory limits (burstd/worker/memlimit.py), on fake cgroup trees.

A folder stands for a cgroup file system: the files the worker writes are plain files here, so
these tests check which files it reads and writes and in which order, not what the kernel does
with them (tests/test_memlimit_integration.py runs real cgroups where the machine has them).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from burstd.worker import memlimit
from burstd.worker.memlimit import JobCgroup, MemLimits

V2_MOUNT = "30 25 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "31 25 0:27 / {} rw,nosuid - cgroup cgroup rw,memory\n"


def fake_system(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mounts: str, own: str
) -> list[str]:
    """/proc/self/mountinfo and /proc/self/cgroup of a fake system; the warnings it logs."""
    (tmp_path / "mountinfo").write_text(mounts)
    (tmp_path / "cgroup").write_text(own)
    monkeypatch.setattr(memlimit, "_MOUNTINFO", tmp_path / "mountinfo")
    monkeypatch.setattr(memlimit, "_PROC_CGROUP", tmp_path / "cgroup")
    return []


def v2_tree(root: Path, controllers: str = "cpu memory pids") -> Path:
    own = root / "service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    return own


def test_cgroup_v2_moves_the_worker_into_a_leaf_and_limits_jobs_with_memory_max(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = v2_tree(tmp_path / "v2")
    warnings = fake_system(monkeypatch, tmp_path, V2_MOUNT.format(tmp_path / "v2"), "0::/service\n")
    limits = MemLimits.start(warnings.append)
    assert (limits.kind, warnings) == ("cgroup2", [])
    folder = own / f"burst-worker-{os.getpid()}"
    assert limits.folder == folder
    assert (folder / "worker" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory"
    assert (folder / "cgroup.subtree_control").read_text() == "+memory"

    (folder / "job-1-1").mkdir()  # as the kernel makes a cgroup: with its files
    (folder / "job-1-1" / "memory.swap.max").write_text("max\n")
    job = limits.job("job-1-1", 100 << 20)
    assert job is not None
    assert (folder / "job-1-1" / "memory.max").read_text() == str(100 << 20)
    assert (folder / "job-1-1" / "memory.swap.max").read_text() == "0"
    with job.entered():  # the whole process: cgroups v2 holds processes
        assert (folder / "job-1-1" / "cgroup.procs").read_text() == str(os.getpid())
        (folder / "worker" / "cgroup.procs").write_text("")
    assert (folder / "worker" / "cgroup.procs").read_text() == str(os.getpid())
    assert not job.oom_killed()
    (folder / "job-1-1" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (folder / "job-1-1" / "memory.peak").write_text(f"{100 << 20}\n")
    assert job.oom_killed() and job.peak() == 100 << 20


def test_cgroup_v2_without_the_memory_controller_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = v2_tree(tmp_path / "v2", controllers="cpu pids")
    warnings = fake_system(monkeypatch, tmp_path, V2_MOUNT.format(tmp_path / "v2"), "0::/service\n")
    limits = MemLimits.start(warnings.append)
    assert (limits.kind, limits.folder, warnings) == ("rlimit", None, [])
    assert list(own.glob("burst-worker-*")) == []
    assert limits.job("job-1-1", 100 << 20) is None


def test_a_v2_cgroup_that_cannot_be_split_sends_the_worker_back_and_v1_is_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = v2_tree(tmp_path / "v2")
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()  # unwritable: as EBUSY with other processes there
    v1_own = tmp_path / "v1" / "job-slice"
    v1_own.mkdir(parents=True)
    mounts = V2_MOUNT.format(tmp_path / "v2") + V1_MOUNT.format(tmp_path / "v1")
    warnings = fake_system(monkeypatch, tmp_path, mounts, "4:memory:/job-slice\n0::/service\n")
    limits = MemLimits.start(warnings.append)
    assert limits.kind == "cgroup1"
    assert len(warnings) == 1 and "cgroup v2" in warnings[0]
    assert (own / "cgroup.procs").read_text() == str(os.getpid())  # back where it was
    job = limits.job("job-1-1", 100 << 20)
    assert job is not None
    folder = v1_own / f"burst-worker-{os.getpid()}"
    assert (folder / "job-1-1" / "memory.limit_in_bytes").read_text() == str(100 << 20)
    # No swap accounting here: a cgroup file system would refuse to create the file (EACCES).
    assert not (folder / "job-1-1" / "memory.memsw.limit_in_bytes").exists()
    with job.entered():  # the spawning thread alone: a v1 cgroup holds threads
        assert (folder / "job-1-1" / "tasks").read_text() == str(threading.get_native_id())
    assert (v1_own / "tasks").read_text() == str(threading.get_native_id())


def test_v1_tells_an_oom_kill_by_oom_control_else_by_failcnt(tmp_path: Path) -> None:
    job = JobCgroup(tmp_path, 1, tmp_path, 1 << 20)
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "memory.failcnt").write_text("5\n")
    assert not job.oom_killed()  # oom_kill, where the kernel has it, is the word
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert job.oom_killed()
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert job.oom_killed()  # before Linux 4.13: the limit was hit


def test_no_cgroup_mounted_means_rlimit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    warnings = fake_system(monkeypatch, tmp_path, "22 1 0:5 / /proc rw - proc proc rw\n", "")
    limits = MemLimits.start(warnings.append)
    assert (limits.kind, limits.folder, warnings) == ("rlimit", None, [])
    limits.close()


def test_start_removes_the_folders_of_dead_workers_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    v1_own = tmp_path / "v1" / "slice"
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    gone = v1_own / f"burst-worker-{int(dead.stdout)}"
    (gone / "job-7-1").mkdir(parents=True)
    alive = v1_own / f"burst-worker-{os.getppid()}"
    (alive / "job-8-1").mkdir(parents=True)
    warnings = fake_system(
        monkeypatch, tmp_path, V1_MOUNT.format(tmp_path / "v1"), "4:memory:/slice\n"
    )
    limits = MemLimits.start(warnings.append)
    assert limits.kind == "cgroup1"
    assert not gone.exists()
    assert (alive / "job-8-1").is_dir()
    limits.close()
    assert not (v1_own / f"burst-worker-{os.getpid()}").exists()
