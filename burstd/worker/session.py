"""The worker's session with the controller: one channel, registered, re-registered, backed off.

Promises:

1. Every call of the worker to the controller goes through ``ControllerLink.call``, which waits
   until the worker is registered. A call that finds the controller unreachable, or that the
   controller refuses because it does not know this worker (restart, worker declared lost),
   breaks the session, and ``run`` opens a new channel and registers again.
2. A registration lists every job the worker holds, so that a restarted controller gives them
   back to it instead of running them twice; those it no longer assigns to this worker are
   dropped (stopped and forgotten, never reported).
3. While the controller is away, registration is retried with a growing pause, never longer
   than the heartbeat interval: after a controller restart the held jobs stay this worker's
   only if it registers within one lease TTL. The pauses are jittered (burstd/backoff.py): the
   workers of a restarted controller come back spread out, not all in the same instant.
4. Every answered call renews the worker's leases from the time it was sent, and a
   registration confirms what the worker holds (``WorkerState.lease``, burstd/leases.py).
5. A worker id is held by one process at a time: once another process of this worker id has
   registered, the controller refuses this one's calls, and its registration, with
   FAILED_PRECONDITION. A refused registration ends the session for good: ``run`` raises
   ``Replaced`` (the worker stops its jobs and exits) rather than registering again, which would
   take the id back and make the two processes flap.
6. A registration refused for the worker's token (UNAUTHENTICATED: unknown, revoked or expired;
   PERMISSION_DENIED: not a worker token, or bound to other worker ids) ends the session for
   good too: ``run`` raises ``TokenRefused``, since asking again with the same token cannot
   succeed.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
from loguru import logger

from burstd import auth, transport, wire
from burstd.backoff import Backoff
from burstd.config import parse_hostport
from burstd.resources_proto import to_message
from burstd.worker.state import WorkerState
from proto.burst.v1 import worker_pb2

__all__ = ["CALL_TIMEOUT", "ControllerLink", "Replaced", "TokenRefused"]

CALL_TIMEOUT = 10.0
MAX_BACKOFF = 5.0
# Calls the controller answers without marking the worker as heard from: they renew no lease.
NOT_HEARD = frozenset({"ListWorkers", "TakeOutputReads", "SendOutput"})


class Replaced(Exception):
    """Another process of this worker id holds it now (promise 5): this one must stop."""


class TokenRefused(Exception):
    """The controller refused this worker's token at registration (promise 6): it must stop."""


class ControllerLink:
    """The worker's session with the controller (see the module's promises)."""

    def __init__(self, state: WorkerState, peer_addr: str = "") -> None:
        self.state = state
        self.peer_addr = peer_addr
        self.host, self.port = parse_hostport(state.config.controller_addr)
        # The controller's configured interval (the cap of the reconnect backoff: a restarted
        # controller waits one unstretched lease TTL for workers to claim their jobs), and the
        # one it asks for now, stretched when many workers share its heartbeat budget.
        self.heartbeat_interval = 1.0
        self.paced_interval = 1.0
        self.lease_ttl = 0.0  # as the controller names it (0: it names none)
        self._channel: transport.Channel | None = None
        self._connected = trio.Event()
        self._broken = trio.Event()
        self.log = logger.bind(worker_id=state.config.worker_id)

    @property
    def registered(self) -> bool:
        """Registered with the controller, on a channel not known to be broken."""
        return self._channel is not None and not self._broken.is_set()

    def broken(self, channel: transport.Channel | None = None) -> None:
        """Register again. With ``channel``: only if that is still the session's channel (a late
        failure of a call on an earlier session must not break the new one)."""
        if channel is None or channel is self._channel:
            self._broken.set()

    async def run(self) -> None:
        backoff = Backoff(max(self.state.config.retry_interval_ms / 1000, 0.05))
        warned = False
        while True:
            try:
                # Polls, reports and heartbeats are many small calls: one standing stream
                # carries them all (see proto/burst/v1/mux.proto).
                channel = transport.Channel(
                    self.host,
                    self.port,
                    connect_timeout=5.0,
                    multiplex=True,
                    metadata=auth.bearer(self.state.token),
                    tls=self.state.tls,
                )
                async with channel:
                    try:
                        await self._register(channel)
                    except transport.FailedPrecondition as error:
                        raise Replaced(
                            f"the controller at {self.host}:{self.port} refused this worker:"
                            f" {error.message}"
                        ) from None
                    except (transport.Unauthenticated, transport.PermissionDenied) as error:
                        raise TokenRefused(
                            f"the controller at {self.host}:{self.port} refused this worker's"
                            f" token ({error})"
                        ) from None
                    if warned:
                        self.log.info("controller at {}:{} is back", self.host, self.port)
                    warned = False
                    backoff.reset()
                    self._channel = channel
                    self._connected.set()
                    await self._broken.wait()
            except transport.RpcError as error:
                if not warned:
                    self.log.warning("controller unavailable ({}); retrying", error)
                    warned = True
            finally:
                self._channel = None
                # Tasks in call() wait on the current event: replace it only once it was set,
                # or they would wait on an event that no registration sets any more.
                if self._connected.is_set():
                    self._connected = trio.Event()
                self._broken = trio.Event()
            # Never slower than the heartbeats (promise 3).
            await trio.sleep(backoff.pause(min(MAX_BACKOFF, self.heartbeat_interval)))

    async def _register(self, channel: transport.Channel) -> None:
        config, local = self.state.config, self.state.local
        request = worker_pb2.RegisterWorkerRequest(
            worker_id=config.worker_id,
            slots=config.slots,
            queue_capacity=local.capacity,
            peer_addr=self.peer_addr,
            held=local.held(),
            hostname=socket.gethostname(),
            lease_seq=local.lease_seq,
            instance=self.state.instance,
            resources=to_message(self.state.offer),
        )
        sent = self.state.clock()
        response = await channel.unary(
            wire.CONTROLLER_SERVICE,
            "RegisterWorker",
            request,
            worker_pb2.RegisterWorkerResponse,
            timeout=CALL_TIMEOUT,
        )
        if response.heartbeat_interval_ms:
            self.heartbeat_interval = response.heartbeat_interval_ms / 1000
        self.lease_ttl = response.lease_ttl_ms / 1000
        self.pace(response.paced_heartbeat_ms)
        self.state.drop(response.drop)
        self.state.confirmed(sent)
        self.state.peers = list(response.peers)
        self.state.peer_tokens.update(response.verifiers_version, response.verifiers)
        self.log.info("registered with controller {}:{}", self.host, self.port)

    def pace(self, paced_heartbeat_ms: int) -> None:
        """Heartbeat at the controller's paced interval (its plain one if it sends none); the
        controller stretches this worker's lease TTL as much."""
        self.paced_interval = paced_heartbeat_ms / 1000 or self.heartbeat_interval
        self.state.lease.set_ttl(self.lease_ttl, self.paced_interval / self.heartbeat_interval)

    async def call(
        self, method: str, request: Any, response_type: Any, timeout: float = CALL_TIMEOUT
    ) -> Any:
        """One call to the controller, once registered (promise 1)."""
        while (channel := self._channel) is None:
            await self._connected.wait()
        sent = self.state.clock()
        try:
            response = await channel.unary(
                wire.CONTROLLER_SERVICE, method, request, response_type, timeout=timeout
            )
        except (transport.Unavailable, transport.DeadlineExceeded, transport.FailedPrecondition):
            self.broken(channel)
            raise
        if method not in NOT_HEARD:
            self.state.lease.heard(sent)
        return response
