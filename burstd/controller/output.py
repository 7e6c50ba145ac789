"""Job output read through the controller: the relay between a reader and the worker.

The controller never dials a worker (workers may sit behind NAT or a firewall). Promises:

1. A read (``ReadOutput``) is queued for the worker that holds the job's output, which takes
   it on its own connection (``TakeOutputReads``, a long-poll) and sends the bytes back a chunk
   per call (``SendOutput``).
2. A chunk is answered "taken" only once the reader's stream took it, so the controller holds
   at most about one chunk per read, whatever the output's size; a chunk the reader does not
   take within ``SEND_WAIT`` is answered "not taken" (the worker sends it again), so that no
   worker call outlasts its deadline.
3. A reader that goes away ends the read: the worker's next ``SendOutput`` is answered "closed".
4. A job whose worker is gone, or that never ran, is refused at once with a message naming the
   worker or the state; an unknown job (or another user's, to a client) is NOT_FOUND.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from burstd import transport
from burstd.auth import Caller, Role
from burstd.controller.table import TERMINAL, Job, JobState, earlier_attempts
from proto.burst.v1 import job_pb2, output_pb2

__all__ = ["OutputRelay", "may_read_output"]

# How long a SendOutput waits for the reader to take its chunk before answering "not taken".
SEND_WAIT = 5.0
# A worker that has not taken a read within this many seconds is not serving reads.
TAKE_WAIT = 30.0
# Longest TakeOutputReads long-poll, and the reads one answer hands over.
MAX_TAKE_WAIT_MS = 60_000
MAX_TAKE = 64
# How often a --follow read of a job not started yet looks whether it has.
START_POLL = 0.2


def may_read_output(caller: Caller, job: Job) -> bool:
    """Whether the caller may read the job's output: its owner (a client) or an admin."""
    return caller.is_admin or (caller.role is Role.CLIENT and caller.sees(job.owner))


@dataclass(eq=False)
class _Read:
    read: output_pb2.OutputRead
    worker_id: str
    send: trio.MemorySendChannel[output_pb2.SendOutputRequest]
    receive: trio.MemoryReceiveChannel[output_pb2.SendOutputRequest]
    taken: trio.Event


def _where(job: Job, attempt: int, stderr: bool) -> tuple[str, str]:
    """The worker that ran an attempt of the job, and the file its result named ("" while it
    runs). Raises FAILED_PRECONDITION for an earlier attempt that left no files on record."""
    if attempt == job.attempt:
        return job.worker_id, job.stderr_path if stderr else job.stdout_path
    for kept in earlier_attempts(job):
        if kept.attempt == attempt and (kept.stdout_path or kept.stderr_path):
            return kept.worker_id, kept.stderr_path if stderr else kept.stdout_path
    raise transport.FailedPrecondition(
        f"attempt {attempt} of {job.job_id} left no output files on record (it never started,"
        " or its worker was lost before it reported)"
    )


