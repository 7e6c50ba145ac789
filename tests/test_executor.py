"""The executor (burstd/worker/executor.py): one job spec in, one process and an Outcome out."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from loguru import logger

from burstd.resources import Grant
from burstd.worker import container, executor
from burstd.worker.executor import (
    ExecConfig,
    Outcome,
    SpecError,
    build_argv,
    container_name,
    job_environment,
    output_paths,
    run_job,
)
from burstd.worker.memlimit import MemLimits
from proto.burst.v1 import job_pb2

# -- helpers ----------------------------------------------------------------------------------


def proc(command: str, *args: str, **fields: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(process=job_pb2.ProcessSpec(command=command, args=args), **fields)


def sh(script: str, **fields: object) -> job_pb2.JobSpec:
    return proc("sh", "-c", script, **fields)


@pytest.fixture
def config(tmp_path: Path) -> ExecConfig:
    return ExecConfig(worker_id="w1", output_dir=tmp_path / "out", kill_grace=1.0)


def read(path: str) -> str:
    return Path(path).read_text()


def gone(pid: int) -> bool:
    """The process no longer runs. A zombie counts as gone: orphans are reparented to pid 1,
    which in some sandboxes never reaps them, so `os.kill(pid, 0)` alone would still succeed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(pid: int, within: float = 3.0) -> bool:
    with trio.move_on_after(within):
        while not gone(pid):
            await trio.sleep(0.01)
    return gone(pid)


