"""Routers: distributions, eligibility, and random operation sequences against a model."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from burstd.policies.routers import (
    DEFAULT_ROUTER,
    ROUTERS,
    Biased,
    EligibleRing,
    PowerOfTwo,
    RoundRobin,
    Router,
    make_router,
    natural_key,
)


def picks(router: Router, n: int) -> list[str | None]:
    return [router.pick() for _ in range(n)]


def seeded(name: str, seed: int = 7) -> Router:
    return make_router(name, rng=random.Random(seed))


# --- registry -------------------------------------------------------------------------------------


def test_registry() -> None:
    assert dict(ROUTERS) == {"roundrobin": RoundRobin, "power2": PowerOfTwo, "biased": Biased}
    assert DEFAULT_ROUTER == "roundrobin"
    for name, cls in ROUTERS.items():
        assert cls.name == name
        assert type(make_router(name)) is cls


def test_make_router_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'fifo'.*biased, power2, roundrobin"):
        make_router("fifo")


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_negative_counts_rejected(name: str) -> None:
    router = make_router(name)
    with pytest.raises(ValueError):
        router.update("w-1", -1, 4)
    with pytest.raises(ValueError):
        router.update("w-1", 0, -1)


# --- behaviour common to all routers --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_empty_router_picks_none(name: str) -> None:
    assert make_router(name).pick() is None


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_capacity_zero_worker_never_picked(name: str) -> None:
    router = seeded(name)
    router.update("w-1", 0, 0)
    assert picks(router, 10) == [None] * 10
    router.update("w-2", 0, 0)
    router.update("w-3", 0, 2)
    router.update("w-4", 0, 0)
    chosen = set(picks(router, 50))
    assert "w-1" not in chosen and "w-2" not in chosen and "w-4" not in chosen


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_full_worker_not_picked_until_released(name: str) -> None:
    router = seeded(name)
    router.update("w-1", 2, 2)
    assert router.pick() is None
    router.update("w-1", 3, 2)  # capacity lowered under outstanding leases
    assert router.pick() is None
    router.update("w-1", 1, 2)
    assert router.pick() == "w-1"


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_remove_stops_picks(name: str) -> None:
    router = seeded(name)
    for w in ("w-1", "w-2", "w-3"):
        router.update(w, 0, 4)
    router.remove("w-1")
    router.remove("w-1")  # twice: ignored
    router.remove("nobody")  # unknown: ignored
    assert "w-1" not in set(picks(router, 50))
    for w in ("w-2", "w-3"):
        router.remove(w)
    assert router.pick() is None


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_pick_does_not_change_counts(name: str) -> None:
    router = seeded(name)
    router.update("w-1", 0, 1)
    assert picks(router, 5) == ["w-1"] * 5


# --- roundrobin -----------------------------------------------------------------------------------


def test_roundrobin_cycles_evenly_over_three() -> None:
    router = RoundRobin()
    for w in ("a", "b", "c"):
        router.update(w, 0, 10)
    got = picks(router, 30)
    assert got[:3] == ["a", "b", "c"]
    assert got == got[:3] * 10


def test_roundrobin_full_worker_skipped_then_rejoins() -> None:
    router = RoundRobin()
    for w in ("a", "b", "c"):
        router.update(w, 0, 1)
    assert router.pick() == "a"
    router.update("a", 1, 1)  # the table granted the lease: a is full
    assert picks(router, 4) == ["b", "c", "b", "c"]
    router.update("a", 0, 1)  # released: a keeps its place in the rotation
    assert set(picks(router, 3)) == {"a", "b", "c"}


def test_roundrobin_new_worker_joins_rotation() -> None:
    router = RoundRobin()
    router.update("a", 0, 1)
    router.update("b", 0, 1)
    assert picks(router, 2) == ["a", "b"]
    router.update("c", 0, 1)
    assert picks(router, 6) == ["a", "b", "c"] * 2


def test_roundrobin_churn_without_picks_stays_bounded() -> None:
    router = RoundRobin()
    router.update("keep", 0, 1)
    for i in range(10_000):
        router.update(f"w-{i}", 0, 1)
        router.remove(f"w-{i}")
    ring = router._ring
    assert len(ring._ring) <= 2 * len(ring) + EligibleRing._SLACK + 1
    assert router.pick() == "keep"


# --- power2 ---------------------------------------------------------------------------------------


def test_power2_two_workers_less_loaded_always_wins() -> None:
    router = seeded("power2")
    router.update("busy", 3, 4)
    router.update("idle", 0, 4)
    assert set(picks(router, 50)) == {"idle"}


def test_power2_prefers_less_loaded() -> None:
    router = seeded("power2")
    router.update("w-0", 0, 4)
    router.update("w-1", 1, 4)
    router.update("w-2", 2, 4)
    counts = Counter(picks(router, 3000))
    # Each pair is drawn with p=1/3: w-0 wins 2 of 3 pairs, w-1 one, w-2 (most loaded) none.
    assert counts["w-2"] == 0
    assert 1800 < counts["w-0"] < 2200
    assert 800 < counts["w-1"] < 1200


def test_power2_load_is_relative_to_capacity() -> None:
    router = seeded("power2")
    router.update("small", 1, 2)  # load 1/2
    router.update("large", 3, 10)  # load 3/10: lower although more leases
    assert set(picks(router, 20)) == {"large"}


def test_power2_ties() -> None:
    router = seeded("power2")
    router.update("a", 1, 2)
    router.update("b", 2, 4)  # same load, more free capacity
    assert set(picks(router, 20)) == {"b"}
    router.update("b", 1, 2)  # same load, same free: smaller id
    assert set(picks(router, 20)) == {"a"}


def test_power2_deterministic_under_seed() -> None:
    def run(seed: int) -> list[str | None]:
        router = seeded("power2", seed)
        for i in range(20):
            router.update(f"w-{i}", i % 3, 4)
        return picks(router, 200)

    assert run(1) == run(1)
    assert len(set(run(1))) > 2


# --- biased ---------------------------------------------------------------------------------------


def test_natural_key_order() -> None:
    ids = ["worker-10", "worker-2", "worker-1", "worker-10a", "worker-", "w-01", "w-1", "b", "a9"]
    assert sorted(ids, key=natural_key) == [
        "a9",
        "b",
        "w-01",
        "w-1",
        "worker-",
        "worker-1",
        "worker-2",
        "worker-10",
        "worker-10a",
    ]


def test_biased_picks_first_half_in_natural_order() -> None:
    router = Biased()
    for i in (10, 2, 1, 11):  # lexicographic order would favour worker-1 and worker-10
        router.update(f"worker-{i}", 0, 100)
    got = picks(router, 40)
    assert set(got) == {"worker-1", "worker-2"}
    assert Counter(got) == {"worker-1": 20, "worker-2": 20}


def test_biased_none_when_half_full_even_if_others_have_room() -> None:
    router = Biased()
    for i in range(1, 5):
        router.update(f"worker-{i}", 0, 1)
    router.update("worker-1", 1, 1)
    assert picks(router, 3) == ["worker-2"] * 3
    router.update("worker-2", 1, 1)
    assert router.pick() is None  # worker-3 and worker-4 are idle: they must steal
    router.update("worker-1", 0, 1)
    assert router.pick() == "worker-1"


def test_biased_single_worker_is_the_half() -> None:
    router = Biased()
    router.update("w-5", 0, 1)
    assert router.pick() == "w-5"


def test_biased_half_recomputed_on_membership_change() -> None:
    router = Biased()
    for i in (3, 4, 5, 6):
        router.update(f"w-{i}", 0, 9)
    assert set(picks(router, 10)) == {"w-3", "w-4"}
    router.update("w-1", 0, 9)  # 5 workers: half = 2 = w-1, w-3
    assert set(picks(router, 10)) == {"w-1", "w-3"}
    router.remove("w-1")
    router.remove("w-3")  # 3 workers: half = 1 = w-4
    assert set(picks(router, 10)) == {"w-4"}


def test_biased_ineligible_members_still_count_for_the_half() -> None:
    router = Biased()
    router.update("w-1", 0, 0)
    router.update("w-2", 0, 0)
    router.update("w-3", 0, 5)
    router.update("w-4", 0, 5)
    assert router.pick() is None


# --- random operation sequences against a model -------------------------------------------------

POOL = [f"worker-{i}" for i in (1, 2, 3, 5, 10, 11, 20)]


class RouterMachine(RuleBasedStateMachine):
    """Random register/update/remove/pick sequences against a dict of counts."""

    router_name = ""

    def __init__(self) -> None:
        super().__init__()
        self.router = make_router(self.router_name, rng=random.Random(0))
        self.model: dict[str, tuple[int, int]] = {}
        # Non-target picks since each continuously pickable worker was last picked (or became
        # pickable): bounded for the rotating routers.
        self.waits: dict[str, int] = {}

    def pickable(self) -> set[str]:
        """The workers pick() may return: eligible (and, for biased, in the favoured half)."""
        eligible = {w for w, (leased, cap) in self.model.items() if leased < cap}
        if self.router_name != "biased":
            return eligible
        ordered = sorted(self.model, key=natural_key)
        return eligible & set(ordered[: max(len(ordered) // 2, 1)])

    def refresh_waits(self) -> None:
        now = self.pickable()
        self.waits = {w: self.waits.get(w, 0) for w in now}

    @rule(
        worker=st.sampled_from(POOL),
        leased=st.integers(0, 3),
        capacity=st.integers(0, 3),
    )
    def update(self, worker: str, leased: int, capacity: int) -> None:
        self.router.update(worker, leased, capacity)
        self.model[worker] = (leased, capacity)
        self.refresh_waits()

    @rule(worker=st.sampled_from([*POOL, "stranger"]))
    def remove(self, worker: str) -> None:
        self.router.remove(worker)
        self.model.pop(worker, None)
        self.refresh_waits()

    @rule(grant=st.booleans())
    def pick(self, grant: bool) -> None:
        pickable = self.pickable()
        got = self.router.pick()
        if got is None:
            assert not pickable, f"None although {sorted(pickable)} may take a job"
            return
        assert got in self.model, f"{got} is not registered"
        leased, capacity = self.model[got]
        assert leased < capacity, f"{got} is full: {leased}/{capacity}"
        assert got in pickable, f"{got} is outside the favoured half"
        if self.router_name != "power2":
            # A worker that stays pickable waits for at most every other worker once.
            for w in self.waits:
                self.waits[w] = 0 if w == got else self.waits[w] + 1
                assert self.waits[w] < len(POOL), f"{w} starves"
        if grant:  # what the table does next
            self.update(got, leased + 1, capacity)


def _machine(name: str) -> type[RouterMachine]:
    return type(f"{name.capitalize()}Machine", (RouterMachine,), {"router_name": name})


_settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRoundRobinMachine = _settings(_machine("roundrobin")).TestCase
TestPowerOfTwoMachine = _settings(_machine("power2")).TestCase
TestBiasedMachine = _settings(_machine("biased")).TestCase
