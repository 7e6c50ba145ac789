"""Turn one leased job into a process and an outcome.

``run_job(job_id, attempt, spec, config)`` validates the spec, opens ``<dir>/<job_id>.stdout`` and
``.stderr``, starts the job in its own process group with stdin on /dev/null and its output going
straight into those files, waits for it (with the spec's timeout) and returns an ``Outcome``. A
problem of the job (bad spec, missing binary, bad cwd, unwritable folder, non-zero exit, signal,
timeout) is always an ``Outcome``, never an exception.

Cancellation: the worker daemon runs each job inside its own trio cancel scope. When that scope
is cancelled (user cancel, lease dropped, shutdown), ``run_job`` sends SIGTERM to the job's whole
process group, waits ``kill_grace`` seconds, sends SIGKILL (for docker jobs it also runs
``docker rm --force <container>``), reaps the process and re-raises ``Cancelled``: it never returns
an Outcome for a cancelled scope. That clean-up runs shielded and is bounded: ``kill_grace``, plus
at most 5 s for SIGKILL to take effect (a process still alive then is reaped later by a system
task), plus at most 10 s for ``docker rm``. The daemon knows why it cancelled the scope, so it
builds the "cancelled" (or "returned") report itself; ``output_paths()`` gives it the file paths.

When the job's main process ends, whatever it left running in its process group is killed
(SIGKILL): a job is over when its process is, and nothing of it outlives its slot. A worker
that dies (SIGKILL, a crash) cannot stop its jobs: with a ``guard`` (``burstd.worker.guard``)
each job's group is listed while it runs, and the guard stops those still listed.

Linux only (pidfd, process groups).

A docker job's container is asked how it ended and removed as ``burstd.worker.container`` says.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
from loguru import logger

from burstd import outputnames, placeholders, wire
from burstd.resources import MEM, Grant, format_size
from burstd.worker import container
from burstd.worker.guard import JobGuard
from burstd.worker.memlimit import JobCgroup, MemLimits
from burstd.worker.streamlog import StreamLogs
from proto.burst.v1 import job_pb2

__all__ = [
    "ExecConfig",
    "Outcome",
    "SpecError",
    "Usage",
    "attempt_path",
    "build_argv",
    "burst_vars",
    "container_name",
    "job_environment",
    "output_paths",
    "run_job",
    "stream_folder",
]


@dataclass(frozen=True, slots=True)
class ExecConfig:
    """Worker-wide settings of the executor."""

    worker_id: str
    output_dir: Path  # the worker's default output folder
    python: str = "python3"  # interpreter for python jobs
    docker: str = "docker"  # docker CLI
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    streams: StreamLogs | None = None  # stream-mode files (``--output stream``); None: refused
    # Pin each job to the CPUs of its grant (``resources.Grant``: CPU i of the grant is the i-th
    # of ``cpu_ids``, the worker's affinity mask, round the mask if it has fewer).
    bind_cpus: bool = False
    cpu_ids: tuple[int, ...] = ()
    # The worker has GPUs: a job that asked for none sees none (CUDA_VISIBLE_DEVICES empty).
    has_gpus: bool = False
    # How a job's --mem is enforced (``burstd.worker.memlimit``); None: it is not.
    memory: MemLimits | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended."""

    exit_code: int | None  # None when killed by a signal or never started
    signal: int  # 0 when none
    reason: str  # exit, signal, timeout, spawn, memory
    error_message: str  # "" for exit code 0
    started_at: float
    finished_at: float
    stdout_path: str  # "" when the files were not created
    stderr_path: str
    # What the reaped process used (None: it never started, or was reaped later).
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """A reaped job's resource usage (wait4): its process and the descendants it waited for."""

    user_cpu: float  # seconds
    system_cpu: float
    max_rss_kib: int  # Linux counts ru_maxrss in KiB


class SpecError(Exception):
    """The job cannot be started; the message names the cause."""


# Job ids become file names and container names: a plain name, no path separator, no leading dot
# (so neither "." nor ".."), short enough for "<id>.stdout" to be a valid file name.
_JOB_ID: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_OUT_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: give the job defaults.
_SIGDEF: Final = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_KILL_WAIT: Final = 5.0  # how long to wait for the process to die after SIGKILL


# -- pure parts: validation, argv, environment, paths -------------------------------------------


def _check_job_id(job_id: str) -> None:
    if _JOB_ID.fullmatch(job_id) is None:
        raise SpecError(f"invalid job id: {job_id!r}")