def reaped(pid: int) -> bool:
    """The job's own process was waited for: it is not our zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def lines_of(path: Path, count: int, within: float = 10.0) -> list[str]:
    """Wait until the file holds `count` complete lines."""
    with trio.fail_after(within):
        while True:
            if path.exists():
                text = path.read_text()
                if text.count("\n") >= count:
                    return text.splitlines()
            await trio.sleep(0.01)


# -- success, exit codes, signals ------------------------------------------------------------


async def test_success_writes_output_files(config: ExecConfig) -> None:
    before = time.time()
    out = await run_job("job-00000001", 1, sh("echo hello; echo oops >&2"), config)
    assert out.reason == "exit"
    assert out.exit_code == 0
    assert out.signal == 0
    assert out.error_message == ""
    assert out.stdout_path == str(config.output_dir / "job-00000001.stdout")
    assert out.stderr_path == str(config.output_dir / "job-00000001.stderr")
    assert read(out.stdout_path) == "hello\n"
    assert read(out.stderr_path) == "oops\n"
    assert before <= out.started_at <= out.finished_at <= time.time()


async def test_each_attempt_keeps_its_output(config: ExecConfig) -> None:
    first = await run_job("j", 1, sh("echo first; echo e1 >&2; exit 3"), config)
    # attempt 2 was lost with its worker elsewhere; attempt 3 runs here, then 5 (4 was lost)
    third = await run_job("j", 3, sh("echo third; echo e3 >&2; exit 3"), config)
    fifth = await run_job("j", 5, sh("echo fifth"), config)
    folder = config.output_dir
    assert (first.stdout_path, first.stderr_path) == (f"{folder}/j.stdout", f"{folder}/j.stderr")
    assert (third.stdout_path, third.stderr_path) == (
        f"{folder}/j.3.stdout",
        f"{folder}/j.3.stderr",
    )
    assert fifth.stdout_path == f"{folder}/j.5.stdout"
    assert [read(o.stdout_path) for o in (first, third, fifth)] == ["first\n", "third\n", "fifth\n"]
    assert [read(o.stderr_path) for o in (first, third, fifth)] == ["e1\n", "e3\n", ""]
    # a stolen or lost job's first run here, whatever its attempt, writes the plain names
    stolen = await run_job("k", 2, sh("echo k"), config)
    assert stolen.stdout_path == f"{folder}/k.stdout"


async def test_output_patterns(config: ExecConfig) -> None:
    spec = sh("echo out; echo err >&2")
    spec.array_index = 7
    spec.submission = "nightly"
    spec.stdout_pattern = "{submission}/{index}-{attempt}.out"
    spec.stderr_pattern = "logs/{job_id}.{attempt}.err"
    out = await run_job("job-00000003", 2, spec, config)
    assert out.stdout_path == str(config.output_dir / "nightly" / "7-2.out")
    assert out.stderr_path == str(config.output_dir / "logs" / "job-00000003.2.err")
    assert (read(out.stdout_path), read(out.stderr_path)) == ("out\n", "err\n")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("../{job_id}.out", "may not leave the output folder"),
        ("a/../../x", "may not leave the output folder"),
        ("/tmp/{job_id}.out", "must be relative"),
        ("{jobid}.out", "unknown placeholder {jobid}"),
        ("{index}.out", "uses {index}, but the job is not an array job"),
    ],
)
async def test_output_patterns_that_would_escape_fail_the_job(
    config: ExecConfig, tmp_path: Path, pattern: str, message: str
) -> None:
    spec = sh("echo out")
    spec.stdout_pattern = pattern
    out = await run_job("j", 1, spec, config)
    assert out.reason == "spawn"
    assert f"stdout_pattern {message}" in out.error_message
    assert out.stdout_path == ""


async def test_stdin_is_dev_null(config: ExecConfig) -> None:
    out = await run_job("j", 1, sh("readlink /proc/self/fd/0; cat"), config)
    assert out.exit_code == 0
    assert read(out.stdout_path) == "/dev/null\n"


async def test_nonzero_exit(config: ExecConfig) -> None:
    out = await run_job("j", 1, sh("exit 3"), config)
    assert (out.reason, out.exit_code, out.signal) == ("exit", 3, 0)
    assert out.error_message == "exited with code 3"


async def test_signal_death(config: ExecConfig) -> None:
    out = await run_job("j", 1, sh("kill -9 $$"), config)
    assert (out.reason, out.exit_code, out.signal) == ("signal", None, 9)
    assert out.error_message == "killed by signal 9 (SIGKILL)"


async def test_job_gets_default_signal_dispositions(config: ExecConfig) -> None:
    # Python ignores SIGPIPE; a job must not inherit that.
    out = await run_job("j", 1, sh("kill -PIPE $$"), config)
    assert (out.reason, out.signal) == ("signal", signal.SIGPIPE)
    assert out.error_message == "killed by signal 13 (SIGPIPE)"


async def test_python_job(config: ExecConfig) -> None:
    cfg = ExecConfig(worker_id="w1", output_dir=config.output_dir, python=sys.executable)
    spec = job_pb2.JobSpec(
        python=job_pb2.PythonSpec(entry_point="-c", args=["import sys; print(sys.argv[1:])", "x"])
    )
    out = await run_job("j", 1, spec, cfg)
    assert out.exit_code == 0, out
    assert read(out.stdout_path) == "['x']\n"


async def test_without_cgroups_a_jobs_mem_is_its_address_space_limit(
    config: ExecConfig,
) -> None:
    """RLIMIT_AS (``memlimit`` rule 5): the allocation fails inside the job, which ends with its
    own exit status; the same job without a memory claim runs to its end."""
    limited = dataclasses.replace(config, memory=MemLimits("rlimit"))
    greedy = proc(sys.executable, "-c", "bytearray(400 * 2**20)")
    out = await run_job("j", 1, greedy, limited, grant=Grant(cpus=(0,), amounts={"mem": 100 << 20}))
    assert (out.reason, out.exit_code) == ("exit", 1), out
    assert "MemoryError" in read(out.stderr_path)
    out = await run_job("k", 1, greedy, limited, grant=Grant(cpus=(0,)))
    assert (out.reason, out.exit_code) == ("exit", 0), out


async def test_no_zombie_after_exit(config: ExecConfig) -> None:
    out = await run_job("j", 1, sh("echo $$"), config)
    pid = int(read(out.stdout_path))
    assert reaped(pid)
    assert gone(pid)


async def test_leftover_background_process_is_killed_at_exit(config: ExecConfig) -> None:
    out = await run_job("j", 1, sh("sleep 100 & echo $!"), config)
    assert out.exit_code == 0
    assert await wait_gone(int(read(out.stdout_path)))


def test_worker_with_closed_standard_streams(tmp_path: Path) -> None:
    """Output files opened as fd 0-2 must not be clobbered by the spawn's own redirections."""
    script = f"""
import os, trio
from pathlib import Path
from loguru import logger
from burstd.worker.executor import ExecConfig, run_job
logger.remove()  # its default sink is the closed stderr: a debug line would fail the exit
from proto.burst.v1 import job_pb2
result = os.open({str(tmp_path / "result")!r}, os.O_WRONLY | os.O_CREAT)
spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="sh", args=["-c", "echo o; echo e >&2"]))
async def main():
    os.close(0); os.close(1); os.close(2)
    return await run_job("j", 1, spec, ExecConfig("w", Path({str(tmp_path)!r})))
os.write(result, repr(trio.run(main).exit_code).encode())
"""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=60)
    assert (tmp_path / "result").read_text() == "0"
    assert (tmp_path / "j.stdout").read_text() == "o\n"
    assert (tmp_path / "j.stderr").read_text() == "e\n"


