"""`burst events`: the stored event log of real daemons, followed while jobs run."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import defaultdict
from typing import Any

from tests.cluster import Cluster, eventually, program


class Follower:
    """`burst events --follow --json` in the background, its lines parsed as they come."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                *program("burst"),
                "--controller",
                cluster.addr,
                "events",
                "--follow",
                "--json",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cluster.tmp,
            env=cluster.env,
        )
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(10)


def by_job(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, int, str]]]:
    jobs: dict[str, list[tuple[str, str, int, str]]] = defaultdict(list)
    for event in events:
        if event["job_id"]:
            jobs[event["job_id"]].append(
                (event["kind"], event["worker_id"], event["attempt"], event["detail"])
            )
    return jobs


def without_started(sequence: list[tuple[str, str, int, str]]) -> list[tuple[str, str, int, str]]:
    """A worker announces a start only when the job still runs at its next report: a short
    job may end without one."""
    return [event for event in sequence if event[0] != "started"]


def test_follow_events_while_jobs_run(cluster: Cluster) -> None:
    cluster.controller()
    follower = Follower(cluster)
    try:
        cluster.worker("w1")
        cluster.wait_workers(1)
        ok = cluster.burst("submit", "--array", "1-3", "process", "true").stdout.split()
        (retried,) = cluster.burst("submit", "--retries", "1", "process", "false").stdout.split()
        (slow,) = cluster.burst("submit", "process", "sleep", "2").stdout.split()
        cluster.burst("wait", *ok, retried, slow, check=False)
        eventually(
            lambda: (
                {e["job_id"] for e in follower.events if e["kind"] == "ended"}
                == {*ok, retried, slow}
            ),
            "the follower to see every job end",
        )
    finally:
        follower.stop()
    events = follower.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none missed, in order
    assert ("registered", "w1") in {(e["kind"], e["worker_id"]) for e in events}
    jobs = by_job(events)
    for job_id in ok:
        assert without_started(jobs[job_id]) == [
            ("submitted", "", 0, ""),
            ("leased", "w1", 1, ""),
            ("ended", "w1", 1, "succeeded"),
        ], jobs[job_id]
    assert jobs[slow] == [
        ("submitted", "", 0, ""),
        ("leased", "w1", 1, ""),
        ("started", "w1", 1, ""),
        ("ended", "w1", 1, "succeeded"),
    ]
    assert without_started(jobs[retried]) == [
        ("submitted", "", 0, ""),
        ("leased", "w1", 1, ""),
        ("retried", "w1", 1, ""),
        ("leased", "w1", 2, ""),
        ("ended", "w1", 2, "failed"),
    ], jobs[retried]

    # the same from the store, for one job and for one worker; text lines too
    stored = [json.loads(line) for line in cluster.burst("events", "--json").stdout.splitlines()]
    assert stored[: len(events)] == events
    one = cluster.burst("events", "--json", "--job", slow).stdout.splitlines()
    assert [json.loads(line) for line in one] == [e for e in events if e["job_id"] == slow]
    worker = cluster.burst("events", "--json", "--worker", "w1").stdout.splitlines()
    assert {json.loads(line)["worker_id"] for line in worker} == {"w1"}
    text = cluster.burst("events", "--job", slow).stdout.splitlines()
    assert len(text) == 4 and text[-1].split()[1:] == [
        slow,
        "ended",
        "w1",
        "attempt",
        "1",
        "succeeded",
    ]

    # a client sees its own jobs' events only: not the workers', not another user's jobs'
    created = subprocess.run(
        [*program("burstd"), "token", "create", "--role", "client", "--user", "alice",
         "--state-dir", str(cluster.state), "--controller", cluster.addr],
        capture_output=True, text=True, timeout=60, cwd=cluster.tmp, env=cluster.env,
    )  # fmt: skip
    assert created.returncode == 0, created
    as_client = {**cluster.env, "BURST_TOKEN": created.stdout.splitlines()[-1]}
    assert cluster.burst("events", "--json", env=as_client).stdout == ""
    (mine,) = cluster.burst("submit", "process", "true", env=as_client).stdout.split()
    cluster.burst("wait", "--timeout", "30", mine, env=as_client)
    seen = [
        json.loads(line)
        for line in cluster.burst("events", "--json", env=as_client).stdout.splitlines()
    ]
    assert {event["job_id"] for event in seen} == {mine}
    assert seen[0]["kind"] == "submitted"
    assert seen[-1]["kind"] == "ended"
    # the admin sees them too
    everything = [
        json.loads(line) for line in cluster.burst("events", "--json").stdout.splitlines()
    ]
    assert [event for event in everything if event["job_id"] == mine] == seen


def test_events_survive_a_restart(cluster: Cluster) -> None:
    controller = cluster.controller()
    (job_id,) = cluster.burst("submit", "process", "true").stdout.split()
    assert controller.stop() == 0
    cluster.controller()
    cluster.worker("w1")
    assert cluster.burst("wait", job_id, check=False).returncode == 0
    lines = cluster.burst("events", "--json", "--job", job_id).stdout.splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[0] == "submitted" and kinds[-1] == "ended", kinds
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
