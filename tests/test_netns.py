"""A cluster across network namespaces (root only; ``tox -e netns``): the controller and three
workers each in a namespace of its own, joined by a bridge (tests/netns.py), each worker with an
output folder of its own and a peer port at its own address, so steals cross the bridge too, and
the client in a namespace with a route to the controller alone.

Each scenario is checked from the final state (:func:`check_final`): every job succeeded once,
no superseded attempt's result was accepted (each job's output file names the attempt and worker
the controller accepted), no job ran in two places at once (every run logs its start and its end
or stop, on the one clock of this machine), and every worker's counts are back to zero. Every
connection is TLS, with tokens, as docs/security.md's multi-host set-up has it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burstd import certs
from tests.cluster import Daemon, environment, eventually, program
from tests.netns import SUBNET, Net, require

pytestmark = pytest.mark.netns

TTL_S = 4.0  # short leases, so the scenarios take seconds; heartbeats well within
CONFIG = f"[controller]\nlease_ttl_ms = {int(TTL_S * 1000)}\nheartbeat_interval_ms = 300\n"
CONTROLLER = f"{SUBNET}.1:50051"
WORKERS = {"w1": 11, "w2": 12, "w3": 13}
PATIENCE = 120.0  # for a whole scenario to settle, loss and all

# Each run logs "<job> <attempt> <worker> start|end|stop <time>" to the runs log, and prints
# "<job> <attempt> <worker>" as its output; a stop (SIGTERM from the worker) ends it at once.
JOB = """\
runs=$2
note() { echo "$BURST_JOB_ID $BURST_ATTEMPT $BURST_WORKER_ID $1 $(date +%s.%N)" >> "$runs"; }
trap 'trap "" TERM; note stop; exit 143' TERM
note start
sleep "$1" & wait $!
echo "$BURST_JOB_ID $BURST_ATTEMPT $BURST_WORKER_ID"
note end
"""


class NetCluster:
    def __init__(self, net: Net, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.runs = tmp / "runs.log"
        self.job = tmp / "job.sh"
        self.job.write_text(JOB)
        self.config = tmp / "burst.toml"
        self.config.write_text(CONFIG)
        self.daemons: dict[str, Daemon] = {}
        # Every process finds the tokens the controller writes into its state directory, and
        # speaks TLS (a listen address off loopback refuses clear text): the controller's port
        # and the peer ports serve one certificate, valid for every host's address.
        pki = tmp / "pki"
        certs.init(pki, [CONTROLLER.split(":")[0], *(f"{SUBNET}.{n}" for n in WORKERS.values())])
        self.env = environment(
            BURST_STATE_DIR=str(tmp / "state"),
            BURST_TLS_CA=str(pki / "ca.pem"),
            BURST_TLS_CERT=str(pki / "server.pem"),
            BURST_TLS_KEY=str(pki / "server-key.pem"),
        )
        net.host("ctl", 1)
        for name, number in WORKERS.items():
            net.host(name, number)
        net.host("client", 100, reaches=CONTROLLER.split(":")[0])

    def start(self) -> None:
        args = ["--config", str(self.config), "--listen", CONTROLLER]
        self.daemons["ctl"] = Daemon(
            "controller",
            ["controller", *args, "--state-dir", str(self.tmp / "state")],
            self.tmp / "controller.log",
            self.tmp,
            self.env,
            wrap=self.net.exec("ctl"),
        )
        eventually(lambda: self.burst("workers", check=False).returncode == 0, "the controller")
        for name, number in WORKERS.items():
            out = self.tmp / f"out-{name}"
            out.mkdir()
            self.daemons[name] = Daemon(
                name,
                ["worker", "--id", name, "--controller", CONTROLLER, "--slots", "2",
                 "--output-dir", str(out), "--peer-listen", f"{SUBNET}.{number}:7000"],
                self.tmp / f"{name}.log",
                self.tmp,
                self.env,
                wrap=self.net.exec(name),
            )  # fmt: skip
        eventually(lambda: len(self.workers()) == len(WORKERS), "every worker to register")

    def burst(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``burst`` run in the client's namespace, which reaches the controller alone."""
        done = subprocess.run(
            [*self.net.exec("client"), *program("burst"), "--controller", CONTROLLER, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            env=self.env,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"burst {' '.join(args)} exited {done.returncode}: {done}")
        return done

    def workers(self) -> dict[str, dict[str, Any]]:
        out = self.burst("workers", "--json").stdout
        return {w["worker_id"]: w for w in map(json.loads, out.splitlines())}

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.burst("list", "--json").stdout.splitlines()]

    def submit(self, count: int, seconds: float) -> list[str]:
        done = self.burst(
            "submit", "--array", f"0-{count - 1}", "process", "sh", str(self.job),
            str(seconds), str(self.runs),
        )  # fmt: skip
        return done.stdout.split()

    def runs_of(self, worker: str) -> list[list[str]]:
        lines = self.runs.read_text().splitlines() if self.runs.exists() else []
        return [line.split() for line in lines if line.split()[2] == worker]

    def close(self) -> None:
        for daemon in reversed(self.daemons.values()):
            daemon.kill_group()