# -- environment ------------------------------------------------------------------------------


async def test_environment(config: ExecConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_WORKER", "worker-value")
    spec = sh(
        'printf "%s|%s|%s|%s|%s|%s|%s\\n" "$FROM_WORKER" "$FOO" "$BURST_JOB_ID" '
        '"$BURST_WORKER_ID" "$BURST_ATTEMPT" "$BURST_ARRAY_INDEX" "$BURST_ENTRY"',
        env={"FOO": "bar baz", "BURST_JOB_ID": "fake", "BURST_ATTEMPT": "99"},
        array_index=7,
        entry="some line",
    )
    out = await run_job("job-1", 3, spec, config)
    assert read(out.stdout_path) == "worker-value|bar baz|job-1|w1|3|7|some line\n"


async def test_optional_burst_variables_cannot_be_faked(
    config: ExecConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BURST_ENTRY", "inherited")
    spec = sh(
        'echo "${BURST_ARRAY_INDEX-unset} ${BURST_ENTRY-unset}"',
        env={"BURST_ARRAY_INDEX": "5"},
    )
    out = await run_job("j", 1, spec, config)
    assert read(out.stdout_path) == "unset unset\n"


def test_job_environment_order(config: ExecConfig) -> None:
    spec = proc("true", env={"PATH": "/x", "BURST_WORKER_ID": "evil"}, array_index=0)
    env = job_environment("j", 1, spec, config)
    assert env["PATH"] == "/x"
    assert env["BURST_WORKER_ID"] == "w1"
    assert env["BURST_ARRAY_INDEX"] == "0"
    assert "BURST_ENTRY" not in env


async def test_command_found_through_the_jobs_path(config: ExecConfig, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "mytool"
    tool.write_text("#!/bin/sh\necho mine\n")
    tool.chmod(0o755)
    spec = proc("mytool", env={"PATH": f"{tools}:/usr/bin:/bin"})
    out = await run_job("j", 1, spec, config)
    assert (out.exit_code, read(out.stdout_path)) == (0, "mine\n")
    # the remembered location went away: the next run searches PATH again
    tool.unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "mytool").write_text("#!/bin/sh\necho moved\n")
    (other / "mytool").chmod(0o755)
    spec = proc("mytool", env={"PATH": f"{tools}:{other}"})
    out = await run_job("j", 1, spec, config)
    assert (out.exit_code, read(out.stdout_path)) == (0, "moved\n")
    executor._WHICH[(f"{tools}:{other}", "mytool")] = str(tool)  # stale entry
    out = await run_job("j", 2, spec, config)
    assert (out.exit_code, read(out.stdout_path)) == (0, "moved\n")


# -- spawn failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["no-such-command-xyz", "/no/such/binary"])
async def test_missing_binary(config: ExecConfig, command: str) -> None:
    out = await run_job("j", 1, proc(command), config)
    assert (out.reason, out.exit_code, out.signal) == ("spawn", None, 0)
    assert out.error_message == f"command not found: {command}"
    assert not config.output_dir.exists()  # nothing created for a job that cannot start


async def test_missing_interpreter(config: ExecConfig) -> None:
    cfg = ExecConfig(worker_id="w1", output_dir=config.output_dir, python="no-python-here")
    spec = job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="x.py"))
    out = await run_job("j", 1, spec, cfg)
    assert (out.reason, out.error_message) == ("spawn", "command not found: no-python-here")


