"""Memory limits of jobs (``--mem``): a cgroup per job where the worker can make cgroups, else
RLIMIT_AS.

Rules:

1. A worker picks one way when it starts (``MemLimits.start``) and logs it once: cgroup v2
   (``memory.max``) if it can make cgroups with the memory controller there, else cgroup v1
   (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` so that swap is no way out),
   else RLIMIT_AS.
2. With cgroups, every job that asked for memory runs in a cgroup of its own, made before its
   process starts, ``burst-worker-<pid>/<job>-<attempt>`` under the worker's cgroup. The process
   is born inside it: around the spawn the worker's spawning thread (v1: a thread's cgroup is its
   own) or the worker process (v2: cgroups hold whole processes) enters the job's cgroup and
   leaves it at once, as the executor does with CPU affinity. No allocation of the job is
   charged elsewhere.
3. A job whose cgroup recorded an OOM kill (``memory.events`` ``oom_kill``, v1's
   ``memory.oom_control``) and that did not exit 0 ends with reason ``memory``.
4. After a job is reaped, what is left in its cgroup (a process that left the job's process
   group) is killed and the cgroup removed; ``close`` removes the worker's folder, and ``start``
   removes the folders that workers dead since then left behind.
5. RLIMIT_AS is set on the job's process right after the spawn (``prlimit``), before it can have
   run more than its first instructions. An allocation past it fails inside the job (Python's
   MemoryError, malloc's NULL): the job ends with its own exit status, and its reason cannot be
   told apart from any other failure. It bounds address space, not memory used.

Under cgroup v2, the worker moves itself into a leaf ``burst-worker-<pid>/worker`` (a cgroup
with children may hold no process), and turns the memory controller on for its cgroup's
children, which works only where it is the cgroup's sole process (a delegated cgroup:
systemd's ``Delegate=yes``, a container's own cgroup namespace). That leaf is left when the
worker exits, for ``start`` of a later worker or systemd to remove.

Linux only. Used by the executor (``burstd.worker.executor``) only for jobs that ask for memory:
the others are spawned as before, at no extra cost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal

import trio

Kind = Literal["cgroup2", "cgroup1", "rlimit"]

__all__ = ["JobCgroup", "Kind", "MemLimits"]

_MOUNTINFO: Final = Path("/proc/self/mountinfo")
_PROC_CGROUP: Final = Path("/proc/self/cgroup")
_PREFIX: Final = "burst-worker-"
# rmdir fails while a killed process has not exited yet: tries, a short pause apart.
_REMOVE_TRIES: Final = 50
_REMOVE_PAUSE: Final = 0.01


def _lines(path: Path) -> list[str]:
    """The lines of a file of /proc or of a cgroup; none if it cannot be read."""
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _mounts() -> dict[str, Path]:
    """Where cgroup hierarchies are mounted: ``cgroup2`` and each v1 controller's name."""
    found: dict[str, Path] = {}
    for line in _lines(_MOUNTINFO):
        fields, _, rest = line.partition(" - ")
        parts, extra = fields.split(), rest.split()
        if len(parts) < 5 or len(extra) < 3:
            continue
        point = Path(parts[4].replace("\\040", " "))
        if extra[0] == "cgroup2":
            found.setdefault("cgroup2", point)
        elif extra[0] == "cgroup":
            for option in extra[2].split(","):
                found.setdefault(option, point)
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``""`` for v2, controller names for v1."""
    own: dict[str, str] = {}
    for line in _lines(_PROC_CGROUP):
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path.strip().lstrip("/")
    return own


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _write_if_there(path: Path, value: str) -> None:
    """Write a cgroup file the kernel may not have (swap accounting is a boot option): a cgroup
    file system refuses to create one (EACCES), so look first."""
    if path.exists():
        _write(path, value)


def _read_fields(path: Path) -> dict[str, int]:
    """``name value`` lines (``memory.events``, ``memory.oom_control``); {} if unreadable."""
    return {
        name: int(value)
        for name, _, value in (line.partition(" ") for line in _lines(path))
        if value.strip().isdigit()
    }


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobCgroup:
    """One job's cgroup: enter it around the spawn, ask it about OOM kills, remove it."""

    __slots__ = ("home", "limit", "path", "version")

    def __init__(self, path: Path, version: int, home: Path, limit: int) -> None:
        self.path = path
        self.version = version
        self.home = home  # where the spawner goes back to
        self.limit = limit

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The spawning thread (v1) or process (v2) inside this cgroup meanwhile (rule 2)."""
        if self.version == 1:
            member, file = str(threading.get_native_id()), "tasks"
        else:
            member, file = str(os.getpid()), "cgroup.procs"
        _write(self.path / file, member)
        try:
            yield
        finally:
            _write(self.home / file, member)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this cgroup for its memory limit (rule 3)."""
        if self.version == 2:
            return _read_fields(self.path / "memory.events").get("oom_kill", 0) > 0
        events = _read_fields(self.path / "memory.oom_control")
        if "oom_kill" in events:  # Linux 4.13 and later
            return events["oom_kill"] > 0
        return (_read_int(self.path / "memory.failcnt") or 0) > 0

    def peak(self) -> int | None:
        """The most memory the cgroup held, in bytes (None: the kernel does not say)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return _read_int(self.path / name)

    def kill_rest(self) -> None:
        """SIGKILL whatever still runs in the cgroup (a process that left the job's group)."""
        if self.version == 2 and (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.path / "cgroup.kill", "1")
            return
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)

    def try_remove(self) -> bool:
        """Kill what is left and remove the cgroup: True when gone (rule 4). False: a killed
        process has not exited yet; try again a moment later."""
        self.kill_rest()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno == errno.EBUSY:
                return False
            raise
        return True

    async def remove(self) -> bool:
        """``try_remove`` until it succeeds, for a moment at most: False if it never did."""
        for _ in range(_REMOVE_TRIES):
            if self.try_remove():
                return True
            await trio.sleep(_REMOVE_PAUSE)
        return False


