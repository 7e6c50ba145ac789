"""Job owners and per-user quotas with real processes: `burst` run as two users (client tokens
made through the admin RPC) and as the admin, against a real controller (and worker)."""

from __future__ import annotations

import json
import subprocess
import time

from tests.cluster import Cluster

UNKNOWN = "job-99999999"


class User:
    """`burst` as one user (its token in BURST_TOKEN)."""

    def __init__(self, cluster: Cluster, token: str) -> None:
        self.cluster = cluster
        self.env = {**cluster.env, "BURST_TOKEN": token}

    def burst(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.burst(*args, check=check, env=self.env)

    def submit(self, *args: str) -> list[str]:
        return self.burst("submit", *args).stdout.split()


def users(cluster: Cluster, *names: str) -> list[User]:
    return [User(cluster, cluster.client_token(name)) for name in names]


def config(cluster: Cluster, text: str) -> str:
    path = cluster.tmp / "burst.toml"
    path.write_text(text)
    return str(path)


def answer(result: subprocess.CompletedProcess[str], job_id: str) -> tuple[int, str, str]:
    """What a command answered, with the job id it was asked about left out."""
    return (
        result.returncode,
        result.stdout.replace(job_id, "ID"),
        result.stderr.replace(job_id, "ID"),
    )


def test_a_user_sees_only_its_own_jobs_and_the_admin_every_one(cluster: Cluster) -> None:
    cluster.controller()  # no worker: the jobs stay queued
    alice, bob = users(cluster, "alice", "bob")
    (mine,) = alice.submit("process", "true")
    (theirs,) = bob.submit("process", "true")

    # To alice, bob's job does not exist: every command answers as for an unknown id.
    for command in (
        ["status", "--json"],
        ["status"],
        ["cancel"],
        ["wait", "--timeout", "5"],
        ["forget"],
    ):
        unknown = answer(alice.burst(*command, UNKNOWN, check=False), UNKNOWN)
        assert answer(alice.burst(*command, theirs, check=False), theirs) == unknown, command
    assert alice.burst("list", "--format", "id").stdout.split() == [mine]
    assert json.loads(alice.burst("status", "--json", mine).stdout)["owner"] == "alice"
    # ... and alice's attempts changed nothing of it
    assert json.loads(bob.burst("status", "--json", theirs).stdout)["state"] == "queued"
    refused = alice.burst("list", "--all-users", check=False)
    assert refused.returncode != 0 and "all_users" in refused.stderr

    # The admin sees every job, with its owner.
    listing = cluster.burst("list", "--all-users").stdout.splitlines()
    assert [line.split()[:3] for line in listing] == [
        [mine, "alice", "queued"],
        [theirs, "bob", "queued"],
    ]
    assert cluster.status(theirs)["owner"] == "bob"
    # wait --all waits for the caller's own jobs: bob's end, alice's queued one is not his
    bob.burst("cancel", theirs)
    assert bob.burst("wait", "--all", "--timeout", "10", check=False).returncode == 1
    assert alice.burst("wait", "--all", "--timeout", "1", check=False).returncode == 5


def test_another_users_job_output_is_refused_as_an_unknown_jobs(cluster: Cluster) -> None:
    """`burst logs` reads a job's output only for its owner or an admin (issue 20): to another
    client the job does not exist, whatever the options."""
    cluster.controller()
    cluster.worker("w1")
    cluster.wait_workers(1)
    alice, bob = users(cluster, "alice", "bob")
    (theirs,) = bob.submit("process", "echo", "secret")
    bob.burst("wait", "--timeout", "20", theirs)
    assert bob.burst("logs", theirs).stdout == "secret\n"
    assert cluster.burst("logs", theirs).stdout == "secret\n"
    for options in ([], ["--stderr"], ["--attempt", "1"], ["--tail", "1"], ["--follow"]):
        unknown = answer(alice.burst("logs", *options, UNKNOWN, check=False), UNKNOWN)
        refused = answer(alice.burst("logs", *options, theirs, check=False), theirs)
        assert refused == unknown and refused[0] != 0, options
        assert "secret" not in refused[1] + refused[2]


def test_max_queued_refuses_a_submission_past_it_naming_it(cluster: Cluster) -> None:
    cluster.controller("--config", config(cluster, "[quotas]\nmax_queued = 3\n"))
    alice, bob = users(cluster, "alice", "bob")
    alice.submit("--array", "1-3", "process", "true")
    refused = alice.burst("submit", "process", "true", check=False)
    assert refused.returncode == 1
    assert "max_queued" in refused.stderr and "alice" in refused.stderr
    assert len(bob.submit("--array", "1-3", "process", "true")) == 3


def test_a_user_at_max_running_holds_no_other_users_jobs_back(cluster: Cluster) -> None:
    cluster.controller("--config", config(cluster, "[quotas.users.bob]\nmax_running = 1\n"))
    cluster.worker("w1", slots=4)
    cluster.wait_workers(1)
    alice, bob = users(cluster, "alice", "bob")
    bobs = bob.submit("--array", "1-3", "process", "sleep", "60")
    alices = alice.submit("--array", "1-2", "process", "sleep", "60")
    deadline = time.monotonic() + 20
    while True:
        states = {
            line.split()[0]: line.split()[2]
            for line in cluster.burst("list", "--all-users").stdout.splitlines()
        }
        if all(states[job] == "running" for job in alices) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [states[job] for job in alices] == ["running", "running"]
    assert sorted(states[job] for job in bobs) == ["queued", "queued", "running"]
    # one of bob's ends: the next of his starts
    (running,) = [job for job in bobs if states[job] == "running"]
    bob.burst("cancel", running)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        started = [job for job in bobs if cluster.status(job)["state"] == "running"]
        if started:
            break
        time.sleep(0.2)
    assert len(started) == 1 and started[0] != running


def test_submit_rate_refuses_with_when_to_retry(cluster: Cluster) -> None:
    cluster.controller("--config", config(cluster, "[quotas]\nsubmit_rate = 5\n"))
    (carol,) = users(cluster, "carol")
    # 50 jobs on a full bucket of 5: accepted, and the next submission waits ~9 s for them
    carol.submit("--array", "1-50", "process", "true")
    refused = carol.burst("submit", "process", "true", check=False)
    assert refused.returncode == 1 and "submit_rate" in refused.stderr
    retry = float(refused.stderr.split("retry after ")[1].split()[0])
    assert 0 < retry <= 9.2
    time.sleep(retry)
    carol.submit("process", "true")
