"""Priorities and fair share with real processes: a controller, a worker and `burst` run as
two users (client tokens made through the admin RPC)."""

from __future__ import annotations

import datetime
import json

from tests.cluster import Cluster
from tests.test_owners_integration import users


def test_a_higher_priority_starts_before_the_lower_ones_queued_earlier(cluster: Cluster) -> None:
    cluster.controller()  # no worker yet: everything is queued when it comes
    low = cluster.burst("submit", "--array", "1-3", "process", "true").stdout.split()
    (urgent,) = cluster.burst("submit", "--priority", "7", "process", "true").stdout.split()
    (later,) = cluster.burst("submit", "process", "true").stdout.split()
    (lowest,) = cluster.burst("submit", "--priority", "-2", "process", "true").stdout.split()
    cluster.worker("w1", slots=1)
    cluster.burst("wait", "--timeout", "30", *low, urgent, later, lowest)
    order = sorted([*low, urgent, later, lowest], key=lambda j: cluster.status(j)["started_at"])
    assert order == [urgent, *low, later, lowest]
    assert cluster.status(urgent)["priority"] == 7
    listed = cluster.burst("list", "--format", "id,priority").stdout.splitlines()
    assert [urgent, "7"] in [line.split() for line in listed]


def test_a_priority_out_of_range_is_refused_naming_the_flag(cluster: Cluster) -> None:
    cluster.controller()
    for value in ("1001", "-1001"):
        refused = cluster.burst("submit", "--priority", value, "process", "true", check=False)
        assert refused.returncode == 2 and "--priority" in refused.stderr
    assert cluster.burst("list").stdout == ""


def test_a_second_users_jobs_start_while_the_first_users_100000_are_queued(
    cluster: Cluster,
) -> None:
    """Free slots go round the users at one priority: bob's jobs do not wait behind alice's."""
    cluster.controller()
    cluster.worker("w1", slots=2)
    cluster.wait_workers(1)
    alice, bob = users(cluster, "alice", "bob")
    alices = alice.submit("--quiet", "--array", "1-100000", "process", "sleep", "0.2")
    bobs = bob.submit("--array", "1-2", "process", "true")
    bob.burst("wait", "--timeout", "60", *bobs)
    waits = []
    for job_id in bobs:
        info = cluster.status(job_id)
        started, submitted = (
            datetime.datetime.fromisoformat(info[key]) for key in ("started_at", "submitted_at")
        )
        waits.append((started - submitted).total_seconds())
    print(f"bob's jobs started {', '.join(f'{w:.2f}' for w in waits)} s after their submission")
    # A wide margin for a loaded machine (a second or less on an idle one): without the
    # rotation they would wait for alice's 100,000, about 3 hours.
    assert max(waits) < 10
    (submission,) = alices
    counts = json.loads(alice.burst("status", "--json", submission).stdout)
    assert counts["total"] == 100_000 and counts["queued"] > 90_000
