"""The README's first command, as written, run twice in a row (issue 17, defect 8).

The command installs burst into a venv first; here `burstd` and `burst` on PATH are this source
tree's instead (tox installs it for every test run the same way), and the controller gets a
free port and a state directory of the test's (``BURST_LISTEN``, ``BURST_STATE_DIR``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.cluster import REPO, environment, free_port

INSTALL = 'python3 -m venv .venv && .venv/bin/pip install -q . && PATH="$PWD/.venv/bin:$PATH" '


def first_command() -> str:
    """The README's first command without its install (checked to be the part left out)."""
    readme = (REPO / "README.md").read_text()
    line = readme.split("```sh\n", 1)[1].splitlines()[0]
    assert line.startswith(INSTALL), line
    return line[len(INSTALL) :]


def shims(directory: Path) -> Path:
    """``burst`` and ``burstd`` running this source tree's programs."""
    directory.mkdir()
    for name in ("burst", "burstd"):
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.{name} "$@"\n')
        shim.chmod(0o755)
    return directory


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        ["sh", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_first_command_can_be_run_twice_and_waits_for_its_own_jobs(tmp_path: Path) -> None:
    """Each run waits for the thousand jobs it submitted: not for the earlier run's (it used to
    report 2000/2000), and not failing for ever over an earlier failed job (kept a day)."""
    command = first_command()
    env = environment(
        PATH=f"{shims(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
        BURST_LISTEN=f"127.0.0.1:{free_port()}",
        BURST_STATE_DIR=str(tmp_path / "state"),
        BURST_LOG="warning",
    )
    env.pop("BURST_CONTROLLER", None)
    first = run(command, tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert "1000/1000 done: 1000 succeeded, 0 failed" in first.stderr
    failing = run("burstd up --workers 1 -- burst submit --wait process false", tmp_path, env)
    assert failing.returncode == 1, failing.stderr
    assert "1/1 done: 0 succeeded, 1 failed" in failing.stderr
    second = run(command, tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert "1000/1000 done: 1000 succeeded, 0 failed" in second.stderr
    outputs = sorted((tmp_path / "burst-output").glob("*.stdout"))
    assert len(outputs) == 2000
    assert outputs[-1].read_text() == "job 1000\n"
