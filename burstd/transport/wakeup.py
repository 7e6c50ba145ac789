"""A wake-up for one waiting task, allocating nothing per wait."""

from __future__ import annotations

import trio


class Wakeup:
    """Where one task at a time waits until another wakes it.

    Like a trio.Event that resets itself, but allocating nothing per wait. A wake-up that comes
    while no task waits is remembered: the next :meth:`wait` returns at once (after a
    checkpoint). Wake-ups are not counted: several before a wait release one wait. A wait may
    therefore return with nothing new to do, so a waiter checks its condition in a loop::

        while not condition():
            await wakeup.wait()
    """

    __slots__ = ("_task", "_woken")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        # Woken while no task waited, or after the waiter was rescheduled but before it ran.
        self._woken = False

    async def wait(self) -> None:
        """Return once woken: at once if a wake-up came since the last wait returned."""
        if self._woken:
            self._woken = False
            await trio.lowlevel.checkpoint()
            return
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)
        # The waiter checks its condition now: wake-ups since the reschedule are covered.
        self._woken = False

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None  # cancelled: rescheduled by trio, it must not be woken again
        return trio.lowlevel.Abort.SUCCEEDED

    @property
    def waiting(self) -> bool:
        """Whether a task is parked in :meth:`wait` (and not yet rescheduled)."""
        return self._task is not None

    def wake(self) -> None:
        """Wake the waiting task, or remember the wake-up for the next wait."""
        if self._task is not None:
            trio.lowlevel.reschedule(self._task)
            self._task = None
        else:
            self._woken = True
