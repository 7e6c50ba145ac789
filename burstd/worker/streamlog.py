"""Stream output mode (``burst submit --output stream``): the output of every job of a
submission in a few log files per worker, instead of two files per job.

Layout, in the job's output folder: ``<submission>/<worker_id>.<n>.stdout``, ``.stderr`` and
``.index``, one set per job running at once (so at most ``slots`` sets per worker and
submission, however many jobs). Promises:

1. A set is written by one job at a time: a job takes a free set (or a new one) when it starts
   and gives it back when its process (and its process group) has ended, so its output is one
   contiguous byte range of each file, appended to (no copy through the worker: the job writes
   the files itself).
2. When the job has ended, one line ``<job_id> <attempt> <out_start> <out_end> <err_start>
   <err_end>`` is appended to the set's index: a job's part is found by reading the index
   files of its submission on that worker, never the output itself.
3. While the job runs, ``running(job_id, attempt)`` gives its set and where its part starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

__all__ = ["Part", "StreamLogs"]

_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True, slots=True)
class Part:
    """Where one attempt's output is: a file each for stdout and stderr, and the byte ranges
    (``end`` None: still being written)."""

    stdout: str
    stderr: str
    out_start: int
    err_start: int
    out_end: int | None = None
    err_end: int | None = None

    def of(self, stderr: bool) -> tuple[str, int, int | None]:
        if stderr:
            return self.stderr, self.err_start, self.err_end
        return self.stdout, self.out_start, self.out_end


class StreamLogs:
    """The stream-mode log files of one worker (the module's promises)."""

    def __init__(self, worker_id: str) -> None:
        # File names hold the worker id: anything but a plain name becomes underscores.
        self._name = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id).lstrip(".") or "worker"
        self._free: dict[str, list[int]] = {}  # set numbers not in use, by submission folder
        self._sets: dict[str, int] = {}  # sets made so far, by submission folder
        self._running: dict[tuple[str, int], Part] = {}

    def _base(self, folder: str, number: int) -> str:
        return os.path.join(folder, f"{self._name}.{number}")

    @contextmanager
    def part(self, job_id: str, attempt: int, folder: str) -> Iterator[tuple[int, int, Part]]:
        """A free set of ``folder`` for one attempt: yields the stdout and stderr descriptors
        (the caller closes them once the job has them) and its part; on exit, the part is
        indexed (promise 2) and the set is free again. Raises ``OSError``."""
        free = self._free.setdefault(folder, [])
        if free:
            number = free.pop()
        else:
            number = self._sets.get(folder, 0)
            self._sets[folder] = number + 1
        base = self._base(folder, number)
        try:
            os.makedirs(folder, exist_ok=True)
            out_fd = os.open(f"{base}.stdout", _FLAGS, 0o666)
            try:
                err_fd = os.open(f"{base}.stderr", _FLAGS, 0o666)
            except BaseException:
                os.close(out_fd)
                raise
        except BaseException:
            free.append(number)
            raise
        part = Part(
            f"{base}.stdout", f"{base}.stderr", os.fstat(out_fd).st_size, os.fstat(err_fd).st_size
        )
        key = (job_id, attempt)
        self._running[key] = part
        try:
            yield out_fd, err_fd, part
        finally:
            del self._running[key]
            try:
                out_end = os.stat(part.stdout).st_size
                err_end = os.stat(part.stderr).st_size
                line = f"{job_id} {attempt} {part.out_start} {out_end} {part.err_start} {err_end}\n"
                index = os.open(f"{base}.index", _FLAGS, 0o666)
                try:
                    os.write(index, line.encode())
                finally:
                    os.close(index)
            finally:
                free.append(number)

    def running(self, job_id: str, attempt: int) -> Part | None:
        return self._running.get((job_id, attempt))

    def find(self, job_id: str, attempt: int, folder: str) -> Part | None:
        """The part of an attempt that has ended, from the index files of ``folder`` written
        by this worker (promise 2); None when none lists it."""
        wanted = f"{job_id} {attempt} ".encode()
        prefix = f"{self._name}."
        try:
            names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".index")]
        except OSError:
            return None
        for name in names:
            base = os.path.join(folder, name.removesuffix(".index"))
            with open(os.path.join(folder, name), "rb") as index:
                for line in index:
                    if line.startswith(wanted):
                        numbers = [int(x) for x in line.split()[2:6]]
                        return Part(
                            f"{base}.stdout", f"{base}.stderr", *numbers[::2], *numbers[1::2]
                        )
        return None
