"""One audio source, many senders: decoded audio frames fanned out per subscriber.

Each aiortc sender encodes Opus itself (cheap: about 0.008 core per viewer here), so audio needs
no shared encoder, only a fan-out: one track object read by N senders would split its frames
between them (every viewer hearing a fraction of the packets). The subscriber lifecycle is
:mod:`kvs_peer.media.broadcast`'s; audio adds only its drop policy (oldest frame first).

Sharing one ``av.AudioFrame`` between senders is safe, unlike video frames that get reformatted
(see the package docstring): aiortc's Opus encoder only reads the frame, through its own
``AudioResampler`` whose filter graph takes a new reference (``av_buffersrc_write_frame``), and
it does not set ``pict_type`` or ``pts`` on audio frames.
``tests/media/test_media_fanout.py`` hammers this with concurrent encoders.
"""

from __future__ import annotations

import av
from aiortc.mediastreams import MediaStreamTrack

from ..errors import InvalidArgument
from .broadcast import Broadcast, BroadcastTrack

__all__ = ["AudioFanout", "AudioSubscriberTrack"]


class AudioSubscriberTrack(BroadcastTrack[av.AudioFrame]):
    """One consumer's copy of an :class:`AudioFanout` source.

    Nothing is queued before the first ``recv()``. A consumer that falls behind loses its
    oldest frames (``frames_dropped``) instead of growing a backlog.
    """

    kind = "audio"

    def __init__(self, fanout: AudioFanout, queue_size: int) -> None:
        super().__init__(fanout, queue_size)
        self.frames_dropped = 0

    def _offer(self, frame: av.AudioFrame) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.frames_dropped += 1
        self._put(frame)


class AudioFanout(Broadcast[AudioSubscriberTrack]):
    """Reads one audio track while any subscriber is reading, and copies frames to each.

    Args:
        source: an audio track (e.g. :class:`~kvs_peer.media.sources.ToneTrack`).
        queue_size: frames kept per subscriber (20 ms each) before the oldest is dropped.
        close_source: stop ``source`` in :meth:`close`.

    Attributes:
        frames_read: frames read from ``source`` (once each, whatever the number of readers).

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
        super().__init__(
            source, queue_size=queue_size, close_source=close_source, name="the audio fan-out"
        )
        self.frames_read = 0

    def _new_track(self) -> AudioSubscriberTrack:
        return AudioSubscriberTrack(self, self._queue_size)

    async def _produce(self, frame: av.AudioFrame) -> tuple[av.AudioFrame]:
        self.frames_read += 1
        return (frame,)