def _check_text(field: str, value: str) -> None:
    if "\0" in value:
        raise SpecError(f"{field} contains a NUL character")


# Job ids are unique per controller, not per Docker engine: two clusters (or a controller with a
# fresh state directory) sharing an engine would otherwise collide on container names.
_NAME_TOKEN = secrets.token_hex(3)


def container_name(job_id: str, attempt: int) -> str:
    """Docker container of one attempt of a job, e.g. ``burst-job-00000001-1-5f2a9c``.

    The last part is random per worker process, so names never collide across clusters.
    """
    _check_job_id(job_id)
    return f"burst-{job_id}-{attempt}-{_NAME_TOKEN}"


def burst_vars(
    job_id: str, attempt: int, spec: job_pb2.JobSpec, config: ExecConfig
) -> dict[str, str]:
    """The ``BURST_*`` variables of a job, set after ``spec.env`` so a spec cannot fake them."""
    out = {
        "BURST_JOB_ID": job_id,
        "BURST_WORKER_ID": config.worker_id,
        "BURST_ATTEMPT": str(attempt),
    }
    if spec.HasField("array_index"):
        out["BURST_ARRAY_INDEX"] = str(spec.array_index)
    if spec.HasField("entry"):
        out["BURST_ENTRY"] = spec.entry
    return out


def resource_vars(grant: Grant | None, config: ExecConfig) -> dict[str, str]:
    """BURST_CPUS (how many CPUs the job has), and for GPU jobs BURST_GPUS and
    CUDA_VISIBLE_DEVICES (the ids of its own GPUs)."""
    out = {"BURST_CPUS": str(len(grant.cpus)) if grant is not None else "1"}
    gpus = ",".join(grant.gpus) if grant is not None else ""
    if gpus:
        out["BURST_GPUS"] = out["CUDA_VISIBLE_DEVICES"] = gpus
    elif config.has_gpus:
        out["CUDA_VISIBLE_DEVICES"] = ""
    return out


def bound_cpus(grant: Grant | None, config: ExecConfig) -> list[int] | None:
    """The CPUs a job is pinned to (``bind_cpus``), None: not pinned."""
    if not config.bind_cpus or grant is None or not config.cpu_ids:
        return None
    ids = config.cpu_ids
    return sorted({ids[cpu % len(ids)] for cpu in grant.cpus})


def memory_limit(grant: Grant | None) -> int:
    """The bytes of memory a job may use (its ``--mem``), 0: no limit."""
    return grant.amounts.get(MEM, 0) if grant is not None else 0


def _docker_resources(grant: Grant | None, config: ExecConfig, env: dict[str, str]) -> list[str]:
    """``docker run`` options that give a container its job's grant: its memory (``--memory``,
    swap included), its CPUs when bound (``--cpuset-cpus``) and its GPUs (``--gpus``). A
    container numbers the GPUs it is given from 0, so the host's ids in CUDA_VISIBLE_DEVICES
    would hide them: it is left out of ``env`` (BURST_GPUS keeps the host's ids)."""
    if grant is None:
        return []
    options = []
    mem = memory_limit(grant)
    if mem:
        options += ["--memory", str(mem), "--memory-swap", str(mem)]
    cpus = bound_cpus(grant, config)
    if cpus:
        options += ["--cpuset-cpus", ",".join(map(str, cpus))]
    if grant.gpus:
        # A list in --gpus is one CSV field: quoted, as `docker run --gpus '"device=0,2"'`.
        options += ["--gpus", f'"device={",".join(grant.gpus)}"']
        env.pop("CUDA_VISIBLE_DEVICES", None)
    return options


def _auto_remove(grant: Grant | None) -> list[str]:
    """``--rm`` unless the engine is to be asked how the container ended (``container`` rule 1)."""
    return [] if memory_limit(grant) else ["--rm"]


def _spec_env(spec: job_pb2.JobSpec) -> dict[str, str]:
    env = dict(spec.env)
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise SpecError(f"env key is invalid: {key!r}")
        _check_text(f"env[{key}]", value)
    return env


