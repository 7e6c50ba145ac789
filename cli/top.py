"""`burst top`: a live view of the cluster in the terminal (rich), refreshed every second.

One GetOverview call a refresh: the jobs by state, the workers, the jobs ended so far (a rate is
their change since the last refresh, per worker and overall) and the latest failures. Keys sort
the workers (``SORTS``) or quit; a terminal's settings are restored however it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from burstd.client import Client
from proto.burst.v1 import job_pb2

REFRESH = 1.0  # seconds between overviews
STATES = ("queued", "leased", "running", "succeeded", "failed", "cancelled")
# Key -> the workers' sort order, each with its key function (the busiest first).
SORTS: dict[str, str] = {"i": "id", "r": "running", "j": "jobs/s", "h": "last heartbeat"}
QUIT = frozenset({"q", "Q"})


@dataclass
class View:
    """What the screen shows; rates are the change since the previous overview."""

    controller: str
    sort: str = "id"
    last: job_pb2.GetOverviewResponse | None = None
    rates: dict[str, float] = field(default_factory=dict)
    throughput: float | None = None

    def update(self, overview: job_pb2.GetOverviewResponse) -> None:
        last = self.last
        if last is not None and overview.now > last.now:
            elapsed = overview.now - last.now
            before = {w.worker_id: w.jobs_ended for w in last.workers}
            self.rates = {
                w.worker_id: max(0, w.jobs_ended - before[w.worker_id]) / elapsed
                for w in overview.workers
                if w.worker_id in before
            }
            self.throughput = max(0, overview.jobs_ended - last.jobs_ended) / elapsed
        self.last = overview

    def workers(self) -> list[job_pb2.WorkerInfo]:
        assert self.last is not None
        keys: dict[str, Callable[[job_pb2.WorkerInfo], tuple[float, str]]] = {
            "id": lambda w: (0, w.worker_id),
            "running": lambda w: (-w.running, w.worker_id),
            "jobs/s": lambda w: (-self.rates.get(w.worker_id, 0.0), w.worker_id),
            "last heartbeat": lambda w: (w.last_seen_ago, w.worker_id),
        }
        return sorted(self.last.workers, key=keys[self.sort])

    def render(self) -> Group:
        overview = self.last
        assert overview is not None
        rate = "-" if self.throughput is None else f"{self.throughput:.1f}"
        slots = sum(w.slots for w in overview.workers)
        running = sum(w.running for w in overview.workers)
        clock = time.strftime("%H:%M:%S", time.localtime(overview.now))
        header = Text.assemble(
            ("burst top", "bold"),
            f"  {self.controller}  {clock}  throughput {rate} jobs/s  "
            f"{len(overview.workers)} workers, {running}/{slots} slots running",
        )
        queue = Table(title="Jobs by state", title_justify="left", expand=False)
        for state in STATES:
            queue.add_column(state.upper(), justify="right")
        queue.add_row(*(str(overview.jobs.get(state, 0)) for state in STATES))
        workers = Table(title=f"Workers (by {self.sort})", title_justify="left")
        for name in ("WORKER", "HOST", "STATE"):
            workers.add_column(name)
        for name in ("RUNNING", "SLOTS", "HELD", "CAPACITY", "JOBS/S", "LAST HEARTBEAT"):
            workers.add_column(name, justify="right")
        for w in self.workers():
            worker_rate = self.rates.get(w.worker_id)
            workers.add_row(
                w.worker_id,
                w.hostname or "-",
                w.state,
                str(w.running),
                str(w.slots),
                str(w.leased),
                str(w.queue_capacity),
                "-" if worker_rate is None else f"{worker_rate:.1f}",
                f"{w.last_seen_ago:.1f}s ago",
            )
        failures = Table(title="Latest failures", title_justify="left")
        for name in ("JOB", "NAME", "WORKER", "REASON", "EXIT", "ENDED", "ERROR"):
            failures.add_column(name, overflow="ellipsis", no_wrap=True)
        for job in overview.failures:
            exit_code = str(job.exit_code) if job.HasField("exit_code") else "-"
            ago = f"{max(0.0, overview.now - job.finished_at):.0f}s ago"
            failures.add_row(
                job.job_id,
                job.name or "-",
                job.worker_id or "-",
                job.reason or "-",
                exit_code,
                ago,
                job.error_message or "-",
            )
        keys = "  ".join(f"[{key}] {name}" for key, name in SORTS.items())
        # What may be long goes last: a screen crops what does not fit at its bottom.
        return Group(header, Text(f"sort: {keys}   [q] quit"), queue, failures, workers)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A function that waits up to its argument (seconds) for a key and returns it ("" if
    none came); the terminal reads keys unbuffered meanwhile (cbreak), and gets its settings
    back however the block ends. Without a terminal on stdin it only waits."""
    if not sys.stdin.isatty():

        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read_key(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    try:
        yield read_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(client: Client, controller: str) -> int:
    """Show the view until ``q`` (0) or Ctrl-C; a call that fails ends it with its error."""
    view = View(controller)
    with _keys() as read_key, Live(console=Console(), screen=True, auto_refresh=False) as live:
        next_overview = trio.current_time()
        while True:
            if trio.current_time() >= next_overview:
                view.update(await client.overview())
                next_overview = trio.current_time() + REFRESH
            live.update(view.render(), refresh=True)
            wait = max(0.0, next_overview - trio.current_time())
            key = await trio.to_thread.run_sync(read_key, wait)
            if key in QUIT:
                return 0
            view.sort = SORTS.get(key, view.sort)
