"""Durable controller state with real processes: kill -9 the controller mid-work and restart it,
results held by workers across the outage, damaged or busy state directories, a full disk, and
forgetting finished jobs (by hand and by retention).

Jobs append a line to ``runs.log`` each time they run, so "ran exactly once" is checked directly,
not only through their output files. Waits poll for conditions with generous bounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from burstd import transport, wire
from burstd.client import BlockingClient, process
from burstd.controller.store import DB_NAME
from proto.burst.v1 import job_pb2
from tests.cluster import Cluster, environment, eventually, free_port, health, program

# Short leases, so unclaimed leases come back quickly after a restart; heartbeats well within.
# Long enough that a controller restart (kill -9 to serving again, a few seconds on a loaded
# machine) stays within the 80% of it after which workers stop their running jobs (a worker
# cannot tell a restart from being cut off: docs/architecture.md, "Leases").
FAST = {"lease_ttl_ms": 5000, "heartbeat_interval_ms": 300}


# -- helpers ----------------------------------------------------------------------------------


def write_config(directory: Path, name: str = "burst.toml", **controller: object) -> Path:
    lines = ["[controller]", *(f"{key} = {json.dumps(value)}" for key, value in controller.items())]
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def client(cluster: Cluster) -> Iterator[BlockingClient]:
    with BlockingClient(cluster.addr, connect_timeout=10, token=cluster.token()) as c:
        yield c


def run_cmd(job_id_var: str = "$BURST_JOB_ID", *, before: str = "") -> str:
    """A job script: prints its id once, and logs the run (id and attempt) to runs.log."""
    return f'{before}echo {job_id_var}; echo "{job_id_var} $BURST_ATTEMPT" >> ../runs.log'


def runs(cluster: Cluster) -> Counter[str]:
    log = cluster.tmp / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def submit_array(cluster: Cluster, count: int, script: str) -> list[str]:
    """``count`` jobs running ``sh -c script`` in the output folder, in one call."""
    spec = process("sh", "-c", script, cwd=str(cluster.output))
    with client(cluster) as c:
        ids = c.submit_array(spec, range(1, count + 1))
    assert len(ids) == count
    return ids


def wait_ended(cluster: Cluster, ids: list[str]) -> job_pb2.WaitJobsUpdate:
    """Wait until the jobs ended; returns the last progress update."""
    with client(cluster) as c:
        *_, last = c.wait(ids)
    assert last.pending == 0
    return last


def burstd(cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*program("burstd"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(BURST_LOG="info"),
    )


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def info(cluster: Cluster, job_id: str) -> job_pb2.JobInfo:
    with client(cluster) as c:
        return c.status(job_id)


def state(cluster: Cluster, job_id: str) -> str:
    return str(info(cluster, job_id).state)


def listed(cluster: Cluster) -> list[str]:
    with client(cluster) as c:
        return [i.job_id for i in c.list_jobs()]


def wait_workers(cluster: Cluster, count: int) -> None:
    def registered() -> bool:
        with client(cluster) as c:
            return len(c.workers()) >= count

    eventually(registered, f"{count} workers to register")


def states_now(c: BlockingClient) -> Counter[str]:
    return Counter(info.state for info in c.list_jobs())


# -- (a) kill -9 with jobs queued, leased and running -----------------------------------------


def test_kill_9_and_restart_loses_no_job_and_reuses_no_id(cluster: Cluster) -> None:
    config = write_config(cluster.tmp, **FAST)
    first = cluster.controller("--config", str(config))
    cluster.worker("w1", slots=2)
    cluster.worker("w2", slots=2)
    wait_workers(cluster, 2)

    # Short jobs, with one-second ones among them so that some are running at any time.
    ids = submit_array(cluster, 1000, run_cmd())
    ids += submit_array(cluster, 16, run_cmd(before="sleep 1; "))
    ids += submit_array(cluster, 1000, run_cmd())
    ids += submit_array(cluster, 16, run_cmd(before="sleep 1; "))
    assert [wire.job_number(i) for i in ids] == list(range(1, len(ids) + 1))

    # Kill it once the store holds jobs in every live state (and some finished).
    def mixed() -> Counter[str] | None:
        with client(cluster) as c:
            states = states_now(c)
        live = ("queued", "leased", "running")
        return states if all(states[s] for s in live) and states["succeeded"] >= 50 else None

    seen = eventually(mixed, "jobs queued, leased, running and succeeded at once")
    first.kill9()
    print(f"kill -9 with {dict(seen)}")
    time.sleep(0.5)  # the workers notice; running jobs keep running
    cluster.controller("--config", str(config))

    wait = cluster.burst("wait", "--all", "--timeout", "150", timeout=180, check=False)
    assert wait.returncode == 0, (wait.stdout, wait.stderr, cluster.daemons[-1].log()[-3000:])

    with client(cluster) as c:
        infos = list(c.list_jobs())
        later = c.submit(process("true", output_dir=str(cluster.output)))
    # every acknowledged job is there once, under its own id, in exactly one terminal state
    assert [info.job_id for info in infos] == ids
    assert Counter(info.state for info in infos) == {"succeeded": len(ids)}
    # the id counter continued: a new job gets an id above every old one
    assert wire.job_number(later) > len(ids)
    # each job ran once: its output file holds its id once, and it logged a single run
    for job_id in ids:
        assert (cluster.output / f"{job_id}.stdout").read_text() == f"{job_id}\n"
    assert runs(cluster) == dict.fromkeys(ids, 1)
    lost = [info.job_id for info in infos if info.lost_count]
    print(f"{len(lost)} leases came back unclaimed and ran elsewhere: {lost[:10]}")
    for daemon in cluster.daemons[1:]:
        no_traceback(daemon.log())


# -- (b) a result finished while the controller was down --------------------------------------


def test_result_finished_while_the_controller_was_down_arrives_after_restart(
    cluster: Cluster,
) -> None:
    config = write_config(cluster.tmp, **FAST)
    first = cluster.controller("--config", str(config))
    worker = cluster.worker("w1", slots=1)
    wait_workers(cluster, 1)
    (job_id,) = submit_array(cluster, 1, run_cmd(before="sleep 2; "))
    eventually(lambda: state(cluster, job_id) == "running", "the job to start")
    first.kill9()
    stdout = cluster.output / f"{job_id}.stdout"
    eventually(lambda: stdout.exists() and stdout.read_text(), "the job to end", timeout=30)
    time.sleep(0.5)  # the worker has its result, and nobody to give it to
    cluster.controller("--config", str(config))

    assert wait_ended(cluster, [job_id]).succeeded == 1
    job = info(cluster, job_id)
    assert (job.state, job.attempt, job.lost_count) == ("succeeded", 1, 0), job
    assert stdout.read_text() == f"{job_id}\n"
    assert runs(cluster) == {job_id: 1}
    no_traceback(worker.log())


# -- (c) a damaged or busy state directory ----------------------------------------------------


def test_damaged_state_dir_is_refused_with_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / DB_NAME
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    run = burstd(
        tmp_path, "controller", "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(state)
    )
    assert run.returncode == 2, run
    assert str(db) in run.stderr, run.stderr
    no_traceback(run.stderr)
    assert db.read_bytes() == garbage  # never reset


def test_state_dir_in_use_is_refused_with_exit_2(cluster: Cluster) -> None:
    cluster.controller()
    run = burstd(
        cluster.tmp,
        "controller",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(cluster.tmp / "state"),
    )
    assert run.returncode == 2, run
    assert "in use" in run.stderr and str(cluster.tmp / "state") in run.stderr, run.stderr
    no_traceback(run.stderr)
    # the first one is unaffected (it answers: no such job)
    run = cluster.burst("status", "job-00000001", check=False)
    assert (run.returncode, run.stdout.split()) == (4, ["job-00000001", "unknown"])


# -- (d) a full disk --------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs on the cluster's state dir, to fill up (needs mount rights). Room for
    SQLite's write-ahead log, which grows to about 4 MB before it is checkpointed."""
    mountpoint = tmp_path / "state"
    mountpoint.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory``; returns the file that takes the room."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
    with filler.open("ab", buffering=0) as out, contextlib.suppress(OSError):
        while True:  # the last few blocks
            out.write(b"\0" * 512)
    return filler


