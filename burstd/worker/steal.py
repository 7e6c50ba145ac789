"""Work stealing between workers: the StealJobs server (victim side) and the steal client (thief).

Promises (with the job table's ``transfer``; see also burstd/policies/steal.py for the policy):

1. The controller always knows who holds a job. A victim hands jobs over only after the
   controller moved their leases to the thief (TransferJobs) under new attempt numbers; if that
   call fails or is refused, the victim keeps the jobs and they wait for a slot again.
2. No job is lost with a message. Every steal is numbered (a *round*, growing by one per request
   of this worker process, which is itself named by a random ``instance``); when a StealJobs call
   ends, however it ends, the thief's heartbeats say so, and the controller takes back the
   stolen leases of ended rounds that the thief does not list (the reply was lost).
3. A dead or slow peer costs only the steal client's time: every peer call has a connect and a
   call timeout, a peer that fails is left alone for a growing while (up to PEER_BACKOFF_MAX),
   and connections are kept open per peer (re-opened by the transport after a failure). Running
   jobs, reports and heartbeats never wait for a peer.
4. A victim answers a thief even if the thief has hung up: the controller's answer to TransferJobs
   is always awaited (bounded by TRANSFER_TIMEOUT), so the victim never runs or forgets a job on
   a guess.
"""

from __future__ import annotations

import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import trio
from loguru import logger

from burstd import auth, transport, wire
from burstd.auth import Caller, Guard
from burstd.config import Config, WorkerConfig, format_hostport, parse_hostport
from burstd.policies.steal import (
    MAX_STEAL,
    PeerLoad,
    choose_victim,
    should_steal,
    steal_amount,
    thief_takes,
    victim_offer,
)
from burstd.resources import CPUS, Pool
from burstd.resources_proto import offer_of, to_message
from burstd.worker.queue import LocalJob, LocalState
from proto.burst.v1 import job_pb2, peer_pb2, worker_pb2

CONNECT_TIMEOUT = 1.0
# A thief waits this long for a StealJobs reply: the victim's TransferJobs call plus slack.
STEAL_TIMEOUT = 4.0
TRANSFER_TIMEOUT = 3.0
# A request for work that has waited this long at the controller found nothing: the worker is
# idle. Long enough for the controller to answer a poll that has work, short next to any job.
POLL_SETTLE = 0.02
PEER_BACKOFF_MIN = 0.5
PEER_BACKOFF_MAX = 10.0
# An idle thief that knows of no spare job asks the controller for loads at most this rarely.
REFRESH_MAX = 5.0

__all__ = ["PeerServer", "StealClient", "advertise_addr", "static_peers"]


class _State(Protocol):
    """What the steal pieces read from the worker daemon's WorkerState."""

    config: WorkerConfig
    token: str
    tls: ssl.SSLContext | None
    peer_tokens: auth.PeerTokens
    instance: int
    poll_since: float | None
    steal_done: int
    draining: bool
    peers: list[worker_pb2.PeerInfo] | None

    @property
    def local(self) -> Any: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def running(self) -> Mapping[Any, object]: ...

    def take_leases(self, jobs: Iterable[job_pb2.AssignedJob], lease_seq: int) -> int: ...

    async def wait_until(self, ready: Callable[[], bool]) -> None: ...


class _Link(Protocol):
    async def call(
        self, method: str, request: Any, response_type: Any, timeout: float = ...
    ) -> Any: ...


def static_peers(config: Config, worker_id: str) -> dict[str, str]:
    """Peer addresses from the ``[[workers]]`` entries of the file, as the prototype used them:
    every other worker with a ``peer_advertise_addr`` (preferred) or ``peer_listen_addr``."""
    peers = {}
    for entry in config.workers:
        addr = entry.peer_advertise_addr or entry.peer_listen_addr
        if entry.worker_id and entry.worker_id != worker_id and addr:
            peers[entry.worker_id] = addr
    return peers


def advertise_addr(config: WorkerConfig, bound_port: int) -> str:
    """The address peers dial: ``peer_advertise_addr``, else the listen address with the bound
    port (port 0 asks the OS for one) and, for a wildcard host, this host's name."""
    if config.peer_advertise_addr:
        return config.peer_advertise_addr
    host, _ = parse_hostport(config.peer_listen_addr or "")
    if host in ("", "0.0.0.0", "::", "*"):
        host = socket.gethostname()
    return format_hostport(host, bound_port)


def _load(state: _State) -> worker_pb2.PeerInfo:
    """This worker's own load, as a victim reports it to a thief."""
    local = state.local
    running = len(state.running)
    done = sum(1 for job in local.jobs.values() if job.state is LocalState.DONE)
    return worker_pb2.PeerInfo(
        worker_id=state.config.worker_id,
        slots=state.config.slots,
        capacity=local.capacity,
        leased=len(local.jobs) - done,
        running=running,
    )


