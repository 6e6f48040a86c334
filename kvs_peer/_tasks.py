"""Small asyncio helpers shared by the shells: owned background tasks and user callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("kvs_peer")


class TaskSet:
    """Background tasks an object owns: started by name, cancelled and awaited on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a task kept until it finishes (asyncio only keeps weak refs)."""
        task = asyncio.create_task(coro, name=name)
        self.add(task)
        return task

    def add(self, task: asyncio.Task[Any]) -> None:
        """Keep a task made elsewhere until it finishes, as if spawned here."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Wait for the tasks running now to finish, without cancelling them."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait for them to finish. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished; nothing for None or the caller's own
    task (which cannot wait for itself).

    Raises:
        Exception: what the task raised before the cancellation reached it.
    """
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def invoke(callback: Callable[..., Any], *args: Any, what: str) -> None:
    """Call a user callback that may be sync or async; log its errors, never raise them.

    Args:
        callback: the user's function.
        *args: its arguments.
        what: names the callback in the log line (e.g. ``"on_frame"``).
    """
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("%s callback failed", what)
