"""The job guard (burstd/worker/guard.py): a dead worker's running jobs are stopped."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from burstd.worker.executor import ExecConfig, run_job
from burstd.worker.guard import JobGuard, Listing, read_jobs
from proto.burst.v1 import job_pb2


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in groups of their own (as jobs are), killed when the test ends."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_group(groups: list[subprocess.Popen[bytes]], script: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sh", "-c", script], process_group=0)
    groups.append(process)
    return process


def die(guard: JobGuard) -> None:
    """What the guard sees of a worker killed with SIGKILL: its end of the pipe closes, with no
    word before (``close`` would also wait for the guard)."""
    os.close(guard._pipe)
    guard._pipe = -1


def test_records_are_followed_to_the_end_and_a_cut_record_is_ignored() -> None:
    records = io.BytesIO(b"+10 \n+11 burst-job-1-1\n+12 \n-10\n-99\n+13")
    assert read_jobs(records) == {11: "burst-job-1-1", 12: ""}


def test_a_dead_workers_listed_jobs_are_stopped_and_others_left_alone(
    groups: list[subprocess.Popen[bytes]],
) -> None:
    lost: list[str] = []
    guard = JobGuard.start(0.5, "docker", lost.append)
    polite = start_group(groups, "sleep 100")
    # Ignores SIGTERM (as does its child, which inherits the disposition): needs the SIGKILL.
    stubborn = start_group(groups, "trap '' TERM; sleep 100 & wait")
    done = start_group(groups, "sleep 100")
    unlisted = start_group(groups, "sleep 100")
    for process in (polite, stubborn, done):
        guard.track(process.pid)
    guard.untrack(done.pid)
    time.sleep(0.2)  # the shells set their traps
    started = time.monotonic()
    die(guard)
    assert polite.wait(10) == -signal.SIGTERM
    assert stubborn.wait(10) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5  # the kill grace came first
    assert guard._process.wait(10) == 0
    assert done.poll() is None and unlisted.poll() is None
    assert lost == []


def test_a_frozen_workers_jobs_are_stopped_when_its_leases_lapse(
    groups: list[subprocess.Popen[bytes]],
) -> None:
    """The worker is alive (its pipe open) but says nothing more, as when it is frozen: the guard
    stops the listed jobs at the lease deadline, SIGKILL at its kill time, and goes on."""
    guard = JobGuard.start(30.0, "docker", print)
    polite = start_group(groups, "sleep 100")
    stubborn = start_group(groups, "trap '' TERM; sleep 100 & wait")
    for process in (polite, stubborn):
        guard.track(process.pid)
    now = time.monotonic()
    guard.lease_deadline(now + 0.2, now + 0.2)  # superseded before it comes
    guard.lease_deadline(now + 0.6, now + 1.0)
    assert polite.wait(10) == -signal.SIGTERM
    assert time.monotonic() >= now + 0.6
    assert stubborn.wait(10) == -signal.SIGKILL
    assert now + 1.0 <= time.monotonic() < now + 5.0  # not after the kill grace of 30 s
    assert guard._process.poll() is None  # still following the worker
    later = start_group(groups, "sleep 100")
    guard.track(later.pid)
    guard.lease_deadline(time.monotonic() + 60, time.monotonic() + 61)
    time.sleep(0.3)
    assert later.poll() is None
    guard.untrack(later.pid)
    guard.close()
    assert guard._process.returncode == 0


def test_records_may_arrive_in_pieces() -> None:
    listing = Listing()
    for piece in (b"+1", b"0 c\n@5.5 6", b".5\n-1", b"0\n+11 \n"):
        listing.feed(piece)
    assert listing.jobs == {11: ""}
    assert (listing.stop_at, listing.kill_at) == (5.5, 6.5)


def test_a_clean_close_with_no_job_listed_ends_the_guard_at_once() -> None:
    guard = JobGuard.start(30.0, "docker", print)
    guard.track(123456)
    guard.untrack(123456)
    started = time.monotonic()
    guard.close()
    assert guard._process.returncode == 0
    assert time.monotonic() - started < 1.0


def _ignored_signals(pid: int) -> int:
    """The mask of signals a process ignores, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for pid {pid}")


