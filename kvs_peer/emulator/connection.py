"""One accepted signaling WebSocket of the emulator: an ordered outbox and a read loop.

Frames and closes the router decides on are queued (:meth:`SignalingSocket.send`) and written
in order by a writer task, so a :class:`~.routing.Close` goes out after the frames queued before
it. Inbound frames and pings are handed to callbacks; the socket decides nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .._tasks import cancel_and_wait
from .routing import Close

__all__ = ["SignalingSocket"]

logger = logging.getLogger(__name__)

_STOP = object()  # tells the writer to finish


class SignalingSocket:
    """Drives one aiohttp WebSocket for the emulator.

    Args:
        conn_id: the router's id for this connection.
        label: ``master`` or ``viewer <id>``, for logs.
        ws: the (not yet prepared) WebSocket response.
        close_timeout: how long closing waits for the writer and the client's close frame.
    """

    def __init__(
        self, conn_id: int, label: str, ws: web.WebSocketResponse, *, close_timeout: float
    ) -> None:
        self.conn_id = conn_id
        self.label = label
        self.ws = ws
        self._close_timeout = close_timeout
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._done = False

    def send(self, item: str | Close) -> None:
        """Queue a text frame or a close; ignored once the socket is finished."""
        if not self._done:
            self._outbox.put_nowait(item)

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or dropped because the socket ended)."""
        if not self._done:
            await self._outbox.join()

    async def serve(
        self,
        request: web.Request,
        *,
        on_frame: Callable[[str | bytes], None],
        on_activity: Callable[[], None],
    ) -> None:
        """Upgrade, then read until the socket closes; frames go to ``on_frame`` and pings to
        ``on_activity`` (the writer runs alongside). Returns when the connection is over."""
        writer: asyncio.Task[None] | None = None
        try:
            await self.ws.prepare(request)
            writer = asyncio.create_task(self._write(), name=f"kvs-emulator-{self.label}")
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    on_frame(msg.data)
                elif msg.type is WSMsgType.PING:
                    on_activity()
                    await self.ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    on_activity()
                elif msg.type is WSMsgType.ERROR:
                    logger.info("%s: %s", self.label, self.ws.exception())
                    break
        finally:
            if writer is not None:
                # Let a close in progress finish (the client waits for our close frame).
                self._outbox.put_nowait(_STOP)
                try:
                    async with asyncio.timeout(self._close_timeout + 1):
                        await writer
                except TimeoutError:
                    await cancel_and_wait(writer)
            self._drain()

    async def _write(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                try:
                    if item is _STOP:
                        return
                    if isinstance(item, Close):
                        logger.info("closing %s: %d %s", self.label, item.code, item.reason)
                        await self.ws.close(code=item.code, message=item.reason.encode())
                        return
                    await self.ws.send_str(item)
                finally:
                    self._outbox.task_done()
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("%s: write failed: %s", self.label, exc)
        finally:
            self._drain()

    def _drain(self) -> None:
        # Unblock flush() waiters: what was not written by now never will be.
        self._done = True
        while not self._outbox.empty():
            self._outbox.get_nowait()
            self._outbox.task_done()