async def test_not_executable(config: ExecConfig, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    out = await run_job("j", 1, proc(str(script)), config)
    assert (out.reason, out.error_message) == ("spawn", f"permission denied: {script}")


async def test_bad_cwd(config: ExecConfig, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    out = await run_job("j", 1, proc("pwd", cwd=str(missing)), config)
    message = f"working directory {missing} does not exist on worker {config.worker_id}"
    assert (out.reason, out.error_message) == ("spawn", message)
    assert not config.output_dir.exists()


async def test_cwd_honoured(config: ExecConfig, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "local.sh").write_text("#!/bin/sh\npwd\n")
    (work / "local.sh").chmod(0o755)
    out = await run_job("j", 1, proc("./local.sh", cwd=str(work)), config)
    assert out.exit_code == 0, out
    assert read(out.stdout_path) == f"{work}\n"
    out = await run_job("j", 1, proc("/no/such/binary", cwd=str(work)), config)
    assert (out.reason, out.error_message) == ("spawn", "command not found: /no/such/binary")


async def test_relative_paths_of_a_job_are_taken_in_its_working_directory(
    config: ExecConfig, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    (work / "bin" / "tool").write_text("#!/bin/sh\necho tool in $(pwd)\n")
    (work / "bin" / "tool").chmod(0o755)
    (work / "analyse.py").write_text("import os; print('analyse in', os.getcwd())\n")
    here = os.getcwd()
    out = await run_job("j1", 1, proc("bin/tool", cwd=str(work)), config)
    assert (out.exit_code, read(out.stdout_path)) == (0, f"tool in {work}\n"), out
    spec = job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="analyse.py"), cwd=str(work))
    out = await run_job("j2", 1, spec, ExecConfig("w1", config.output_dir, python=sys.executable))
    assert (out.exit_code, read(out.stdout_path)) == (0, f"analyse in {work}\n"), out
    assert os.getcwd() == here  # the worker's own is back


async def test_unwritable_output_folder(config: ExecConfig, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    spec = proc("true", output_dir=str(blocker / "sub"))
    out = await run_job("j", 1, spec, config)
    assert out.reason == "spawn"
    assert out.error_message.startswith(f"cannot create output folder {blocker / 'sub'}")
    assert (out.stdout_path, out.stderr_path) == ("", "")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (job_pb2.JobSpec(), "spec has no job type (process, python or docker)"),
        (proc("  "), "process.command is empty"),
        (job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="")), "python.entry_point is empty"),
        (job_pb2.JobSpec(docker=job_pb2.DockerSpec(image=" ")), "docker.image is empty"),
        (proc("true", env={"A=B": "1"}), "env key is invalid: 'A=B'"),
        (proc("true", timeout_seconds=-1), "timeout_seconds is invalid: -1.0"),
        (proc("true", "a\0b"), "argv[1] contains a NUL character"),
    ],
)
async def test_bad_spec(config: ExecConfig, spec: job_pb2.JobSpec, message: str) -> None:
    out = await run_job("j", 1, spec, config)
    assert (out.reason, out.exit_code, out.error_message) == ("spawn", None, message)
    assert not config.output_dir.exists()


# -- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["../evil", "a/b", "..", ".", ".hidden", "", "x\0y", "a" * 201])
async def test_bad_job_id(config: ExecConfig, tmp_path: Path, job_id: str) -> None:
    out = await run_job(job_id, 1, proc("true"), config)
    assert out.reason == "spawn"
    assert out.error_message == f"invalid job id: {job_id!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


async def test_relative_output_dir_stays_inside(config: ExecConfig) -> None:
    out = await run_job("j", 1, proc("true", output_dir="../../etc"), config)
    assert out.reason == "spawn"
    assert out.error_message == "output_dir leaves the worker's output folder: '../../etc'"
    out = await run_job("j", 1, proc("true", output_dir="a/../../x"), config)
    assert out.reason == "spawn"
    out = await run_job("j", 1, sh("echo in", output_dir="a/./b/../c"), config)
    assert out.stdout_path == str(config.output_dir / "a" / "c" / "j.stdout")
    assert read(out.stdout_path) == "in\n"


async def test_absolute_and_blank_output_dir(config: ExecConfig, tmp_path: Path) -> None:
    out = await run_job("j", 1, proc("true", output_dir=str(tmp_path / "abs")), config)
    assert out.stdout_path == str(tmp_path / "abs" / "j.stdout")
    assert Path(out.stdout_path).exists()
    out = await run_job("j", 1, proc("true", output_dir="  "), config)
    assert out.stdout_path == str(config.output_dir / "j.stdout")


async def test_relative_config_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = ExecConfig(worker_id="w1", output_dir=Path("rel"))
    assert output_paths("j", 1, proc("true"), cfg) == (
        str(tmp_path / "rel" / "j.stdout"),
        str(tmp_path / "rel" / "j.stderr"),
    )