def _worker_env() -> dict[bytes, bytes]:
    """A copy of the worker's environment, encoded.

    ``os.environ`` keeps an encoded dict: copying that is a hundred times cheaper than
    ``dict(os.environ)``, which decodes every entry through the mapping protocol (figures in
    docs/benchmarks.md).
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return data.copy()
    return dict(os.environb)  # pragma: no cover - other Pythons


def _job_env(
    job_id: str, attempt: int, spec: job_pb2.JobSpec, config: ExecConfig
) -> dict[bytes, bytes]:
    enc = os.fsencode
    env = _worker_env()
    for key, value in _spec_env(spec).items():
        env[enc(key)] = enc(value)
    for name in wire.JOB_OPTIONAL_VARIABLES:
        env.pop(enc(name), None)
    for key, value in burst_vars(job_id, attempt, spec, config).items():
        env[enc(key)] = enc(value)
    return env


def job_environment(
    job_id: str, attempt: int, spec: job_pb2.JobSpec, config: ExecConfig
) -> dict[str, str]:
    """The worker's environment, then ``spec.env``, then the BURST_* variables (set last; the
    optional BURST_ARRAY_INDEX and BURST_ENTRY are removed when the spec has no such field)."""
    env = _job_env(job_id, attempt, spec, config)
    return {os.fsdecode(key): os.fsdecode(value) for key, value in env.items()}


def command_args(job_id: str, spec: job_pb2.JobSpec, args: list[str]) -> list[str]:
    """``args`` with the job's own values in their placeholders (``burstd.placeholders``)."""
    values = {"job_id": job_id}
    if spec.HasField("array_index"):
        values["index"] = str(spec.array_index)
    if spec.HasField("entry"):
        values["entry"] = spec.entry
    filled = []
    for i, arg in enumerate(args):
        try:
            placeholders.check(arg, values)
        except ValueError as error:
            raise SpecError(f"argument {i}: {error}") from None
        filled.append(placeholders.fill(arg, values))
    return filled


def build_argv(
    job_id: str,
    attempt: int,
    spec: job_pb2.JobSpec,
    config: ExecConfig,
    grant: Grant | None = None,
) -> list[str]:
    """The argv of a job (argv[0] not yet resolved through PATH). Raises ``SpecError``.

    process: ``[command, *args]``; python: ``[config.python, entry_point, *args]``;
    docker: ``[config.docker, "run", "--rm", "--init", "--name", <container>, [--workdir cwd],
    -e K=V (spec.env then BURST_*), image, *command, *args]``, without ``--rm`` for a job with a
    memory limit (``burstd.worker.container`` rule 1). For docker, ``spec.cwd`` is the working
    directory inside the container and the container sees only ``spec.env`` and the BURST_*
    variables (the docker client itself runs with the worker's environment).
    """
    kind = spec.WhichOneof("type")
    argv: list[str]
    if kind == "process":
        if not spec.process.command.strip():
            raise SpecError("process.command is empty")
        argv = command_args(job_id, spec, [spec.process.command, *spec.process.args])
    elif kind == "python":
        if not spec.python.entry_point.strip():
            raise SpecError("python.entry_point is empty")
        command = [spec.python.entry_point, *spec.python.args]
        argv = [config.python, *command_args(job_id, spec, command)]
    elif kind == "docker":
        image = spec.docker.image
        if not image.strip():
            raise SpecError("docker.image is empty")
        if image.startswith("-"):
            raise SpecError(f"docker.image is invalid: {image!r}")
        argv = [config.docker, "run", *_auto_remove(grant), "--init"]
        argv += ["--name", container_name(job_id, attempt)]
        if spec.cwd:
            argv += ["--workdir", spec.cwd]
        env = _spec_env(spec)
        for key in (*wire.JOB_OPTIONAL_VARIABLES, *wire.JOB_VARIABLES):
            env.pop(key, None)
        env.update(burst_vars(job_id, attempt, spec, config))
        env.update(resource_vars(grant, config))
        argv += _docker_resources(grant, config, env)
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        argv += [image, *command_args(job_id, spec, [*spec.docker.command, *spec.docker.args])]
    else:
        raise SpecError("spec has no job type (process, python or docker)")
    for i, arg in enumerate(argv):
        _check_text(f"argv[{i}]", arg)
    return argv


def _output_dir(spec: job_pb2.JobSpec, config: ExecConfig) -> str:
    base = os.path.abspath(config.output_dir)
    if not spec.HasField("output_dir") or not spec.output_dir.strip():
        return base
    wanted = spec.output_dir
    _check_text("output_dir", wanted)
    if os.path.isabs(wanted):
        return os.path.normpath(wanted)  # an absolute folder is the user's explicit choice
    rel = os.path.normpath(wanted)
    if rel == ".." or rel.startswith("../"):
        raise SpecError(f"output_dir leaves the worker's output folder: {wanted!r}")
    return os.path.join(base, rel)


