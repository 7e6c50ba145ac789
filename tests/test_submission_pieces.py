"""Submissions too large for one message go in pieces and stay all or nothing (issue 17, defect
1): a real controller in this trio loop (durable and in memory), the Python client with small
pieces (``ARRAY_CHUNK``), and the pieces' protocol itself (SubmitJobsRequest.submission_id,
more, offset)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from burstd import client as client_module
from burstd import transport
from burstd.client import Client, process
from burstd.config import ControllerConfig
from burstd.controller import service as service_module
from burstd.controller.daemon import run_controller
from burstd.controller.store import DB_NAME
from proto.burst.v1 import job_pb2

PIECE = 1_000


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "ARRAY_CHUNK", PIECE)


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def controller(tmp_path: Path, store: str, **settings: Any) -> AsyncIterator[Client]:
    config = ControllerConfig(
        bind_addr="127.0.0.1:0", store=store, state_dir=tmp_path / "state", **settings
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_controller, config)
        token = (tmp_path / "state" / "admin.token").read_text().strip()
        async with Client.connect(f"127.0.0.1:{port}", token=token) as client:
            yield client
        nursery.cancel_scope.cancel()


async def listed(client: Client) -> list[str]:
    return [info.job_id async for info in client.list_jobs()]


def stored_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        (count,) = db.execute("SELECT count(*) FROM jobs").fetchone()
    db.close()
    return int(count)


async def test_a_submission_in_pieces_is_accepted_whole(tmp_path: Path, store: str) -> None:
    async with controller(tmp_path, store) as client:
        ids = await client.submit_array(process("true"), range(10, 2_510))
        assert len(set(ids)) == 2_500
        assert await listed(client) == ids
        last = await client.status(ids[-1])
        assert last.state == "queued"
    if store == "sqlite":
        assert stored_rows(tmp_path) == 2_500


async def test_a_refused_piece_leaves_nothing_of_its_submission(tmp_path: Path, store: str) -> None:
    """The queue takes 1,500: the second piece of 2,000 is refused, and with it the first,
    which held its room and its rows meanwhile. Both are free again afterwards."""
    async with controller(tmp_path, store, submission_buffer_capacity=1_500) as client:
        with pytest.raises(transport.ResourceExhausted, match="queue is full"):
            await client.submit_array(process("true"), range(2_000))
        assert await listed(client) == []
        ids = await client.submit_array(process("true"), range(1_500))
        assert await listed(client) == ids
    if store == "sqlite":
        assert stored_rows(tmp_path) == 1_500


async def test_pieces_are_invisible_until_the_last_one_accepts_them(
    tmp_path: Path, store: str
) -> None:
    template = process("true")
    async with controller(tmp_path, store) as client:
        first = job_pb2.SubmitJobsRequest(template=template, array_count=3, more=True)
        reply = await client._call("SubmitJobs", first, job_pb2.SubmitJobsResponse)
        assert reply.submission_id.startswith("sub-")
        assert (await client.status(reply.job_ids[0])).state == "unknown"
        assert await listed(client) == []
        last = job_pb2.SubmitJobsRequest(
            template=template,
            array_start=3,
            array_count=2,
            submission_id=reply.submission_id,
            offset=3,
        )
        final = await client._call("SubmitJobs", last, job_pb2.SubmitJobsResponse)
        assert final.submission_id == reply.submission_id
        assert await listed(client) == [*reply.job_ids, *final.job_ids]
        # Accepted: the id names no submission being sent any more.
        with pytest.raises(transport.NotFound, match="submission_id: no submission"):
            await client._call("SubmitJobs", last, job_pb2.SubmitJobsResponse)
        assert len(await listed(client)) == 5


async def test_an_abandoned_submission_is_discarded_with_its_room(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops sending pieces (gone) does not hold room or rows for ever."""
    monkeypatch.setattr(service_module, "SUBMISSION_IDLE", 0.3)
    template = process("true")
    settings = {"submission_buffer_capacity": 10, "lease_ttl_ms": 200, "heartbeat_interval_ms": 50}
    async with controller(tmp_path, store, **settings) as client:
        first = job_pb2.SubmitJobsRequest(template=template, array_count=8, more=True)
        reply = await client._call("SubmitJobs", first, job_pb2.SubmitJobsResponse)
        with pytest.raises(transport.ResourceExhausted, match="8 being submitted"):
            await client.submit_array(template, range(5))
        await trio.sleep(0.6)
        last = job_pb2.SubmitJobsRequest(
            template=template, array_count=1, submission_id=reply.submission_id
        )
        with pytest.raises(transport.NotFound, match="nothing of it was queued"):
            await client._call("SubmitJobs", last, job_pb2.SubmitJobsResponse)
        ids = await client.submit_array(template, range(10))
        assert await listed(client) == ids
    if store == "sqlite":
        assert stored_rows(tmp_path) == 10


async def test_a_refusal_names_the_entry_by_its_place_in_the_whole_submission(
    tmp_path: Path, store: str
) -> None:
    """... and the pieces before it are discarded at once: their room is free again."""
    entries = [f"line {i}" for i in range(2_500)]
    entries[1_500] = "nul \x00 inside"
    async with controller(tmp_path, store, submission_buffer_capacity=2_500) as client:
        with pytest.raises(transport.InvalidArgument, match=r"entries\[1500\]: contains a NUL"):
            await client.submit_entries(process("true"), entries)
        assert await listed(client) == []
        ids = await client.submit_array(process("true"), range(2_500))
        assert await listed(client) == ids


async def test_the_limit_of_jobs_per_call_holds_for_a_submission_in_pieces(
    tmp_path: Path, store: str
) -> None:
    async with controller(tmp_path, store, max_batch=1_500) as client:
        with pytest.raises(
            transport.InvalidArgument, match="2000 jobs, more than the limit of 1500"
        ):
            await client.submit_array(process("true"), range(2_000))
        assert await listed(client) == []
        ids = await client.submit_array(process("true"), range(1_500))
        assert await listed(client) == ids