def test_full_disk_refuses_submissions_while_running_jobs_finish(
    cluster: Cluster, tiny_fs: Path
) -> None:
    assert tiny_fs == cluster.tmp / "state"
    config = write_config(cluster.tmp, **FAST)
    cluster.controller("--config", str(config))
    # Room for one job only: the next one waits in the controller's queue, so it is leased
    # (and must be stored first) while the disk is full.
    cluster.worker("w1", "--queue-capacity", "1", slots=1)
    wait_workers(cluster, 1)
    (running,) = submit_array(cluster, 1, run_cmd(before="sleep 3; "))
    (waiting,) = submit_array(cluster, 1, run_cmd())  # queued behind it
    eventually(lambda: state(cluster, running) == "running", "the job to start")

    filler = fill(tiny_fs)
    refused = None
    for _ in range(10):  # the WAL may have room left for a few small commits
        result = cluster.burst(
            "submit", "--array", "1-500", "process", "true", check=False, timeout=90
        )
        if result.returncode != 0:
            refused = result
            break
    assert refused is not None, "submissions were accepted on a full disk"
    assert refused.returncode == 1
    assert "RESOURCE_EXHAUSTED" in refused.stderr and "disk is full" in refused.stderr, refused
    assert "cannot reach" not in refused.stderr
    assert refused.stderr.startswith("burst: error: ") and refused.stdout == ""
    no_traceback(refused.stderr)

    # the running job finishes, and the queued one neither fails nor is lost meanwhile
    eventually(lambda: state(cluster, running) == "succeeded", "the running job to end")
    time.sleep(2)  # a few rounds of failed polls and re-registrations
    job = info(cluster, waiting)
    assert job.state in ("queued", "leased") and job.lost_count == 0, job

    filler.unlink()  # room again: the controller recovers by itself
    assert wait_ended(cluster, [waiting]).succeeded == 1

    def accepted() -> str | None:
        with client(cluster) as c, contextlib.suppress(transport.RpcError):
            return c.submit(process("true", output_dir=str(cluster.output)))
        return None

    later = eventually(accepted, "a submission to be accepted again")
    assert wire.job_number(later) > wire.job_number(waiting)
    job = info(cluster, waiting)
    assert (job.state, job.lost_count) == ("succeeded", 0), job
    assert runs(cluster) == {running: 1, waiting: 1}