async def test_refuses_symlinked_output_file(config: ExecConfig, tmp_path: Path) -> None:
    config.output_dir.mkdir(parents=True)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (config.output_dir / "j.stdout").symlink_to(target)
    out = await run_job("j", 1, sh("echo overwrite"), config)
    assert out.reason == "spawn"
    assert out.error_message == f"refusing to write through a symlink: {config.output_dir}/j.stdout"
    assert target.read_text() == "keep me\n"


async def test_a_rerun_gets_output_files_an_earlier_attempt_still_running_cannot_touch(
    config: ExecConfig,
) -> None:
    """A worker killed with a job running leaves that process behind, writing on; the job's
    next attempt must get files of its own, not share (and lose) them with it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_job, "j", 1, sh("sleep 0.5; echo old-attempt; echo old >&2"), config)
        await trio.sleep(0.2)  # the first attempt has its files open
        out = await run_job("j", 2, sh("echo new"), config)
    assert Path(out.stdout_path).read_text() == "new\n"
    assert Path(out.stderr_path).read_text() == ""


# -- timeout and cancellation ---------------------------------------------------------------------


async def test_timeout_kills_the_group(tmp_path: Path) -> None:
    cfg = ExecConfig(worker_id="w1", output_dir=tmp_path, kill_grace=5.0)
    spec = sh("sleep 100 & echo $!; wait", timeout_seconds=0.5)
    start = time.monotonic()
    out = await run_job("j", 1, spec, cfg)
    elapsed = time.monotonic() - start
    assert out.reason == "timeout"
    assert out.error_message == "timed out after 0.5 s"
    assert (out.exit_code, out.signal) == (None, signal.SIGTERM)
    assert 0.5 <= elapsed < 4.0  # died of SIGTERM: the grace was not waited out
    assert await wait_gone(int(read(out.stdout_path)))


async def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path) -> None:
    cfg = ExecConfig(worker_id="w1", output_dir=tmp_path, kill_grace=0.3)
    spec = sh("trap '' TERM; sleep 100 & echo $!; wait", timeout_seconds=0.5)
    start = time.monotonic()
    out = await run_job("j", 1, spec, cfg)
    elapsed = time.monotonic() - start
    assert (out.reason, out.exit_code, out.signal) == ("timeout", None, signal.SIGKILL)
    assert 0.8 <= elapsed < 5.0
    assert await wait_gone(int(read(out.stdout_path)))


async def test_cancel_kills_the_group_and_propagates(config: ExecConfig) -> None:
    spec = sh("echo $$; sleep 100 & echo $!; wait")
    stdout = config.output_dir / "j.stdout"
    returned: list[Outcome] = []
    with trio.fail_after(10), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_running() -> None:
                await lines_of(stdout, 2)
                scope.cancel()

            nursery.start_soon(cancel_when_running)
            returned.append(await run_job("j", 1, spec, config))
    assert scope.cancelled_caught
    assert not returned
    leader, grandchild = map(int, stdout.read_text().split())
    assert reaped(leader)
    assert gone(leader)
    assert await wait_gone(grandchild)


async def test_cancel_sigterm_ignored_waits_for_grace(tmp_path: Path) -> None:
    cfg = ExecConfig(worker_id="w1", output_dir=tmp_path, kill_grace=0.3)
    spec = sh("trap '' TERM; echo $$; sleep 100 & echo $!; wait")
    stdout = tmp_path / "j.stdout"
    cancelled_at: list[float] = []
    with trio.fail_after(10), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_running() -> None:
                await lines_of(stdout, 2)
                cancelled_at.append(time.monotonic())
                scope.cancel()

            nursery.start_soon(cancel_when_running)
            await run_job("j", 1, spec, cfg)
    assert scope.cancelled_caught
    assert 0.3 <= time.monotonic() - cancelled_at[0] < 5.0
    leader, grandchild = map(int, stdout.read_text().split())
    assert reaped(leader)
    assert await wait_gone(grandchild)


async def test_cancelled_before_start_spawns_nothing(config: ExecConfig) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_job("j", 1, sh("echo ran"), config)
    assert scope.cancelled_caught
    assert not config.output_dir.exists()


# -- docker -------------------------------------------------------------------------------------


def test_build_argv_process_and_python(config: ExecConfig) -> None:
    assert build_argv("j", 1, proc("ls", "-l", "a b"), config) == ["ls", "-l", "a b"]
    spec = job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="main.py", args=["--x"]))
    assert build_argv("j", 1, spec, config) == ["python3", "main.py", "--x"]


def test_a_docker_job_gets_its_cpus_and_gpus_in_its_container(config: ExecConfig) -> None:
    """As a process job does (``resource_vars``), through ``-e``: the container sees only
    the variables given to it. Docker gives it its GPUs (``--gpus``), numbered from 0 inside,
    so no CUDA_VISIBLE_DEVICES of the host's ids hides them."""
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine:3"))
    grant = Grant(cpus=(2, 3), gpus=("5", "7"))
    argv = build_argv("job-00000001", 1, spec, config, grant)
    env = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-e"]
    assert env[-2:] == ["BURST_CPUS=2", "BURST_GPUS=5,7"]
    assert argv[argv.index("--gpus") + 1] == '"device=5,7"'
    assert "--memory" not in argv and "--cpuset-cpus" not in argv


