"""The worker's lease deadline (burstd/worker/deadline.py), on a clock the test holds."""

from __future__ import annotations

import math

import pytest

from burstd.leases import LAPSE_GRACE, LEASE_MARGIN
from burstd.worker.deadline import LeaseDeadline


def deadline(ttl: float = 10.0, kill_grace: float = 5.0, heard: float = 100.0) -> LeaseDeadline:
    lease = LeaseDeadline(kill_grace)
    lease.set_ttl(ttl, pace=1.0)
    lease.heard(heard)
    return lease


def test_without_a_ttl_nothing_ever_lapses() -> None:
    lease = LeaseDeadline(kill_grace=5.0)
    assert lease.stop_at == lease.kill_at == math.inf
    assert lease.may_start(1e12)
    lease.set_ttl(0.0, pace=1.0)  # a controller that names none
    lease.heard(0.0)
    assert lease.may_start(1e12)


def test_jobs_are_dead_a_margin_before_the_controller_may_lease_them_elsewhere() -> None:
    lease = deadline(ttl=10.0, kill_grace=5.0, heard=100.0)
    assert lease.kill_at == pytest.approx(100.0 + 10.0 * (1 - LEASE_MARGIN)) == 109.0
    # The kill grace (5 s) is cut to LAPSE_GRACE of the TTL.
    assert lease.stop_at == pytest.approx(lease.kill_at - 10.0 * LAPSE_GRACE) == 108.0
    short = deadline(ttl=10.0, kill_grace=0.25, heard=100.0)
    assert short.stop_at == pytest.approx(108.75)  # a kill grace shorter than that is kept
    assert lease.may_start(107.99) and not lease.may_start(108.0)


def test_the_ttl_stretches_with_the_pace_of_the_heartbeats() -> None:
    lease = deadline(ttl=10.0, heard=0.0)
    lease.set_ttl(10.0, pace=3.0)
    assert lease.kill_at == pytest.approx(27.0)


def test_renewal_counts_from_when_the_call_was_sent_and_never_goes_back() -> None:
    lease = deadline(heard=100.0)
    lease.heard(103.0)
    lease.heard(101.0)  # an answer to an older call, arriving late
    assert lease.heard_at == 103.0 and lease.stop_at == pytest.approx(111.0)


def test_a_lapse_holds_until_a_confirmation_sent_after_it_was_noticed() -> None:
    lease = deadline(heard=100.0)
    assert lease.lapsed(120.0) and lease.lapsed_at == 120.0
    lease.heard(119.0)  # renewed by an answer to a call sent before the lapse was noticed...
    assert not lease.may_start(120.5)  # ...which says nothing about what the worker holds
    assert not lease.confirmed(119.5)  # a heartbeat sent before the lapse was noticed
    assert not lease.may_start(120.5)
    assert lease.confirmed(121.0)
    assert lease.may_start(121.5) and lease.lapsed_at is None
    assert lease.stop_at == pytest.approx(129.0)
    assert not lease.may_start(129.0)  # and it lapses again without word
