"""The guard and the token table without a network (burstd/auth.py, controller/tokens.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from burstd import auth, transport
from burstd.auth import Guard, Role
from burstd.controller.service import ControllerService
from burstd.controller.table import JobTable
from burstd.controller.tokens import TokenError, Tokens, parse_duration
from proto.burst.v1 import control_pb2, job_pb2, peer_pb2, worker_pb2

SUBMIT = "/burst.v1.ControllerRpc/SubmitJob"
REGISTER = "/burst.v1.ControllerRpc/RegisterWorker"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> Tokens:
    return Tokens(None, clock)


def test_every_method_of_the_controller_has_a_rule() -> None:
    """A method missing from the table would be refused to everyone: none is missing (of the
    controller's and the peer port's services), and the table names no method that does not
    exist."""
    service = control_pb2.DESCRIPTOR.services_by_name["ControllerRpc"]
    paths = {f"/{service.full_name}/{m.name}" for m in service.methods}
    served = ControllerService(JobTable()).rpc_service()
    assert {f"/{served.name}/{name}" for name in served.methods} == paths
    peer = peer_pb2.DESCRIPTOR.services_by_name["WorkerPeerRpc"]
    paths |= {f"/{peer.full_name}/{m.name}" for m in peer.methods}
    assert set(auth.RULES) == paths


def test_no_unknown_or_malformed_token_is_unauthenticated(tokens: Tokens, clock: Clock) -> None:
    guard = Guard(tokens, clock)
    tokens.create("alice", "client")
    for metadata in ({}, {"authorization": ""}, {"authorization": "Basic abc"}, {"x": "y"}):
        with pytest.raises(transport.Unauthenticated):
            guard.authorize(SUBMIT, metadata)
    with pytest.raises(transport.Unauthenticated, match="unknown token"):
        guard.authorize(SUBMIT, auth.bearer(auth.new_secret()))


def test_roles(tokens: Tokens, clock: Clock) -> None:
    guard = Guard(tokens, clock)
    client = tokens.create("alice", Role.CLIENT)[1]
    worker = tokens.create("w", Role.WORKER)[1]
    admin = tokens.create("root", Role.ADMIN)[1]
    caller = guard.authorize(SUBMIT, auth.bearer(client))
    assert (caller.user, caller.role) == ("alice", Role.CLIENT)
    with pytest.raises(transport.PermissionDenied, match="client token may not call"):
        guard.authorize(REGISTER, auth.bearer(client))
    with pytest.raises(transport.PermissionDenied):
        guard.authorize(SUBMIT, auth.bearer(worker))
    assert guard.authorize(REGISTER, auth.bearer(worker)).role is Role.WORKER
    for path in auth.RULES:
        if "WorkerPeerRpc" not in path:  # the peer port knows worker tokens alone
            assert guard.authorize(path, auth.bearer(admin)).role is Role.ADMIN
    # a method the table does not list is refused to everyone
    with pytest.raises(transport.PermissionDenied):
        guard.authorize("/burst.v1.ControllerRpc/Nothing", auth.bearer(admin))


def test_revoked_and_expired_tokens_are_refused_on_the_next_call(
    tokens: Tokens, clock: Clock
) -> None:
    guard = Guard(tokens, clock)
    token, secret = tokens.create("alice", "client", expires_in=60)
    guard.authorize(SUBMIT, auth.bearer(secret))  # now remembered by its header
    clock.now += 59
    guard.authorize(SUBMIT, auth.bearer(secret))
    clock.now += 1
    with pytest.raises(transport.Unauthenticated, match="expired"):
        guard.authorize(SUBMIT, auth.bearer(secret))
    other = tokens.create("bob", "client")[1]
    guard.authorize(SUBMIT, auth.bearer(other))
    revoked = tokens.revoke(tokens.all()[-1].id)
    assert revoked.revoked_at == clock.now
    with pytest.raises(transport.Unauthenticated, match="revoked"):
        guard.authorize(SUBMIT, auth.bearer(other))
    assert token.expires_at == 1060


def test_a_bound_worker_token_acts_only_as_its_workers(tokens: Tokens, clock: Clock) -> None:
    guard = Guard(tokens, clock)
    secret = tokens.create("w", "worker", worker_ids=["w1", "w2"])[1]
    caller = guard.authorize(REGISTER, auth.bearer(secret))
    assert caller.worker_ids == {"w1", "w2"}
    Guard.check_worker(REGISTER, caller, worker_pb2.RegisterWorkerRequest(worker_id="w2"))
    with pytest.raises(transport.PermissionDenied, match="worker_id: this token may act only"):
        Guard.check_worker(REGISTER, caller, worker_pb2.RegisterWorkerRequest(worker_id="w3"))
    poll = "/burst.v1.ControllerRpc/PollJob"
    with pytest.raises(transport.PermissionDenied):
        Guard.check_worker(poll, caller, job_pb2.PollJobRequest(worker_id="w3"))
    # an unbound worker token acts as any worker
    free = guard.authorize(REGISTER, auth.bearer(tokens.create("w", "worker")[1]))
    Guard.check_worker(REGISTER, free, worker_pb2.RegisterWorkerRequest(worker_id="w3"))


def test_token_requests_are_checked(tokens: Tokens) -> None:
    with pytest.raises(TokenError, match="user"):
        tokens.new("al ice", "client")
    with pytest.raises(TokenError, match="role"):
        tokens.new("alice", "root")
    with pytest.raises(TokenError, match="worker_ids"):
        tokens.new("alice", "client", worker_ids=["w1"])
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90") == 90
    for bad in ("", "0d", "-1h", "3y", "d"):
        with pytest.raises(TokenError, match="expires"):
            parse_duration(bad)


def test_tokens_are_random_and_kept_as_hashes_only(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "t.db"
    tokens = Tokens(db, clock)
    secrets = {tokens.create("alice", "client")[1] for _ in range(20)}
    assert len(secrets) == 20 and all(len(s) >= 40 for s in secrets)
    tokens.close()
    stored = db.read_bytes()
    assert not any(s.encode() in stored for s in secrets)
    again = Tokens(db, clock)  # kept across restarts
    guard = Guard(again, clock)
    assert all(guard.authorize(SUBMIT, auth.bearer(s)).user == "alice" for s in secrets)
    again.close()


def test_bootstrap_writes_the_token_files_once(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "t.db"
    tokens = Tokens(db, clock)
    written = tokens.bootstrap(tmp_path)
    assert sorted(p.name for p in written) == ["admin.token", "worker.token"]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    admin = (tmp_path / "admin.token").read_text().strip()
    guard = Guard(tokens, clock)
    assert guard.authorize(SUBMIT, auth.bearer(admin)).role is Role.ADMIN
    tokens.close()
    # the next start keeps valid ones and replaces a revoked one
    tokens = Tokens(db, clock)
    assert tokens.bootstrap(tmp_path) == []
    worker = next(t for t in tokens.all() if t.role is Role.WORKER)
    tokens.revoke(worker.id)
    assert tokens.bootstrap(tmp_path) == [tmp_path / "worker.token"]
    assert (tmp_path / "admin.token").read_text().strip() == admin
    tokens.close()


def test_a_peer_port_accepts_the_worker_tokens_of_the_latest_list(clock: Clock) -> None:
    steal = "/burst.v1.WorkerPeerRpc/StealJobs"
    kept, gone = auth.new_secret(), auth.new_secret()
    peer = auth.PeerTokens(clock)

    def listed(*secrets: str) -> list[worker_pb2.PeerVerifier]:
        return [worker_pb2.PeerVerifier(token_sha256=auth.digest(s)) for s in secrets]

    with pytest.raises(transport.Unauthenticated):
        peer.guard.authorize(steal, auth.bearer(kept))  # nothing listed yet
    peer.update(7, listed(kept, gone))
    assert peer.guard.authorize(steal, auth.bearer(gone)).role is Role.WORKER  # remembered
    peer.update(7, listed(kept))  # the same version again: no news
    peer.guard.authorize(steal, auth.bearer(gone))
    peer.update(8, listed(kept))
    with pytest.raises(transport.Unauthenticated):
        peer.guard.authorize(steal, auth.bearer(gone))
    peer.guard.authorize(steal, auth.bearer(kept))
    peer.update(0, [])  # a reply that brings no list changes nothing
    peer.guard.authorize(steal, auth.bearer(kept))
    expiring = auth.new_secret()
    peer.update(9, [worker_pb2.PeerVerifier(token_sha256=auth.digest(expiring), expires_at=1001)])
    peer.guard.authorize(steal, auth.bearer(expiring))
    clock.now = 1001
    with pytest.raises(transport.Unauthenticated, match="expired"):
        peer.guard.authorize(steal, auth.bearer(expiring))
