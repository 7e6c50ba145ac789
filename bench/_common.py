"""Shared helpers of the benchmarks: paths, peer virtual environments, a burst cluster, stats.

Peers (HyperQueue, Dask) are installed with pip from PyPI, at the versions in :data:`PEERS`, into
cached virtual environments under ``$BURST_BENCH_CACHE`` (default ``~/.cache/burst-bench``), one
per peer, never into the environment that runs burst; their harnesses are ours, beside this file
(``peer_*.py``), and run in those environments. A peer whose install fails is skipped with the
reason printed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# Set for a peer's run: the folder its files stay in, which the caller deletes (``e2e.py``).
KEEP = "BURST_BENCH_KEEP"
CACHE = Path(os.environ.get("BURST_BENCH_CACHE", Path.home() / ".cache" / "burst-bench"))


@dataclass(frozen=True)
class Peer:
    """A peer: what pip installs into its environment, and our harnesses that run there."""

    packages: tuple[str, ...]
    throughput: str
    """Harness of ``e2e.py``: ``<script> N *args`` prints ``<name> N jobs S s R jobs/s``."""
    args: tuple[str, ...]
    """Its arguments after N: the same 2 cores as burst's 2 workers x 2 slots."""
    latency: str
    """Harness of ``latency.py``: ``<script> N`` prints ``<name> latency n=N p50 ...``."""
    latency_jobs: int
    """Its N (HyperQueue's ~1 s a job makes 100 enough)."""


# Pinned (the newest on PyPI when the harnesses came into the repository), so that every run
# from a clone compares burst with the same peers.
PEERS: dict[str, Peer] = {
    "hyperqueue": Peer(("hyperqueue==0.27.0",), "peer_hq.py", ("2",), "peer_hq_latency.py", 100),
    "dask": Peer(
        ("dask==2026.11.0", "distributed==2026.11.0"),
        "peer_dask.py",
        ("2", "2"),
        "peer_dask_latency.py",
        200,
    ),
}


def peer_python(name: str) -> tuple[str | None, str]:
    """The Python of the peer's venv (installed on first use, and again when its packages
    change), or None and why not."""
    packages = PEERS[name].packages
    env_dir = CACHE / f"peer-{name}"
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".installed"
    wanted = " ".join(packages) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), ""
    shutil.rmtree(env_dir, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=True).create(env_dir)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        return None, f"pip install {' '.join(packages)} failed: {error} {' '.join(tail)}"
    stamp.write_text(wanted)
    return str(python), ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def burst_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BURST_LOG": "warning"}


def cli_env() -> dict[str, str]:
    """``burst_env`` for timing the CLI itself: its modules' bytecode is cached, as an installed
    burst's is, whatever ``PYTHONDONTWRITEBYTECODE`` says."""
    env = burst_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wait_listening(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("controller did not listen")


def make_pki(tmp: str) -> Path:
    """`burstd tls init`'s files in ``tmp``/pki, valid for 127.0.0.1 (a loopback address)."""
    from burstd import certs

    folder = Path(tmp, "pki")
    certs.init(folder, ["127.0.0.1"])
    return folder


def start_controller(
    tmp: str,
    store: str,
    capacity: int,
    metrics_listen: str = "",
    tls: bool = False,
    events_max: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """A real `burstd controller` (state in ``tmp``) listening on a free port, and that port;
    ``metrics_listen``: where it serves its Prometheus metrics (none if empty); ``tls``: over
    TLS, with certificates made in ``tmp``; ``events_max``: the bound of its event log (None:
    the default; 0: off).

    BURST_STATE_DIR then names its state directory: clients of this process (and of its
    children) send the admin token the controller wrote there; BURST_TLS_CA names the CA with
    ``tls`` (their clients then use TLS), and is unset without."""
    port = free_port()
    config = Path(tmp, "c.toml")
    pki = make_pki(tmp) if tls else None
    config.write_text(
        f'[controller]\nstore = "{store}"\nstate_dir = "{tmp}/state"\n'
        f"submission_buffer_capacity = {capacity}\n"
        # Every simulated worker connects from 127.0.0.1, above the default limit per address.
        "max_connections_per_peer = 4096\n"
        + (f'metrics_listen_addr = "{metrics_listen}"\n' if metrics_listen else "")
        + (f'tls_cert = "{pki}/server.pem"\ntls_key = "{pki}/server-key.pem"\n' if pki else "")
        + (f"events_max = {events_max}\n" if events_max is not None else "")
    )
    command = ["controller", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    # Before the controller starts: a BURST_STATE_DIR left by an earlier point would override
    # the file's state_dir.
    os.environ["BURST_STATE_DIR"] = f"{tmp}/state"
    if pki:
        os.environ["BURST_TLS_CA"] = str(pki / "ca.pem")
    else:
        os.environ.pop("BURST_TLS_CA", None)
    ctl = subprocess.Popen(
        [sys.executable, "-m", "cli.burstd", *command], cwd=REPO, env=burst_env()
    )
    try:
        wait_listening(port)
    except BaseException:
        ctl.kill()
        ctl.wait()
        raise
    return ctl, port


@contextmanager
def running_controller(
    store: str, capacity: int, prefix: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """:func:`start_controller` in a new temporary directory: the controller, its port and the
    directory; stopped (and BURST_STATE_DIR unset) on leaving."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        ctl, port = start_controller(tmp, store, capacity)
        try:
            yield ctl, port, tmp
        finally:
            ctl.terminate()
            ctl.wait()
            os.environ.pop("BURST_STATE_DIR", None)


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU time (user + system) process ``pid`` and (unless told not to) its running
    descendants, such as a controller's store process, have used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Each thread lists the children it started.
        children = [
            child
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except FileNotFoundError:  # it ended while we read
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not descendants:
        return own
    return own + sum(cpu_seconds(int(child)) for child in children)


def rate_of(line: str) -> float | None:
    """The 'R jobs/s' figure of a peer script's output line."""
    match = re.search(r"([0-9.]+) jobs/s", line)
    return float(match.group(1)) if match else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {load()}"