class PeerServer:
    """Serves burst.v1.WorkerPeerRpc: hands queued jobs to thieves through the controller."""

    def __init__(self, state: _State, link: _Link, hand_back: Any) -> None:
        self.state = state
        self.link = link
        self.hand_back = hand_back  # called when jobs come back during a drain
        self.log = logger.bind(worker_id=state.config.worker_id)

    def rpc_service(self) -> transport.Service:
        """StealJobs, for worker tokens only (the thief's own), checked against the list the
        controller hands this worker (``auth.PeerTokens``): no call to the controller a steal."""
        service = transport.Service(wire.PEER_SERVICE, self.state.peer_tokens.guard.authorize)
        service.unary("StealJobs", peer_pb2.StealJobsRequest, self.steal_jobs)
        return service

    async def steal_jobs(
        self, request: peer_pb2.StealJobsRequest, caller: Caller
    ) -> peer_pb2.StealJobsResponse:
        """Give a thief up to ``max_jobs`` queued jobs (at most the fair share of the spare ones).

        Nothing is given to this worker itself, while draining, or to a thief that does not name
        its instance and steal round (the prototype's thieves): without them the controller
        could not tell a lost reply from one still on its way.
        """
        state, local = self.state, self.state.local
        thief = request.thief_worker_id
        Guard.check_worker(f"/{wire.PEER_SERVICE}/StealJobs", caller, request)
        if not thief.strip():
            raise transport.InvalidArgument("thief_worker_id: cannot be empty")
        if (
            thief == state.config.worker_id
            or state.draining
            or not request.thief_instance
            or not request.steal_round
        ):
            return peer_pb2.StealJobsResponse(victim=_load(state))
        count = victim_offer(
            queued=local.queued_count(),
            free_slots=state.config.slots - len(state.running),
            requested=min(request.max_jobs, MAX_STEAL),
        )
        offered = local.offer(count, _thief_takes(request))
        if not offered:
            return peer_pb2.StealJobsResponse(victim=_load(state))
        moved: dict[str, int] = {}
        transfer = peer_pb2.TransferJobsRequest(
            victim_id=state.config.worker_id,
            thief_id=thief,
            jobs=[worker_pb2.HeldJob(job_id=j.job_id, attempt=j.attempt) for j in offered],
            thief_instance=request.thief_instance,
            steal_round=request.steal_round,
            victim_instance=state.instance,
        )
        # Shielded: if the thief hangs up, the controller's answer still decides what this
        # worker holds (a job it moved must not be started here under the old attempt).
        with trio.CancelScope(shield=True), trio.move_on_after(TRANSFER_TIMEOUT):
            try:
                reply = await self.link.call(
                    "TransferJobs",
                    transfer,
                    peer_pb2.TransferJobsResponse,
                    timeout=TRANSFER_TIMEOUT,
                )
                moved = {h.job_id: h.attempt for h in reply.moved}
                if reply.refused:
                    self.log.debug("steal by {} refused: {}", thief, reply.refused)
            except transport.RpcError as error:
                # The jobs stay here. Had the controller moved them after all, its next
                # heartbeat reply drops them here, and the thief's heartbeats requeue them.
                self.log.debug("transfer to {} failed ({}): jobs kept", thief, error)
        gone = local.handed_over(offered, moved)
        if state.draining and len(gone) < len(offered):
            self.hand_back()
        if gone:
            self.log.debug("gave {} jobs to {} (round {})", len(gone), thief, request.steal_round)
        return peer_pb2.StealJobsResponse(
            jobs=[
                job_pb2.AssignedJob(job_id=j.job_id, spec=j.spec, attempt=moved[j.job_id])
                for j in gone
            ],
            victim=_load(state),
        )


def _thief_takes(request: peer_pb2.StealJobsRequest) -> Callable[[LocalJob], bool] | None:
    """Which jobs the thief can run (policy rule 5), None: a thief that does not say."""
    if not request.HasField("thief_free"):
        return None
    free, cpus = offer_of(request.thief_free), request.thief_cpus
    return lambda job: thief_takes(job.request, free, cpus)


def _budget(state: _State) -> tuple[worker_pb2.Resources, int]:
    """What this worker, as a thief, can take (``StealJobsRequest.thief_free``): what its pool
    has free, and for CPUs the room of its local queue, as the controller counts its capacity;
    and its CPUs in all."""
    free = {**state.pool.free(), CPUS: state.local.room()}
    return to_message(free), state.config.slots


class _Peer:
    """What the thief knows about one peer: where it listens, its load, how it has behaved."""

    __slots__ = ("addr", "channel", "load", "retry_at", "scope", "wait")

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.load: PeerLoad | None = None
        self.channel: transport.Channel | None = None
        self.scope: trio.CancelScope | None = None  # closes the channel
        self.retry_at = 0.0
        self.wait = 0.0


