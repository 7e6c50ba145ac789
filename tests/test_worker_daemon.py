"""The worker daemon's tasks in one trio run."""

from __future__ import annotations

import trio
import trio.testing

from burstd.config import WorkerConfig
from burstd.worker import daemon
from burstd.worker.queue import LocalQueue


async def test_notify_wakes_only_the_tasks_whose_condition_holds() -> None:
    state = daemon.WorkerState(WorkerConfig(worker_id="w1"), LocalQueue(4))
    ready = {"a": False, "b": False}
    checks = {"a": 0, "b": 0}
    woken: list[str] = []

    def condition(name: str) -> bool:
        checks[name] += 1
        return ready[name]

    async def waiter(name: str) -> None:
        await state.wait_until(lambda: condition(name))
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        state.notify()  # nothing holds: nobody wakes, each condition is checked once more
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [] and checks == {"a": 2, "b": 2}
        ready["a"] = True
        state.notify()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["a"]
        ready["b"] = True
        state.notify()
    assert woken == ["a", "b"] and checks == {"a": 3, "b": 4}
