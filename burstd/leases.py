"""What a lease means to both of its ends: the controller's job table and the worker.

Neither end may import the other's machinery (the table imports no trio, the worker no table),
so what they must agree on lives here, with no I/O and no trio.

The lease rule (design promise 7). The controller declares a worker lost, and leases its jobs
elsewhere, once it has not heard from it for its lease TTL (``lease_ttl_ms``, times the pace
of its heartbeats). A worker counts the same TTL on its own monotonic clock from the moment it
*sent* the last call the controller answered (the controller heard it then or later), and keeps
``LEASE_MARGIN`` of it in hand: its running jobs get SIGTERM ``LAPSE_GRACE`` of the TTL before
that (or their kill grace before, if shorter), SIGKILL at ``1 - LEASE_MARGIN`` of the TTL, and
nothing starts there until the controller has confirmed what the worker holds. So a job never
runs in two places at once unless a worker's clock runs slow against the controller's by more
than the margin over one TTL (1 s of a 10 s TTL), or the worker's job guard is kept from running
for as long.
"""

from __future__ import annotations

import enum

__all__ = ["LAPSE_GRACE", "LEASE_MARGIN", "StopReason"]

#: The share of its lease TTL a worker keeps in hand for its clock (see the module's rule).
LEASE_MARGIN = 0.1
#: The most, as a share of the lease TTL, that a lapsed lease's jobs get between SIGTERM and
#: SIGKILL (their kill grace if shorter).
LAPSE_GRACE = 0.1


class StopReason(enum.StrEnum):
    """Why a job ended other than by its process ending on its own.

    The values are the ``reason`` of a result (beside the executor's ``exit``, ``signal``,
    ``timeout``, ``spawn`` and ``memory``) and of a job's status, so they are wire values: never
    change one. Where a plain ``str`` is needed (the store's marshal frames take no subclass),
    use ``.value``.
    """

    #: Handed back unstarted, or stopped by a worker that shuts down: the controller queues the
    #: job again without counting a lost attempt.
    RETURNED = "returned"
    #: A user cancelled it: the worker stopped it (or never started it) and says so.
    CANCELLED = "cancelled"
    #: Set by the controller alone: the workers holding the job were lost ``crash_limit`` times.
    WORKER_LOST = "worker_lost"
    #: Set by the controller alone: a job it waited for failed or was cancelled (``--after``).
    DEPENDENCY_FAILED = "dependency_failed"
    #: Set by the worker alone, never reported: the lease is no longer the worker's (the
    #: controller gave the job to another attempt), so it stops the job and forgets it.
    DROPPED = "dropped"
