"""Tokens and roles against a real controller process: every method refuses a missing and a
wrong-role token, a revoked token is refused at once on an open connection, and the state
directory's files are private."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from burstd import auth, transport
from burstd.auth import Role
from proto.burst.v1 import control_pb2, token_pb2
from tests.cluster import Cluster

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControllerRpc"]
TIMEOUT = 20.0


def request_class(method: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(method.input_type)


@asynccontextmanager
async def channel(cluster: Cluster, token: str | None, multiplex: bool) -> AsyncIterator[Any]:
    metadata = auth.bearer(token) if token is not None else None
    async with transport.Channel(
        "127.0.0.1", cluster.port, metadata=metadata, multiplex=multiplex
    ) as ch:
        yield ch


async def call(ch: transport.Channel, method: Any) -> None:
    """One call of ``method`` with an empty request (the guard answers before decoding)."""
    request = request_class(method)()
    if method.server_streaming:
        async for _ in ch.server_stream(
            SERVICE.full_name, method.name, request, object, timeout=TIMEOUT
        ):
            break
    else:
        await ch.unary_raw(SERVICE.full_name, method.name, b"", timeout=TIMEOUT)


async def create_token(cluster: Cluster, role: str, **fields: Any) -> tuple[str, str]:
    """A new token of ``role`` made through the admin RPC; (its id, the token)."""
    async with channel(cluster, cluster.token("admin"), False) as ch:
        reply = await ch.unary(
            SERVICE.full_name,
            "CreateToken",
            token_pb2.CreateTokenRequest(user=f"u-{role}", role=role, **fields),
            token_pb2.CreateTokenResponse,
            timeout=TIMEOUT,
        )
    assert reply.info.role == role and reply.token
    return reply.info.token_id, reply.token


@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "mux"])
async def test_every_method_refuses_no_token_and_a_wrong_role(
    cluster: Cluster, multiplex: bool
) -> None:
    cluster.controller()
    tokens = {
        Role.CLIENT: (await create_token(cluster, "client"))[1],
        Role.WORKER: cluster.token("worker"),
        Role.ADMIN: cluster.token("admin"),
    }
    methods = list(SERVICE.methods)
    assert len(methods) == 20
    wrong = 0
    for method in methods:
        path = f"/{SERVICE.full_name}/{method.name}"
        for token in (None, "burst_not-a-token", f"{tokens[Role.ADMIN]}x"):
            async with channel(cluster, token, multiplex) as ch:
                with pytest.raises(transport.Unauthenticated):
                    await call(ch, method)
        for role, token in tokens.items():
            if role in auth.RULES[path].roles:
                continue
            wrong += 1
            async with channel(cluster, token, multiplex) as ch:
                with pytest.raises(transport.PermissionDenied, match=method.name):
                    await call(ch, method)
    assert wrong == 8 * 1 + 8 * 1 + 3 * 2  # client methods, worker methods, token methods


async def test_the_refusals_say_nothing_of_jobs(cluster: Cluster) -> None:
    """Without a token, a job that exists and one that does not are refused alike."""
    cluster.controller()
    job_id = cluster.burst("submit", "process", "true").stdout.strip()
    answers = []
    for wanted in (job_id, "job-99999999"):
        async with channel(cluster, None, True) as ch:
            with pytest.raises(transport.Unauthenticated) as refused:
                await ch.unary(
                    SERVICE.full_name,
                    "GetJobStatus",
                    request_class(SERVICE.methods_by_name["GetJobStatus"])(job_id=wanted),
                    object,
                    timeout=TIMEOUT,
                )
        answers.append(str(refused.value))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "mux"])
async def test_a_revoked_token_is_refused_at_once_on_an_open_connection(
    cluster: Cluster, multiplex: bool
) -> None:
    cluster.controller()
    token_id, token = await create_token(cluster, "client")
    list_jobs = SERVICE.methods_by_name["ListJobs"]
    async with channel(cluster, token, multiplex) as ch:
        await call(ch, list_jobs)
        connection = ch._connection
        async with channel(cluster, cluster.token("admin"), False) as admin:
            await admin.unary(
                SERVICE.full_name,
                "RevokeToken",
                token_pb2.RevokeTokenRequest(token_id=token_id),
                token_pb2.RevokeTokenResponse,
                timeout=TIMEOUT,
            )
            revoked = time.monotonic()
        with pytest.raises(transport.Unauthenticated, match="revoked"):
            await call(ch, list_jobs)
        refused_after = time.monotonic() - revoked
        assert ch._connection is connection  # the same connection, open all along
    print(f"revoked token refused {refused_after * 1000:.1f} ms after the revocation")
    assert refused_after < 1.0


async def test_an_expired_token_is_refused(cluster: Cluster) -> None:
    cluster.controller()
    _, token = await create_token(cluster, "client", expires_in_seconds=1.0)
    list_jobs = SERVICE.methods_by_name["ListJobs"]
    async with channel(cluster, token, True) as ch:
        await call(ch, list_jobs)
        await trio.sleep(1.2)
        with pytest.raises(transport.Unauthenticated, match="expired"):
            await call(ch, list_jobs)


def test_the_state_directory_and_its_files_are_private(cluster: Cluster) -> None:
    """0700 for the directory, 0600 for the store's files and the tokens, whatever the umask."""
    old = os.umask(0o022)
    try:
        cluster.controller()
    finally:
        os.umask(old)
    cluster.worker("w1")
    job_id = cluster.burst("submit", "process", "true").stdout.strip()
    cluster.burst("wait", job_id)
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
    names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in cluster.state.iterdir()}
    for name in ("burst.db", "burst.db-wal", "burst.db-shm", "burst.lock"):
        assert names.pop(name) == 0o600, name
    assert names == {"admin.token": 0o600, "worker.token": 0o600}


def test_a_looser_state_directory_is_made_private(cluster: Cluster) -> None:
    cluster.state.mkdir(mode=0o755)
    cluster.state.chmod(0o755)
    cluster.controller()
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
