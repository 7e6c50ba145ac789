"""The store process (burstd/controller/store_process.py): a real child writing a real store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from burstd.controller.store import Commit, Store, row
from burstd.controller.table import JobTable, NewJob
from burstd.controller.writer import StoreWriter

SPEC = b"\n\x06\n\x04true"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    try:
        yield s
    finally:
        s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet is a zombie: not alive either.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def _submit(store: Store, table: JobTable) -> str:
    (job_id,) = table.submit([NewJob(SPEC)], 0.0)
    new, _, _ = table.take_changes()
    await store.send(Commit([row(job) for job in new], [], [], table.next_id))
    await store.written()
    return job_id


async def test_writes_survive_sigterm_and_sigint_to_the_store_process(store: Store) -> None:
    """A Ctrl-C or a systemctl stop reaches the whole group: the controller's last commits
    must still be written."""
    table = JobTable(track_changes=True)
    await _submit(store, table)
    pid = store.process_id
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    job_id = await _submit(store, table)
    assert store.process_id == pid and store.get(job_id) is not None


async def test_a_killed_store_process_fails_one_write_and_the_next_starts_another(
    store: Store,
) -> None:
    table = JobTable(track_changes=True)
    await _submit(store, table)
    pid = store.process_id
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(sqlite3.OperationalError, match="store process exited with status -9"):
        await _submit(store, table)
    job_id = await _submit(store, table)
    assert store.process_id not in (None, pid)
    assert store.get(job_id) is not None


async def test_a_bad_request_fails_that_call_only(store: Store) -> None:
    table = JobTable(track_changes=True)
    await _submit(store, table)
    with pytest.raises(sqlite3.OperationalError, match="AttributeError"):
        await store._writes.call("no_such_operation")
    job_id = await _submit(store, table)
    assert store.get(job_id) is not None


async def test_close_leaves_no_store_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await _submit(store, JobTable(track_changes=True))
    pid = store.process_id
    assert pid is not None and _alive(pid)
    store.close()
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    Store(tmp_path / "state").close()  # and the state directory is free again


async def test_the_store_process_starts_with_the_writer_before_any_write(store: Store) -> None:
    """The first commit would otherwise wait for a Python to start (0.1-0.4 s): every job of a
    freshly started controller's first submission waited for it."""
    assert store.process_id is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(StoreWriter(store, JobTable(track_changes=True)).run)
        await trio.testing.wait_all_tasks_blocked()
        pid = store.process_id
        assert pid is not None and _alive(pid)
        nursery.cancel_scope.cancel()


def test_the_store_process_imports_no_trio() -> None:
    """Its start-up is what the first commit waits for after a store process died (and costs
    each controller start): it imports what it runs, not trio (0.2 s of its 0.4 s)."""
    code = (
        "import sys, burstd.controller.store_child; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'purerpc', 'loguru'}))"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert done.stdout.strip() == "[]"