def output_paths(
    job_id: str, attempt: int, spec: job_pb2.JobSpec, config: ExecConfig
) -> tuple[str, str]:
    """Absolute paths of one attempt's stdout and stderr files, as named: the spec's patterns
    (``burstd.outputnames``, which stay inside the folder), else ``<job_id>.stdout`` and
    ``.stderr``; an attempt that finds an earlier one's file there writes ``attempt_path`` of
    them instead (see ``run_job``). Raises ``SpecError``.

    The folder is ``spec.output_dir`` when set and not blank (a relative one is taken inside
    ``config.output_dir`` and may not leave it), else ``config.output_dir``.
    """
    _check_job_id(job_id)
    folder = _output_dir(spec, config)
    index = spec.array_index if spec.HasField("array_index") else None
    paths = []
    for stream, pattern in (("stdout", spec.stdout_pattern), ("stderr", spec.stderr_pattern)):
        if not pattern:
            paths.append(os.path.join(folder, f"{job_id}.{stream}"))
            continue
        try:
            name = outputnames.render(
                pattern, job_id=job_id, index=index, attempt=attempt, submission=spec.submission
            )
        except ValueError as error:
            raise SpecError(f"{stream}_pattern {error}") from None
        paths.append(os.path.join(folder, os.path.normpath(name)))
    return paths[0], paths[1]


def _timeout(spec: job_pb2.JobSpec) -> float:
    t = spec.timeout_seconds
    if math.isnan(t) or t < 0:
        raise SpecError(f"timeout_seconds is invalid: {t}")
    return t if t > 0 else math.inf


# -- process handling -------------------------------------------------------------------------


# Where bare command names were found, per (PATH, name), like a shell's command hash: a PATH
# search (a stat per folder) costs a third of a whole spawn (docs/benchmarks.md). An entry that
# fails to spawn is dropped and searched again; misses are not remembered.
_WHICH: dict[tuple[str, str], str] = {}
_WHICH_MAX: Final = 4096


def _cwd_error(cwd: str, worker_id: str, exc: OSError | None = None) -> str:
    if exc is None or isinstance(exc, FileNotFoundError):
        return f"working directory {cwd} does not exist on worker {worker_id}"
    return f"cannot enter working directory {cwd} on worker {worker_id}: {exc.strerror or exc}"


def _resolve(command: str, env: Mapping[bytes, bytes], cwd: str) -> tuple[str, bool]:
    """Path of the executable (bare names are looked up in the job's PATH; a path with a slash
    is taken in the job's working directory), and whether it came from the cache."""
    if "/" in command:
        path = os.path.abspath(os.path.join(cwd, command))
        # Checked here so a missing file creates no output files; the spawn still reports races.
        if not os.path.exists(path):
            raise SpecError(f"command not found: {command}")
        return path, False
    raw_path = env.get(b"PATH")
    search = os.defpath if raw_path is None else os.fsdecode(raw_path)
    key = (search, command)
    found = _WHICH.get(key)
    if found is not None:
        return found, True
    found = shutil.which(command, path=search)
    if found is None:
        raise SpecError(f"command not found: {command}")
    if len(_WHICH) >= _WHICH_MAX:
        _WHICH.clear()
    _WHICH[key] = found
    return found, False


def _forget(path: str) -> None:
    for key in [key for key, value in _WHICH.items() if value == path]:
        del _WHICH[key]


