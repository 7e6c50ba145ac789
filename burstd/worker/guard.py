"""The guard: a small process that stops a worker's running jobs when the worker dies.

A worker stops its jobs itself when it shuts down or a lease ends (``executor.run_job``). A worker
killed with SIGKILL, or dead of a crash, cannot: its jobs would run on, in process groups of their
own, while the controller gives them to another worker a lease TTL later. They would then run
twice at once and write into the same output files. The job processes cannot be told to die with
the worker (``PR_SET_PDEATHSIG`` needs code between fork and exec, which ``posix_spawn`` has not),
so the worker starts this guard first and tells it, over a pipe, each job's process group as the
job starts and as it is reaped. The guard's end of the pipe reads end of file once no worker holds
the other end: whatever killed the worker, the guard then stops the groups still listed as the
worker would (SIGTERM, ``docker rm --force`` of the job's container, the kill grace, SIGKILL) and
leaves.

The worker also tells it when its leases lapse (``lease_deadline``, see burstd/leases.py): the
worker stops its jobs itself then, but a frozen worker (SIGSTOP, a debugger) cannot, and the
controller would lease them elsewhere. If that time comes with no newer word from the worker
and jobs listed, the guard stops them the same way (SIGKILL at the deadline's kill time), forgets
them, and goes on following the worker.

What it promises:

- A job is listed before ``run_job`` waits for it, and unlisted after its group was killed and
  before its leader is reaped, so a group id the guard kills is never one the system has reused
  (a leader's pid stays taken until it is reaped); once the worker is dead the leader may be
  reaped by another process before the guard's SIGTERM, which leaves a window of milliseconds.
- A docker job's container stays listed after its group is unlisted, until the worker says it
  has removed it (``burstd.worker.container`` rule 3): a worker that dies between the two leaves
  no container behind either.
- The guard ignores SIGINT and SIGTERM and runs in a process group of its own: a Ctrl-C, a
  ``systemctl stop`` or a signal to the worker's group stops the worker (which stops its jobs),
  never the guard before it. A clean worker leaves an empty list: the guard then just exits.
- The worker's writes never block: if the guard is gone, ``JobGuard`` says so once
  (``on_lost``) and the jobs run unguarded.
- The guard reads the pipe at most every ``GATHER`` seconds (sooner when a lease deadline falls
  due): what it does on the worker's death or a lapse is at most that late, and a worker running
  many short jobs wakes it once per ``GATHER``, not twice per job. The records wait in the pipe
  meanwhile, and on the worker's death the guard reads every one before it acts.

``python -m burstd.worker.guard KILL_GRACE DOCKER`` is the guard's program; it imports nothing
of burst but this module and ``burstd.worker.container``, so it starts in a few tens of
milliseconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO

import burstd
from burstd.worker import container

# How long ``close`` waits for the guard to exit (immediate when no job is listed).
CLOSE_WAIT = 1.0
# The guard's pause after each read, so that the records of many jobs come in one read.
GATHER = 0.02


class JobGuard:
    """The worker's end: ``track`` each job's group as it starts, ``untrack`` it when reaped."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: int, on_lost: Callable[[str], None]):
        self._process = process
        self._pipe = pipe
        self._pending = b""
        self._on_lost = on_lost
        self._deadline: tuple[float, float] | None = None

    @classmethod
    def start(cls, kill_grace: float, docker: str, on_lost: Callable[[str], None]) -> JobGuard:
        guard_in, pipe = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "burstd.worker.guard", repr(kill_grace), docker],
                stdin=guard_in,
                stdout=subprocess.DEVNULL,
                process_group=0,
                env=burstd.child_env(),
            )
        except BaseException:
            os.close(pipe)
            raise
        finally:
            os.close(guard_in)
        os.set_blocking(pipe, False)
        return cls(process, pipe, on_lost)

    @property
    def pid(self) -> int:
        return self._process.pid

    def track(self, pgid: int, container: str | None = None) -> None:
        """List a job's process group (and its docker container) as running."""
        self._write(f"+{pgid} {container or ''}\n".encode())

    def untrack(self, pgid: int) -> None:
        """The job's group is killed and its leader about to be reaped: unlist it (not its
        container)."""
        self._write(f"-{pgid}\n".encode())

    def removed(self, name: str) -> None:
        """The job's container is removed (or removes itself): unlist it."""
        self._write(f"x{name}\n".encode())

    def lease_deadline(self, stop_at: float, kill_at: float) -> None:
        """Unless told a later time before, stop the listed jobs at ``stop_at`` (SIGTERM) and
        ``kill_at`` (SIGKILL), times of ``time.monotonic()``."""
        if self._deadline != (stop_at, kill_at):
            self._deadline = (stop_at, kill_at)
            self._write(f"@{stop_at!r} {kill_at!r}\n".encode())

    def _write(self, record: bytes) -> None:
        if self._pipe < 0:
            return
        data = self._pending + record
        try:
            written = os.write(self._pipe, data)
        except BlockingIOError:  # the guard is behind: keep the records for the next write
            written = 0
        except OSError as error:
            self._lost(f"the job guard (pid {self.pid}) is gone ({error.strerror})")
            return
        self._pending = data[written:]

    def _lost(self, why: str) -> None:
        os.close(self._pipe)
        self._pipe = -1
        self._on_lost(f"{why}: if this worker dies, its running jobs will not be stopped")

    def close(self) -> None:
        """The worker is done: the guard stops what is still listed, then exits."""
        if self._pipe >= 0:
            if self._pending:
                with contextlib.suppress(OSError):
                    os.set_blocking(self._pipe, True)
                    os.write(self._pipe, self._pending)
            os.close(self._pipe)
            self._pipe = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(CLOSE_WAIT)


