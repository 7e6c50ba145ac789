"""Work stealing policy: when an idle worker steals, from whom, and how much.

Plain synchronous stdlib code, like the routers: the worker daemon feeds it numbers (its own and
the loads of its peers, as the controller reports them in heartbeat replies and victims in steal
replies) and does what it says. The mechanism that makes a steal safe (the controller moves the
leases before the jobs change hands) is in the job table and the worker daemon, not here.

Rules:

1. Only an idle worker steals (`should_steal`): a slot is free, nothing waits in its local queue,
   it has room for more jobs, and the controller had nothing for it (its long-poll for work has
   been waiting for a while). A worker that the controller can feed never takes work from peers.
2. The victim is chosen by load, not by rotation (`choose_victim`): the peer with the most
   *spare* jobs, the queued ones its free slots will not start next; ties are broken at random so
   thieves spread over equally loaded victims. A worker never steals from itself, and a peer with
   nothing spare is never asked.
3. How much: a fair share (`fair_share`), half of the victim's spare jobs rounded up, capped by the
   thief's room and by ``steal_batch_size`` when set (`steal_amount`). Taking half rather than
   one job moves work in few round trips, and leaves the victim as much as the thief.
4. The victim has the last word (`victim_offer`): it gives at most the fair share of its own,
   current spare jobs and never what its free slots will start next, so concurrent thieves
   working from stale loads cannot empty it.
5. A thief takes only what it can run (`thief_takes`): a job asking for more CPUs than the thief
   has in all, or for more of anything than it has free beside the jobs taken before it in the
   same steal, is left to the victim. The victim offers only such jobs (the thief says what it
   has free), and the controller checks the same rule when it moves the leases.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from burstd import resources

__all__ = [
    "MAX_STEAL",
    "PeerLoad",
    "choose_victim",
    "fair_share",
    "should_steal",
    "spare",
    "steal_amount",
    "thief_takes",
    "victim_offer",
]

MAX_STEAL = 64
"""No steal moves more jobs than this (the prototype's clamp of ``max_jobs``)."""


def spare(queued: int, free_slots: int) -> int:
    """Queued jobs that free slots will not start next: what a worker can give away."""
    return max(0, queued - max(0, free_slots))


def fair_share(spare_jobs: int) -> int:
    """Half of the spare jobs, rounded up (one spare job can move: the thief is idle)."""
    return (max(0, spare_jobs) + 1) // 2


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """A peer's load: ``leased`` jobs (queued there or running), of which ``running`` run."""

    worker_id: str
    slots: int
    leased: int
    running: int
    capacity: int = 0

    @property
    def queued(self) -> int:
        return max(0, self.leased - self.running)

    @property
    def spare(self) -> int:
        return spare(self.queued, self.slots - self.running)


def should_steal(
    *, free_slots: int, queued: int, room: int, poll_waiting_s: float | None, settle_s: float
) -> bool:
    """True when the worker is idle and should look for work at its peers.

    ``poll_waiting_s`` is how long its current request for work has been waiting at the
    controller (None when none is outstanding, e.g. while a reply is being handled): a request
    that has waited ``settle_s`` found nothing, while a fresh one may still bring jobs.
    """
    return (
        free_slots > 0
        and queued == 0
        and room > 0
        and poll_waiting_s is not None
        and poll_waiting_s >= settle_s
    )


def choose_victim(
    peers: Iterable[PeerLoad],
    self_id: str,
    rng: random.Random,
    *,
    unavailable: Collection[str] = (),
) -> PeerLoad | None:
    """The peer with the most spare jobs (random among equals), or None if nobody has any.

    Never ``self_id``, never a peer in ``unavailable`` (unreachable lately).
    """
    best: list[PeerLoad] = []
    most = 0
    for peer in peers:
        if peer.worker_id == self_id or peer.worker_id in unavailable:
            continue
        load = peer.spare
        if load > most:
            best, most = [peer], load
        elif load == most and load > 0:
            best.append(peer)
    return rng.choice(best) if best else None


def steal_amount(victim_spare: int, room: int, batch_size: int = 0) -> int:
    """Jobs to ask a victim with ``victim_spare`` spare jobs for: its fair share, capped by the
    thief's ``room``, by ``batch_size`` when positive, and by MAX_STEAL."""
    amount = min(fair_share(victim_spare), room, MAX_STEAL)
    if batch_size > 0:
        amount = min(amount, batch_size)
    return max(0, amount)


def victim_offer(*, queued: int, free_slots: int, requested: int) -> int:
    """Jobs a victim hands over when asked for ``requested``: at most the fair share of its own
    spare jobs (so what its free slots start next stays), never more than asked or MAX_STEAL."""
    return max(0, min(requested, fair_share(spare(queued, free_slots)), MAX_STEAL))


def thief_takes(request: resources.Request | None, free: dict[str, int], cpus: int) -> bool:
    """Whether a thief with ``cpus`` CPUs in all and ``free`` left can take a job asking for
    ``request`` (None: the plain one CPU); if so, the job's amounts are taken from ``free``."""
    request = request or resources.PLAIN
    if request.get(resources.CPUS, 1) > cpus or not resources.fits(request, free):
        return False
    for name, amount in request.items():
        free[name] -= amount
    return True