class StealClient:
    """The thief: while this worker is idle, takes queued jobs from the most loaded peer.

    Peers come from the controller (registration and heartbeat replies: addresses and loads)
    and from static configuration (addresses only; tried, at random, only while the controller
    has not listed any peer). An idle thief that knows of no spare job asks the controller for
    fresh loads (ListWorkers), at most every steal interval, backing off to REFRESH_MAX while
    nobody has any. Runs as its own task; ``run()`` until cancelled.
    """

    def __init__(
        self,
        state: _State,
        static: Mapping[str, str] = {},
        hand_back: Any = None,
        rng: random.Random | None = None,
        link: _Link | None = None,
    ) -> None:
        self.state = state
        self.link = link
        self.hand_back = hand_back
        self.rng = rng or random.Random()
        self.peers: dict[str, _Peer] = {w: _Peer(a) for w, a in static.items()}
        self.static = set(static)
        self.listed = False  # the controller has listed peers at least once
        self._seen: list[worker_pb2.PeerInfo] | None = None
        self.round = 0
        self.interval = max(state.config.steal_interval_ms, 10) / 1000
        self._refresh_at = 0.0  # monotonic time of the next ListWorkers allowed
        self._refresh_wait = self.interval
        self.log = logger.bind(worker_id=state.config.worker_id)
        self._nursery: trio.Nursery | None = None

    # -- what the thief knows --

    def update(self, infos: list[worker_pb2.PeerInfo]) -> None:
        """The controller's list: it replaces every load (peers it left out have none)."""
        self.listed = True
        listed = {info.worker_id for info in infos}
        for worker_id, known in self.peers.items():
            known.load = None
            if worker_id not in listed and worker_id not in self.static:
                self._close(known)  # gone from the cluster: no connection kept for it
        for info in infos:
            if info.worker_id == self.state.config.worker_id:
                continue
            peer = self.peers.get(info.worker_id)
            if peer is None:
                peer = self.peers[info.worker_id] = _Peer(info.peer_addr)
            elif info.peer_addr and info.peer_addr != peer.addr:
                self._close(peer)
                peer.addr = info.peer_addr
            peer.load = _peer_load(info)

    def _refresh(self) -> None:
        peers = self.state.peers
        if peers is not None and peers is not self._seen:
            self._seen = peers
            self.update(peers)

    def _unavailable(self, now: float) -> set[str]:
        return {w for w, p in self.peers.items() if p.retry_at > now or not p.addr}

    # -- the loop --

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._loop()
            finally:
                nursery.cancel_scope.cancel()

    def _due(self, poll_waiting_s: float | None) -> bool:
        state = self.state
        free = state.config.slots - len(state.running)
        room = state.local.room()
        # should_steal asks only whether a job waits for a slot, and this runs at every start and
        # end of a job: no walk of the whole queue to count it (with no free slot or room,
        # nothing is due whatever the queue holds).
        queued = int(free > 0 and room > 0 and state.local.has_stealable())
        return should_steal(
            free_slots=free,
            queued=queued,
            room=room,
            poll_waiting_s=poll_waiting_s,
            settle_s=POLL_SETTLE,
        )

    def _idle(self) -> bool:
        """Stealing is due once the request for work has waited long enough."""
        return self._due(math.inf)

    async def _loop(self) -> None:
        state = self.state
        while not state.draining:
            self._refresh()
            since = state.poll_since
            if self._due(None if since is None else trio.current_time() - since):
                if not await self._steal_once(state.local.room()):
                    await trio.sleep(self.interval)
            elif self._idle():
                # Idle soon, unless the controller answers the poll with work.
                with trio.move_on_after(POLL_SETTLE):
                    await state.wait_until(lambda: state.draining or not self._idle())
            else:
                await state.wait_until(lambda: state.draining or self._idle())

    def _victim(self, now: float) -> PeerLoad | None:
        return choose_victim(
            (p.load for p in self.peers.values() if p.load is not None),
            self.state.config.worker_id,
            self.rng,
            unavailable=self._unavailable(now),
        )

    async def _ask_controller(self, now: float) -> PeerLoad | None:
        """Fresh loads from the controller (a victim refills from it within milliseconds of a
        steal, while heartbeats bring loads only every interval); then the best victim."""
        if self.link is None or now < self._refresh_at:
            return None
        try:
            reply = await self.link.call(
                "ListWorkers",
                job_pb2.ListWorkersRequest(),
                job_pb2.ListWorkersResponse,
                timeout=TRANSFER_TIMEOUT,
            )
        except transport.RpcError as error:
            self.log.debug("no fresh peer loads ({})", error)
            reply = None
        if reply is not None:
            self.update(
                [
                    worker_pb2.PeerInfo(
                        worker_id=w.worker_id,
                        peer_addr=w.peer_addr,
                        slots=w.slots,
                        capacity=w.queue_capacity,
                        leased=w.leased,
                        running=w.running,
                    )
                    for w in reply.workers
                    if w.peer_addr and w.state == "alive"
                ]
            )
        victim = self._victim(now)
        # While nobody has spare jobs, ask ever less often.
        wait = self.interval if victim else min(self._refresh_wait * 2, REFRESH_MAX)
        self._refresh_wait = wait
        self._refresh_at = time.monotonic() + wait
        return victim

    async def _steal_once(self, room: int) -> bool:
        """One steal from the best victim; True if jobs came."""
        now = time.monotonic()
        victim = self._victim(now)
        if victim is None and self.listed:
            victim = await self._ask_controller(now)
        batch = self.state.config.steal_batch_size
        if victim is not None:
            victim_id, amount = victim.worker_id, steal_amount(victim.spare, room, batch)
        elif not self.listed:
            # No word from the controller yet: the configured peers, loads unknown.
            candidates = sorted(self.static - self._unavailable(now))
            if not candidates:
                return False
            victim_id = self.rng.choice(candidates)
            amount = steal_amount(2 * room, room, batch)
        else:
            return False
        peer = self.peers[victim_id]
        try:
            channel = await self._channel(victim_id, peer)
        except transport.RpcError as error:
            self._failed(victim_id, peer, error)
            return False
        self.round += 1
        free, cpus = _budget(self.state)
        request = peer_pb2.StealJobsRequest(
            thief_worker_id=self.state.config.worker_id,
            max_jobs=amount,
            thief_instance=self.state.instance,
            steal_round=self.round,
            thief_free=free,
            thief_cpus=cpus,
        )
        try:
            reply = await channel.unary(
                wire.PEER_SERVICE,
                "StealJobs",
                request,
                peer_pb2.StealJobsResponse,
                timeout=STEAL_TIMEOUT,
            )
        except transport.RpcError as error:
            self._failed(victim_id, peer, error)
            return False
        finally:
            # The round has ended, whatever happened: heartbeats from now on say so (set in the
            # same step as the jobs are taken below, so no heartbeat sees one without the other).
            self.state.steal_done = self.round
        peer.wait = 0.0
        if reply.HasField("victim"):
            peer.load = _peer_load(reply.victim)
        got = self.state.take_leases(reply.jobs, 0)
        if not got:
            return False
        self.log.debug("stole {} jobs from {} (round {})", got, victim_id, self.round)
        if self.state.draining and self.hand_back is not None:
            self.hand_back()  # a reply that came after the drain began
        return True

    def _failed(self, worker_id: str, peer: _Peer, error: Exception) -> None:
        peer.wait = min(max(peer.wait * 2, PEER_BACKOFF_MIN), PEER_BACKOFF_MAX)
        peer.retry_at = time.monotonic() + peer.wait
        self.log.debug(
            "steal from {} failed ({}); not before {:.1f} s", worker_id, error, peer.wait
        )

    # -- connections --

    async def _channel(self, worker_id: str, peer: _Peer) -> transport.Channel:
        if peer.channel is not None:
            return peer.channel
        assert self._nursery is not None
        channel, scope = await self._nursery.start(
            _hold_channel, worker_id, peer.addr, self.state.token, self.state.tls
        )
        peer.channel, peer.scope = channel, scope
        return channel  # type: ignore[no-any-return]

    @staticmethod
    def _close(peer: _Peer) -> None:
        if peer.scope is not None:
            peer.scope.cancel()
        peer.channel = peer.scope = None


async def _hold_channel(
    worker_id: str,
    addr: str,
    token: str,
    tls: ssl.SSLContext | None,
    task_status: trio.TaskStatus[tuple[transport.Channel, trio.CancelScope]],
) -> None:
    """Keep one connection to a peer open until its scope is cancelled (the transport re-opens
    the connection by itself after a failure). Steals show this worker's own token, over TLS
    with ``tls`` (the peer's certificate must be valid for the address it advertises)."""
    host, port = parse_hostport(addr)
    with trio.CancelScope() as scope:
        async with transport.Channel(
            host,
            port,
            connect_timeout=CONNECT_TIMEOUT,
            peer=f"peer {worker_id}",
            metadata=auth.bearer(token),
            tls=tls,
        ) as channel:
            task_status.started((channel, scope))
            await trio.sleep_forever()


def _peer_load(info: worker_pb2.PeerInfo) -> PeerLoad:
    return PeerLoad(info.worker_id, info.slots, info.leased, info.running, info.capacity)
