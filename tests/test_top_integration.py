"""`burst top` in a real terminal: tmux runs it, sends it keys and reads its screen.

.ci/run installs tmux; without it (and without CI set) the test is skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, eventually, program

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"), reason="no tmux"
)


class Terminal:
    """A tmux session of its own server (its own socket), 160 x 50, running one command."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"burst-test-{secrets.token_hex(4)}"
        settings = [f"{k}={v}" for k, v in env.items() if k in ("PYTHONPATH", "BURST_STATE_DIR")]
        # COLUMNS and LINES of the test's own environment would override the pane's size.
        command = ["env", "-u", "COLUMNS", "-u", "LINES", *settings, *command]
        self.tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", shlex.join(command))
        # The server's socket file outlives it: close() removes it.
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").stdout.strip()

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def keys(self, keys: str) -> None:
        self.tmux("send-keys", "-t", "top", keys)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top").returncode == 0

    def close(self) -> None:
        self.tmux("kill-server")
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def terminal_of(cluster: Cluster) -> Iterator[list[Terminal]]:
    terminals: list[Terminal] = []
    try:
        yield terminals
    finally:
        for terminal in terminals:
            terminal.close()


def table_rows(screen: str) -> list[list[str]]:
    """The cells of each row of the workers table, top to bottom (the first cell empty)."""
    rows = []
    for line in screen.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 5 and cells[1] in ("w1", "w2"):
            rows.append(cells)
    return rows


def running_by_worker(screen: str) -> list[tuple[str, int]]:
    """(worker id, running jobs) of each row of the workers table, top to bottom."""
    return [(cells[1], int(cells[4])) for cells in table_rows(screen)]


def test_burst_top_shows_the_cluster_sorts_on_keys_and_quits(
    cluster: Cluster, terminal_of: list[Terminal]
) -> None:
    cluster.controller()
    cluster.worker("w1", slots=1)
    cluster.worker("w2", slots=3)
    cluster.wait_workers(2)
    (failed,) = cluster.burst("submit", "--name", "broken", "process", "false").stdout.split()
    cluster.burst("wait", failed, check=False)
    cluster.burst("submit", "--array", "1-4", "process", "sleep", "120")

    term = Terminal([*program("burst"), "--controller", cluster.addr, "top"], cluster.env)
    terminal_of.append(term)

    def shows(*texts: str) -> str | None:
        screen = term.screen()
        return screen if all(text in screen for text in texts) else None

    screen = eventually(
        lambda: (
            shows("burst top", "Workers (by id)", failed, "broken", "Latest failures")
            if running_by_worker(term.screen()) == [("w1", 1), ("w2", 3)]
            else None
        ),
        "burst top to show both workers running their jobs",
    )
    # the queue by state: four running, one failed
    lines = screen.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "QUEUED" in line]
    header, counts = (
        line.replace("┃", "│").split("│")[1:-1] for line in (lines[at], lines[at + 2])
    )
    assert {k.strip(): v.strip() for k, v in zip(header, counts, strict=True)} == {
        "QUEUED": "0",
        "LEASED": "0",
        "RUNNING": "4",
        "SUCCEEDED": "0",
        "FAILED": "1",
        "CANCELLED": "0",
    }, screen
    assert "[q] quit" in screen

    # rates once two overviews came: the throughput, and each worker's jobs/s (none now)
    eventually(
        lambda: re.search(r"throughput \d+\.\d jobs/s", term.screen()),
        "a throughput figure",
    )
    assert [row[8] for row in table_rows(term.screen())] == ["0.0", "0.0"]

    term.keys("r")
    eventually(
        lambda: (
            "Workers (by running)" in term.screen()
            and running_by_worker(term.screen()) == [("w2", 3), ("w1", 1)]
        ),
        "the workers sorted by running jobs",
    )
    term.keys("i")
    eventually(
        lambda: running_by_worker(term.screen()) == [("w1", 1), ("w2", 3)],
        "the workers sorted by id again",
    )
    term.keys("q")
    eventually(lambda: not term.alive(), "burst top to quit on q", 10)
