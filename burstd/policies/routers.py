"""Routers: which worker gets the next queued job.

The controller's job table owns every worker's lease count and capacity. It reports each change to
its router with `Router.update` (on registration, and after every lease it grants or releases) and
`Router.remove` (worker lost or deregistered), and asks `Router.pick` for the worker that gets the
next queued jobs: one per idle slot it has, or one if it has none (the table decides how many, so
one poll carries a worker's batch). A worker is *eligible* while ``leased < capacity``. `pick`
never changes counts: the table grants the leases and then calls `update`.

Routers (`ROUTERS`, built by name with `make_router`):

* ``roundrobin`` (default, `RoundRobin`): a fair cycle over the eligible workers.
* ``power2`` (`PowerOfTwo`): power of two choices, the less loaded of two random eligible workers.
* ``biased`` (`Biased`): deliberately unbalanced, only the first half of the workers in natural id
  order ever get jobs, so the others must steal.

Cost: `update`, `remove` and `pick` are O(1) amortised for ``roundrobin`` and ``power2``, and for
``biased`` whenever the set of registered workers does not change; a ``biased`` registration or
removal costs O(n) to recompute the favoured half (membership changes are rare next to the leases
granted and released). No router sorts or scans the workers per decision.

Adding a router: subclass `Router` with a unique ``name``, keep eligibility in an `EligibleRing`
(rotation) or an `EligibleSet` (uniform sampling), and list the class in `ROUTERS`.
"""

from __future__ import annotations

import abc
import bisect
import random
import re
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "DEFAULT_ROUTER",
    "ROUTERS",
    "Biased",
    "EligibleRing",
    "EligibleSet",
    "PowerOfTwo",
    "RoundRobin",
    "Router",
    "make_router",
    "natural_key",
]


class Router(abc.ABC):
    """Chooses the eligible worker that gets the next queued job.

    Routers that make random choices draw only from ``rng`` (a fresh unseeded `random.Random`
    when omitted), so a seeded ``rng`` makes them deterministic; the others ignore it.
    """

    name: ClassVar[str]

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    @abc.abstractmethod
    def update(self, worker_id: str, leased: int, capacity: int) -> None:
        """The table calls this whenever a worker registers, or its lease count or capacity changes
        (after every lease it grants and every lease it releases). A worker is eligible while
        leased < capacity.

        An unknown id registers the worker. ``leased`` may exceed ``capacity`` (capacity lowered
        while leases are out): the worker is then simply not eligible.

        Raises:
            ValueError: ``leased`` or ``capacity`` is negative.
        """

    @abc.abstractmethod
    def remove(self, worker_id: str) -> None:
        """The worker is gone (lost or deregistered); unknown ids are ignored."""

    @abc.abstractmethod
    def pick(self) -> str | None:
        """The eligible worker that gets the next job, or None when no worker may take one.
        Does not change counts: the table grants the lease and then calls update()."""


def _eligible(leased: int, capacity: int) -> bool:
    # Negative counts can only come from a bookkeeping bug in the caller (the prototype floored a
    # counter at 0 and silently lost capacity): fail loudly instead of routing on garbage.
    if leased < 0 or capacity < 0:
        raise ValueError(f"lease counts must be >= 0, got leased={leased} capacity={capacity}")
    return leased < capacity


