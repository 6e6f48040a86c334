"""One source, many readers: the subscriber lifecycle shared by the video encoder and audio fan-out.

A :class:`Broadcast` reads one aiortc track and hands what it makes of each frame to every
active :class:`BroadcastTrack`. aiortc splits the frames of one track object between the senders
that read it, so every sender needs a track of its own (trap 1 in the package docstring).

Lifecycle, the same for video and audio:

- :meth:`Broadcast.subscribe` creates a track that stays idle (queues nothing) until its
  first ``recv()``, which activates it and starts the pump if it is not running;
- the pump reads the source only while some track is active, and stops when the last one
  unsubscribes, so no backlog is built for nobody (trap 5);
- every track queues at most ``queue_size`` items; what happens at that bound is the
  subclass's choice (:meth:`BroadcastTrack._offer`), so one slow reader never slows the others;
- when the source ends or fails, every track ends (its ``recv()`` raises ``MediaStreamError``)
  and no new subscriber is accepted.

Subclasses: :class:`~kvs_peer.media.encoder.SharedVideoEncoder` (encodes each frame in a worker
thread, tracks gate on keyframes) and :class:`~kvs_peer.media.fanout.AudioFanout` (frames as they
are, oldest dropped).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, Self, TypeVar

from aiortc import MediaStreamError, MediaStreamTrack

from .._tasks import TaskSet
from ..errors import InvalidState

__all__ = ["Broadcast", "BroadcastTrack"]

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
TrackT = TypeVar("TrackT", bound="BroadcastTrack[Any]")


class BroadcastTrack(MediaStreamTrack, Generic[ItemT]):
    """One reader's track of a :class:`Broadcast`; ``stop()`` unsubscribes.

    Subclasses set ``kind`` and implement :meth:`_offer` (what to queue, and what to drop at
    the bound); :meth:`_on_recv` is their hook into each read.
    """

    def __init__(self, broadcast: Broadcast[Any], queue_size: int) -> None:
        super().__init__()
        self._broadcast = broadcast
        self._queue: deque[ItemT] = deque()
        self._queue_size = queue_size
        self._ready = asyncio.Event()
        self._active = False

    @property
    def active(self) -> bool:
        """Whether the consumer has started reading (items are queued only then)."""
        return self._active

    async def recv_encoded(self) -> ItemT:
        """Return the next item; the first call starts the broadcast for this track.

        Subclasses implement ``recv()`` (what aiortc reads: a frame or packet) on top of it;
        the item itself is not one, so it cannot be ``recv()``'s result.

        Raises:
            MediaStreamError: the track was stopped or the source ended.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if not self._active:
            self._start()
        else:
            self._on_recv(first=False)
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def _start(self) -> None:
        """Start queueing items for this track (the first read does it, or an early start)."""
        self._active = True
        self._on_recv(first=True)
        self._broadcast._activate(self)

    def stop(self) -> None:
        """Unsubscribe (idempotent)."""
        super().stop()
        self._queue.clear()
        self._ready.set()
        self._broadcast._unsubscribe(self)

    def _on_recv(self, first: bool) -> None:
        """Called at each ``recv()`` before waiting; ``first`` before the pump is started."""

    @abstractmethod
    def _offer(self, item: ItemT) -> None:
        """Take one item from the pump; queue it with :meth:`_put` or drop it."""

    def _put(self, item: ItemT) -> None:
        self._queue.append(item)
        self._ready.set()


class Broadcast(ABC, Generic[TrackT]):
    """Reads one source while any subscriber reads, and offers each item to every active track.

    Subclasses validate their arguments, then call this ``__init__``, and implement
    :meth:`_new_track` and :meth:`_produce`; :meth:`_on_start` and :meth:`_release` are hooks
    for resources the pump needs (a worker thread, say).

    Args:
        source: the track to read.
        queue_size: items kept per subscriber (passed to each new track).
        close_source: stop ``source`` in :meth:`close`.
        name: what this is, for errors and logs (e.g. ``"the audio fan-out"``).
    """

    def __init__(
        self, source: MediaStreamTrack, *, queue_size: int, close_source: bool, name: str
    ) -> None:
        self._source = source
        self._queue_size = queue_size
        self._close_source = close_source
        self._name = name
        self._subscribers: set[TrackT] = set()
        self._active: set[TrackT] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = TaskSet()
        self._closed = False
        self._ended = False
        self._ended_event = asyncio.Event()
        self.error: BaseException | None = None
        """What made the pump fail (an encoder error, say), or None if the source just ended."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def subscribers(self) -> int:
        """Subscribed tracks, started or not."""
        return len(self._subscribers)

    @property
    def active_subscribers(self) -> int:
        """Tracks whose consumers are reading."""
        return len(self._active)

    @property
    def source(self) -> MediaStreamTrack:
        """The track this reads."""
        return self._source

    @property
    def ended(self) -> bool:
        """Whether the source ended or failed (not set by :meth:`close`)."""
        return self._ended

    async def wait_ended(self) -> None:
        """Wait until the source ends or fails; :meth:`close` alone does not count.

        The source is read only while some subscriber reads, so a file ends only if watched to
        its end.
        """
        await self._ended_event.wait()

    @property
    def running(self) -> bool:
        """Whether the source is currently being read."""
        return self._task is not None and not self._task.done()

    def subscribe(self) -> TrackT:
        """A new track for one consumer (e.g. ``pc.addTransceiver(track, direction="sendonly")``).

        It stays idle, queueing nothing, until its first ``recv()``.

        Raises:
            InvalidState: this is closed or its source has ended.
        """
        if self._closed or self._ended:
            raise InvalidState(f"{self._name} is closed or its source has ended")
        track = self._new_track()
        self._subscribers.add(track)
        return track

    async def close(self) -> None:
        """End every subscriber, stop reading, release resources (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        if self._task is not None:
            self._stopping.add(self._task)
            self._task = None
        await self._stopping.cancel()
        await self._release()
        if self._close_source:
            self._source.stop()

    @abstractmethod
    def _new_track(self) -> TrackT:
        """A fresh, idle subscriber track."""

    @abstractmethod
    async def _produce(self, frame: Any) -> Iterable[Any]:
        """What to offer every active track for one source frame (in order)."""

    def _on_start(self) -> None:
        """Called on the event loop just before the pump (re)starts."""

    async def _release(self) -> None:
        """Called by :meth:`close` once the pump has stopped, before the source is stopped."""

    def _activate(self, track: TrackT) -> None:
        if self._closed or self._ended or track.readyState != "live":
            return
        self._active.add(track)
        if not self.running:
            self._on_start()
            self._task = asyncio.get_running_loop().create_task(self._pump())

    def _unsubscribe(self, track: TrackT) -> None:
        self._subscribers.discard(track)
        self._active.discard(track)
        if not self._active and self._task is not None:
            # Nobody is reading: stop pulling the source so no backlog is built for nobody.
            task, self._task = self._task, None
            if not task.done() and task is not asyncio.current_task():
                task.cancel()
                self._stopping.add(task)

    async def _pump(self) -> None:
        try:
            while self._active:
                frame = await self._source.recv()
                for item in await self._produce(frame):
                    for track in list(self._active):
                        track._offer(item)
        except asyncio.CancelledError:
            raise
        except MediaStreamError:
            logger.info("%s: source ended; ending %d track(s)", self._name, len(self._subscribers))
            self._end()
        except Exception as exc:
            logger.error("%s failed: %s", self._name, exc, exc_info=True)
            self.error = exc
            self._end()

    def _end(self) -> None:
        self._ended = True
        self._ended_event.set()
        for track in list(self._subscribers):
            track.stop()
