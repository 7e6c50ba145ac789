"""Submissions as units, and what each attempt used, end to end: real `burst`, controller and
worker processes on free loopback ports (tests/cluster.py)."""

from __future__ import annotations

import json
import re

from tests.cluster import Cluster

# Index 3 fails (exit 3), the others succeed.
FAILS_AT_3 = (
    "process", "sh", "-c",
    'echo "i=$BURST_ARRAY_INDEX"; exit $((BURST_ARRAY_INDEX == 3 ? 3 : 0))',
)  # fmt: skip
SUB_ID = re.compile(r"sub-[0-9]{8,}")


def _counts(cluster: Cluster, submission: str) -> dict[str, int]:
    data = json.loads(cluster.burst("status", "--json", submission).stdout)
    assert data["submission_id"] == submission
    return {key: data[key] for key in ("total", "queued", "succeeded", "failed", "cancelled")}


def test_a_submission_is_waited_on_counted_listed_and_resubmitted_as_one(
    cluster: Cluster,
) -> None:
    cluster.controller()
    cluster.worker("w1")
    quiet = cluster.burst("submit", "--quiet", "--name", "sweep", "--array", "1-4", *FAILS_AT_3)
    (submission,) = quiet.stdout.split()
    assert SUB_ID.fullmatch(submission)
    other = cluster.burst("submit", "--name", "other", "process", "true").stdout.split()

    waited = cluster.burst("wait", submission, check=False)
    assert waited.returncode == 1  # one of its jobs failed
    assert re.fullmatch(r"job-\d+ failed exit: exited with code 3\n", waited.stdout)
    assert _counts(cluster, submission) == {
        "total": 4, "queued": 0, "succeeded": 3, "failed": 1, "cancelled": 0,
    }  # fmt: skip
    line = cluster.burst("status", submission).stdout
    assert line.startswith(f"{submission} total 4 queued 0 leased 0 running 0 succeeded 3")

    listed = cluster.burst(
        "list", "--submission", submission, "--format", "id,state,name,submission"
    )
    rows = [row.split() for row in listed.stdout.splitlines()]
    assert [row[1:] for row in rows] == [
        [state, "sweep", submission] for state in ("succeeded", "succeeded", "failed", "succeeded")
    ]
    assert other[0] not in listed.stdout
    # the one job of a plain submit is a submission of its own, and --name filters
    by_name = cluster.burst("list", "--name", "other").stdout.split()
    assert by_name[0] == other[0] and by_name[-1] == "other"
    assert cluster.status(other[0])["submission_id"] != submission

    # the failed job again, as a new submission with its spec (its index 3 included)
    failed_id = rows[2][0]
    again = cluster.burst("resubmit", submission, "--failed").stdout.split()
    assert len(again) == 1 and again[0] not in {row[0] for row in rows}
    cluster.burst("wait", again[0], check=False)
    assert (cluster.output / f"{again[0]}.stdout").read_text() == "i=3\n"
    assert cluster.status(again[0])["name"] == "sweep"
    assert cluster.status(failed_id)["state"] == "failed"
    refused = cluster.burst("resubmit", submission, check=False)
    assert refused.returncode == 2 and "--failed" in refused.stderr

    # an unknown submission is named in the refusal
    unknown = cluster.burst("status", "sub-99999999", check=False)
    assert unknown.returncode == 4 and "sub-99999999" in unknown.stderr


