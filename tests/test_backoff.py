"""burstd.backoff: the pauses of a client whose server is away."""

from __future__ import annotations

import random

import pytest

from burstd.backoff import Backoff


def test_pauses_double_up_to_the_cap_each_in_the_upper_half_of_its_step() -> None:
    backoff = Backoff(0.1, random.Random(1))
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    pauses = [backoff.pause(1.0) for _ in steps]
    assert all(step / 2 <= pause <= step for step, pause in zip(steps, pauses, strict=True))
    assert backoff.pause(0.3) <= 0.3  # a lower cap holds at once
    backoff.reset()
    assert backoff.pause(1.0) <= 0.1


def test_clients_that_lost_their_server_together_come_back_spread_out() -> None:
    first = [Backoff(0.5, random.Random(seed)).pause(5.0) for seed in range(100)]
    assert max(first) - min(first) > 0.15  # over the whole upper half of the step, not one instant
    assert len(set(first)) == 100


def test_a_first_pause_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(0.0)
