"""The store's writes, run by a child process: the controller's end of its pipes.

Why a process: SQLite's work for a job (insert, lease, result) costs about as much CPU as the rest
of the controller's job path, and under CPython's GIL a thread cannot run it beside the event loop.
A child process runs it on another core; the parent only encodes each commit's rows (marshal,
under a microsecond a row) and waits for the reply on the event loop. The child's program is
``burstd.controller.store_child``.

What it promises (the same as writing in-process, see ``burstd.controller.store``):

- A call returns only once the child has committed its transaction (``synchronous=FULL``), and
  raises ``sqlite3.OperationalError`` with SQLite's message when the child's write failed
  (a full disk): the caller's handling of a failed write is the same as in-process.
- A child that died (killed, crashed) fails the call under way, or the next one, with an error
  naming its exit status; the call after that starts a new child. Nothing is written twice: a
  transaction the child did not commit is rolled back by SQLite.
- The child holds the state directory's lock with the parent (it inherits the locked file), so
  no other controller opens the store while a write of this one may still land. It leaves when
  the parent closes its end (``close``) or dies, once the transaction under way is done, and it
  ignores SIGINT and SIGTERM: a Ctrl-C or a ``systemctl stop`` reaches the whole process group,
  and the parent's last commits must still be written while it shuts down.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import trio

import burstd
from burstd.controller.store_child import HEADER

# How long ``close`` waits for the child to finish a transaction before killing it.
CLOSE_TIMEOUT = 10.0


class StoreProcess:
    """The parent's end: ``await call(operation, *args)`` runs ``Writes.<operation>(*args)`` in
    the child and returns its result. One call at a time (the store writer's lock sees to it).

    The parent's ends of the pipes are non-blocking and awaited on the event loop, so the loop
    serves calls while the child writes; no thread waits on them (a thread would need the GIL
    back from a busy loop after every pipe write). ``close`` needs no event loop."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self._child: subprocess.Popen[bytes] | None = None
        self._requests = self._replies = -1  # the parent's ends of the pipes
        self._buffer = bytearray()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (benchmarks add its CPU to the controller's)."""
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        """Start the child unless one runs (a call starts it too): the store writer starts it
        with the controller, so that the first commit does not wait for a Python to start."""
        if self._child is not None:
            return
        child_in, requests = os.pipe()
        replies, child_out = os.pipe()
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "burstd.controller.store_child", str(self.path)],
                stdin=child_in,
                stdout=child_out,
                # The child holds the lock by having the locked file open: nothing to do with it.
                pass_fds=(self.lock_fd,),
                env=burstd.child_env(),
            )
        except BaseException:
            os.close(requests)
            os.close(replies)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        os.set_blocking(requests, False)
        os.set_blocking(replies, False)
        self._requests, self._replies, self._buffer = requests, replies, bytearray()

    async def call(self, operation: str, *args: Any) -> Any:
        """``send`` then ``receive``."""
        await self.send(operation, *args)
        return await self.receive()

    async def send(self, operation: str, *args: Any) -> None:
        """Send a request; its reply is the next ``receive``. Shielded from cancellation, as
        ``receive`` is: a request sent is waited for (a caller never stops between a change
        written and its acknowledgement)."""
        with trio.CancelScope(shield=True):
            self.start()
            request = marshal.dumps((operation, args))
            try:
                await self._send(HEADER.pack(len(request)) + request)
            except BrokenPipeError:
                self._died()

    async def receive(self) -> Any:
        """The result of the request sent before; raises ``sqlite3.OperationalError`` if it
        failed."""
        with trio.CancelScope(shield=True):
            try:
                reply = await self._receive_frame()
            except EOFError:
                self._died()
        ok, result = marshal.loads(reply)
        if not ok:
            raise sqlite3.OperationalError(result)
        return result

    def _died(self) -> NoReturn:
        status = self._stop()
        raise sqlite3.OperationalError(f"the store process exited with status {status}")

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._requests, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._requests)

    async def _receive_frame(self) -> bytes:
        buffer = self._buffer
        while len(buffer) < HEADER.size:
            await self._fill()
        (size,) = HEADER.unpack_from(buffer)
        while len(buffer) < HEADER.size + size:
            await self._fill()
        frame = bytes(buffer[HEADER.size : HEADER.size + size])
        del buffer[: HEADER.size + size]
        return frame

    async def _fill(self) -> None:
        while True:
            try:
                data = os.read(self._replies, 1 << 16)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._replies)
        if not data:
            raise EOFError
        self._buffer += data

    def close(self) -> None:
        """Let the child finish and leave (it exits when its input closes)."""
        self._stop()

    def _stop(self) -> int | None:
        child, self._child = self._child, None
        if child is None:
            return None
        os.close(self._requests)
        os.close(self._replies)
        self._requests = self._replies = -1
        try:
            return child.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()