def test_cancel_acts_on_a_submission_a_state_or_all_of_the_callers_jobs(
    cluster: Cluster,
) -> None:
    cluster.controller()
    alice = {**cluster.env, "BURST_TOKEN": cluster.client_token("alice")}
    (hers,) = cluster.burst("submit", "--quiet", "process", "true", env=alice).stdout.split()
    first = cluster.burst("submit", "--quiet", "--array", "1-3", "process", "true").stdout.strip()
    second = cluster.burst("submit", "--quiet", "--array", "1-2", "process", "true").stdout.strip()
    third = cluster.burst("submit", "--quiet", "process", "true").stdout.strip()

    assert cluster.burst("cancel", first).stdout == f"{first} cancelled 3 jobs\n"
    assert _counts(cluster, first)["cancelled"] == 3
    assert _counts(cluster, second)["queued"] == 2
    assert cluster.burst("cancel", first).stdout == f"{first} cancelled 0 jobs\n"

    assert cluster.burst("cancel", "--state", "queued").stdout == "cancelled 3 jobs\n"
    assert _counts(cluster, second)["cancelled"] == 2
    assert _counts(cluster, third)["cancelled"] == 1
    # only the caller's own jobs: alice's is still queued, and hers alone go with her --all
    assert json.loads(cluster.burst("status", "--json", hers, env=alice).stdout)["queued"] == 1
    assert cluster.burst("cancel", "--all").stdout == "cancelled 0 jobs\n"
    assert cluster.burst("cancel", "--all", env=alice).stdout == "cancelled 1 job\n"
    # another user's submission is unknown to her
    assert cluster.burst("status", second, env=alice, check=False).returncode == 4
    assert cluster.burst("cancel", "--state", "failed", check=False).returncode == 2


def test_each_attempt_records_its_worker_times_exit_and_resource_usage(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1")
    # Burns CPU and touches 64 MiB; the first attempt fails, the retry succeeds.
    script = (
        "import os, sys, time\n"
        "block = bytearray(64 << 20)\n"
        "end = time.process_time() + 0.2\n"
        "while time.process_time() < end: pass\n"
        "sys.exit(0 if os.environ['BURST_ATTEMPT'] == '2' else 5)\n"
    )
    (job_id,) = cluster.burst(
        "submit", "--retries", "1", "--env", "SECRET=hunter2", "process", "python3", "-c", script
    ).stdout.split()
    cluster.burst("wait", job_id)
    info = cluster.status(job_id)
    assert info["command"] == ["python3", "-c", script] and info["kind"] == "process"
    assert info["env_names"] == ["SECRET"] and "hunter2" not in json.dumps(info)
    assert info["cwd"] == str(cluster.tmp)
    first, second = info["attempts"]
    assert (first["attempt"], first["worker_id"], first["exit_code"]) == (1, "w1", 5)
    assert (second["attempt"], second["worker_id"], second["exit_code"]) == (2, "w1", 0)
    for attempt in (first, second):
        assert attempt["started_at"].endswith("Z") and attempt["finished_at"].endswith("Z")
        assert attempt["started_at"] < attempt["finished_at"]
        usage = attempt["usage"]
        assert usage["user_cpu_seconds"] + usage["system_cpu_seconds"] >= 0.15
        assert int(usage["max_rss_kib"]) >= 64 << 10

    shown = cluster.burst("info", job_id).stdout
    assert f"job {job_id} (succeeded, exit 0)" in shown
    assert "environment: SECRET" in shown and "hunter2" not in shown
    assert re.search(r"attempt 1 on w1: started .* \(exit 5\), cpu [0-9.]+ s user", shown)
    assert re.search(r"attempt 2 on w1: .* \(exit 0\), .* peak memory \d+ KiB", shown)
    listed = cluster.burst("list", "--format", "id,max_rss_kib,finished").stdout.split()
    assert listed[0] == job_id and int(listed[1]) >= 64 << 10
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", listed[2])
    assert json.loads(cluster.burst("list", "--json").stdout)["attempts"][1]["usage"]
    assert cluster.burst("info", "job-99999999", check=False).returncode == 4


def test_submissions_and_attempts_survive_a_controller_restart(cluster: Cluster) -> None:
    controller = cluster.controller()
    cluster.worker("w1")
    submission = cluster.burst("submit", "--quiet", "--array", "1-4", *FAILS_AT_3).stdout.strip()
    cluster.burst("wait", submission, check=False)
    queued = cluster.burst("submit", "--quiet", "--array", "1-3", "process", "true")
    before = cluster.burst("list", "--json", "--submission", submission).stdout
    controller.stop()
    cluster.daemons.remove(controller)
    cluster.controller()
    assert _counts(cluster, submission) == {
        "total": 4, "queued": 0, "succeeded": 3, "failed": 1, "cancelled": 0,
    }  # fmt: skip
    assert cluster.burst("list", "--json", "--submission", submission).stdout == before
    cluster.burst("wait", queued.stdout.strip())
    assert _counts(cluster, queued.stdout.strip())["succeeded"] == 3
