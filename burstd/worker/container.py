"""The docker commands of a docker job's container, beyond its ``docker run``.

Rules:

1. A docker job runs attached: the worker's child is the docker client (``docker run --init
   --name <container>``, ``executor.build_argv``). A job with a ``--mem`` runs without ``--rm``,
   so that the engine keeps the container's state once it has exited; a job without one keeps
   ``--rm`` (there is nothing to ask the engine, and the engine removes the container itself).
2. A docker job with a ``--mem`` that did not exit 0 asks the engine whether the kernel
   OOM-killed a process of its container (``docker inspect``, ``State.OOMKilled``): if so, it
   ends failed with reason ``memory``, as a process job whose cgroup recorded an OOM kill does
   (``burstd.worker.memlimit`` rule 3). Exit 0 asks nothing.
3. The container is removed (``docker rm --force``) once the client has exited, whatever ended
   the job; stopping a job (timeout, cancel, lease lapsed, worker stopping) removes it at once,
   which kills it too (it is not in the job's process group). The job guard does the same for a
   dead worker's jobs, and keeps a container listed until the worker has removed it, so a
   worker killed between its job's end and the removal leaves no container either.
4. Each command is bounded (``TIMEOUT``): an engine that does not answer costs a job at most
   that much, and the job's outcome is then what its exit status says.

No trio here: the job guard (a small process of its own) uses ``remove`` too.
"""

from __future__ import annotations

from typing import Final

__all__ = ["TIMEOUT", "inspect", "oom_killed", "remove"]

TIMEOUT: Final = 10.0
"""Seconds a docker command of ours may take."""


def remove(docker: str, name: str) -> list[str]:
    """The argv that kills the container (if it runs) and removes it (rule 3)."""
    return [docker, "rm", "--force", name]


def inspect(docker: str, name: str) -> list[str]:
    """The argv that prints ``true`` if the kernel OOM-killed a process of the container."""
    return [docker, "inspect", "--type", "container", "--format", "{{.State.OOMKilled}}", name]


def oom_killed(output: bytes) -> bool:
    """What ``inspect``'s output says (anything but ``true``: no)."""
    return output.strip() == b"true"
