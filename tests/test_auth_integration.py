"""Tokens and roles against a real controller process: every method refuses a missing and a
wrong-role token, a revoked token is refused at once on an open connection, and the state
directory's files are private."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from burstd import auth, transport
from burstd.auth import Role
from proto.burst.v1 import control_pb2, token_pb2
from tests.cluster import Cluster, free_port, program

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
    assert len(methods) == 25
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
    assert wrong == 11 * 1 + 8 * 1 + 5 * 2  # client methods, worker methods, admin methods


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


# -- the workers' peer port ---------------------------------------------------------------------


async def steal(port: int, token: str | None, thief: str = "thief") -> Any:
    from proto.burst.v1 import peer_pb2

    async with transport.Channel(
        "127.0.0.1", port, metadata=auth.bearer(token) if token else None, peer="peer"
    ) as ch:
        return await ch.unary(
            "burst.v1.WorkerPeerRpc",
            "StealJobs",
            peer_pb2.StealJobsRequest(thief_worker_id=thief, max_jobs=1),
            peer_pb2.StealJobsResponse,
            timeout=TIMEOUT,
        )


async def until_accepted(port: int, token: str, thief: str = "thief") -> None:
    """The peer learns of new tokens from a heartbeat reply: wait for it."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                await steal(port, token, thief)
                return
            except transport.Unauthenticated:
                await trio.sleep(0.05)


async def test_steal_jobs_needs_a_worker_token(cluster: Cluster) -> None:
    """The thief shows its own worker token; the victim checks it against the list the
    controller handed it (no admin or client token, none bound to another worker), and a revoked
    one is refused from the victim's next heartbeat on."""
    cluster.controller()
    peer_port = free_port()
    cluster.worker("w1", "--peer-listen", f"127.0.0.1:{peer_port}")
    cluster.wait_workers(1)
    worker = cluster.token("worker")
    reply = await steal(peer_port, worker)
    assert reply.victim.worker_id == "w1" and not reply.jobs
    _, client = await create_token(cluster, "client")
    for token in (None, "burst_nothing", client, cluster.token("admin")):
        with pytest.raises(transport.Unauthenticated):
            await steal(peer_port, token)
    bound_id, bound = await create_token(cluster, "worker", worker_ids=["w9"])
    await until_accepted(peer_port, bound, thief="w9")
    with pytest.raises(transport.PermissionDenied, match="thief_worker_id"):
        await steal(peer_port, bound, thief="w8")
    async with channel(cluster, cluster.token("admin"), False) as admin:
        await admin.unary(
            SERVICE.full_name,
            "RevokeToken",
            token_pb2.RevokeTokenRequest(token_id=bound_id),
            token_pb2.RevokeTokenResponse,
            timeout=TIMEOUT,
        )
    revoked = time.monotonic()
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                await steal(peer_port, bound, thief="w9")
            except transport.Unauthenticated:
                break
            await trio.sleep(0.05)
    print(f"peer refused the revoked token {time.monotonic() - revoked:.2f} s after revocation")
    await steal(peer_port, worker)  # the others still work


# -- burstd token --------------------------------------------------------------------------------


def burstd_token(cluster: Cluster, *args: str, check: bool = True) -> Any:
    run = subprocess.run(
        [*program("burstd"), "token", *args, "--controller", cluster.addr],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cluster.tmp,
        env=cluster.env,
    )
    assert not check or run.returncode == 0, run.stderr
    return run


def test_token_create_list_revoke(cluster: Cluster) -> None:
    """Through the running controller, and on the state directory when none runs: the token is
    printed once, on the last line; list shows id, user, role and dates, never a token."""
    offline = burstd_token(cluster, "create", "--role", "client", "--user", "bob")
    assert "no controller at" in offline.stderr and "changing the state directory" in offline.stderr
    bob = offline.stdout.splitlines()[-1]
    cluster.controller()
    made = burstd_token(
        cluster, "create", "--role", "client", "--user", "alice", "--expires", "30d"
    )
    *lines, alice = made.stdout.splitlines()
    assert alice.startswith("burst_") and len(alice) > 40
    assert lines[0].startswith("token tok-") and "user alice, role client, expires 20" in lines[0]
    token_id = lines[0].split()[1].rstrip(":")
    for token in (alice, bob):  # both work with burst
        cluster.burst("list", env={**cluster.env, "BURST_TOKEN": token})
    listing = burstd_token(cluster, "list").stdout
    assert listing.splitlines()[0].split() == [
        "ID", "USER", "ROLE", "CREATED", "EXPIRES", "REVOKED", "WORKERS",
    ]  # fmt: skip
    assert alice not in listing and bob not in listing
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows[token_id][1:3] == ["alice", "client"] and rows[token_id][5] == "-"
    assert sorted(row[2] for row in rows.values()) == ["admin", "client", "client", "worker"]
    revoked = burstd_token(cluster, "revoke", token_id)
    assert revoked.stdout.startswith(f"revoked token {token_id}")
    refused = cluster.burst("list", check=False, env={**cluster.env, "BURST_TOKEN": alice})
    assert refused.returncode == 2 and "UNAUTHENTICATED: token revoked" in refused.stderr
    rows = {
        line.split()[0]: line.split()
        for line in burstd_token(cluster, "list").stdout.splitlines()[1:]
    }
    assert rows[token_id][5].startswith("20")  # its revocation date
    # errors, with burst's exit codes, naming the field
    bad = burstd_token(cluster, "create", "--role", "root", "--user", "x", check=False)
    assert bad.returncode == 2 and "INVALID_ARGUMENT: role" in bad.stderr
    bad = burstd_token(cluster, "create", "--role", "client", "--user", "x", "--expires", "3y",
                       check=False)  # fmt: skip
    assert bad.returncode == 2 and "expires" in bad.stderr
    missing = burstd_token(cluster, "revoke", "tok-00000000", check=False)
    assert missing.returncode == 4 and "NOT_FOUND" in missing.stderr
    # only an admin token manages tokens
    denied = burstd_token(cluster, "list", "--token-file", str(cluster.state / "worker.token"),
                          check=False)  # fmt: skip
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr


