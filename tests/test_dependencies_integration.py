"""Dependencies with real processes: `burst submit --after` and `--after-any`, a chain that
fails down its length, unknown ids refused, waiting jobs across a controller restart, and the
README's map-then-reduce pipeline through the Python client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.cluster import Cluster, eventually

README = Path(__file__).resolve().parent.parent / "README.md"


def submit(cluster: Cluster, *args: str) -> str:
    (job_id,) = cluster.burst("submit", *args).stdout.split()
    return job_id


def test_a_job_waits_for_its_dependencies_and_fails_down_a_chain(cluster: Cluster) -> None:
    cluster.controller()
    gate = cluster.tmp / "gate"
    first = submit(cluster, "process", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    bad = submit(cluster, "process", "false")
    ok = submit(cluster, "--after", first, "process", "true")
    chain = [submit(cluster, "--after", f"{first},{bad}", "process", "true")]
    chain.append(submit(cluster, "--after", chain[-1], "process", "true"))
    anyway = submit(cluster, "--after-any", bad, "process", "true")
    assert cluster.status(ok)["state"] == "waiting"
    assert cluster.burst("status", ok).stdout.split() == [ok, "waiting"]
    # what each waits for: burst info, status --json, list --json
    assert f"  dependencies (after): {first}, {bad}\n" in cluster.burst("info", chain[0]).stdout
    assert f"  dependencies (after-any): {bad}\n" in cluster.burst("info", anyway).stdout
    assert "dependencies" not in cluster.burst("info", first).stdout
    assert (cluster.status(chain[0])["after"], cluster.status(chain[0])["after_any"]) == (
        [first, bad],
        False,
    )
    listed = [json.loads(line) for line in cluster.burst("list", "--json").stdout.splitlines()]
    assert {job["job_id"]: (job["after"], job["after_any"]) for job in listed}[anyway] == (
        [bad],
        True,
    )
    cluster.worker("w1", slots=2)
    # bad fails: the chain fails at once, down its length, while first still runs
    cluster.burst("wait", "--timeout", "30", anyway, *chain, check=False)
    for job_id in chain:
        info = cluster.status(job_id)
        assert (info["state"], info["reason"]) == ("failed", "dependency_failed"), info
    assert bad in cluster.status(chain[0])["error_message"]
    assert chain[0] in cluster.status(chain[1])["error_message"]
    assert cluster.status(anyway)["state"] == "succeeded"
    assert cluster.status(ok)["state"] == "waiting"
    gate.touch()
    cluster.burst("wait", "--timeout", "30", ok)
    assert cluster.status(ok)["started_at"] >= cluster.status(first)["finished_at"]


def test_an_unknown_dependency_is_refused_naming_it(cluster: Cluster) -> None:
    cluster.controller()
    refused = cluster.burst("submit", "--after", "job-99999999", "process", "true", check=False)
    assert refused.returncode == 4 and "job-99999999" in refused.stderr, refused
    refused = cluster.burst(
        "submit", "--after", "a", "--after-any", "b", "process", "true", check=False
    )
    assert refused.returncode == 2 and "--after-any" in refused.stderr
    assert cluster.burst("list").stdout == ""


def test_waiting_jobs_survive_a_controller_restart(cluster: Cluster) -> None:
    controller = cluster.controller()
    first = submit(cluster, "process", "true")
    then = submit(cluster, "--after", first, "process", "true")
    controller.stop()
    cluster.controller()
    assert cluster.status(then)["state"] == "waiting"
    cluster.worker("w1")
    cluster.burst("wait", "--timeout", "30", first, then)
    assert cluster.status(then)["state"] == "succeeded"


def test_a_finished_dependency_that_left_memory_counts(cluster: Cluster) -> None:
    """A dependency that ended before the submission is read from the store if need be:
    succeeded, the job is queued at once; failed, it fails at once."""
    controller = cluster.controller()
    cluster.worker("w1")
    good = submit(cluster, "process", "true")
    bad = submit(cluster, "process", "false")
    cluster.burst("wait", "--timeout", "30", good, bad, check=False)
    controller.stop()  # after a restart, finished jobs are only in the store
    cluster.controller()
    after_good = submit(cluster, "--after", good, "process", "true")
    after_bad = submit(cluster, "--after", bad, "process", "true")
    cluster.burst("wait", "--timeout", "30", after_good, after_bad, check=False)
    assert cluster.status(after_good)["state"] == "succeeded"
    assert cluster.status(after_bad)["reason"] == "dependency_failed"


def test_the_readme_map_then_reduce_pipeline_runs(cluster: Cluster) -> None:
    cluster.controller()
    cluster.worker("w1", slots=4)
    (block,) = [
        code
        for code in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
        if "after=maps" in code
    ]
    work = cluster.tmp / "pipeline"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", block.replace("127.0.0.1:50051", cluster.addr)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=work,
        env={**cluster.env, "PYTHONPATH": str(README.parent)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "reduce succeeded\n"
    assert eventually(lambda: (work / "total").read_text(), "total") == "90\n"


def test_a_job_after_a_submission_waits_for_all_of_it_across_a_restart(
    cluster: Cluster,
) -> None:
    """`--after sub-…` waits for every job of the submission (as many --after ids would);
    an unknown submission is refused naming it; the dependency survives a restart."""
    controller = cluster.controller()
    (mapped,) = cluster.burst(
        "submit", "--quiet", "--array", "1-4", "process", "sh", "-c", "exit 0"
    ).stdout.split()
    reduce = submit(cluster, "--after", mapped, "process", "true")
    (failing,) = cluster.burst(
        "submit", "--quiet", "--array", "0-2", "process", "sh", "-c", 'exit "$BURST_ARRAY_INDEX"'
    ).stdout.split()
    doomed = submit(cluster, "--after", failing, "process", "true")
    cleanup = submit(cluster, "--after-any", failing, "process", "true")
    refused = cluster.burst("submit", "--after", "sub-09999999", "process", "true", check=False)
    assert refused.returncode == 4 and "sub-09999999" in refused.stderr, refused
    assert f"  dependencies (after): {mapped}\n" in cluster.burst("info", reduce).stdout
    controller.stop()
    cluster.controller()
    assert cluster.status(reduce)["state"] == "waiting"
    cluster.worker("w1", slots=2)
    cluster.burst("wait", "--timeout", "30", reduce, doomed, cleanup, check=False)
    assert cluster.status(reduce)["state"] == "succeeded"
    last_mapped = max(
        cluster.status(job_id)["finished_at"]
        for job_id in cluster.burst("list", "--submission", mapped, "--format", "id").stdout.split()
    )
    assert cluster.status(reduce)["started_at"] >= last_mapped
    info = cluster.status(doomed)
    assert (info["state"], info["reason"]) == ("failed", "dependency_failed")
    assert failing in info["error_message"]
    assert cluster.status(cleanup)["state"] == "succeeded"
