"""Resource-aware scheduling end to end: real `burstd` and `burst` processes on loopback ports.

Each job records what it was given and when it ran in a folder of the test; the assertions read
those records, so they hold whatever the machine's load (figures are printed, not asserted).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cluster import Cluster
from tests.test_worker_integration import poll, submit, wait_jobs, wait_workers

# A job that notes its id, what it was given and the running jobs it saw when it started, then
# runs a while: `running/` holds one entry per job that runs.
RECORD = """\
mkdir -p "$REC/running" && touch "$REC/running/$BURST_JOB_ID"
seen=$(ls "$REC/running" | tr '\\n' ' ')
echo "$BURST_CPUS|${CUDA_VISIBLE_DEVICES-unset}|${BURST_GPUS-}|$seen" > "$REC/$BURST_JOB_ID.start"
sleep 0.4
rm "$REC/running/$BURST_JOB_ID"
"""


def records(folder: Path) -> dict[str, list[str]]:
    """Per job id: BURST_CPUS, CUDA_VISIBLE_DEVICES, BURST_GPUS, the jobs running at its start."""
    return {
        path.name.removesuffix(".start"): path.read_text().strip().split("|")
        for path in folder.glob("*.start")
    }


def recording(cluster: Cluster, tmp_path: Path, *flags: str, count: int) -> list[str]:
    folder = tmp_path / "rec"
    folder.mkdir(exist_ok=True)
    return submit(
        cluster,
        "--env",
        f"REC={folder}",
        "--array",
        f"1-{count}",
        *flags,
        "process",
        "sh",
        "-c",
        RECORD,
    )


def test_two_cpu_jobs_on_a_four_cpu_worker_never_run_three_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.controller()
    cluster.worker("w1", slots=4)  # --slots 4 is --cpus 4
    wait_workers(cluster, "w1")
    ids = recording(cluster, tmp_path, "--cpus", "2", count=8)
    assert wait_jobs(cluster, ids) == 0
    seen = records(tmp_path / "rec")
    assert set(seen) == set(ids)
    most = max(len(running.split()) for _, _, _, running in seen.values())
    print(f"2-CPU jobs on a 4-CPU worker: at most {most} at once")
    assert most <= 2
    assert {cpus for cpus, _, _, _ in seen.values()} == {"2"}


def test_gpu_jobs_get_gpus_of_their_own_and_others_none(cluster: Cluster, tmp_path: Path) -> None:
    cluster.controller()
    # A fake GPU list: the worker only hands out the ids.
    cluster.worker("w1", "--gpus", "3,5,", slots=4)
    wait_workers(cluster, "w1")
    gpu_jobs = recording(cluster, tmp_path, "--gpus", "1", count=8)
    plain = recording(cluster, tmp_path, count=2)
    assert wait_jobs(cluster, gpu_jobs + plain) == 0
    seen = records(tmp_path / "rec")
    gpu_of = {job_id: seen[job_id][1] for job_id in gpu_jobs}
    assert set(gpu_of.values()) <= {"3", "5"}
    for job_id in gpu_jobs:
        _, visible, burst_gpus, running = seen[job_id]
        assert burst_gpus == visible
        # No job that ran beside it had its GPU.
        others = [j for j in running.split() if j != job_id and j in gpu_of]
        assert all(gpu_of[j] != visible for j in others), (job_id, visible, others)
    for job_id in plain:
        assert seen[job_id][1:3] == ["", ""]  # a job that asked for no GPU sees none


def test_a_request_too_large_for_every_worker_waits_with_its_reason(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.controller()
    cluster.worker("small", slots=2)
    wait_workers(cluster, "small")
    (big,) = submit(cluster, "--cpus", "3", "process", "true")
    (plain,) = submit(cluster, "process", "true")
    assert wait_jobs(cluster, [plain]) == 0
    shown = cluster.burst("status", big).stdout.strip()
    assert shown == f"{big} queued (no registered worker has 3 cpus)"
    assert cluster.status(big)["waiting"] == "no registered worker has 3 cpus"
    cluster.worker("large", slots=4)
    assert wait_jobs(cluster, [big]) == 0
    assert cluster.status(big)["worker_id"] == "large"


def test_a_fixed_cluster_refuses_a_request_too_large_for_every_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "burst.toml"
    config.write_text("[controller]\nfixed_cluster = true\n")
    cluster.controller("--config", str(config))
    cluster.worker("small", "--resource", "licence=1", slots=2)
    wait_workers(cluster, "small")
    refused = cluster.burst("submit", "--cpus", "3", "process", "true", check=False)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "no registered worker has 3 cpus" in refused.stderr
    assert "Traceback" not in refused.stderr
    refused = cluster.burst("submit", "--resource", "licence=2", "process", "true", check=False)
    assert "no registered worker has 1 cpus, 2 licence" in refused.stderr
    ids = submit(cluster, "--cpus", "2", "--resource", "licence=1", "process", "true")
    assert wait_jobs(cluster, ids) == 0


def test_bind_cpus_pins_each_job_to_cpus_of_its_own(cluster: Cluster, tmp_path: Path) -> None:
    mask = sorted(os.sched_getaffinity(0))
    cluster.controller()
    cluster.worker("w1", "--bind-cpus", slots=len(mask))
    wait_workers(cluster, "w1")
    out = tmp_path / "affinity"
    out.mkdir()
    script = 'grep Cpus_allowed_list /proc/self/status > "$OUT/$BURST_JOB_ID"'
    ids = submit(cluster, "--env", f"OUT={out}", "--array", "1-4", "process", "sh", "-c", script)
    assert wait_jobs(cluster, ids) == 0
    allowed = {p.read_text().split()[-1] for p in out.iterdir()}
    # One CPU each (the plain request), and one of the worker's.
    assert allowed <= {str(cpu) for cpu in mask}, allowed
    print(f"jobs pinned to CPUs {sorted(allowed)}; the worker has {mask}")
    info = json.loads(cluster.burst("status", "--json", ids[0]).stdout)
    assert info["state"] == "succeeded"


def test_status_shows_what_a_job_asked_for(cluster: Cluster) -> None:
    cluster.controller()
    (job,) = submit(
        cluster, "--cpus", "2", "--mem", "1G", "--resource", "scratch=10G", "process", "true"
    )
    info = cluster.status(job)
    assert info["resources"] == {
        "cpus": 2,
        "mem": str(1 << 30),
        "gpus": 0,
        "named": {"scratch": str(10 << 30)},
    }
    poll(lambda: cluster.status(job)["state"] == "queued", 10, "the job to wait for a worker")
