"""What a lease means to both of its ends: the controller's job table and the worker.

Neither end may import the other's machinery (the table imports no trio, the worker no table),
so what they must agree on lives here, with no I/O and no trio.
"""

from __future__ import annotations

import enum

__all__ = ["StopReason"]


class StopReason(enum.StrEnum):
    """Why a job ended other than by its process ending on its own.

    The values are the ``reason`` of a result (beside the executor's ``exit``, ``signal``,
    ``timeout`` and ``spawn``) and of a job's status, so they are wire values: never change one.
    Where a plain ``str`` is needed (the store's marshal frames take no subclass), use ``.value``.
    """

    #: Handed back unstarted, or stopped by a worker that shuts down: the controller queues the
    #: job again without counting a lost attempt.
    RETURNED = "returned"
    #: A user cancelled it: the worker stopped it (or never started it) and says so.
    CANCELLED = "cancelled"
    #: Set by the controller alone: the workers holding the job were lost ``crash_limit`` times.
    WORKER_LOST = "worker_lost"
    #: Set by the worker alone, never reported: the lease is no longer the worker's (the
    #: controller gave the job to another attempt), so it stops the job and forgets it.
    DROPPED = "dropped"
