"""What `burst` imports to start: the commands users run most load only what they use (their
start-up time is printed by bench/cli_start.py), and logging still works when it is needed."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.cluster import REPO, Cluster, environment, program

# Modules `burst status` and a one-job `burst submit` must not import: cyclopts and attrs (a line
# without options runs its command directly), trio and the trio transport's libraries (they make
# one unary call, on the blocking one-shot channel), ssl (no TLS is configured), the server's
# token rules (burstd.auth: a client only sends its token), loguru (their calls log nothing), the
# protobuf modules of other commands, the worker's detection (it imports subprocess to ask
# nvidia-smi for GPUs; the configuration's default slots reads burstd.host), what only a
# configuration file or its errors need, and the heavy libraries of the daemons.
UNUSED = (
    "cyclopts",
    "attr",
    "ssl",
    "burstd.auth",
    "tomllib",
    "difflib",
    "trio",
    "anyio",
    "purerpc",
    "burstd.transport.channel",
    "loguru",
    "burstd.worker.detect",
    "proto.burst.v1.output_pb2",
    "proto.burst.v1.token_pb2",
    "rich",
    "cryptography",
    "hypothesis",
    "prometheus_client",
)


def _imported(stderr: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", stderr, re.MULTILINE))


def test_status_and_submit_import_only_what_they_use(cluster: Cluster) -> None:
    cluster.controller()
    # The address comes from the environment, as a user's would: these lines give no option.
    env = {**cluster.env, "BURST_CONTROLLER": cluster.addr, "PYTHONPROFILEIMPORTTIME": "1"}

    def burst(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*program("burst"), *args],
            cwd=cluster.tmp,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )

    submitted = burst("submit", "process", "true")
    (job_id,) = submitted.stdout.split()
    status = burst("status", job_id)
    assert status.stdout == f"{job_id} queued\n"
    for run in (submitted, status):
        imported = _imported(run.stderr)
        assert "proto.burst.v1.job_pb2" in imported  # (the import list was read)
        assert not [name for name in UNUSED if name in imported]


def test_a_deferred_set_up_applies_at_the_first_record() -> None:
    """`burst` sets logging up without importing loguru; the first record imports it, set up."""
    code = (
        "import sys\n"
        "from burstd import logs\n"
        "logs.setup_logging('INFO', component='cli', defer=True)\n"
        "assert 'loguru' not in sys.modules\n"
        "logs.logger.debug('hidden')\n"
        "logs.logger.warning('shown')\n"
        "assert 'loguru' in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "hidden" not in run.stderr
    assert re.search(r"WARNING +cli shown$", run.stderr, re.MULTILINE), run.stderr
