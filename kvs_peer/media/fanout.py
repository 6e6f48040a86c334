"""One audio source, many senders: frames fanned out per subscriber, Opus encoded once.

One track object read by N senders would split its frames between them (every viewer hearing a
fraction of the packets), so each sender reads its own :class:`AudioSubscriberTrack`. The
subscriber lifecycle is :mod:`kvs_peer.media.broadcast`'s; audio adds its drop policy (oldest
frame first) and one shared Opus encoder.

aiortc's senders each resample, encode Opus and compute the RTP audio level (in pure Python)
themselves: with a tone, a master grew by 0.029 core per viewer in the benchmark (``--audio``),
about ten times what the whole video path costs per viewer. The fan-out encodes each frame once and
hands every subscriber an :class:`EncodedAudio`; senders running
:func:`~kvs_peer.media.rtpsender.use_fast_send` send those payloads. A sender that negotiated
another codec (PCMU, PCMA) or runs aiortc's own loop reads plain frames through ``recv()`` and
encodes them itself, as before.

Sharing one ``av.AudioFrame`` between senders is safe, unlike video frames that get reformatted
(see the package docstring): aiortc's Opus encoder only reads the frame, through its own
``AudioResampler`` whose filter graph takes a new reference (``av_buffersrc_write_frame``), and
it does not set ``pict_type`` or ``pts`` on audio frames.
``tests/media/test_media_fanout.py`` hammers this with concurrent encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack

from ..aiortc_internals import OpusEncoder
from ..errors import InvalidArgument, MediaError
from .broadcast import Broadcast, BroadcastTrack

__all__ = ["AudioFanout", "AudioSubscriberTrack", "EncodedAudio", "audio_level_dbov"]

OPUS_MIME = "audio/opus"


def audio_level_dbov(frame: av.AudioFrame) -> int:
    """The frame's level in dBov, -127 to 0, for the RTP audio-level extension (RFC 6465).

    The same number as aiortc's ``rtp.compute_audio_level_dbov``, which loops over the samples
    in Python; this uses numpy.
    """
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    # As aiortc: the sum over every channel, divided by the samples of one channel.
    rms = math.sqrt(float(np.dot(samples, samples)) / (frame.samples * 32767.0**2))
    if rms <= 0:
        return -127
    return round(min(0.0, max(-127.0, 20 * math.log10(rms))))


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    """One source frame as every Opus sender needs it.

    Attributes:
        frame: the source frame, for senders that encode themselves.
        payloads: its Opus RTP payloads (none while the encoder buffers).
        timestamp: RTP timestamp at 48 kHz, before each sender adds its random origin.
        audio_level: the frame's level in dBov (-127 to 0), for the audio-level extension.
    """

    frame: av.AudioFrame
    payloads: tuple[bytes, ...]
    timestamp: int
    audio_level: int


class AudioSubscriberTrack(BroadcastTrack[EncodedAudio]):
    """One consumer's copy of an :class:`AudioFanout` source.

    Nothing is queued before the first ``recv()``. A consumer that falls behind loses its
    oldest frames (``frames_dropped``) instead of growing a backlog.
    """

    kind = "audio"
    codec_mime = OPUS_MIME  # what recv_encoded() payloads are

    def __init__(self, fanout: AudioFanout, queue_size: int) -> None:
        super().__init__(fanout, queue_size)
        self.frames_dropped = 0
        self.wants_encoded = False
        """Whether the consumer reads :meth:`recv_encoded` (the fan-out encodes only then)."""

    async def recv(self) -> av.AudioFrame:
        """Return the next source frame (what aiortc's own send loop encodes).

        Raises:
            MediaStreamError: the track was stopped or the source ended.
        """
        return (await super().recv_encoded()).frame

    async def recv_encoded(self) -> EncodedAudio:
        """Like :meth:`recv`, with the shared Opus payloads.

        The first items after the first call may have no payloads yet (the fan-out starts
        encoding at its next frame); senders skip those.

        Raises:
            MediaStreamError: the track was stopped or the source ended.
        """
        self.wants_encoded = True
        return await super().recv_encoded()

    def _offer(self, item: EncodedAudio) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.frames_dropped += 1
        self._put(item)


class AudioFanout(Broadcast[AudioSubscriberTrack]):
    """Reads one audio track while any subscriber is reading, and copies frames to each.

    Args:
        source: an audio track (e.g. :class:`~kvs_peer.media.sources.ToneTrack`).
        queue_size: frames kept per subscriber (20 ms each) before the oldest is dropped.
        close_source: stop ``source`` in :meth:`close`.

    Attributes:
        frames_read: frames read from ``source`` (once each, whatever the number of readers).
        frames_encoded: frames encoded to Opus (once each, whatever the number of readers; none
            while no reader takes the shared encoding).

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
        self.frames_encoded = 0
        self._opus: OpusEncoder | None = None

    def _new_track(self) -> AudioSubscriberTrack:
        return AudioSubscriberTrack(self, self._queue_size)

    def _on_start(self) -> None:
        # A fresh encoder per run of the pump: its timestamps restart with the stream.
        self._opus = OpusEncoder()

    async def _produce(self, frame: av.AudioFrame) -> tuple[EncodedAudio]:
        self.frames_read += 1
        if frame.format.name != "s16" or frame.layout.name not in ("mono", "stereo"):
            raise MediaError(
                "audio sources must give s16 mono or stereo frames (what Opus and PCMU/PCMA "
                f"senders take), got {frame.format.name} {frame.layout.name}: convert with "
                "av.AudioResampler(format='s16', layout='stereo')"
            )
        if not any(track.wants_encoded for track in self._active):
            # Every reader encodes for itself (PCMU, PCMA, aiortc's own loop): nothing to share.
            return (EncodedAudio(frame, (), 0, 0),)
        assert self._opus is not None
        # About 0.2 ms per 20 ms frame: cheap enough for the event loop, and done once.
        payloads, timestamp = self._opus.encode(frame)
        self.frames_encoded += 1
        return (EncodedAudio(frame, tuple(payloads), timestamp or 0, audio_level_dbov(frame)),)
