"""`burst list` over several pages (it asks for the next page while it writes one), against a
real controller."""

from __future__ import annotations

from burstd.client import BlockingClient, process
from cli.burst import LIST_PAGE
from tests.cluster import Cluster


def test_every_page_in_order_and_a_limit_across_pages(cluster: Cluster) -> None:
    cluster.controller()
    jobs = 2 * LIST_PAGE + 500
    with BlockingClient(cluster.addr, token=cluster.token()) as client:
        ids = client.submit_array(process("true"), range(jobs))
    listed = [line.split() for line in cluster.burst("list").stdout.splitlines()]
    assert [fields[0] for fields in listed] == ids
    # the default columns: state, worker, outcome, name
    assert {tuple(fields[1:]) for fields in listed} == {("queued", "-", "-", "-")}
    limited = cluster.burst("list", "--limit", str(LIST_PAGE + 7)).stdout.splitlines()
    assert [line.split()[0] for line in limited] == ids[: LIST_PAGE + 7]
    queued = cluster.burst("list", "--state", "queued", "--limit", "3").stdout.splitlines()
    assert [line.split()[0] for line in queued] == ids[:3]
