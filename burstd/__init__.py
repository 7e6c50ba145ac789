"""burst daemons: controller, workers and what they share."""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"
"""The package's version (pyproject.toml reads it): ``burst --version``, ``burstd --version``."""


def child_env() -> dict[str, str]:
    """The environment of a ``python -m burstd...`` child process (the store process, the job
    guard): ours, with this copy of burstd first on the path, also when it runs from a source
    tree rather than an installed package."""
    root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": python_path}