class EligibleRing:
    """A fair rotation over a changing set of eligible worker ids.

    `next` returns the eligible ids in a cycle: an id that stays eligible is returned again after
    every other eligible id has been returned at most once, so no eligible id starves, however the
    others come and go. An id that becomes eligible joins at the back of the rotation, unless it is
    still waiting in it from before (then it keeps its place).

    Every operation is O(1) amortised: `set` and `discard` only touch sets and append; an id that
    becomes ineligible stays in the ring (lazy removal) and is dropped when it reaches the front,
    which pays for itself because each id is appended once per time it is dropped.
    """

    # Compact once stale entries outnumber live ones by this margin, so churn (workers that
    # register and go away while nothing is picked) cannot grow the ring without bound.
    _SLACK = 32

    __slots__ = ("_eligible", "_queued", "_ring")

    def __init__(self) -> None:
        self._ring: deque[str] = deque()
        self._queued: set[str] = set()  # exactly the ids in _ring (each at most once)
        self._eligible: set[str] = set()  # subset of _queued

    def __len__(self) -> int:
        """The number of eligible ids."""
        return len(self._eligible)

    def __contains__(self, worker_id: object) -> bool:
        """Whether ``worker_id`` is eligible."""
        return worker_id in self._eligible

    def set(self, worker_id: str, eligible: bool) -> None:
        """Make ``worker_id`` eligible or not."""
        if not eligible:
            self.discard(worker_id)
            return
        self._eligible.add(worker_id)
        if worker_id not in self._queued:
            self._queued.add(worker_id)
            self._ring.append(worker_id)

    def discard(self, worker_id: str) -> None:
        """Make ``worker_id`` ineligible; an id that is not eligible is ignored."""
        self._eligible.discard(worker_id)
        # Compaction costs O(len(ring)) < O(2 * stale entries), and each stale entry was created by
        # one discard since the last compaction: O(1) amortised.
        if len(self._ring) > 2 * len(self._eligible) + self._SLACK:
            self._ring = deque(w for w in self._ring if w in self._eligible)
            self._queued = set(self._ring)

    def next(self) -> str | None:
        """The next eligible id in the rotation (moved to the back), or None if none is eligible."""
        if not self._eligible:
            return None
        ring, eligible = self._ring, self._eligible
        # Terminates: every eligible id is in the ring.
        while True:
            head = ring.popleft()
            if head in eligible:
                ring.append(head)
                return head
            self._queued.discard(head)


class EligibleSet:
    """The eligible worker ids, for uniform random sampling in O(1).

    A list plus an index map; removal swaps the last element into the hole, so `set`, `discard`
    and `choose_two` are all O(1).
    """

    __slots__ = ("_ids", "_index")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        """The number of eligible ids."""
        return len(self._ids)

    def __contains__(self, worker_id: object) -> bool:
        """Whether ``worker_id`` is eligible."""
        return worker_id in self._index

    def set(self, worker_id: str, eligible: bool) -> None:
        """Make ``worker_id`` eligible or not."""
        if not eligible:
            self.discard(worker_id)
        elif worker_id not in self._index:
            self._index[worker_id] = len(self._ids)
            self._ids.append(worker_id)

    def discard(self, worker_id: str) -> None:
        """Make ``worker_id`` ineligible; an id that is not eligible is ignored."""
        i = self._index.pop(worker_id, None)
        if i is None:
            return
        last = self._ids.pop()
        if i < len(self._ids):
            self._ids[i] = last
            self._index[last] = i

    def choose_two(self, rng: random.Random) -> list[str]:
        """Two distinct eligible ids drawn uniformly at random (all of them when fewer than two)."""
        n = len(self._ids)
        if n <= 2:
            return list(self._ids)
        # Every unordered pair equally likely: draw the second index from the n - 1 others.
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        if j >= i:
            j += 1
        return [self._ids[i], self._ids[j]]


_DIGITS = re.compile(r"([0-9]+)")

NaturalKey = tuple[tuple[tuple[str, int], ...], str]


def natural_key(worker_id: str) -> NaturalKey:
    """A sort key that orders digit runs by value: ``worker-2`` < ``worker-10`` < ``worker-10a``.

    Ids that differ only in leading zeros (``w-01``, ``w-1``) fall back to plain string order, so
    the order is total and deterministic.
    """
    parts = _DIGITS.split(worker_id)
    # split() alternates text, digits, text, ...; pair each text with the number after it (-1 when
    # the id ends in text) so every position holds the same types and tuples always compare.
    pairs = tuple(
        (parts[i], int(parts[i + 1]) if i + 1 < len(parts) else -1) for i in range(0, len(parts), 2)
    )
    return pairs, worker_id


class RoundRobin(Router):
    """A fair cycle over the eligible workers.

    While its eligibility holds, each worker is picked once per round; a worker that becomes
    eligible (new, or freed from full) joins the rotation, and no eligible worker starves however
    the others' eligibility changes. Unlike the prototype, which re-sorted all ids and indexed the
    current eligible list per decision (O(n log n), and a rotation that skipped or repeated workers
    whenever eligibility changed), `update`, `remove` and `pick` are O(1) amortised.
    """

    name: ClassVar[str] = "roundrobin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._ring = EligibleRing()

    def update(self, worker_id: str, leased: int, capacity: int) -> None:
        self._ring.set(worker_id, _eligible(leased, capacity))

    def remove(self, worker_id: str) -> None:
        self._ring.discard(worker_id)

    def pick(self) -> str | None:
        return self._ring.next()


