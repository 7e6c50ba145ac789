"""`burst logs` end to end: a job's output read through the controller alone, from real
`burstd` and `burst` processes (tests/cluster.py). The client only ever reaches the controller's
address; the bytes come over the worker's own connection to it (burstd/controller/output.py)."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from tests.cluster import Cluster, program


def submit(cluster: Cluster, *argv: str) -> str:
    (job_id,) = cluster.burst("submit", *argv).stdout.split()
    return job_id


def logs(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    return cluster.burst("logs", *argv, check=False)


def follow_logs(cluster: Cluster, job_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*program("burst"), "--controller", cluster.addr, "logs", "--follow", job_id],
        stdout=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )


def until_go(go: Path) -> str:
    """A job script: prints `first`, waits until the file `go` exists, prints `last`."""
    return f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo last"


def follow_until_go(cluster: Cluster, job_id: str, go: Path) -> None:
    """`burst logs --follow` of an ``until_go`` job prints its first line while it runs, the
    rest once it goes on, and ends with it."""
    follow = follow_logs(cluster, job_id)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "first\n"
        assert follow.poll() is None
        go.touch()
        assert follow.stdout.read() == "last\n"
        assert follow.wait(timeout=30) == 0
    finally:
        follow.kill()
        follow.wait()


def test_logs_of_an_ended_job_stdout_stderr_and_tail(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    script = "for i in 1 2 3 4 5; do echo line $i; done; printf 'no newline'; echo oops >&2"
    job_id = submit(cluster, "process", "sh", "-c", script)
    cluster.burst("wait", job_id)
    run = logs(cluster, job_id)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == "line 1\nline 2\nline 3\nline 4\nline 5\nno newline"
    assert logs(cluster, job_id, "--stderr").stdout == "oops\n"
    assert logs(cluster, job_id, "--tail", "2").stdout == "line 5\nno newline"
    assert logs(cluster, job_id, "--tail", "100").stdout.startswith("line 1\n")
    assert logs(cluster, job_id, "--stderr", "--tail", "1").stdout == "oops\n"


def test_logs_follow_streams_while_the_job_runs_and_ends_with_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.controller()
    cluster.worker("w1")
    go = tmp_path / "go"
    job_id = submit(cluster, "process", "sh", "-c", until_go(go))
    follow_until_go(cluster, job_id, go)
    assert cluster.status(job_id)["state"] == "succeeded"


def test_logs_follow_of_a_queued_job_waits_for_it_to_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.controller()
    job_id = submit(cluster, "process", "echo", "hello")
    run = logs(cluster, job_id)
    assert run.returncode == 1
    assert f"{job_id} has not started (queued)" in run.stderr
    follow = follow_logs(cluster, job_id)
    try:
        time.sleep(0.5)
        assert follow.poll() is None  # waits: the job has no worker yet
        cluster.worker("w1")
        out, _ = follow.communicate(timeout=30)
        assert (follow.returncode, out) == (0, "hello\n")
    finally:
        follow.kill()
        follow.wait()


def test_logs_of_each_attempt(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    script = 'echo "try $BURST_ATTEMPT"; echo "err $BURST_ATTEMPT" >&2; [ "$BURST_ATTEMPT" = 2 ]'
    job_id = submit(cluster, "--retries", "1", "process", "sh", "-c", script)
    cluster.burst("wait", job_id)
    assert logs(cluster, job_id).stdout == "try 2\n"
    assert logs(cluster, job_id, "--attempt", "1").stdout == "try 1\n"
    assert logs(cluster, job_id, "--attempt", "2").stdout == "try 2\n"
    assert logs(cluster, job_id, "--attempt", "1", "--stderr").stdout == "err 1\n"
    run = logs(cluster, job_id, "--attempt", "3")
    assert run.returncode == 1
    assert "has had 2 attempt(s), not 3" in run.stderr


def test_logs_refusals_name_the_cause(cluster: Cluster) -> None:
    config = cluster.tmp / "burst.toml"
    config.write_text("[controller]\nlease_ttl_ms = 2000\nheartbeat_interval_ms = 300\n")
    cluster.controller("--config", str(config))
    worker = cluster.worker("w-gone")
    job_id = submit(cluster, "process", "echo", "hi")
    cluster.burst("wait", job_id)
    assert logs(cluster, "job-99999999").returncode == 4
    output = Path(cluster.status(job_id)["stdout_path"])
    output.unlink()
    run = logs(cluster, job_id)
    assert run.returncode == 1
    assert f"no output file {output} on worker w-gone" in run.stderr
    worker.kill9()
    deadline = time.monotonic() + 30
    while cluster.burst("workers").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    run = logs(cluster, job_id)
    assert run.returncode == 1
    assert f"worker w-gone that ran {job_id} is gone" in run.stderr
    assert "Traceback" not in run.stderr


def _status_kb(pid: int, key: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM: the peak), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key}")


def test_a_200_mb_output_streams_with_bounded_memory(cluster: Cluster, tmp_path: Path) -> None:
    """Every hop holds a chunk or two, not the output: neither the controller's nor the
    worker's peak memory grows by anything near the output's size."""
    controller = cluster.controller()
    worker = cluster.worker("w1")
    size = 200 * 1024 * 1024
    job_id = submit(cluster, "process", "sh", "-c", f"head -c {size} /dev/urandom | base64 -w 1000")
    cluster.burst("wait", job_id, timeout=120)
    path = Path(cluster.status(job_id)["stdout_path"])
    expected = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            expected.update(block)
    before = {p.pid: _status_kb(p.pid, "VmRSS") for p in (controller, worker)}
    copy = tmp_path / "copy"
    with copy.open("wb") as out:
        run = subprocess.run(
            [*program("burst"), "--controller", cluster.addr, "logs", job_id],
            stdout=out,
            stderr=subprocess.PIPE,
            env=cluster.env,
            timeout=600,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    assert copy.stat().st_size == path.stat().st_size > size
    got = hashlib.sha256()
    with copy.open("rb") as file:
        while block := file.read(1 << 20):
            got.update(block)
    assert got.hexdigest() == expected.hexdigest()
    for daemon in (controller, worker):
        growth_mb = (_status_kb(daemon.pid, "VmHWM") - before[daemon.pid]) / 1024
        print(f"{daemon.name}: peak RSS grew by {growth_mb:.1f} MB for a 270 MB output")
        assert growth_mb < 64, f"{daemon.name} grew by {growth_mb:.0f} MB"


def test_output_patterns_name_the_files(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    ids = cluster.burst(
        "submit",
        "--array",
        "0-2",
        "--stdout",
        "{submission}/{index}.{attempt}.out",
        "--stderr",
        "errors/{job_id}.err",
        "process",
        "sh",
        "-c",
        'echo "out $BURST_ARRAY_INDEX"; echo "err $BURST_ARRAY_INDEX" >&2',
    ).stdout.split()
    cluster.burst("wait", *ids)
    (submission,) = [p for p in cluster.output.iterdir() if p.name != "errors"]
    for index, job_id in enumerate(ids):
        status = cluster.status(job_id)
        assert status["stdout_path"] == str(submission / f"{index}.1.out")
        assert status["stderr_path"] == str(cluster.output / "errors" / f"{job_id}.err")
        assert Path(status["stdout_path"]).read_text() == f"out {index}\n"
        assert logs(cluster, job_id).stdout == f"out {index}\n"
        assert logs(cluster, job_id, "--stderr").stdout == f"err {index}\n"


def test_output_patterns_that_leave_the_output_folder_are_refused(cluster: Cluster) -> None:
    cluster.controller()
    for flag, pattern, message in [
        ("--stdout", "../{job_id}.out", "may not leave the output folder"),
        ("--stderr", "a/../../{job_id}.err", "may not leave the output folder"),
        ("--stdout", "/tmp/{job_id}.out", "must be relative to the output folder"),
        ("--stdout", "{job}.out", "unknown placeholder {job}"),
        ("--stdout", "{index}.out", "{index} needs --array"),
    ]:
        run = cluster.burst("submit", flag, pattern, "process", "true", check=False)
        assert run.returncode == 2, (flag, pattern, run.stderr)
        assert run.stderr.startswith(f"burst: error: {flag}: ")
        assert message in run.stderr
    assert cluster.burst("list").stdout == ""


def test_stream_mode_writes_a_few_files_per_worker_and_logs_reads_each_part(
    cluster: Cluster, tmp_path: Path
) -> None:
    """3,000 jobs, two workers of 2 slots: a set of 3 files per slot (stdout, stderr, index),
    not two files per job, and `burst logs` still reads each job's own part."""
    cluster.controller()
    cluster.worker("w1")
    cluster.worker("w2")
    count = 3000
    ids = cluster.burst(
        "submit",
        "--output",
        "stream",
        "--array",
        f"0-{count - 1}",
        "process",
        "sh",
        "-c",
        'echo "out $BURST_ARRAY_INDEX"; echo "line 2"; echo "err $BURST_ARRAY_INDEX" >&2',
    ).stdout.split()
    assert len(ids) == count
    cluster.burst("wait", "--all", timeout=300)
    (folder,) = list(cluster.output.iterdir())
    files = sorted(p.name for p in folder.iterdir())
    print(f"{count} jobs in {len(files)} files: {files}")
    assert len(files) <= 2 * 2 * 3
    assert {name.rsplit(".", 1)[1] for name in files} == {"stdout", "stderr", "index"}
    outputs = b"".join(p.read_bytes() for p in folder.glob("*.stdout"))
    assert outputs.count(b"line 2\n") == count
    for index in (0, 1, count // 2, count - 1):
        job_id = ids[index]
        assert logs(cluster, job_id).stdout == f"out {index}\nline 2\n"
        assert logs(cluster, job_id, "--stderr").stdout == f"err {index}\n"
        assert logs(cluster, job_id, "--tail", "1").stdout == "line 2\n"
    # --follow of a stream job as it runs: its part only, until it ends.
    go = tmp_path / "go"
    (job_id,) = cluster.burst(
        "submit",
        "--output",
        "stream",
        "process",
        "sh",
        "-c",
        until_go(go),
    ).stdout.split()
    follow_until_go(cluster, job_id, go)
    cluster.burst("submit", "--output", "stream", "process", "echo", "after")
    cluster.burst("wait", "--all")
    assert logs(cluster, job_id).stdout == "first\nlast\n"