@pytest.fixture
def netcluster(tmp_path: Path) -> Iterator[NetCluster]:
    require()
    net = Net()
    try:
        cluster = NetCluster(net, tmp_path)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.close()
    finally:
        net.close()


def check_final(
    cluster: NetCluster, count: int, patience: float = PATIENCE
) -> list[dict[str, Any]]:
    """The final state every scenario must reach (see the module's docstring); returns the jobs."""
    cluster.burst("wait", "--all", timeout=patience)
    jobs = cluster.jobs()
    assert len(jobs) == count
    assert [j["job_id"] for j in jobs if j["state"] != "succeeded"] == []
    runs: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    starts: dict[tuple[str, str, str], float] = {}
    for job, attempt, worker, what, at in (
        line.split() for line in cluster.runs.read_text().splitlines()
    ):
        if what == "start":
            starts[job, attempt, worker] = float(at)
        else:
            runs[job].append((starts.pop((job, attempt, worker)), float(at), what))
    assert starts == {}, "runs that neither ended nor were stopped"
    for info in jobs:
        accepted = f"{info['job_id']} {info['attempt']} {info['worker_id']}"
        assert Path(info["stdout_path"]).read_text().strip() == accepted
        spans = sorted(runs[info["job_id"]])
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert end <= start, f"{info['job_id']} ran in two places at once: {spans}"
        assert [what for _, _, what in spans].count("end") >= 1
    eventually(
        lambda: all(w["leased"] == 0 and w["running"] == 0 for w in cluster.workers().values()),
        "every worker's counts back to zero",
    )
    return jobs


def test_jobs_run_on_every_worker_and_their_output_reads_from_the_client(
    netcluster: NetCluster,
) -> None:
    """Jobs run on every worker (stealing across the bridge), and `burst logs` in the client's
    namespace, which reaches the controller alone, prints the output of a job of each worker."""
    netcluster.submit(60, 0.2)
    jobs = check_final(netcluster, 60)
    assert {j["worker_id"] for j in jobs} == set(WORKERS)
    for worker in WORKERS:
        job = next(j for j in jobs if j["worker_id"] == worker)
        printed = netcluster.burst("logs", job["job_id"]).stdout
        assert printed == f"{job['job_id']} {job['attempt']} {worker}\n"
        assert netcluster.burst("logs", "--stderr", job["job_id"]).stdout == ""


def test_a_worker_cut_off_past_its_lease_stops_its_jobs_and_rejoins(
    netcluster: NetCluster,
) -> None:
    netcluster.submit(24, 3.0)
    eventually(lambda: netcluster.runs_of("w1"), "a job running on w1")
    with netcluster.net.partitioned("w1"):
        time.sleep(2 * TTL_S)
        stopped = [run for run in netcluster.runs_of("w1") if run[3] == "stop"]
        assert stopped, "w1 kept running its jobs past its lease TTL"
    log = netcluster.daemons["w1"]
    eventually(lambda: "confirmed this worker's leases" in log.log(), "w1 to rejoin")
    jobs = check_final(netcluster, 24)
    for job, attempt, *_ in stopped:
        (info,) = (j for j in jobs if j["job_id"] == job)
        assert (info["attempt"], info["worker_id"]) != (int(attempt), "w1")
    # it takes work again once back
    netcluster.submit(30, 0.1)
    jobs = check_final(netcluster, 54)
    assert "w1" in {j["worker_id"] for j in jobs[24:]}


def test_the_controller_cut_off_for_twice_the_lease_ttl(netcluster: NetCluster) -> None:
    netcluster.submit(24, 3.0)
    eventually(lambda: all(netcluster.runs_of(w) for w in WORKERS), "a job running on every worker")
    with netcluster.net.partitioned("ctl"):
        time.sleep(2 * TTL_S)
        for worker in WORKERS:
            runs = netcluster.runs_of(worker)
            started = {tuple(r[:3]) for r in runs if r[3] == "start"}
            ended = {tuple(r[:3]) for r in runs if r[3] != "start"}
            assert started == ended, f"{worker} still runs jobs with its leases lapsed"
    for worker in WORKERS:
        eventually(
            lambda w=worker: "confirmed this worker's leases" in netcluster.daemons[w].log(),
            f"{worker} to rejoin",
        )
    check_final(netcluster, 24)


def test_five_percent_packet_loss_on_every_link(netcluster: NetCluster) -> None:
    count = 5000
    for host in ["ctl", *WORKERS, "client"]:
        netcluster.net.lose(host, 0.05)
        netcluster.net.delay(host, 5)
    deadline = 60.0  # a client call's deadline: each must answer or fail within it
    netcluster.submit(count, 0)
    started = time.monotonic()
    while True:
        before = time.monotonic()
        listing = netcluster.burst("list", "--state", "succeeded", timeout=deadline)
        assert time.monotonic() - before < deadline
        if len(listing.stdout.splitlines()) == count:
            break
        assert time.monotonic() - started < 10 * PATIENCE, "jobs still not done"
        time.sleep(1)
    check_final(netcluster, count)
