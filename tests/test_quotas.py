"""The per-user limits (burstd/policies/quotas.py): pure functions, driven with any clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstd.policies.quotas import Quota, QuotaExceeded, Quotas, TokenBucket, check_submission


def test_no_limit_by_default() -> None:
    quota = Quotas().of("alice")
    bucket = TokenBucket.full(quota, 0.0)
    for now in range(100):
        check_submission("alice", quota, 1_000_000, 10**9, bucket, float(now))
    assert quota.may_lease(10**9)


def test_a_user_section_replaces_the_defaults_key_by_key() -> None:
    quotas = Quotas(
        Quota(max_queued=10, max_running=2, submit_rate=5.0),
        users={"bob": {"max_running": 0}, "carol": {"submit_rate": 0.5, "max_queued": 3}},
    )
    assert quotas.of("alice") == Quota(10, 2, 5.0)
    assert quotas.of("bob") == Quota(10, 0, 5.0)
    assert quotas.of("carol") == Quota(3, 2, 0.5)


@pytest.mark.parametrize(
    "kwargs", [{"max_queued": -1}, {"max_running": -5}, {"submit_rate": -1.0},
               {"submit_rate": float("inf")}, {"submit_rate": float("nan")}],
)  # fmt: skip
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Quota(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Quotas(users={"alice": kwargs})


def test_unknown_keys_in_a_user_section_are_refused() -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        Quotas(users={"alice": {"max_jobs": 3}})


def test_max_queued_counts_the_submission_and_refuses_it_whole() -> None:
    quota = Quota(max_queued=10)
    check_submission("alice", quota, 4, 6, None, 0.0)
    with pytest.raises(QuotaExceeded) as refused:
        check_submission("alice", quota, 5, 6, None, 0.0)
    assert refused.value.limit == "max_queued"
    assert refused.value.retry_after is None
    assert "max_queued" in str(refused.value) and "'alice'" in str(refused.value)


def test_a_submission_refused_for_the_queue_takes_no_token() -> None:
    quota = Quota(max_queued=1, submit_rate=1.0)
    bucket = TokenBucket.full(quota, 0.0)
    with pytest.raises(QuotaExceeded, match="max_queued"):
        check_submission("alice", quota, 1, 1, bucket, 0.0)
    check_submission("alice", quota, 1, 0, bucket, 0.0)


def test_the_rate_refusal_says_when_to_retry_and_that_time_is_enough() -> None:
    quota = Quota(submit_rate=2.0)
    bucket = TokenBucket.full(quota, 100.0)
    check_submission("alice", quota, 2, 0, bucket, 100.0)
    with pytest.raises(QuotaExceeded) as refused:
        check_submission("alice", quota, 1, 0, bucket, 100.1)
    assert refused.value.limit == "submit_rate"
    assert refused.value.retry_after == pytest.approx(0.4)
    assert "retry after 0.400 s" in str(refused.value)
    check_submission("alice", quota, 1, 0, bucket, 100.1 + refused.value.retry_after)


def test_a_submission_larger_than_the_bucket_waits_for_a_full_one_then_leaves_debt() -> None:
    quota = Quota(submit_rate=10.0)
    bucket = TokenBucket.full(quota, 0.0)
    check_submission("alice", quota, 1_000, 0, bucket, 0.0)
    with pytest.raises(QuotaExceeded) as refused:
        check_submission("alice", quota, 1, 0, bucket, 1.0)
    # 990 tokens of debt plus the one job, at 10 a second, less the second gone by.
    assert refused.value.retry_after == pytest.approx(99.1 - 1.0)


def test_a_clock_that_goes_back_refills_nothing() -> None:
    quota = Quota(submit_rate=1.0)
    bucket = TokenBucket.full(quota, 50.0)
    check_submission("alice", quota, 1, 0, bucket, 50.0)
    with pytest.raises(QuotaExceeded):
        check_submission("alice", quota, 1, 0, bucket, 10.0)
    with pytest.raises(QuotaExceeded):
        check_submission("alice", quota, 1, 0, bucket, 50.5)
    check_submission("alice", quota, 1, 0, bucket, 51.0)


def test_max_running_is_a_bound_on_leases_not_a_refusal() -> None:
    quota = Quota(max_running=2)
    assert quota.may_lease(0) and quota.may_lease(1)
    assert not quota.may_lease(2) and not quota.may_lease(3)
    check_submission("alice", quota, 100, 0, None, 0.0)


@settings(max_examples=300)
@given(
    rate=st.floats(0.1, 1_000.0),
    steps=st.lists(st.tuples(st.integers(1, 2_000), st.floats(0.0, 5.0)), min_size=1, max_size=60),
)
def test_over_time_a_user_submits_at_most_the_rate(
    rate: float, steps: list[tuple[int, float]]
) -> None:
    """Whatever the sizes and times, the jobs accepted by time T stay within rate * T plus one
    bucket (or the largest submission accepted, which may take the bucket into debt); every
    refusal names a positive wait after which the same submission is accepted."""
    quota = Quota(submit_rate=rate)
    now = 0.0
    bucket = TokenBucket.full(quota, now)
    accepted = largest = 0
    for count, delay in steps:
        now += delay
        try:
            check_submission("alice", quota, count, 0, bucket, now)
        except QuotaExceeded as refused:
            assert refused.retry_after is not None and refused.retry_after > 0

            later = now + refused.retry_after
            sooner = now + refused.retry_after * 0.99 - 0.001
            for at, accepted_then in ((later, True), (sooner, False)):
                probe = TokenBucket(quota, bucket.tokens, bucket.updated)
                assert (probe.wait(count, at) == 0) is accepted_then
            continue
        accepted += count
        largest = max(largest, count)
        assert accepted <= rate * now + max(quota.burst, largest) + 1e-6