def test_token_list_into_a_closed_pipe_ends_quietly(cluster: Cluster) -> None:
    """`burstd token list --json | head -1`: a reader gone early is no error of burstd's (no
    BrokenPipeError traceback), whether a controller answers or the state directory does."""
    burstd_token(cluster, "create", "--role", "client", "--user", "bob")  # a line to list
    for running in (False, True):
        if running:
            cluster.controller()
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line
        try:
            run = subprocess.run(
                [*program("burstd"), "token", "list", "--json", "--controller", cluster.addr],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                cwd=cluster.tmp,
                env=cluster.env,
            )
        finally:
            os.close(write)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert "BrokenPipe" not in run.stderr and "Broken pipe" not in run.stderr


def test_a_bound_worker_token_cannot_register_as_another_worker(cluster: Cluster) -> None:
    cluster.controller()
    made = burstd_token(cluster, "create", "--role", "worker", "--user", "n1", "--worker-id", "n1")
    token_file = cluster.tmp / "n1.token"
    token_file.write_text(made.stdout.splitlines()[-1] + "\n")
    other = cluster.worker("n2", "--token-file", str(token_file))
    cluster.worker("n1", "--token-file", str(token_file))
    cluster.wait_workers(1)
    # refused at registration: it exits 2 at once, naming the refusal and the token's source
    assert other.proc.wait(timeout=TIMEOUT) == 2
    (error,) = [line for line in other.log().splitlines() if line.startswith("burstd: error:")]
    assert "PERMISSION_DENIED: worker_id: this token may act only as worker n1" in error
    assert error.endswith(f"the token came from --token-file {token_file}")
    workers = cluster.burst("workers", "--json").stdout.splitlines()
    assert [json.loads(w)["worker_id"] for w in workers] == ["n1"]


def test_a_worker_whose_token_is_unknown_exits_2_naming_its_source(cluster: Cluster) -> None:
    """A wrong token (or a revoked or expired one) can never register: the worker does not
    retry forever, it exits 2 with one line that says where its token came from."""
    cluster.controller()
    token_file = cluster.tmp / "wrong.token"
    token_file.write_text("burst_wrong\n")
    wrong = cluster.worker("w1", "--token-file", str(token_file))
    assert wrong.proc.wait(timeout=TIMEOUT) == 2
    (error,) = [line for line in wrong.log().splitlines() if line.startswith("burstd: error:")]
    assert "refused this worker's token (UNAUTHENTICATED: unknown token)" in error
    assert error.endswith(f"the token came from --token-file {token_file}")
    assert "Traceback" not in wrong.log()


# -- wrong tokens in bulk --------------------------------------------------------------------------

ATTACKER = (sys.executable, "bench/wrong_tokens.py", "--attack")


async def test_wrong_tokens_in_bulk_close_their_connections_and_others_keep_working(
    cluster: Cluster,
) -> None:
    """400 calls with a wrong token from one client, 100 at a time (bench/wrong_tokens.py's
    attacker): the controller closes its connection every MAX_UNAUTHENTICATED refusals and holds
    its next one HOLD before reading it, while another client's calls keep being answered.
    Prints that client's latency during the guessing against before it (a figure; the
    benchmark measures it with 10,000)."""
    import statistics

    from burstd.transport import server
    from tests.cluster import environment

    cluster.controller()
    job_id = cluster.burst("submit", "process", "true").stdout.strip()
    status = SERVICE.methods_by_name["GetJobStatus"]

    async def latencies(ch: transport.Channel, stop: Any) -> list[float]:
        times = []
        while not stop():
            began = time.perf_counter()
            await ch.unary_raw(
                SERVICE.full_name,
                "GetJobStatus",
                request_class(status)(job_id=job_id).SerializeToString(),
                timeout=TIMEOUT,
            )
            times.append(time.perf_counter() - began)
            await trio.sleep(0.005)
        return times

    async with channel(cluster, cluster.token("admin"), False) as good:
        calm_until = time.monotonic() + 2
        before = await latencies(good, lambda: time.monotonic() > calm_until)
        began = time.monotonic()
        attacker = subprocess.Popen(
            [*ATTACKER, str(cluster.port), "--count", "400", "--tasks", "100"],
            stdout=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        try:
            during = await latencies(good, lambda: attacker.poll() is not None)
            out, _ = attacker.communicate(timeout=TIMEOUT)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait()
        took = time.monotonic() - began
    refused, cut_off, connections, unreachable = map(int, out.split())
    assert refused + cut_off + unreachable == 400  # each refused, or cut off with its connection
    assert refused >= transport.MAX_UNAUTHENTICATED
    # the attacker's connections after the first were held before the controller read them
    # (not each one: a connection opened before the previous one's closing was counted as
    # guessing is not held; tests/test_transport.py times one hold exactly), so 400 wrong
    # calls took at least a hold instead of the ~0.2 s of their refusals' delays
    assert connections >= 2 and took >= server.HOLD * 0.9
    print(
        f"\n400 wrong tokens (100 at a time) in {took:.1f} s: {refused} refused, {cut_off} cut off "
        f"with their connection, {connections} connections; another client's GetJobStatus "
        f"median {statistics.median(before) * 1000:.2f} ms before, "
        f"{statistics.median(during) * 1000:.2f} ms during ({len(during)} calls)"
    )