def test_full_disk_keeps_the_controller_alive_and_serving_reads(
    cluster: Cluster, tiny_fs: Path
) -> None:
    """The pruner (every 0.2 s with a retention of 2 s), the writer and the reaper meet a full
    disk again and again: the controller lives on past many pruning rounds, logs the outage
    once a task, serves reads (saying the store is failing, never "cannot reach"), and takes
    writes again once there is room."""
    config = write_config(cluster.tmp, **FAST, retention_s=2)
    controller = cluster.controller("--config", str(config))
    cluster.worker("w1", slots=1)
    wait_workers(cluster, 1)
    finished = submit_array(cluster, 3, run_cmd())
    wait_ended(cluster, finished)  # due for pruning 2 s from now

    filler = fill(tiny_fs)
    refused = cluster.burst("submit", "--array", "1-500", "process", "true", check=False)
    assert refused.returncode != 0 and "cannot reach" not in refused.stderr, refused
    time.sleep(5)  # many pruning rounds, each failing
    assert controller.proc.poll() is None, controller.log()[-3000:]
    assert health(cluster.addr) == "NOT_SERVING"  # an orchestrator's probe sees the outage
    listing = cluster.burst("list", check=False)
    assert listing.returncode == 0, listing.stderr
    assert "cannot reach" not in listing.stderr
    assert "state store is failing" in listing.stderr, listing.stderr
    assert "disk is full" in listing.stderr, listing.stderr
    assert set(finished) <= {line.split()[0] for line in listing.stdout.splitlines()}
    assert state(cluster, finished[0]) == "succeeded"
    forget = cluster.burst("forget", finished[0], check=False)
    assert forget.returncode != 0 and "cannot reach" not in forget.stderr, forget
    assert "disk is full" in forget.stderr, forget
    outages = controller.log().count("retrying with a back-off")
    assert 1 <= outages <= 2, controller.log()[-3000:]  # the writer's, the pruner's

    filler.unlink()
    eventually(
        lambda: cluster.burst("submit", "process", "true", check=False).returncode == 0,
        "a submission to be accepted again",
    )
    eventually(lambda: finished[0] not in listed(cluster), "the pruner to forget the jobs")
    # Each outage ends once its task's attempts have worked for a back-off's length (5 s).
    ended = ("writing the state store works again", "pruning finished jobs works again")
    eventually(lambda: all(line in controller.log() for line in ended), "the outages to end")
    assert controller.proc.poll() is None
    assert health(cluster.addr) == "SERVING"
    assert controller.log().count("retrying with a back-off") == outages, controller.log()
    assert "state store is failing" not in cluster.burst("list").stderr


# -- (e) forget and retention -----------------------------------------------------------------


def test_forget_removes_finished_jobs_and_never_live_ones(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1", slots=1)
    wait_workers(cluster, 1)
    done = submit_array(cluster, 4, run_cmd())
    assert wait_ended(cluster, done).succeeded == 4
    # then one running, one leased (capacity 2) and one queued
    live = submit_array(cluster, 3, "sleep 60")
    eventually(lambda: state(cluster, live[0]) == "running", "the long job to start")

    assert cluster.burst("forget", done[0], *live).stdout == "forgot 1 job\n"
    assert state(cluster, done[0]) == "unknown"
    assert cluster.burst("forget", "--finished", "--older-than", "3600").stdout == "forgot 0 jobs\n"
    assert cluster.burst("forget", "--finished").stdout == "forgot 3 jobs\n"
    assert cluster.burst("list", "--format", "id").stdout.split() == live
    assert [state(cluster, i) for i in live] == ["running", "leased", "queued"]
    bad = cluster.burst("forget", check=False)
    assert bad.returncode == 2 and "name job ids or give --finished" in bad.stderr


def test_retention_forgets_finished_jobs_by_itself_but_never_queued_ones(
    cluster: Cluster,
) -> None:
    config = write_config(cluster.tmp, retention_s=1.0, **FAST)
    cluster.controller("--config", str(config))
    ids = submit_array(cluster, 5, run_cmd())
    time.sleep(3)  # no worker yet: they stay queued, retention or not
    assert [state(cluster, i) for i in ids] == ["queued"] * 5
    cluster.worker("w1", slots=2)
    # they run, then go away by themselves about a second later
    eventually(lambda: runs(cluster) == dict.fromkeys(ids, 1), "the jobs to run")
    eventually(lambda: listed(cluster) == [], "the finished jobs to be forgotten")
    assert [state(cluster, i) for i in ids] == ["unknown"] * 5
    with client(cluster) as c:  # nor are they counted any more
        *_, last = c.wait(all=True)
    assert (last.total, last.pending, last.succeeded) == (0, 0, 0)