def test_a_docker_job_gets_its_memory_limit_and_bound_cpus(config: ExecConfig) -> None:
    """Without ``--rm``: the engine keeps the container, to be asked whether it was OOM-killed
    (``burstd.worker.container``)."""
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine:3"))
    bound = dataclasses.replace(config, bind_cpus=True, cpu_ids=(0, 4, 8, 12))
    grant = Grant(cpus=(1, 2), amounts={"mem": 100 << 20})
    argv = build_argv("job-00000001", 1, spec, bound, grant)
    options = argv[: argv.index("alpine:3")]
    assert options[:5] == ["docker", "run", "--init", "--name", container_name("job-00000001", 1)]
    assert options[options.index("--memory") :][:4] == [
        *("--memory", str(100 << 20), "--memory-swap", str(100 << 20))
    ]
    assert options[options.index("--cpuset-cpus") + 1] == "4,8"
    assert "--gpus" not in argv


def test_build_argv_docker(config: ExecConfig) -> None:
    spec = job_pb2.JobSpec(
        docker=job_pb2.DockerSpec(image="alpine:3", command=["sh", "-c"], args=["echo hi"]),
        env={"FOO": "1", "BURST_JOB_ID": "fake"},
        cwd="/data",
        array_index=4,
    )
    assert build_argv("job-00000001", 2, spec, config) == [
        "docker",
        "run",
        "--rm",
        "--init",
        "--name",
        container_name("job-00000001", 2),
        "--workdir",
        "/data",
        "-e",
        "FOO=1",
        "-e",
        "BURST_JOB_ID=job-00000001",
        "-e",
        "BURST_WORKER_ID=w1",
        "-e",
        "BURST_ATTEMPT=2",
        "-e",
        "BURST_ARRAY_INDEX=4",
        "-e",
        "BURST_CPUS=1",
        "alpine:3",
        "sh",
        "-c",
        "echo hi",
    ]


def test_build_argv_docker_minimal_and_invalid(config: ExecConfig) -> None:
    cfg = ExecConfig(worker_id="w", output_dir=config.output_dir, docker="/usr/bin/podman")
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="busybox"))
    assert build_argv("j", 1, spec, cfg) == [
        "/usr/bin/podman",
        *("run", "--rm", "--init", "--name", container_name("j", 1)),
        *("-e", "BURST_JOB_ID=j", "-e", "BURST_WORKER_ID=w", "-e", "BURST_ATTEMPT=1"),
        *("-e", "BURST_CPUS=1"),
        "busybox",
    ]
    with pytest.raises(SpecError, match=r"docker\.image is invalid"):
        build_argv("j", 1, job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="--privileged")), cfg)
    with pytest.raises(SpecError, match="invalid job id"):
        build_argv("../x", 1, spec, cfg)


def write_fake_docker(tmp_path: Path, run: str, inspect: str = "") -> tuple[Path, Path]:
    """A stand-in docker CLI that logs its arguments: `run` runs the shell code ``run`` (as an
    attached client waits for its container), `inspect` prints ``inspect``."""
    log = tmp_path / "docker.log"
    script = tmp_path / "fake-docker"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        f'case "$1" in run) {run};; inspect) echo "{inspect}";; esac\n'
    )
    script.chmod(0o755)
    return script, log


