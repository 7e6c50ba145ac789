"""What this machine lets a worker offer: its CPUs and memory (burstd/host.py) and its GPUs.

GPUs are those ``CUDA_VISIBLE_DEVICES`` names if it is set, else those ``nvidia-smi -L`` lists,
else none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING

from burstd import resources
from burstd.host import default_mem

if TYPE_CHECKING:
    from burstd.config import WorkerConfig

_NVIDIA_SMI_TIMEOUT = 5.0


def default_gpus(env: Mapping[str, str] = os.environ) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` if set (its ids), else the GPUs ``nvidia-smi -L`` lists."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [item.strip() for item in visible.split(",") if item.strip()]
        # CUDA reads no device past an invalid one ("-1" hides them all).
        return [] if not ids or ids[0].startswith("-") or ids[0] == "NoDevFiles" else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    count = sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


def offer_of(config: WorkerConfig) -> tuple[dict[str, int], list[str]]:
    """What a worker configured so offers (its CPUs, memory, GPU count and named resources)
    and its GPUs' ids, each detected where the configuration leaves it unset."""
    gpus = resources.gpu_list(config.gpus) if config.gpus else default_gpus()
    mem = resources.parse_size(config.mem) if config.mem else default_mem()
    named = resources.parse_named(config.resources)
    offer = {resources.CPUS: config.slots, resources.MEM: mem, resources.GPUS: len(gpus)}
    return {**offer, **named}, gpus