def attempt_path(path: str, attempt: int) -> str:
    """``/out/job-1.stdout`` of attempt 2 -> ``/out/job-1.2.stdout``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.{attempt}{suffix}"


def _open_outputs(stdout_path: str, stderr_path: str, attempt: int) -> tuple[int, int, str, str]:
    """The attempt's output files, opened, and their paths: ``stdout_path`` and ``stderr_path``,
    or, when an earlier attempt's stdout file is there, those paths with the attempt's number
    (the earlier attempt's files stay as they are: each attempt keeps its output)."""
    try:
        out_fd = os.open(stdout_path, _OUT_FLAGS, 0o666)
    except FileExistsError:
        if stat.S_ISLNK(os.lstat(stdout_path).st_mode):
            raise _open_error(stdout_path, OSError(errno.ELOOP, "symlink")) from None
        stdout_path = attempt_path(stdout_path, attempt)
        stderr_path = attempt_path(stderr_path, attempt)
        out_fd = _open_output(stdout_path)
    except (FileNotFoundError, NotADirectoryError):
        out_fd = _open_output(stdout_path)  # creates the missing folder
    except OSError as exc:
        raise _open_error(stdout_path, exc) from None
    try:
        err_fd = _open_output(stderr_path)
    except BaseException:
        os.close(out_fd)
        raise
    if out_fd < 3 or err_fd < 3:
        # A worker started with closed standard streams: keep the files clear of 0-2 so the
        # spawn's /dev/null and dup2 actions cannot clobber them.
        try:
            out_fd = _above_stdio(out_fd)
        except OSError as exc:
            os.close(err_fd)
            raise SpecError(f"cannot open output files: {exc.strerror}") from None
        try:
            err_fd = _above_stdio(err_fd)
        except OSError as exc:
            os.close(out_fd)
            raise SpecError(f"cannot open output files: {exc.strerror}") from None
    return out_fd, err_fd, stdout_path, stderr_path


def _above_stdio(fd: int) -> int:
    """``fd`` moved to a number above 2 (the original is closed in any case)."""
    if fd >= 3:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _create(path: str) -> int:
    """A new, empty file at ``path``, never reached through a symlink.

    A file left there (by a run of the same attempt number, of a cluster before) is unlinked,
    not truncated: a process of it may still be running, and it then writes on into the
    unlinked file instead of into this attempt's output.
    """
    try:
        return os.open(path, _OUT_FLAGS, 0o666)
    except FileExistsError:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
        os.unlink(path)
        return os.open(path, _OUT_FLAGS, 0o666)


def _open_output(path: str) -> int:
    try:
        return _create(path)
    except (FileNotFoundError, NotADirectoryError):
        # The folder is missing: create it only now, so the common case costs one open() call.
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise SpecError(f"cannot create output folder {folder}: {exc.strerror}") from None
        try:
            return _create(path)
        except OSError as exc:
            raise _open_error(path, exc) from None
    except OSError as exc:
        raise _open_error(path, exc) from None


def _open_error(path: str, exc: OSError) -> SpecError:
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW: the file is a symlink
        return SpecError(f"refusing to write through a symlink: {path}")
    return SpecError(f"cannot open output file {path}: {exc.strerror}")


class _Child:
    """A started job: its pid (also its process group id) and a pidfd to wait on."""

    __slots__ = ("guard", "pid", "pidfd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.guard: JobGuard | None = None  # set once the job is listed with the guard
        self.pidfd = -1
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.signal_group(signal.SIGKILL)
            self.reap()
            raise

    def signal_group(self, sig: int) -> None:
        # Safe while the leader is not reaped: its pid (the group id) cannot be reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def exited(self) -> bool:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self.pid, flags) is not None

    async def wait_exit(self) -> None:
        await trio.lowlevel.wait_readable(self.pidfd)

    def reap(self) -> tuple[int, Usage]:
        """Kill what the job left in its group, collect the exit status and the resource usage
        (the leader has exited)."""
        self.signal_group(signal.SIGKILL)
        if self.guard is not None:
            self.guard.untrack(self.pid)  # before the pid (the group id) may be reused
        _, status, rusage = os.wait4(self.pid, 0)
        self.close()
        return status, Usage(rusage.ru_utime, rusage.ru_stime, rusage.ru_maxrss)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


# The parent's CPU per spawn bounds a worker's rate: posix_spawn with a pidfd wait costs the least
# of the ways to start a process (the methods compared in docs/benchmarks.md).
# posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), exec errors reported to the parent) is the
# fastest and does everything needed (setpgroup, dup2 of the output files, /dev/null stdin,
# default signal dispositions, env) except chdir, which Python's posix_spawn lacks: for a job with
# a working directory the worker changes its own around the spawn and back at once (Popen with a
# cwd costs the worker three times the CPU). Nothing else of the worker runs meanwhile: the spawn
# is one synchronous call, and the worker has no thread that uses a relative path.
def _spawn(
    argv: list[str],
    path: str,
    env: Mapping[bytes, bytes],
    out_fd: int,
    err_fd: int,
    cwd: str,
    cpus: list[int] | None = None,
    cgroup: JobCgroup | None = None,
) -> _Child:
    """Start a job's process. ``cpus``: pin it to them; like the working directory, the
    worker's own thread takes them around the spawn (the child inherits them) and back, and
    it enters the job's ``cgroup`` (``burstd.worker.memlimit``) the same way."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_fd, 1),
        (os.POSIX_SPAWN_DUP2, err_fd, 2),
    ]
    home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if cwd else -1
    mask = os.sched_getaffinity(0) if cpus else None
    try:
        if cwd:
            os.chdir(cwd)
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)
            with cgroup.entered() if cgroup is not None else contextlib.nullcontext():
                pid = os.posix_spawn(
                    path,
                    argv,
                    env,
                    file_actions=actions,
                    setpgroup=0,
                    setsigdef=_SIGDEF,
                    setsigmask=(),
                )
        finally:
            if cwd:
                os.fchdir(home)
            if mask is not None:
                os.sched_setaffinity(0, mask)
    finally:
        if cwd:
            os.close(home)
    return _Child(pid)


def _spawn_error(exc: OSError, command: str, cwd: str, worker_id: str) -> str:
    if cwd and exc.filename == cwd:
        return _cwd_error(cwd, worker_id, exc)
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {command}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {command}"
    return f"cannot start {command}: {exc.strerror or exc}"


def _describe(status: int) -> tuple[int | None, int, str]:
    """exit_code, signal and message of a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"SIG{sig}"
        return None, sig, f"killed by signal {sig} ({name})"
    code = os.waitstatus_to_exitcode(status)
    return code, 0, f"exited with code {code}" if code else ""


async def _docker(argv: list[str]) -> bytes | None:
    """Run a docker command of ``burstd.worker.container``, shielded (it is the job's clean-up)
    and bounded (``container`` rule 4): its output, None if it failed or did not answer in time."""
    with trio.CancelScope(shield=True), trio.move_on_after(container.TIMEOUT):
        try:
            done = await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError:
            return None
        return done.stdout if done.returncode == 0 else None
    return None


async def _remove_container(name: str, config: ExecConfig, guard: JobGuard | None) -> None:
    """``docker rm --force`` the job's container (``container`` rule 3), then unlist it with the
    guard."""
    if await _docker(container.remove(config.docker, name)) is None:
        logger.bind(worker_id=config.worker_id).warning("cannot remove container {}", name)
    if guard is not None:
        guard.removed(name)


async def _stop(child: _Child, docker_name: str | None, config: ExecConfig) -> bool:
    """SIGTERM the group, wait the grace, remove the container (which kills it), SIGKILL. True
    when the leader has exited."""
    child.signal_group(signal.SIGTERM)
    with trio.move_on_after(config.kill_grace):
        await child.wait_exit()
    if docker_name is not None:  # the container is not in our group
        await _remove_container(docker_name, config, child.guard)
    child.signal_group(signal.SIGKILL)
    with trio.move_on_after(_KILL_WAIT):
        await child.wait_exit()
    return child.exited()


async def _exits_within(child: _Child, timeout: float) -> bool:
    """Wait until the job's leader exits, at most ``timeout`` seconds; whether it did. A job
    without a timeout gets no cancel scope of its own: entering and leaving one cost about what
    the wait itself does (docs/benchmarks.md)."""
    if timeout == math.inf:
        await child.wait_exit()
        return True
    with trio.move_on_after(timeout) as deadline:
        await child.wait_exit()
    return not deadline.cancelled_caught or child.exited()


async def _reap_later(child: _Child, cgroup: JobCgroup | None) -> None:
    try:
        await child.wait_exit()
        child.reap()
        await _remove_cgroup(cgroup)
    except BaseException:  # a system task must not raise; the process is left to init
        child.close()


async def _remove_cgroup(cgroup: JobCgroup | None) -> None:
    """Remove a reaped job's cgroup, shielded (it is the job's clean-up) and bounded."""
    if cgroup is None:
        return
    with trio.CancelScope(shield=True):
        try:
            removed = await cgroup.remove()
        except OSError as error:
            logger.warning("cannot remove cgroup {}: {}", cgroup.path, error)
            return
    if not removed:
        logger.warning("cgroup {} still busy: the worker removes it when it stops", cgroup.path)


async def _end_container(
    name: str, grant: Grant | None, config: ExecConfig, guard: JobGuard | None
) -> None:
    """The job's client has exited: remove its container, unless the engine does (``--rm``)."""
    if _auto_remove(grant):
        if guard is not None:
            guard.removed(name)
    else:
        await _remove_container(name, config, guard)


def _job_cgroup(
    job_id: str, attempt: int, kind: str | None, grant: Grant | None, config: ExecConfig
) -> tuple[JobCgroup | None, int]:
    """The job's memory cgroup (None: none) and its limit in bytes (0: none); raises SpecError.
    Docker jobs are limited by docker (``build_argv``)."""
    limit = memory_limit(grant)
    if not limit or config.memory is None or kind == "docker":
        return None, 0
    try:
        return config.memory.job(f"{job_id}-{attempt}", limit), limit
    except OSError as error:
        raise SpecError(f"cannot make the job's memory cgroup: {error}") from None


async def _memory_kill(
    cgroup: JobCgroup | None, docker_name: str | None, limit: int, config: ExecConfig
) -> tuple[int, int | None] | None:
    """The limit and the peak use (None: unknown) of a job that did not exit 0, if the kernel
    killed it for its ``--mem`` (``memlimit`` rule 3, ``container`` rule 2); None if not."""
    if cgroup is not None:
        return (cgroup.limit, cgroup.peak()) if cgroup.oom_killed() else None
    if docker_name is not None and limit:
        said = await _docker(container.inspect(config.docker, docker_name))
        if said is not None and container.oom_killed(said):
            return limit, None
    return None


def _memory_message(limit: int, peak: int | None, how: str) -> str:
    """``killed for memory: over its --mem of 100M (peak 100M); killed by signal 9 (SIGKILL)``."""
    used = f" (peak {format_size(peak)})" if peak else ""
    return f"killed for memory: over its --mem of {format_size(limit)}{used}; {how}"


async def run_job(
    job_id: str,
    attempt: int,
    spec: job_pb2.JobSpec,
    config: ExecConfig,
    guard: JobGuard | None = None,
    grant: Grant | None = None,
) -> Outcome:
    """Run one attempt of a job and say how it ended (see the module docstring). With a
    ``guard``, the job's process group is listed with it while the job runs. ``grant``: the
    CPUs and GPUs it has (``resource_vars``, ``bound_cpus``).

    Never raises for a problem of the job; re-raises ``Cancelled`` after killing the job's
    process group when the surrounding scope is cancelled.
    """
    with contextlib.ExitStack() as stream_part:
        # Stream mode (``burstd.worker.streamlog``): the part is indexed once this returns,
        # after the job's process group has ended.
        return await _run_job(job_id, attempt, spec, config, guard, stream_part, grant)


def stream_folder(spec: job_pb2.JobSpec, config: ExecConfig) -> str:
    """The folder of a stream-mode job's files (its submission's, in its output folder)."""
    if outputnames.SUBMISSION.fullmatch(spec.submission) is None:
        raise SpecError(f"output_mode stream: invalid submission name {spec.submission!r}")
    return os.path.join(_output_dir(spec, config), spec.submission)


def _stream_files(
    job_id: str,
    attempt: int,
    spec: job_pb2.JobSpec,
    config: ExecConfig,
    stack: contextlib.ExitStack,
) -> tuple[int, int, tuple[str, str]]:
    """The descriptors and paths of a stream-mode job's part (raises ``SpecError``)."""
    if config.streams is None:
        raise SpecError("output_mode stream: this worker writes no stream files")
    folder = stream_folder(spec, config)
    try:
        out_fd, err_fd, part = stack.enter_context(config.streams.part(job_id, attempt, folder))
    except OSError as exc:
        raise SpecError(f"cannot open stream output files in {folder}: {exc.strerror}") from None
    return out_fd, err_fd, (part.stdout, part.stderr)


async def _run_job(
    job_id: str,
    attempt: int,
    spec: job_pb2.JobSpec,
    config: ExecConfig,
    guard: JobGuard | None,
    stream_part: contextlib.ExitStack,
    grant: Grant | None = None,
) -> Outcome:
    await trio.lowlevel.checkpoint_if_cancelled()
    log = logger.bind(job_id=job_id, worker_id=config.worker_id)
    started_at = time.time()
    stdout_path = stderr_path = ""
    cwd = spec.cwd
    kind = spec.WhichOneof("type")

    def failed(message: str) -> Outcome:
        log.debug("cannot start: {}", message)
        return Outcome(None, 0, "spawn", message, started_at, time.time(), stdout_path, stderr_path)

    # Validate everything before touching the file system.
    try:
        stream = spec.output_mode == "stream"
        paths = ("", "") if stream else output_paths(job_id, attempt, spec, config)
        argv = build_argv(job_id, attempt, spec, config, grant)
        timeout = _timeout(spec)
        if kind == "docker":
            env = _worker_env()  # the client's; the container's is in argv
            cwd = ""  # --workdir in the container
        else:
            env = _job_env(job_id, attempt, spec, config)
            for key, value in resource_vars(grant, config).items():
                env[os.fsencode(key)] = os.fsencode(value)
            if cwd:
                _check_text("cwd", cwd)
                if not os.path.isdir(cwd):
                    raise SpecError(_cwd_error(cwd, config.worker_id))
        path, cached = _resolve(argv[0], env, cwd)
        if stream:
            out_fd, err_fd, (stdout_path, stderr_path) = _stream_files(
                job_id, attempt, spec, config, stream_part
            )
        else:
            out_fd, err_fd, stdout_path, stderr_path = _open_outputs(*paths, attempt)
    except SpecError as exc:
        return failed(str(exc))

    cgroup: JobCgroup | None = None
    try:
        cgroup, limit = _job_cgroup(job_id, attempt, kind, grant, config)
        while True:
            try:
                cpus = bound_cpus(grant, config)
                child = _spawn(argv, path, env, out_fd, err_fd, cwd, cpus, cgroup)
                break
            except (FileNotFoundError, PermissionError) as exc:
                if not cached or (cwd and exc.filename == cwd):
                    raise
                _forget(path)  # stale cache entry: search PATH again
                path, cached = _resolve(argv[0], env, cwd)
    except SpecError as exc:
        await _remove_cgroup(cgroup)
        return failed(str(exc))
    except OSError as exc:
        await _remove_cgroup(cgroup)
        return failed(_spawn_error(exc, argv[0], cwd, config.worker_id))
    except ValueError as exc:
        await _remove_cgroup(cgroup)
        return failed(f"cannot start {argv[0]}: {exc}")
    finally:
        os.close(out_fd)
        os.close(err_fd)
    if limit and cgroup is None and config.memory is not None:
        config.memory.limit_process(child.pid, limit)
    log.debug("started pid {}: {}", child.pid, argv)

    docker_name = container_name(job_id, attempt) if kind == "docker" else None
    if guard is not None:
        guard.track(child.pid, docker_name)
        child.guard = guard
    timed_out = False
    try:
        if not await _exits_within(child, timeout):
            timed_out = True
            log.debug("timed out after {} s, stopping", timeout)
            stopped = await _stop(child, docker_name, config)
        else:
            stopped = True
    except BaseException:
        # Cancelled (or KeyboardInterrupt): kill the group within a bounded, shielded cleanup.
        with trio.CancelScope(shield=True):
            log.debug("cancelled, stopping")
            if await _stop(child, docker_name, config):
                child.reap()
                await _remove_cgroup(cgroup)
            else:
                log.warning("pid {} still alive after SIGKILL, reaping it later", child.pid)
                trio.lowlevel.spawn_system_task(_reap_later, child, cgroup)
        raise

    finished_at = time.time()
    killed_for_memory = None
    if stopped:
        status, usage = child.reap()
        exit_code, sig, message = _describe(status)
        if exit_code != 0 and not timed_out:
            killed_for_memory = await _memory_kill(cgroup, docker_name, memory_limit(grant), config)
        if killed_for_memory is not None:
            message = _memory_message(*killed_for_memory, message)
        await _remove_cgroup(cgroup)
    else:
        log.warning("pid {} still alive after SIGKILL, reaping it later", child.pid)
        trio.lowlevel.spawn_system_task(_reap_later, child, cgroup)
        exit_code, sig, message = None, signal.SIGKILL, "did not exit after SIGKILL"
        usage = None
    if docker_name is not None and not timed_out:  # a timed-out job's is removed already
        await _end_container(docker_name, grant, config, guard)
    if timed_out:
        reason, message = "timeout", f"timed out after {round(timeout, 3)} s"
    elif killed_for_memory is not None:
        reason = "memory"
    elif sig:
        reason = "signal"
    else:
        reason = "exit"
    log.debug("finished: {} {}", reason, message)
    return Outcome(
        exit_code,
        int(sig),
        reason,
        message,
        started_at,
        finished_at,
        stdout_path,
        stderr_path,
        usage,
    )
