"""What this host lets a process use: CPUs and memory, the defaults of a worker's offer.

CPUs are those of the process's affinity mask, no more than the cgroup v2 CPU quota
(``cpu.max`` of its cgroup and every parent) allows; memory is the physical memory, no more than
the cgroup's ``memory.max``. Reading them takes a few system calls and no process: the
configuration's default ``slots`` (:func:`default_cpus`) is read at every load, the CLI's included.
The worker's GPU detection, which runs ``nvidia-smi``, is burstd/worker/detect.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


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
