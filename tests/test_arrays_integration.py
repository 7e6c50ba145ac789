"""Array specs with steps and lists end to end: real `burst`, controller and worker processes
on free loopback ports (tests/cluster.py); each job's own BURST_ARRAY_INDEX, as it printed it."""

from __future__ import annotations

from burstd.client import BlockingClient, process
from tests.cluster import Cluster


def _printed(cluster: Cluster, job_ids: list[str]) -> list[str]:
    return [(cluster.output / f"{job_id}.stdout").read_text().strip() for job_id in job_ids]


def test_steps_and_lists_give_each_job_its_index(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    show = ("process", "sh", "-c", 'echo "$BURST_ARRAY_INDEX"')
    stepped = cluster.burst("submit", "--wait", "--array", "1-10:3", *show).stdout.split()
    assert _printed(cluster, stepped) == ["1", "4", "7", "10"]
    listed = cluster.burst("submit", "--wait", "--array", "5,0,7-9,20-30:10", *show)
    assert _printed(cluster, listed.stdout.split()) == ["5", "0", "7", "8", "9", "20", "30"]

    refused = cluster.burst("submit", "--array", "1-5,3", *show, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "burst: error: --array '1-5,3': index 3 is listed twice"

    with BlockingClient(cluster.addr, token=cluster.token()) as client:
        template = process("sh", "-c", 'echo "$BURST_ARRAY_INDEX"')
        ids = [
            *client.submit_array(template, "2-6:2,1"),
            *client.submit_array(template, range(9, 0, -4)),
            *client.submit_array(template, [11, 3]),
        ]
        list(client.wait(ids))
    assert _printed(cluster, ids) == ["2", "4", "6", "1", "9", "5", "1", "11", "3"]


def test_placeholders_are_filled_per_job_never_through_a_shell(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    printf = ("process", "printf", "%s|%s|%s\\n")
    array = cluster.burst(
        "submit", "--wait", "--array", "3,5", *printf, "{index}", "{job_id}", "{{index}} {x}"
    )
    ids = array.stdout.split()
    assert _printed(cluster, ids) == [f"3|{ids[0]}|{{index}} {{x}}", f"5|{ids[1]}|{{index}} {{x}}"]

    (cluster.tmp / "lines.txt").write_text("a b; echo no\n$(id)\n")
    each = cluster.burst(
        "submit", "--wait", "--each-line", "lines.txt", *printf, "<{entry}>", "", ""
    )
    assert _printed(cluster, each.stdout.split()) == ["<a b; echo no>||", "<$(id)>||"]

    for argv, message in [
        (("process", "echo", "{index}"), "{index} needs --array"),
        (("--array", "1-2", "process", "echo", "{entry}"), "{entry} needs --each-line"),
    ]:
        refused = cluster.burst("submit", *argv, check=False)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr and "argv[1]" in refused.stderr
    assert cluster.burst("list").stdout.count("\n") == 4

    # Other braces are the command's own (awk, JSON): passed as they are.
    (awk,) = cluster.burst("submit", "--wait", "process", "awk", "BEGIN {print 1+1}").stdout.split()
    assert _printed(cluster, [awk]) == ["2"]
