"""What this machine lets a worker use: CPUs, memory and GPUs, the worker's defaults.

CPUs are those of the process's affinity mask, no more than the cgroup v2 CPU quota
(``cpu.max`` of its cgroup and every parent) allows; memory is the physical memory, no more than
the cgroup's ``memory.max``; GPUs are those ``CUDA_VISIBLE_DEVICES`` names if it is set, else
those ``nvidia-smi -L`` lists, else none.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from burstd import resources

if TYPE_CHECKING:
    from burstd.config import WorkerConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NVIDIA_SMI_TIMEOUT = 5.0


def _cgroup_dirs(root: Path = CGROUP_ROOT) -> Iterator[Path]:
    """The folders of this process's cgroup v2 and of its parents, innermost first."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        if line.startswith("0::"):
            folder = root / line[3:].strip().lstrip("/")
            while True:
                yield folder
                if folder == root:
                    return
                folder = folder.parent


def _cgroup_limits(name: str, root: Path = CGROUP_ROOT) -> Iterator[str]:
    """The values of a cgroup file in this process's cgroup and its parents (those readable)."""
    for folder in _cgroup_dirs(root):
        try:
            yield (folder / name).read_text().strip()
        except OSError:
            continue


def cpu_ids() -> list[int]:
    """The CPUs of this process's affinity mask."""
    return sorted(os.sched_getaffinity(0))


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs the cgroup quota allows (``cpu.max``: quota / period); None: no quota."""
    allowed = [
        int(quota) / int(period)
        for value in _cgroup_limits("cpu.max", root)
        for quota, _, period in [value.partition(" ")]
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period)
    ]
    return min(allowed, default=None)


def default_cpus() -> int:
    """CPUs of the affinity mask, no more than the cgroup quota (rounded up, at least one)."""
    count = len(cpu_ids()) or 1
    quota = cpu_quota()
    return count if quota is None else max(1, min(count, math.ceil(quota)))


def default_mem(root: Path = CGROUP_ROOT) -> int:
    """Bytes of physical memory, no more than the cgroup's ``memory.max``."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = [int(v) for v in _cgroup_limits("memory.max", root) if v.isdigit()]
    return min([physical, *limits])


def gpu_list(text: str) -> list[str]:
    """GPUs as a worker's ``--gpus`` gives them: a number is a count (ids 0 to N-1), a list
    (with a comma, ``0,2`` or ``3,``) names them. Raises ValueError naming the text."""
    text = text.strip()
    if "," not in text:
        if not text.isdigit():
            raise ValueError(f"gpus: expected a count or a list of ids such as 0,2, got {text!r}")
        return [str(i) for i in range(int(text))]
    ids = [item.strip() for item in text.split(",") if item.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"gpus: {text!r} names a GPU twice")
    return ids


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
    gpus = gpu_list(config.gpus) if config.gpus else default_gpus()
    mem = resources.parse_size(config.mem) if config.mem else default_mem()
    named = resources.parse_named(config.resources)
    offer = {resources.CPUS: config.slots, resources.MEM: mem, resources.GPUS: len(gpus)}
    return {**offer, **named}, gpus
