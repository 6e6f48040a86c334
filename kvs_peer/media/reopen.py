"""Live sources that come back: reopen a camera or stream URL when it ends.

An RTSP camera reboots, Wi-Fi drops for a few seconds, a USB camera is replugged: the source
track ends (``recv()`` raises ``MediaStreamError``). A master should not stop streaming for that.
:class:`ReopeningVideoTrack` opens the source again, with backoff, until it works or the track is
stopped. Meanwhile, readers wait, as they would for a slow camera.

Frames get their timestamps from this track's own monotonic clock. Each opened source starts its
own timestamps at 0, so passing theirs through would make time jump back at every reopen. A
source that comes back at another size is fine: the shared encoder restarts with a keyframe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiortc import MediaStreamError, MediaStreamTrack

from ..errors import KvsPeerError
from ..reconnect import backoff
from .redact import redact_urls
from .timing import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE

__all__ = ["ReopeningVideoTrack"]

logger = logging.getLogger(__name__)

# A source that delivered frames this long is considered back for good: the next failure starts
# the backoff from its shortest delay again. One that dies sooner keeps backing off.
_STABLE_AFTER = 5.0


class ReopeningVideoTrack(MediaStreamTrack):
    """A video track that reopens its source whenever the source ends.

    Args:
        open_source: opens the source and returns a live video track; it may block (it runs in
            a daemon thread, so a camera that hangs does not hold up exit) and raises
            :class:`~kvs_peer.errors.KvsPeerError` (usually ``MediaError``) when the source
            cannot be opened yet.
        first: an already opened track to start with; ``None`` opens at the first ``recv()``.
        description: what the source is, for logs (never a password: see
            :func:`~kvs_peer.media.redact.describe_url`).
        max_delay: the longest wait between two attempts, in seconds.
        rng: random source for the backoff jitter (seed it for reproducible tests).

    Attributes:
        opens: sources this track opened (``first`` not included).
        failed_attempts: attempts to open that failed.
    """

    kind = "video"
    live = True  # paces itself; never a file

    def __init__(
        self,
        open_source: Callable[[], MediaStreamTrack],
        *,
        first: MediaStreamTrack | None = None,
        description: str = "video source",
        max_delay: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self._rng = rng or random.Random()
        self._open_source = open_source
        self._inner = first
        self.description = getattr(first, "description", None) or description
        self._max_delay = max_delay
        self._delays = self._backoff()
        self._opened_at = time.monotonic()
        self._opening: asyncio.Future[MediaStreamTrack | None] | None = None
        self._stopped = asyncio.Event()
        self._origin: float | None = None
        self._last_pts = -1
        self.opens = 0
        self.failed_attempts = 0
        self._ever_opened = first is not None
        # What the shared encoder and the CLI read from a source, when the first one has them.
        self.width: int | None = getattr(first, "width", None)
        self.height: int | None = getattr(first, "height", None)
        self.fps: float | None = getattr(first, "fps", None)

    @property
    def reopening(self) -> bool:
        """Whether this track holds no open source: before the first open (``first=None``) and
        from the moment the source ends until it is open again."""
        return self.readyState == "live" and self._inner is None

    @property
    def waiting(self) -> bool:
        """Whether no source was ever opened yet (``first=None``, e.g. a master started
        before its camera): attempts run, with backoff, while someone reads."""
        return self.readyState == "live" and not self._ever_opened

    async def recv(self) -> Any:
        """Return the next frame, reopening the source as often as it takes.

        Raises:
            MediaStreamError: this track was stopped.
        """
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            inner = self._inner
            if inner is None:
                await self._wait_open()
                continue
            try:
                frame = await inner.recv()
            except MediaStreamError:
                if self.readyState != "live":
                    raise
                error = getattr(inner, "error", None)
                logger.warning(
                    "%s ended%s; opening it again",
                    self.description,
                    f" ({redact_urls(str(error))})" if error else "",
                )
                inner.stop()
                if self._inner is inner:
                    self._inner = None
                continue
            return self._restamp(frame)

    def stop(self) -> None:
        """Stop this track and the source it holds (idempotent)."""
        super().stop()
        self._stopped.set()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.stop()

    def _restamp(self, frame: Any) -> Any:
        now = time.monotonic()
        if self._origin is None:
            self._origin = now
        pts = max(round((now - self._origin) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def _wait_open(self) -> None:
        # One attempt at a time, whoever waits for it: a reader that goes away (the encoder
        # stops reading when the last viewer leaves) leaves the attempt running, and the next
        # reader waits for that same attempt instead of opening the source a second time.
        if self._opening is None:
            if time.monotonic() - self._opened_at > _STABLE_AFTER:
                self._delays = self._backoff()
            self._opening = asyncio.ensure_future(self._attempt(next(self._delays)))
            self._opening.add_done_callback(self._attempt_done)
        await asyncio.shield(self._opening)

    def _backoff(self) -> Iterator[float]:
        return backoff(base=0.5, cap=self._max_delay, rng=self._rng)

    async def _attempt(self, delay: float) -> MediaStreamTrack | None:
        try:
            await asyncio.wait_for(self._stopped.wait(), delay)
        except TimeoutError:
            pass
        if self.readyState != "live":
            raise MediaStreamError
        try:
            return await _in_daemon_thread(self._open_source)
        except KvsPeerError as exc:
            self.failed_attempts += 1
            logger.warning(
                "%s: cannot open it yet (%s); trying again",
                self.description,
                redact_urls(str(exc)),
            )
            return None

    def _attempt_done(self, attempt: asyncio.Future[MediaStreamTrack | None]) -> None:
        # Runs whether or not a reader still waits, so what an attempt opens is never lost.
        self._opening = None
        if attempt.cancelled() or attempt.exception() is not None:
            return
        inner = attempt.result()
        if inner is None:
            return
        if self.readyState != "live" or self._inner is not None:
            inner.stop()
            return
        self._inner = inner
        self._opened_at = time.monotonic()
        self.opens += 1
        logger.info("%s is %s", self.description, "back" if self._ever_opened else "up")
        if not self._ever_opened:  # what the first source says, as if it had been ``first``
            self.width = getattr(inner, "width", None)
            self.height = getattr(inner, "height", None)
            self.fps = getattr(inner, "fps", None)
        self._ever_opened = True


def _in_daemon_thread(function: Callable[[], MediaStreamTrack]) -> asyncio.Future[MediaStreamTrack]:
    """Run ``function`` in a daemon thread: unlike the default executor, which ``asyncio.run``
    joins at exit, a camera that hangs while opening cannot delay the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[MediaStreamTrack] = loop.create_future()

    def settle(result: MediaStreamTrack | None, error: BaseException | None) -> None:
        if future.cancelled():
            if result is not None:
                result.stop()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = function(), None
        except BaseException as exc:  # handed to the loop, which re-raises it
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody will use what was opened
            if result is not None:
                result.stop()

    threading.Thread(target=run, name="kvs-source-open", daemon=True).start()
    return future