class OutputRelay:
    """The reads under way, by id and by the worker that serves them."""

    def __init__(
        self, lookup: Callable[[str], Awaitable[Job | None]], workers: Mapping[str, object]
    ) -> None:
        """``lookup``: a job by id (memory, then the store); ``workers``: the live workers."""
        self._lookup = lookup
        self._workers = workers
        self._ids = itertools.count(1)
        self._reads: dict[int, _Read] = {}
        self._waiting: dict[str, deque[_Read]] = {}  # not taken yet, by worker
        self._wakeups: dict[str, trio.Event] = {}  # a long-poll of the worker waits

    async def read_output(
        self, request: output_pb2.ReadOutputRequest, caller: Caller
    ) -> AsyncIterator[output_pb2.OutputChunk]:
        """The job's output, a chunk at a time (promises 1-4)."""
        job = await self._lookup(request.job_id)
        if job is None or not may_read_output(caller, job):
            raise transport.NotFound(f"no job {request.job_id}")
        if request.follow:
            while job.state not in TERMINAL and job.state is not JobState.RUNNING:
                await trio.sleep(START_POLL)
                job = await self._lookup(request.job_id) or job
        attempt = request.attempt or job.attempt
        if job.attempt == 0 or (job.started_at == 0 and attempt == job.attempt):
            raise transport.FailedPrecondition(
                f"{job.job_id} has not started ({job.state.value}): it has no output yet"
                + ("" if request.follow else "; --follow waits for it")
            )
        if attempt > job.attempt:
            raise transport.FailedPrecondition(
                f"{job.job_id} has had {job.attempt} attempt(s), not {attempt}"
            )
        worker_id, path = _where(job, attempt, request.stderr)
        if worker_id not in self._workers:
            raise transport.FailedPrecondition(
                f"worker {worker_id} that ran {job.job_id} is gone: its output cannot be read"
            )
        async for chunk in self._relay(job, attempt, worker_id, path, request):
            yield chunk

    async def _relay(
        self,
        job: Job,
        attempt: int,
        worker_id: str,
        path: str,
        request: output_pb2.ReadOutputRequest,
    ) -> AsyncIterator[output_pb2.OutputChunk]:
        send, receive = trio.open_memory_channel[output_pb2.SendOutputRequest](0)
        read = _Read(
            output_pb2.OutputRead(
                read_id=next(self._ids),
                job_id=job.job_id,
                attempt=attempt,
                stderr=request.stderr,
                tail=request.tail,
                follow=request.follow,
                spec=job_pb2.JobSpec.FromString(job.spec),
                path=path,
            ),
            worker_id,
            send,
            receive,
            trio.Event(),
        )
        read_id = read.read.read_id
        self._reads[read_id] = read
        self._waiting.setdefault(worker_id, deque()).append(read)
        self._wake(worker_id)
        try:
            with trio.move_on_after(TAKE_WAIT) as late:
                await read.taken.wait()
            if late.cancelled_caught:
                raise transport.Unavailable(
                    f"worker {worker_id} did not take the read of {job.job_id}'s output"
                    f" within {TAKE_WAIT:g} s"
                )
            async with receive:
                async for piece in receive:
                    if piece.error:
                        raise transport.FailedPrecondition(piece.error)
                    if piece.data:
                        yield output_pb2.OutputChunk(data=piece.data)
                    if piece.eof:
                        return
        finally:
            del self._reads[read_id]
            waiting = self._waiting.get(worker_id)
            if waiting is not None and read in waiting:
                waiting.remove(read)
            send.close()

    def _wake(self, worker_id: str) -> None:
        event = self._wakeups.pop(worker_id, None)
        if event is not None:
            event.set()

    async def take_output_reads(
        self, request: output_pb2.TakeOutputReadsRequest, caller: Caller
    ) -> output_pb2.TakeOutputReadsResponse:
        """The reads waiting for this worker; waits up to ``wait_ms`` for one."""
        worker_id = request.worker_id
        waiting = self._waiting.get(worker_id)
        if not waiting and request.wait_ms:
            event = self._wakeups.setdefault(worker_id, trio.Event())
            with trio.move_on_after(min(request.wait_ms, MAX_TAKE_WAIT_MS) / 1000):
                await event.wait()
            waiting = self._waiting.get(worker_id)
        reads: list[output_pb2.OutputRead] = []
        while waiting and len(reads) < MAX_TAKE:
            read = waiting.popleft()
            read.taken.set()
            reads.append(read.read)
        if waiting is not None and not waiting:
            del self._waiting[worker_id]
        return output_pb2.TakeOutputReadsResponse(reads=reads)

    async def send_output(
        self, request: output_pb2.SendOutputRequest, caller: Caller
    ) -> output_pb2.SendOutputResponse:
        """One chunk of a read from its worker (promises 2 and 3)."""
        read = self._reads.get(request.read_id)
        if read is None or read.worker_id != request.worker_id:
            return output_pb2.SendOutputResponse(closed=True)
        last = request.eof or bool(request.error)
        try:
            with trio.move_on_after(SEND_WAIT):
                await read.send.send(request)
                return output_pb2.SendOutputResponse(taken=True, closed=last)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return output_pb2.SendOutputResponse(closed=True)
        return output_pb2.SendOutputResponse(taken=False)
