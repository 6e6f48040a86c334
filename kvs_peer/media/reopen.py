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
import time
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..errors import KvsPeerError
from ..reconnect import backoff
from .timing import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE

__all__ = ["ReopeningVideoTrack"]

logger = logging.getLogger(__name__)


class ReopeningVideoTrack(MediaStreamTrack):
    """A video track that reopens its source whenever the source ends.

    Args:
        open_source: opens the source and returns a live video track; it may block (it runs in
            a worker thread) and raises :class:`~kvs_peer.errors.KvsPeerError` (usually
            ``MediaError``) when the source cannot be opened yet.
        first: an already opened track to start with; ``None`` opens at the first ``recv()``.
        description: what the source is, for logs (never a password: see ``describe_url``).
        max_delay: the longest wait between two attempts, in seconds.

    Attributes:
        reopens: how many times the source was opened again after it ended.
        failed_attempts: attempts to reopen that failed.
    """

    kind = "video"

    def __init__(
        self,
        open_source: Callable[[], MediaStreamTrack],
        *,
        first: MediaStreamTrack | None = None,
        description: str = "video source",
        max_delay: float = 10.0,
    ) -> None:
        super().__init__()
        self._open_source = open_source
        self._inner = first
        self.description = getattr(first, "description", None) or description
        self._max_delay = max_delay
        self._stopped = asyncio.Event()
        self._origin: float | None = None
        self._last_pts = -1
        self.reopens = 0
        self.failed_attempts = 0
        # What the shared encoder and the CLI read from a source, when the first one has them.
        self.width: int | None = getattr(first, "width", None)
        self.height: int | None = getattr(first, "height", None)
        self.fps: float | None = getattr(first, "fps", None)

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
                inner = await self._reopen()
            try:
                frame = await inner.recv()
            except MediaStreamError:
                if self.readyState != "live":
                    raise
                error = getattr(inner, "error", None)
                logger.warning(
                    "%s ended%s; opening it again",
                    self.description,
                    f" ({error})" if error else "",
                )
                inner.stop()
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

    def _adopt(self, opening: asyncio.Future[MediaStreamTrack]) -> None:
        if opening.cancelled() or opening.exception() is not None:
            return
        inner = opening.result()
        if self.readyState == "live" and self._inner is None:
            self._inner = inner
            self.reopens += 1
        else:
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

    async def _reopen(self) -> MediaStreamTrack:
        for delay in backoff(base=0.5, cap=self._max_delay):
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
            except TimeoutError:
                pass
            if self.readyState != "live":
                raise MediaStreamError
            opening = asyncio.ensure_future(asyncio.to_thread(self._open_source))
            try:
                inner = await asyncio.shield(opening)
            except asyncio.CancelledError:
                # The reader went away (the encoder stops reading when nobody watches), but the
                # thread still opens the source: keep what it opens for the next recv().
                opening.add_done_callback(self._adopt)
                raise
            except KvsPeerError as exc:
                self.failed_attempts += 1
                logger.warning("%s: cannot open it yet (%s); trying again", self.description, exc)
                continue
            if self.readyState != "live":  # stopped while opening
                inner.stop()
                raise MediaStreamError
            self._inner = inner
            self.reopens += 1
            logger.info("%s is back", self.description)
            return inner
        raise AssertionError("backoff() never ends")  # pragma: no cover
