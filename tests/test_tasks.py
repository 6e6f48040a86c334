"""kvs_peer._tasks.TaskSet: the one owner of background tasks in the shells."""

from __future__ import annotations

import asyncio

from support import MS

from kvs_peer._tasks import TaskSet


async def test_finished_tasks_are_let_go() -> None:
    tasks = TaskSet()
    task = tasks.spawn(asyncio.sleep(0), "quick")
    assert len(tasks) == 1 and task.get_name() == "quick"
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(tasks) == 0


async def test_wait_lets_tasks_finish_and_cancel_stops_them() -> None:
    tasks = TaskSet()
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    tasks.spawn(work("short", 20 * MS), "short")
    adopted = asyncio.ensure_future(work("adopted", 30 * MS))
    tasks.add(adopted)
    await tasks.wait()
    assert sorted(finished) == ["adopted", "short"]

    long = tasks.spawn(work("long", 60), "long")
    await asyncio.sleep(0)  # started
    await tasks.cancel()
    await tasks.cancel()  # idempotent
    assert long.cancelled() and "long" not in finished and len(tasks) == 0


async def test_a_failed_task_does_not_fail_wait() -> None:
    tasks = TaskSet()

    async def fail() -> None:
        raise ValueError("boom")

    task = tasks.spawn(fail(), "failing")
    await tasks.wait()
    assert isinstance(task.exception(), ValueError)