# -- the guard's program ------------------------------------------------------------------------


class Listing:
    """What the worker has said: its jobs' groups (with containers, "" for none), the containers
    not removed yet, and the times its leases lapse."""

    def __init__(self) -> None:
        self.jobs: dict[int, str] = {}
        self.containers: set[str] = set()
        self.stop_at = self.kill_at = math.inf
        self._rest = b""

    def feed(self, data: bytes) -> None:
        """Take whole records; a record cut short waits for its end."""
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            if line.startswith(b"+"):
                pgid, _, name = line[1:].strip().partition(b" ")
                self.jobs[int(pgid)] = name.decode()
                if name:
                    self.containers.add(name.decode())
            elif line.startswith(b"-"):
                self.jobs.pop(int(line[1:]), None)
            elif line.startswith(b"x"):
                self.containers.discard(line[1:].decode())
            elif line.startswith(b"@"):
                stop_at, kill_at = line[1:].split()
                self.stop_at, self.kill_at = float(stop_at), float(kill_at)


def read_jobs(records: IO[bytes]) -> dict[int, str]:
    """The groups still listed once the records end (a record cut short by the worker's death
    is not a record)."""
    listing = Listing()
    listing.feed(records.read())
    return listing.jobs


def _signal_groups(pgids: list[int], sig: int) -> list[int]:
    """Send ``sig`` to each group; returns those that still exist."""
    alive = []
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
            alive.append(pgid)
    return alive


def stop_jobs(jobs: dict[int, str], containers: set[str], kill_grace: float, docker: str) -> None:
    """What ``executor`` does to a job it stops, for every listed one at once; ``containers``
    (a container is not in its job's group) are removed."""
    pgids = _signal_groups(list(jobs), signal.SIGTERM)
    for name in sorted(containers):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                container.remove(docker, name),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=container.TIMEOUT,
                check=False,
            )
    deadline = time.monotonic() + kill_grace
    while pgids and time.monotonic() < deadline:
        time.sleep(0.05)
        pgids = _signal_groups(pgids, 0)
    _signal_groups(pgids, signal.SIGKILL)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grace, docker = float(sys.argv[1]), sys.argv[2]
    worker = os.getppid()  # before the worker is gone and another process adopts this one
    listing = Listing()
    fd = sys.stdin.fileno()
    while True:
        wait = None
        if listing.jobs and listing.stop_at < math.inf:
            wait = max(0.0, listing.stop_at - time.monotonic())
        if select.select([fd], [], [], wait)[0]:
            data = os.read(fd, 65536)
            if not data:
                break
            listing.feed(data)
            pause = GATHER
            if listing.jobs and listing.stop_at < math.inf:
                pause = min(pause, listing.stop_at - time.monotonic())
            if pause > 0:
                time.sleep(pause)
        elif listing.jobs:  # nothing more from the worker (it reads no word either): lapsed
            print(
                f"burst job guard: the worker (pid {worker}) let its leases lapse with"
                f" {len(listing.jobs)} jobs running: stopping them",
                file=sys.stderr,
                flush=True,
            )
            running = {name for name in listing.jobs.values() if name}
            kill_in = max(0.0, listing.kill_at - time.monotonic())
            stop_jobs(listing.jobs, running, kill_in, docker)
            listing.jobs.clear()
            listing.containers -= running
            listing.stop_at = listing.kill_at = math.inf
    if listing.jobs or listing.containers:
        print(
            f"burst job guard: the worker (pid {worker}) is gone with {len(listing.jobs)} jobs"
            f" running and {len(listing.containers)} containers: stopping them",
            file=sys.stderr,
            flush=True,
        )
        stop_jobs(listing.jobs, listing.containers, grace, docker)


if __name__ == "__main__":
    main()
