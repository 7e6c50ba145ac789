"""The worker's end of reading job output through the controller (see burstd/controller/output.py).

Promises:

1. The worker asks the controller for reads on its own connection (``TakeOutputReads``, a
   long-poll) and serves each in a task of its own, at most ``MAX_READS`` at once.
2. A read sends the file a chunk (``CHUNK`` bytes) per ``SendOutput`` call and reads the next
   one only once the controller says the previous was taken: a read holds one chunk in memory,
   whatever the file's size.
3. A ``follow`` read keeps sending what the job writes while that attempt runs here, then what
   it wrote last, then the end.
4. A file that cannot be read ends the read with an error naming the file and the worker.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import trio
from loguru import logger

from burstd import transport
from burstd.worker.executor import (
    ExecConfig,
    SpecError,
    attempt_path,
    output_paths,
    stream_folder,
)
from burstd.worker.session import CALL_TIMEOUT, ControllerLink
from proto.burst.v1 import output_pb2

__all__ = ["CHUNK", "OutputServer", "tail_offset"]

CHUNK = 256 * 1024
MAX_READS = 32
TAKE_WAIT_MS = 20_000
# How often a follow read looks for more output of a running job.
FOLLOW_POLL = 0.2


def tail_offset(fd: int, lines: int, size: int, start: int = 0, block: int = 64 * 1024) -> int:
    """Where the last ``lines`` lines of the file's bytes ``start`` to ``size`` start (a last
    line without its newline counts as a line), reading backwards a block at a time."""
    end = size
    if lines <= 0:
        return size
    if size > start and os.pread(fd, 1, size - 1) == b"\n":
        end = size - 1  # the final newline ends the last line, it starts none
    while end > start:
        first = max(start, end - block)
        data = os.pread(fd, end - first, first)
        i = len(data)
        while (i := data.rfind(b"\n", 0, i)) >= 0:
            lines -= 1
            if lines == 0:
                return first + i + 1
        end = first
    return start


class _NoOutput(Exception):
    """The read's output cannot be found or opened; the message says why."""


class OutputServer:
    """Serves the controller's reads of this worker's job output (the module's promises)."""

    def __init__(
        self,
        link: ControllerLink,
        config: ExecConfig,
        runs: Callable[[str, int], bool],
    ) -> None:
        """``runs(job_id, attempt)``: whether that attempt's process runs here now."""
        self.link = link
        self.config = config
        self.runs = runs
        self._slots = trio.Semaphore(MAX_READS)
        self.log = logger.bind(worker_id=config.worker_id)

    async def run(self) -> None:
        request = output_pb2.TakeOutputReadsRequest(
            worker_id=self.config.worker_id, wait_ms=TAKE_WAIT_MS
        )
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    response = await self.link.call(
                        "TakeOutputReads",
                        request,
                        output_pb2.TakeOutputReadsResponse,
                        timeout=TAKE_WAIT_MS / 1000 + CALL_TIMEOUT,
                    )
                except transport.Unimplemented:
                    return  # an older controller: nobody can ask for reads
                except transport.RpcError as error:
                    self.log.debug("taking output reads failed: {}", error)
                    await trio.sleep(1.0)
                    continue
                for read in response.reads:
                    await self._slots.acquire()
                    nursery.start_soon(self._serve, read)

    async def _serve(self, read: output_pb2.OutputRead) -> None:
        log = self.log.bind(job_id=read.job_id)
        try:
            await self._send_file(read)
        except transport.RpcError as error:
            log.debug("output read {} given up: {}", read.read_id, error)
        except OSError as error:  # the file went bad under the read: the reader's stream ends
            log.warning("output read {} failed: {}", read.read_id, error)
        finally:
            self._slots.release()

    async def _send(self, read: output_pb2.OutputRead, **fields: object) -> bool:
        """Send one chunk until taken; False once the read is closed."""
        request = output_pb2.SendOutputRequest(
            worker_id=self.config.worker_id,
            read_id=read.read_id,
            **fields,  # type: ignore[arg-type]
        )
        while True:
            response = await self.link.call("SendOutput", request, output_pb2.SendOutputResponse)
            if response.closed:
                return False
            if response.taken:
                return True

    def _find(self, read: output_pb2.OutputRead) -> tuple[str, int, int | None]:
        """The file, where the read's part starts, and where it ends (None: at the file's end,
        or unknown yet for a stream part still written). Raises ``SpecError``, ``_NoOutput``."""
        if read.spec.output_mode != "stream":
            return self._file(read), 0, None
        streams = self.config.streams
        folder = stream_folder(read.spec, self.config)
        part = None
        if streams is not None:
            part = streams.running(read.job_id, read.attempt) or streams.find(
                read.job_id, read.attempt, folder
            )
        if part is None:
            raise _NoOutput(f"no output of attempt {read.attempt} in the stream files of {folder}")
        return part.of(read.stderr)

    def _file(self, read: output_pb2.OutputRead) -> str:
        """The attempt's file: as its spec names it, or with the attempt's number when an
        earlier attempt's was there (``executor.attempt_path``). The controller's word for it
        (its result's) is taken only if it is one of those two."""
        stdout, stderr = output_paths(read.job_id, read.attempt, read.spec, self.config)
        named = stderr if read.stderr else stdout
        numbered = attempt_path(named, read.attempt)
        if read.path:
            if read.path not in (named, numbered):
                raise _NoOutput(f"{read.path} is not an output file of this job")
            return read.path
        return numbered if os.path.lexists(numbered) else named

    async def _send_file(self, read: output_pb2.OutputRead) -> None:
        where = f"on worker {self.config.worker_id}"
        path = ""
        try:
            path, start, end = self._find(read)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (SpecError, _NoOutput) as error:
            await self._send(read, error=f"{read.job_id}: {error} ({where})")
            return
        except OSError as error:
            what = "no output file" if error.errno == errno.ENOENT else "cannot read"
            await self._send(read, error=f"{read.job_id}: {what} {path} {where}")
            return
        try:
            stream = read.spec.output_mode == "stream"
            following = read.follow and self.runs(read.job_id, read.attempt)
            if end is None and stream and not following:
                end = os.fstat(fd).st_size  # a part being written: what it has so far
            size = os.fstat(fd).st_size if end is None else end
            offset = tail_offset(fd, read.tail, size, start) if read.tail else start
            while True:
                want = CHUNK if end is None else min(CHUNK, end - offset)
                data = os.pread(fd, want, offset) if want > 0 else b""
                if data:
                    offset += len(data)
                    if not await self._send(read, data=data):
                        return
                elif following:
                    # While the attempt runs here, wait for more; once it ended, read on to
                    # its end once more (what it wrote last), then end.
                    following = self.runs(read.job_id, read.attempt)
                    if following:
                        await trio.sleep(FOLLOW_POLL)
                    elif stream:
                        try:
                            end = self._find(read)[2]
                        except _NoOutput:  # its part was never indexed: what it has so far
                            end = offset
                else:
                    await self._send(read, eof=True)
                    return
        finally:
            os.close(fd)