class MemLimits:
    """A worker's way of bounding its jobs' memory (rule 1), and its cgroups folder."""

    def __init__(self, kind: Kind, base: Path | None = None, home: Path | None = None) -> None:
        self.kind: Kind = kind
        self.folder = base  # burst-worker-<pid>, the parent of the jobs' cgroups (None: RLIMIT_AS)
        self._home = home  # the spawner's own cgroup, to go back to

    @classmethod
    def start(cls, warn: Callable[[str], None]) -> MemLimits:
        """The first of cgroup v2, cgroup v1 and RLIMIT_AS that works here. Failures to set a
        cgroup way up are told to ``warn`` (the worker's log)."""
        mounts, own = _mounts(), _own_cgroups()
        if "cgroup2" in mounts and "" in own:
            try:
                made = cls._start_v2(mounts["cgroup2"] / own[""])
            except OSError as error:
                warn(f"memory limits: cannot make cgroup v2 cgroups here ({error})")
            else:
                if made is not None:
                    return made
        if "memory" in mounts and "memory" in own:
            try:
                return cls._start_v1(mounts["memory"] / own["memory"])
            except OSError as error:
                warn(f"memory limits: cannot make cgroup v1 cgroups here ({error})")
        return cls("rlimit")

    @classmethod
    def _start_v1(cls, own: Path) -> MemLimits:
        _sweep(own)
        base = own / f"{_PREFIX}{os.getpid()}"
        base.mkdir(exist_ok=True)
        return cls("cgroup1", base, own)

    @classmethod
    def _start_v2(cls, own: Path) -> MemLimits | None:
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            return None
        _sweep(own)
        base = own / f"{_PREFIX}{os.getpid()}"
        leaf = base / "worker"
        leaf.mkdir(parents=True, exist_ok=True)
        pid = str(os.getpid())
        _write(leaf / "cgroup.procs", pid)
        try:
            if "memory" not in (own / "cgroup.subtree_control").read_text().split():
                _write(own / "cgroup.subtree_control", "+memory")
            _write(base / "cgroup.subtree_control", "+memory")
        except OSError:
            # Another process shares the worker's cgroup: it may not have children.
            _write(own / "cgroup.procs", pid)
            leaf.rmdir()
            base.rmdir()
            raise
        return cls("cgroup2", base, leaf)

    def job(self, name: str, limit: int) -> JobCgroup | None:
        """A new cgroup for a job limited to ``limit`` bytes (None under RLIMIT_AS). Raises
        OSError if it cannot be made."""
        if self.folder is None or self._home is None:
            return None
        path = self.folder / name
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        try:
            if self.kind == "cgroup2":
                _write(path / "memory.max", str(limit))
                _write_if_there(path / "memory.swap.max", "0")
                return JobCgroup(path, 2, self._home, limit)
            _write(path / "memory.limit_in_bytes", str(limit))
            _write_if_there(path / "memory.memsw.limit_in_bytes", str(limit))
            return JobCgroup(path, 1, self._home, limit)
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise

    @staticmethod
    def limit_process(pid: int, limit: int) -> None:
        """RLIMIT_AS of a just spawned process (rule 5), within its hard limit (which only a
        privileged worker could raise); a process gone already is left be."""
        with contextlib.suppress(ProcessLookupError):
            _, hard = resource.prlimit(pid, resource.RLIMIT_AS)
            soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
            resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))

    def close(self) -> None:
        """Remove the worker's folder and any job cgroup left in it (rule 4); v2 keeps the
        worker's leaf, which it is in."""
        if self.folder is None:
            return
        for child in self.folder.iterdir() if self.folder.is_dir() else ():
            if child.is_dir() and child != self._home:
                with contextlib.suppress(OSError):
                    JobCgroup(child, 1 if self.kind == "cgroup1" else 2, child, 0).try_remove()
        if self.kind == "cgroup1":
            with contextlib.suppress(OSError):
                self.folder.rmdir()


def _sweep(own: Path) -> None:
    """Remove the folders of workers that died without closing theirs (rule 4)."""
    for folder in own.glob(f"{_PREFIX}*"):
        pid = folder.name.removeprefix(_PREFIX)
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        for child in folder.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()
