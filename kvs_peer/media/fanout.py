"""One audio source, many senders: decoded audio frames fanned out per subscriber.

Each aiortc sender encodes Opus itself (cheap: about 0.008 core per viewer here), so audio needs
no shared encoder, only a fan-out: one track object read by N senders would split its frames
between them (every viewer hearing a fraction of the packets).

Sharing one ``av.AudioFrame`` between senders is safe, unlike video frames that get reformatted
(see the package docstring): aiortc's Opus encoder only reads the frame, through its own
``AudioResampler`` whose filter graph takes a new reference (``av_buffersrc_write_frame``), and
it does not set ``pict_type`` or ``pts`` on audio frames. ``tests/media/test_fanout.py`` hammers
this with concurrent encoders.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..errors import InvalidArgument, InvalidState

__all__ = ["AudioFanout", "AudioSubscriberTrack"]

logger = logging.getLogger(__name__)


class AudioSubscriberTrack(MediaStreamTrack):
    """One consumer's copy of an :class:`AudioFanout` source.

    Nothing is queued before the first ``recv()``. A consumer that falls behind loses its
    oldest frames (``frames_dropped``) instead of growing a backlog.
    """

    kind = "audio"

    def __init__(self, fanout: AudioFanout, queue_size: int) -> None:
        super().__init__()
        self._fanout = fanout
        self._queue: deque[av.AudioFrame] = deque(maxlen=queue_size)
        self._ready = asyncio.Event()
        self._active = False
        self.frames_dropped = 0

    async def recv(self) -> av.AudioFrame:
        """Return the next frame.

        Raises:
            MediaStreamError: the track was stopped or the source ended.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if not self._active:
            self._active = True
            self._fanout._activate(self)
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        """Unsubscribe (idempotent)."""
        super().stop()
        self._queue.clear()
        self._ready.set()
        self._fanout._unsubscribe(self)

    def _offer(self, frame: av.AudioFrame) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.frames_dropped += 1
        self._queue.append(frame)
        self._ready.set()


class AudioFanout:
    """Reads one audio track while any subscriber is reading, and copies frames to each.

    Args:
        source: an audio track (e.g. :class:`~kvs_peer.media.sources.ToneTrack`).
        queue_size: frames kept per subscriber (20 ms each) before the oldest is dropped.
        close_source: stop ``source`` in :meth:`close`.

    Raises:
        InvalidArgument: ``source`` is not an audio track, or a bad queue size.
    """

    def __init__(
        self, source: MediaStreamTrack, *, queue_size: int = 10, close_source: bool = True
    ) -> None:
        if source.kind != "audio":
            raise InvalidArgument(f"AudioFanout needs an audio track, got {source.kind}")
        if queue_size < 1:
            raise InvalidArgument("queue_size must be at least 1")
        self._source = source
        self._queue_size = queue_size
        self._close_source = close_source
        self._subscribers: set[AudioSubscriberTrack] = set()
        self._active: set[AudioSubscriberTrack] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False
        self._ended = False
        self.frames_read = 0

    async def __aenter__(self) -> AudioFanout:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def subscribers(self) -> int:
        """Subscribed tracks, started or not."""
        return len(self._subscribers)

    def subscribe(self) -> AudioSubscriberTrack:
        """A new track for one consumer (for example ``pc.addTrack(fanout.subscribe())``).

        Raises:
            InvalidState: the fan-out is closed or its source has ended.
        """
        if self._closed or self._ended:
            raise InvalidState("the audio fan-out is closed or its source has ended")
        track = AudioSubscriberTrack(self, self._queue_size)
        self._subscribers.add(track)
        return track

    async def close(self) -> None:
        """End every subscriber and stop reading (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        tasks = set(self._stopping)
        if self._task is not None:
            tasks.add(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._close_source:
            self._source.stop()

    def _activate(self, track: AudioSubscriberTrack) -> None:
        if self._closed or self._ended or track.readyState != "live":
            return
        self._active.add(track)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())

    def _unsubscribe(self, track: AudioSubscriberTrack) -> None:
        self._subscribers.discard(track)
        self._active.discard(track)
        if not self._active and self._task is not None:
            task, self._task = self._task, None
            if not task.done() and task is not asyncio.current_task():
                task.cancel()
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    async def _pump(self) -> None:
        try:
            while self._active:
                frame = await self._source.recv()
                self.frames_read += 1
                for track in list(self._active):
                    track._offer(frame)
        except asyncio.CancelledError:
            raise
        except MediaStreamError:
            logger.info("audio source ended; ending %d track(s)", len(self._subscribers))
            self._end()
        except Exception as exc:
            logger.error("audio fan-out failed: %s", exc, exc_info=True)
            self._end()

    def _end(self) -> None:
        self._ended = True
        for track in list(self._subscribers):
            track.stop()