@pytest.fixture
def fake_docker(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A fake docker CLI whose `run` waits."""
    yield write_fake_docker(tmp_path, "sleep 100")


async def test_docker_timeout_kills_the_container(
    tmp_path: Path, fake_docker: tuple[Path, Path]
) -> None:
    script, log = fake_docker
    cfg = ExecConfig(
        worker_id="w1", output_dir=tmp_path / "out", docker=str(script), kill_grace=0.2
    )
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine"), timeout_seconds=0.3)
    out = await run_job("j", 1, spec, cfg)
    assert out.reason == "timeout"
    lines = log.read_text().splitlines()
    assert lines[0].startswith(f"run --rm --init --name {container_name('j', 1)} ")
    assert lines[1:] == [f"rm --force {container_name('j', 1)}"]


async def test_docker_cancel_kills_the_container(
    tmp_path: Path, fake_docker: tuple[Path, Path]
) -> None:
    script, log = fake_docker
    cfg = ExecConfig(
        worker_id="w1", output_dir=tmp_path / "out", docker=str(script), kill_grace=0.2
    )
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine"))
    with trio.fail_after(10), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_running() -> None:
                await lines_of(log, 1)
                scope.cancel()

            nursery.start_soon(cancel_when_running)
            await run_job("j", 1, spec, cfg)
    assert scope.cancelled_caught
    assert log.read_text().splitlines()[1:] == [f"rm --force {container_name('j', 1)}"]


MEM_100M = Grant(cpus=(0,), amounts={"mem": 100 << 20})


@pytest.mark.parametrize(
    ("run", "inspect", "grant", "reason", "asked"),
    [
        ("exit 137", "true", MEM_100M, "memory", ["inspect", "rm"]),
        ("exit 137", "false", MEM_100M, "exit", ["inspect", "rm"]),
        ("exit 0", "true", MEM_100M, "exit", ["rm"]),  # exit 0 asks nothing
        ("exit 137", "true", None, "exit", []),  # no --mem: --rm, nothing to ask
        ("kill -9 $$", "true", MEM_100M, "memory", ["inspect", "rm"]),
    ],
)
async def test_a_docker_job_killed_for_memory_ends_with_reason_memory(
    tmp_path: Path, run: str, inspect: str, grant: Grant | None, reason: str, asked: list[str]
) -> None:
    """As a process job whose cgroup recorded an OOM kill: the engine is asked once the client
    has exited, and the container removed after, or left to ``--rm``."""
    script, log = write_fake_docker(tmp_path, run, inspect)
    cfg = ExecConfig(worker_id="w1", output_dir=tmp_path / "out", docker=str(script))
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine"))
    out = await run_job("j", 1, spec, cfg, grant=grant)
    print(out.error_message)
    assert out.reason == reason
    if reason == "memory":
        assert out.error_message.startswith("killed for memory: over its --mem of 100M; ")
    name = container_name("j", 1)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("run --init" if grant else "run --rm --init")
    expected = {"inspect": f"inspect --type container --format {{{{.State.OOMKilled}}}} {name}"}
    expected["rm"] = f"rm --force {name}"
    assert calls[1:] == [expected[call] for call in asked]


async def test_a_docker_job_whose_engine_does_not_answer_ends_by_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's commands are bounded (``container.TIMEOUT``)."""
    script, log = write_fake_docker(tmp_path, "exit 137")
    script.write_text(script.read_text().replace("case", '[ "$1" = run ] || exec sleep 100\ncase'))
    monkeypatch.setattr(container, "TIMEOUT", 0.2)
    cfg = ExecConfig(worker_id="w1", output_dir=tmp_path / "out", docker=str(script))
    spec = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="alpine"))
    with trio.fail_after(10):
        out = await run_job("j", 1, spec, cfg, grant=MEM_100M)
    assert (out.reason, out.exit_code) == ("exit", 137)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["run", "inspect", "rm"]


# -- logging --------------------------------------------------------------------------------------


async def test_nothing_logged_at_info_per_job(config: ExecConfig) -> None:
    records: list[str] = []
    sink = logger.add(records.append, level="INFO")
    try:
        await run_job("j", 1, sh("exit 1"), config)
        await run_job("j", 1, proc("no-such-command-xyz"), config)
        await run_job("j", 1, sh("sleep 5", timeout_seconds=0.05), config)
    finally:
        logger.remove(sink)
    assert records == []
