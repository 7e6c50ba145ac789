"""Hosts in network namespaces of their own, joined by a bridge, for tests of what crosses a
network (a helper module, not a test file). Root only.

The bridge sits in a namespace of its own (the "switch"), so nothing of it touches the machine's
own network: every address is in :data:`SUBNET`, which exists only inside these namespaces. Each
host is a namespace with one veth pair, ``eth0`` inside it and a port of the bridge in the switch.

Faults are made on the host's side of the network, as a cable would be:

- :meth:`Net.cut` takes a host's port off the bridge: its packets vanish with no error (its own
  link stays up, so nothing tells it), until :meth:`Net.mend` puts the port back;
- :meth:`Net.lose` drops a share of every packet a host receives and sends
  (``iptables -m statistic``, inside the host's namespace), and :meth:`Net.delay` adds a delay
  where the kernel has ``netem``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

SUBNET = "10.77.0"
"""The first three octets of the /24 on the bridge (hosts are ``SUBNET.N``)."""

TOOLS = ("ip", "iptables")


def missing_prerequisites() -> str | None:
    """What keeps this machine from running the harness (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"needs {', '.join(absent)} (Debian's iproute2 and iptables)"
    return None


def require() -> None:
    """Skip the calling test without the prerequisites, or fail it in CI (``CI=true``), where
    .ci/run installs them and a skip would hide that it did not."""
    reason = missing_prerequisites()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"network namespace tests: {reason}")
    pytest.skip(reason)


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Net:
    """A switch namespace with a bridge, and hosts on it; :meth:`close` removes them all."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.switch = f"burst-{self.tag}-sw"
        self.hosts: dict[str, str] = {}  # host name -> namespace
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "set", "lo", "up")
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")

    def host(self, name: str, number: int, *, reaches: str | None = None) -> str:
        """A host ``name`` at ``SUBNET.number``; returns its namespace. With ``reaches`` (an
        address), the host has a route to that address alone: it reaches nothing else."""
        ns = f"burst-{self.tag}-{name}"
        port = f"p-{name}"
        run("ip", "netns", "add", ns)
        self.hosts[name] = ns
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
            "netns", self.switch)  # fmt: skip
        run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        address = f"{SUBNET}.{number}"
        if reaches is None:
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        else:
            run("ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", f"{reaches}/32", "dev", "eth0")
        return ns

    def exec(self, name: str) -> list[str]:
        """The prefix that runs a command inside host ``name``."""
        return ["ip", "netns", "exec", self.hosts[name]]

    def cut(self, name: str) -> None:
        run("ip", "-n", self.switch, "link", "set", f"p-{name}", "nomaster")

    def mend(self, name: str) -> None:
        run("ip", "-n", self.switch, "link", "set", f"p-{name}", "master", "br0")

    @contextmanager
    def partitioned(self, name: str) -> Iterator[None]:
        self.cut(name)
        try:
            yield
        finally:
            self.mend(name)

    def lose(self, name: str, probability: float) -> None:
        """Drop ``probability`` of the packets host ``name`` receives, and as much of those it
        sends: about twice that share of each exchange is lost on its link."""
        for chain in ("INPUT", "OUTPUT"):
            run(*self.exec(name), "iptables", "-A", chain, "-i" if chain == "INPUT" else "-o",
                "eth0", "-m", "statistic", "--mode", "random", "--probability", str(probability),
                "-j", "DROP")  # fmt: skip

    def delay(self, name: str, ms: int) -> bool:
        """Delay every packet host ``name`` sends by ``ms``, where the kernel has netem; returns
        whether it could."""
        done = subprocess.run(
            [
                *self.exec(name),
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                f"{ms}ms",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def close(self) -> None:
        """Remove every namespace (their veth pairs go with them)."""
        for ns in [*self.hosts.values(), self.switch]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        self.hosts.clear()