class PowerOfTwo(Router):
    """Power of two choices: the less loaded of two distinct eligible workers drawn at random.

    The two are drawn uniformly from the eligible workers; lower load (``leased / capacity``,
    compared exactly) wins, then more free capacity (``capacity - leased``), then the smaller id
    (plain string order). With one eligible worker, it is picked. Deterministic under a seeded
    ``rng``. `update`, `remove` and `pick` are O(1) (the prototype shuffled the whole eligible list
    per decision).
    """

    name: ClassVar[str] = "power2"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._counts: dict[str, tuple[int, int]] = {}  # id -> (leased, capacity), registered only
        self._eligible = EligibleSet()

    def update(self, worker_id: str, leased: int, capacity: int) -> None:
        eligible = _eligible(leased, capacity)
        self._counts[worker_id] = (leased, capacity)
        self._eligible.set(worker_id, eligible)

    def remove(self, worker_id: str) -> None:
        self._counts.pop(worker_id, None)
        self._eligible.discard(worker_id)

    def pick(self) -> str | None:
        drawn = self._eligible.choose_two(self._rng)
        if not drawn:
            return None
        if len(drawn) == 1:
            return drawn[0]
        a, b = drawn
        return a if self._better(a, b) else b

    def _better(self, a: str, b: str) -> bool:
        """Whether eligible worker ``a`` beats ``b``."""
        la, ca = self._counts[a]
        lb, cb = self._counts[b]
        # la/ca vs lb/cb by cross-multiplication: exact, no float ties. Eligible => capacity > 0.
        if la * cb != lb * ca:
            return la * cb < lb * ca
        if ca - la != cb - lb:
            return ca - la > cb - lb
        return a < b


class Biased(Router):
    """Deliberately unbalanced, to exercise work stealing.

    The favoured half is the first ``max(n // 2, 1)`` of all ``n`` registered workers (eligible or
    not) in natural id order (`natural_key`: ``worker-2`` before ``worker-10``; the prototype's
    lexicographic order was a bug). Picks rotate fairly (as in `RoundRobin`) over the eligible
    workers of that half; when none of them is eligible `pick` returns None even if other workers
    have room: there is no fallback, the other half gets work only by stealing.

    The half is recomputed only when membership changes (a new id in `update`, or `remove`), at
    O(n); count updates and picks are O(1) amortised.
    """

    name: ClassVar[str] = "biased"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._eligible: dict[str, bool] = {}  # every registered id -> leased < capacity
        self._order: list[NaturalKey] = []  # natural keys of every registered id, sorted
        self._half: set[str] = set()
        self._ring = EligibleRing()  # eligible members of _half

    def update(self, worker_id: str, leased: int, capacity: int) -> None:
        eligible = _eligible(leased, capacity)
        known = worker_id in self._eligible
        self._eligible[worker_id] = eligible
        if not known:
            bisect.insort(self._order, natural_key(worker_id))
            self._rehalve()
        elif worker_id in self._half:
            self._ring.set(worker_id, eligible)

    def remove(self, worker_id: str) -> None:
        if self._eligible.pop(worker_id, None) is None:
            return
        del self._order[bisect.bisect_left(self._order, natural_key(worker_id))]
        self._rehalve()

    def pick(self) -> str | None:
        return self._ring.next()

    def _rehalve(self) -> None:
        # Only the ids that cross the boundary touch the ring, so members that stay in the half
        # keep their place in the rotation.
        size = max(len(self._order) // 2, 1)
        half = {worker_id for _, worker_id in self._order[:size]}
        for worker_id in self._half - half:
            self._ring.discard(worker_id)
        for worker_id in sorted(half - self._half, key=natural_key):
            self._ring.set(worker_id, self._eligible[worker_id])
        self._half = half


ROUTERS: Mapping[str, type[Router]] = MappingProxyType(
    {cls.name: cls for cls in (RoundRobin, PowerOfTwo, Biased)}
)
"""Every router class by its configured name."""

DEFAULT_ROUTER = "roundrobin"


def make_router(name: str, *, rng: random.Random | None = None) -> Router:
    """A new router by its configured name; ``rng`` seeds routers that make random choices.

    Raises:
        ValueError: ``name`` is not in `ROUTERS` (the message lists the valid names, sorted).
    """
    try:
        cls = ROUTERS[name]
    except KeyError:
        valid = ", ".join(sorted(ROUTERS))
        raise ValueError(f"unknown router {name!r}; valid routers: {valid}") from None
    return cls(rng=rng)
