"""Real `burstd` and `burst` processes on free loopback ports, for integration tests.

Every process starts in its own session, logs to a file under the test's tmp_path, and is stopped
(SIGTERM, then SIGKILL of its whole process group) when the test ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from burstd import auth, transport, wire
from proto.burst.v1 import token_pb2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REPO = Path(__file__).resolve().parent.parent

PATIENCE = 60.0  # upper bound for anything that should happen "soon" on a loaded machine

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = PATIENCE) -> T:
    """The first true value ``check()`` returns, polled until ``timeout`` (then it fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def environment(**extra: str) -> dict[str, str]:
    """os.environ with the source tree importable, so `python -m cli.<name>` works from any cwd
    (without a BURST_TOKEN or BURST_TLS_* of the environment's: each test's programs find their
    cluster's token, and speak TLS only where the test asks)."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if k != "BURST_TOKEN" and not k.startswith("BURST_TLS_")
        },
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), path) if p),
        **extra,
    }


def program(name: str) -> list[str]:
    """The installed console script, or the module when running from a source tree."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", f"cli.{name}"]


class Daemon:
    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        *,
        wrap: Sequence[str] = (),
    ) -> None:
        """``wrap``: a prefix that runs the daemon elsewhere, e.g. ``ip netns exec NS`` (which
        execs it, so the process and its group are the daemon's own)."""
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        env = {**(env or environment()), "BURST_LOG": os.environ.get("BURST_LOG", "debug")}
        self.proc = subprocess.Popen(
            [*wrap, *program("burstd"), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill9(self) -> None:
        """kill -9 the daemon alone (a worker's job guard then stops its running jobs)."""
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 40.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill_group()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


class Cluster:
    """Factory for daemons and CLI runs bound to one controller address.

    Every process gets BURST_STATE_DIR, the controller's state directory: workers and ``burst``
    find the tokens the controller wrote there, as on a real single machine."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.daemons: list[Daemon] = []
        self.output = tmp_path / "out"
        self.output.mkdir()
        self.state = tmp_path / "state"
        self.env = environment(BURST_STATE_DIR=str(self.state))

    def token(self, name: str = "admin") -> str:
        """A token the controller wrote into its state directory (``admin`` or ``worker``)."""
        return (self.state / f"{name}.token").read_text().strip()

    def client_token(self, user: str) -> str:
        """A new client token of ``user``, made by the admin (CreateToken)."""

        async def create() -> str:
            admin = auth.bearer(self.token("admin"))
            async with transport.open_channel(self.addr, metadata=admin) as channel:
                reply = await channel.unary(
                    wire.CONTROLLER_SERVICE,
                    "CreateToken",
                    token_pb2.CreateTokenRequest(user=user, role="client"),
                    token_pb2.CreateTokenResponse,
                    timeout=10,
                )
            return str(reply.token)

        return trio.run(create)

    def controller(self, *args: str) -> Daemon:
        daemon = Daemon(
            "controller",
            ["controller", "--listen", self.addr, "--state-dir", str(self.state), *args],
            self.tmp / f"controller-{len(self.daemons)}.log",
            self.tmp,
            self.env,
        )
        self.daemons.append(daemon)
        self.wait_ready()
        return daemon

    def worker(self, worker_id: str, *args: str, slots: int = 2) -> Daemon:
        daemon = Daemon(
            worker_id,
            [
                "worker",
                "--id",
                worker_id,
                "--controller",
                self.addr,
                "--slots",
                str(slots),
                "--output-dir",
                str(self.output),
                *args,
            ],
            self.tmp / f"{worker_id}-{len(self.daemons)}.log",
            self.tmp,
            self.env,
        )
        self.daemons.append(daemon)
        return daemon

    def burst(
        self, *args: str, check: bool = True, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*program("burst"), "--controller", self.addr, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **{"cwd": self.tmp, "env": self.env, **kw},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"burst {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def status(self, job_id: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.burst("status", "--json", job_id).stdout)
        return info

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            daemon = self.daemons[-1]
            if daemon.proc.poll() is not None:
                raise AssertionError(
                    f"controller exited with code {daemon.proc.returncode}: {daemon.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"controller did not listen on {self.addr}: {self.daemons[-1].log()}")

    def wait_workers(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.burst("workers", "--json").stdout.splitlines()
            if len(lines) >= count:  # one JSON object a worker and line
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} workers registered")

    def close(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.kill_group()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def scrape(addr: str, tls: ssl.SSLContext | None = None) -> dict[str, float]:
    """The samples of a metrics endpoint, keyed ``name{label="value",...}`` (labels sorted);
    over HTTPS with ``tls``."""
    url = f"{'http' if tls is None else 'https'}://{addr}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=tls) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse_samples(response.read().decode())


def parse_samples(text: str) -> dict[str, float]:
    """The samples of Prometheus's text format, keyed as :func:`scrape` keys them."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def health(addr: str) -> str:
    """The ``grpc.health.v1.Health/Check`` answer of ``addr`` (``SERVING``, ``NOT_SERVING``),
    asked with the official grpcio client, as an orchestrator's probe would."""
    import grpc

    from proto.grpc.health.v1 import health_pb2

    with grpc.insecure_channel(addr) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = check(health_pb2.HealthCheckRequest(), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
