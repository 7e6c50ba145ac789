"""The Docker engine for docker-job tests (a helper module, not a test file).

CI runs ``.ci/setup-docker.sh`` first: it installs Debian's docker.io and busybox-static, starts
dockerd and imports ``burst-busybox:latest`` from a busybox root filesystem (no registry). Locally,
tests that need it are skipped unless that has been done::

    from tests.docker_engine import IMAGE, docker_available

    needs_docker = pytest.mark.skipif(
        docker_available() is None, reason="no Docker engine with burst-busybox:latest"
    )
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

IMAGE = "burst-busybox:latest"
"""The image ``.ci/setup-docker.sh`` imports: busybox's applets (sh, echo, sleep, cat...)."""

TIMEOUT_S = 5.0


def _answers(cli: str) -> bool:
    """Whether ``cli`` reaches an engine that holds :data:`IMAGE`."""
    for args in (["info"], ["image", "inspect", IMAGE]):
        try:
            done = subprocess.run(
                [cli, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode != 0:
            return False
    return True


@functools.cache
def docker_available() -> str | None:
    """The path of a docker CLI that works, or None.

    Works means ``docker info`` answers within a few seconds and the image :data:`IMAGE` exists.
    Tried in order: ``$DOCKER`` (printed by ``.ci/setup-docker.sh``), ``docker`` on ``PATH``, and
    Debian's ``/usr/bin/docker`` (a newer client earlier on ``PATH`` normally negotiates the API
    version down to Debian's engine, but if it cannot, the engine's own client still works).
    Cached: the answer is computed once per test session.
    """
    candidates: list[str] = []
    for name in (os.environ.get("DOCKER", ""), "docker", "/usr/bin/docker"):
        path = shutil.which(name) if name else None
        if path and path not in candidates:
            candidates.append(path)
    for cli in candidates:
        if _answers(cli):
            return cli
    return None