def test_the_guard_outlives_signals_meant_for_the_worker(
    groups: list[subprocess.Popen[bytes]],
) -> None:
    """A Ctrl-C or systemctl stop reaches the worker's process group: the guard must still be
    there if the worker then dies."""
    guard = JobGuard.start(0.5, "docker", print)
    job = start_group(groups, "sleep 100")
    guard.track(job.pid)
    assert os.getpgid(guard.pid) == guard.pid != os.getpgid(0)
    ignored = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    deadline = time.monotonic() + 10  # a fixed sleep was too short on a loaded machine
    while _ignored_signals(guard.pid) & ignored != ignored:
        assert time.monotonic() < deadline, "the guard never ignored SIGINT and SIGTERM"
        time.sleep(0.01)
    guard._process.send_signal(signal.SIGTERM)
    guard._process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    assert guard._process.poll() is None
    die(guard)
    assert job.wait(10) == -signal.SIGTERM


def test_a_containers_job_also_gets_its_container_removed(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    """Also a container whose job's group is reaped but which the worker had not removed yet;
    not one it said it removed."""
    calls = tmp_path / "calls"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    docker.chmod(0o755)
    guard = JobGuard.start(0.5, str(docker), print)
    job = start_group(groups, "sleep 100")
    guard.track(job.pid, "burst-job-00000007-2")
    guard.track(123456, "burst-job-00000008-1")
    guard.untrack(123456)
    guard.track(123457, "burst-job-00000009-1")
    guard.untrack(123457)
    guard.removed("burst-job-00000009-1")
    die(guard)
    assert job.wait(10) == -signal.SIGTERM
    guard._process.wait(10)
    assert calls.read_text().splitlines() == [
        "rm --force burst-job-00000007-2",
        "rm --force burst-job-00000008-1",
    ]


def test_containers_stay_listed_until_removed() -> None:
    listing = Listing()
    listing.feed(b"+10 burst-a-1\n+11 \n+12 burst-b-1\n-10\n-12\nxburst-b-1\n")
    assert listing.jobs == {11: ""}
    assert listing.containers == {"burst-a-1"}


def test_a_guard_that_is_gone_is_reported_once_and_never_blocks_the_worker() -> None:
    lost: list[str] = []
    guard = JobGuard.start(0.5, "docker", lost.append)
    guard._process.kill()
    guard._process.wait()
    for pgid in range(100, 110):
        guard.track(pgid)
        guard.untrack(pgid)
    assert len(lost) == 1 and "job guard" in lost[0] and "not be stopped" in lost[0]
    guard.close()


async def test_run_job_lists_the_group_while_it_runs_and_unlists_it_before_the_reap(
    tmp_path: Path,
) -> None:
    """Unlisted while the leader is still a zombie: a group id the guard kills is never one
    the system has given to another process."""
    calls: list[tuple[str, int, bool]] = []

    class Recorder:
        def track(self, pgid: int, container: str | None = None) -> None:
            calls.append(("track", pgid, _unreaped(pgid)))

        def untrack(self, pgid: int) -> None:
            calls.append(("untrack", pgid, _unreaped(pgid)))

    spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="sh", args=["-c", "echo $$"]))
    config = ExecConfig(worker_id="w1", output_dir=tmp_path)
    outcome = await run_job("j", 1, spec, config, Recorder())  # type: ignore[arg-type]
    pid = int(Path(outcome.stdout_path).read_text())
    assert calls == [("track", pid, True), ("untrack", pid, True)]

    calls.clear()
    spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="sleep", args=["100"]))
    with trio.move_on_after(0.3):
        await run_job("k", 1, spec, config, Recorder())  # type: ignore[arg-type]
    assert [call[0] for call in calls] == ["track", "untrack"] and calls[1][2]


def _unreaped(pid: int) -> bool:
    """Whether ``pid`` is still our child (running or a zombie), not reaped yet."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def test_the_guards_program_imports_nothing_heavy() -> None:
    """It starts with every worker: trio, loguru or protobuf would cost it tenths of a second."""
    code = (
        "import sys, burstd.worker.guard; "
        "print(sorted({'trio', 'loguru', 'google.protobuf', 'burstd.worker.executor'} "
        "& set(sys.modules)))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
