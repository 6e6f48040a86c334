"""Encode once, send to many: one libx264 encoder per source, ``av.Packet`` tracks per viewer.

aiortc gives every ``RTCRtpSender`` its own encoder, so N viewers cost N encodes (about 0.16
core each at 640x480@30 here). When a track returns ``av.Packet`` objects instead of frames, the
sender only packetizes them (``H264Encoder.pack``). :class:`SharedVideoEncoder` exploits that:

    source track -> SharedVideoEncoder (one libx264 and RTP packetizer, in a worker thread)
                 -> PacketTrack per viewer -> RTCRtpSender (fast send loop) -> RTP

The packetizing happens once per frame, not once per viewer, and
:func:`~kvs_peer.media.rtpsender.use_fast_send` gives each sender a leaner loop that reuses it
(what is left that grows with viewers is SRTP and ``sendto``).

The subscriber lifecycle (idle until the first ``recv()``, source read only while someone
reads, bounded queues) is :mod:`kvs_peer.media.broadcast`'s; this module adds the encoding and
the keyframe gating.

What a master must do per viewer (or call :func:`add_shared_video`), **before**
``setRemoteDescription(offer)``, because aiortc fixes the answer's codecs inside
``setRemoteDescription`` from the transceiver's preferences::

    track = encoder.subscribe()
    transceiver = pc.addTransceiver(track, direction="sendonly")
    force_h264(transceiver)               # otherwise aiortc may pick VP8 and send H.264 as VP8
    attach_keyframe_requests(transceiver.sender)
    use_fast_send(transceiver.sender)     # optional: less CPU per viewer
    await pc.setRemoteDescription(offer)  # raises if the offer has no H.264

Keyframes: a :class:`PacketTrack` queues nothing until its sender first calls ``recv()`` (that
is after DTLS), so no stale backlog builds up; that first ``recv()`` asks the encoder for an IDR
and the track's queue starts at a keyframe. A viewer's PLI/FIR becomes a keyframe request
through :func:`attach_keyframe_requests`. Forced keyframes are rate-limited (``min_keyframe_gap``)
and coalesced; a periodic GOP (``gop`` frames) is the fallback.

Cost of sharing: one bitrate for everyone (REMB from each viewer is ignored) and one viewer's
join or loss forces an IDR for all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from av.video.frame import PictureType

from ..aiortc_internals import H264Encoder, on_keyframe_request
from ..errors import InvalidArgument, MediaError
from .broadcast import Broadcast, BroadcastTrack
from .fanout import AudioFanout
from .presets import MAX_BITRATE, MIN_BITRATE, X264_PRESETS
from .rtpsender import use_fast_send
from .timing import VIDEO_TIME_BASE

__all__ = [
    "X264_PRESETS",
    "AudioFanout",  # re-exported: the master imports its media plumbing from here
    "EncodedVideo",
    "PacketTrack",
    "SharedVideoEncoder",
    "add_shared_video",
    "attach_keyframe_requests",
    "check_h264_encoder",
    "force_h264",
    "h264_codec_preferences",
]

logger = logging.getLogger(__name__)

_H264 = "video/h264"
_RTX = "video/rtx"
PRIMED_MAX_AGE = 0.2
"""Seconds a primed viewer's queue may wait for its sender before it restarts at a fresh
keyframe (:meth:`PacketTrack.prime`): at most about 6 frames at 30 fps go out in a burst."""


def h264_codec_preferences() -> list[RTCRtpCodecCapability]:
    """aiortc's H.264 send capabilities (both profile-level-ids) plus RTX, for
    ``setCodecPreferences``."""
    return [
        codec
        for codec in RTCRtpSender.getCapabilities("video").codecs
        if codec.mimeType.lower() in (_H264, _RTX)
    ]


def force_h264(transceiver: RTCRtpTransceiver) -> None:
    """Restrict ``transceiver`` to H.264 (+RTX).

    Call it after ``addTransceiver`` and **before** ``setRemoteDescription``: aiortc computes
    the negotiated codecs inside ``setRemoteDescription``, so preferences set later do not
    change the answer. If the remote offer has no H.264, ``setRemoteDescription`` then raises
    instead of silently negotiating VP8 (aiortc would send the H.264 packets labelled VP8,
    which no viewer decodes).
    """
    transceiver.setCodecPreferences(h264_codec_preferences())


def attach_keyframe_requests(sender: RTCRtpSender, track: PacketTrack | None = None) -> bool:
    """Turn the remote's PLI/FIR for ``sender`` into a keyframe request to its encoder.

    Args:
        sender: the sender of a :class:`PacketTrack` (``transceiver.sender``).
        track: where to send requests; by default whatever :class:`PacketTrack` the sender
            holds when the PLI arrives (so ``replaceTrack`` keeps working).

    Returns:
        ``False`` if this aiortc version has no hook point; then viewers recover from loss only
        at the next periodic keyframe (joins are still served by the join-time IDR).
    """
    sender_ref = weakref.ref(sender)
    track_ref = weakref.ref(track) if track is not None else None

    def send_keyframe() -> None:
        target: MediaStreamTrack | None
        if track_ref is not None:
            target = track_ref()
        else:
            current = sender_ref()
            target = current.track if current is not None else None
        if isinstance(target, PacketTrack):
            target.request_keyframe()

    # aiortc's own keyframe request only sets a flag read by its own encode path, which
    # packets from a PacketTrack bypass.
    if not on_keyframe_request(sender, send_keyframe):
        logger.warning(
            "this aiortc version has no RTCRtpSender._send_keyframe: PLI/FIR from viewers will "
            "not force keyframes (periodic keyframes still apply)"
        )
        return False
    return True


def add_shared_video(pc: RTCPeerConnection, encoder: SharedVideoEncoder) -> RTCRtpTransceiver:
    """Add a send-only H.264 transceiver fed by ``encoder`` to ``pc``.

    Subscribes, adds the transceiver, forces H.264, hooks PLI/FIR and gives the sender the
    fast send loop (:func:`~kvs_peer.media.rtpsender.use_fast_send`). Call it **before**
    ``pc.setRemoteDescription(offer)`` (see :func:`force_h264`).

    Returns:
        The new transceiver; ``transceiver.sender.track`` is the :class:`PacketTrack`.
    """
    track = encoder.subscribe()
    transceiver = pc.addTransceiver(track, direction="sendonly")
    force_h264(transceiver)
    attach_keyframe_requests(transceiver.sender)
    use_fast_send(transceiver.sender)
    return transceiver


def check_h264_encoder(name: str) -> None:
    """Raise :class:`MediaError` unless ``name`` is an H.264 encoder in this FFmpeg build."""
    try:
        codec = av.codec.Codec(name, "w")
    except Exception:
        raise MediaError(
            f"the H.264 encoder {name!r} is not in this FFmpeg build (PyAV's wheel): use "
            "libx264, or a PyAV built against an FFmpeg that has it"
        ) from None
    if codec.name != "libx264" and getattr(codec, "id", None) != av.codec.Codec("libx264", "w").id:
        raise MediaError(f"{name!r} is not an H.264 encoder: use libx264 or an h264_* encoder")


@dataclass(frozen=True, slots=True)
class EncodedVideo:
    """One encoded frame as every viewer's sender needs it.

    Attributes:
        packet: the H.264 access unit (Annex-B), as libx264 made it.
        payloads: its RTP payloads (aiortc's H.264 packetization: single NAL, STAP-A, FU-A).
        timestamp: its RTP timestamp at 90 kHz, before each sender adds its random origin.
    """

    packet: av.Packet[Any]  # made by a bare codec context: of no stream
    payloads: tuple[bytes, ...]
    timestamp: int

    @property
    def is_keyframe(self) -> bool:
        """Whether a decoder can start here."""
        return bool(self.packet.is_keyframe)


class PacketTrack(BroadcastTrack[EncodedVideo]):
    """One viewer's view of a :class:`SharedVideoEncoder`: ``recv()`` returns ``av.Packet``.

    Created by :meth:`SharedVideoEncoder.subscribe`; ``stop()`` unsubscribes (aiortc stops a
    sender's track when the sender stops).

    Attributes:
        packets_delivered: packets returned by ``recv()``.
        packets_dropped: packets thrown away because this viewer fell behind.
        resyncs: times the queue overflowed and was restarted at a keyframe.
        keyframe_requests: keyframes this track asked for (join, resync, PLI/FIR).
    """

    kind = "video"
    codec_mime = "video/h264"  # what recv_encoded() payloads are

    def __init__(self, encoder: SharedVideoEncoder, queue_size: int) -> None:
        super().__init__(encoder, queue_size)
        self._encoder = encoder
        self._waiting_keyframe = True
        self._ask_on_recv = False
        self.packets_delivered = 0
        self.packets_dropped = 0
        self.resyncs = 0
        self.keyframe_requests = 0
        self._primed_at: float | None = None

    def request_keyframe(self) -> None:
        """Ask the shared encoder for a keyframe (rate-limited there)."""
        self.keyframe_requests += 1
        self._encoder.request_keyframe()

    def prime(self) -> None:
        """Start this viewer's stream now, before its sender reads (call it at the offer).

        The keyframe a new viewer needs is then encoded while ICE and DTLS run, and sent the
        moment the sender starts, rather than from the next source frame after DTLS (up to a
        frame interval plus the encode later). If the sender starts more than
        ``PRIMED_MAX_AGE`` after this, what was queued is dropped and a fresh keyframe is
        asked for, so a slow connection never starts with a burst of stale frames.
        """
        if self.active or self.readyState != "live":
            return
        self._primed_at = time.monotonic()
        self._start()

    async def recv(self) -> av.Packet[Any]:
        """Return the next packet; the first call waits for a fresh keyframe.

        This is what aiortc's own send loop reads; the fast loop reads :meth:`recv_encoded`.

        Raises:
            MediaStreamError: the track was stopped or the encoder's source ended.
        """
        return (await self.recv_encoded()).packet

    async def recv_encoded(self) -> EncodedVideo:
        """Like :meth:`recv`, with the frame's RTP payloads already made.

        Raises:
            MediaStreamError: the track was stopped or the encoder's source ended.
        """
        encoded = await super().recv_encoded()
        self.packets_delivered += 1
        return encoded

    def _on_recv(self, first: bool) -> None:
        if first:
            self._waiting_keyframe = True
            self.request_keyframe()
            return
        primed, self._primed_at = self._primed_at, None
        if primed is not None and time.monotonic() - primed > PRIMED_MAX_AGE:
            self.packets_dropped += len(self._queue)
            self._queue.clear()
            self._waiting_keyframe = True
            self.request_keyframe()
        elif self._ask_on_recv:
            # Asked here rather than at overflow: a viewer that has stopped reading must not
            # keep forcing keyframes on everyone.
            self._ask_on_recv = False
            self.request_keyframe()

    def _offer(self, packet: EncodedVideo) -> None:
        if self._waiting_keyframe:
            if not packet.is_keyframe:
                if self.resyncs:  # skipping after an overflow, not before the first keyframe
                    self.packets_dropped += 1
                return
            self._waiting_keyframe = False
            self._ask_on_recv = False  # a periodic keyframe came first: nothing to ask for
        elif len(self._queue) >= self._queue_size:
            self.packets_dropped += len(self._queue)
            self._queue.clear()
            self.resyncs += 1
            if not packet.is_keyframe:
                self._waiting_keyframe = True
                self._ask_on_recv = True
                self.packets_dropped += 1
                return
        self._put(packet)


class SharedVideoEncoder(Broadcast[PacketTrack]):
    """One libx264 encoder for one source, fanned out to any number of :class:`PacketTrack`.

    The encoder reads its source only while at least one subscriber is active (its sender
    has called ``recv()``); encoding runs in a dedicated worker thread, never on the event
    loop. Output is H.264 Constrained Baseline, yuv420p, Annex-B, with SPS/PPS in front of
    every IDR, ``tune=zerolatency`` (one packet out per frame in, no B-frames).

    Args:
        source: a video track producing frames (yuv420p preferred; other formats are converted
            inside the encoder).
        bitrate: target bits per second, shared by all viewers.
        gop: frames between periodic keyframes (60 is 2 s at 30 fps), or ``None`` for
            keyframes only on demand (joins, PLI/FIR, resyncs).
        min_keyframe_gap: seconds; forced keyframes closer than this are postponed (and
            coalesced) so many joins or PLIs do not flood the stream.
        preset: one of :data:`~kvs_peer.media.presets.X264_PRESETS`; ``ultrafast`` takes less
            than half the CPU of ``veryfast`` (1.1 against 2.7 ms per 640x480 frame here) for a
            worse picture at the same bitrate: for small boards.
        fps: frame rate used for rate control; defaults to the source's
            ``fps`` attribute, else 30.
        queue_size: packets buffered per viewer before it is considered too slow and resynced.
        close_source: stop ``source`` in :meth:`close`.
        codec: the FFmpeg H.264 encoder: ``libx264`` (default; the only one tested),
            ``h264_v4l2m2m`` (Raspberry Pi 4), ``h264_nvenc``, ``h264_qsv``, ``h264_vaapi``.
            ``preset`` applies to libx264 only.

    Raises:
        InvalidArgument: a bad bitrate, interval or queue size.
        MediaError: ``codec`` is not an H.264 encoder of this FFmpeg build.
    """

    def __init__(
        self,
        source: MediaStreamTrack,
        *,
        bitrate: int = 1_000_000,
        gop: int | None = 60,
        min_keyframe_gap: float = 0.5,
        preset: str = "veryfast",
        fps: float | None = None,
        queue_size: int = 15,
        close_source: bool = True,
        codec: str = "libx264",
    ) -> None:
        check_h264_encoder(codec)
        if source.kind != "video":
            raise InvalidArgument(f"SharedVideoEncoder needs a video track, got {source.kind}")
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise InvalidArgument(
                f"bitrate must be within {MIN_BITRATE // 1000} kbit/s.."
                f"{MAX_BITRATE // 1_000_000} Mbit/s, got {bitrate}"
            )
        if gop is not None and gop < 1:
            raise InvalidArgument(f"gop must be at least 1 frame or None, got {gop}")
        if min_keyframe_gap < 0:
            raise InvalidArgument("min_keyframe_gap must be >= 0")
        if queue_size < 2:
            raise InvalidArgument("queue_size must be at least 2")
        if preset not in X264_PRESETS:
            raise InvalidArgument(
                f"unknown x264 preset {preset!r}: use one of {', '.join(X264_PRESETS)}"
            )
        super().__init__(
            source, queue_size=queue_size, close_source=close_source, name="the shared encoder"
        )
        self.bitrate = bitrate
        self.gop = gop
        self.min_keyframe_gap = min_keyframe_gap
        self.preset = preset
        self.codec = codec
        self.fps = float(fps or getattr(source, "fps", None) or 30.0)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._codec: Any = None
        self._packetizer = H264Encoder()  # only its pack(), which keeps no state
        self._last_pts = -1
        self._keyframe_wanted = False
        self._last_forced = -float("inf")
        self.frames_encoded = 0
        self.keyframes = 0
        self.forced_keyframes = 0
        self.encoder_contexts = 0
        self.encode_seconds = 0.0

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe, or the first one ``min_keyframe_gap`` allows."""
        self._keyframe_wanted = True

    def _new_track(self) -> PacketTrack:
        return PacketTrack(self, self._queue_size)

    def _on_start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kvs-h264"
            )

    async def _release(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        self._codec = None

    def _take_keyframe_request(self) -> bool:
        if not self._keyframe_wanted:
            return False
        # Measured from the last *forced* keyframe: a periodic one just before a join must
        # not make the joining viewer wait out the gap (it never saw that keyframe).
        now = time.monotonic()
        if now - self._last_forced < self.min_keyframe_gap:
            return False
        self._keyframe_wanted = False
        self._last_forced = now
        return True

    async def _produce(self, frame: av.VideoFrame) -> list[EncodedVideo]:
        force = self._take_keyframe_request()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        packets = await loop.run_in_executor(self._executor, self._encode, frame, force)
        for packet in packets:
            if packet.is_keyframe:
                self.keyframes += 1
                # Whoever asked is served by any keyframe sent after the request.
                self._keyframe_wanted = False
        return packets

    def _create_codec(self, name: str, width: int, height: int) -> av.VideoCodecContext:
        """An unopened encoder context with what every H.264 encoder here shares."""
        codec = av.CodecContext.create(name, "w")
        if not isinstance(codec, av.VideoCodecContext):
            raise MediaError(f"{name} is not a video encoder: name an H.264 encoder")
        codec.width = width
        codec.height = height
        codec.pix_fmt = "yuv420p"
        codec.time_base = VIDEO_TIME_BASE
        codec.framerate = fractions.Fraction(self.fps).limit_denominator(1001)
        codec.bit_rate = self.bitrate
        # x264 caps keyint; "no periodic keyframe" is a GOP far longer than any session.
        codec.gop_size = self.gop if self.gop is not None else 1 << 30
        return codec

    def _open_codec(self, width: int, height: int) -> Any:
        if self.codec != "libx264":
            return self._open_other_codec(width, height)
        codec = self._create_codec("libx264", width, height)
        codec.profile = "Baseline"  # x264 emits Constrained Baseline (42c0xx)
        # Level 3.1 covers 1280x720@30 (3600 macroblocks); larger frames need 4.0.
        macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
        codec.options = {
            "preset": self.preset,
            "tune": "zerolatency",
            "level": "31" if macroblocks <= 3600 else "40",
            "forced-idr": "1",
            # Keyframes only on schedule or on request: scene-cut IDRs would be bitrate
            # spikes that no viewer asked for.
            "x264-params": "scenecut=0",
            "maxrate": str(self.bitrate),
            "bufsize": str(self.bitrate),
        }
        try:
            codec.open()
        except av.FFmpegError as exc:
            raise MediaError(f"cannot start the H.264 encoder ({width}x{height}): {exc}") from exc
        self.encoder_contexts += 1
        logger.debug("libx264 opened: %dx%d, %d bit/s", width, height, self.bitrate)
        return codec

    def _open_other_codec(self, width: int, height: int) -> Any:
        # Hardware encoders take none of x264's options; keyframes are still forced per
        # frame (pict_type), which h264_nvenc and h264_qsv honour (not tested here: no such
        # hardware on the test machine).
        codec = self._create_codec(self.codec, width, height)
        codec.max_b_frames = 0
        try:
            codec.open()
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(
                f"cannot start the H.264 encoder {self.codec} ({width}x{height}): {exc}; is its "
                "hardware present and its driver loaded? --encoder libx264 always works"
            ) from exc
        self.encoder_contexts += 1
        return codec

    def _encode(self, frame: av.VideoFrame, force: bool) -> list[EncodedVideo]:
        # Runs on the encoder's single worker thread: the codec context is never shared.
        started = time.perf_counter()
        if self._codec is None or (frame.width, frame.height) != (
            self._codec.width,
            self._codec.height,
        ):
            if frame.width % 2 or frame.height % 2:
                raise MediaError(
                    f"H.264 needs an even frame size, the source sent {frame.width}x{frame.height}"
                )
            self._codec = self._open_codec(frame.width, frame.height)
            force = True
        if frame.pts is None or frame.time_base is None:
            pts = round(time.monotonic() * 90_000)
        elif frame.time_base != VIDEO_TIME_BASE:
            pts = round(frame.pts * frame.time_base * 90_000)
        else:
            pts = frame.pts
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # x264 refuses non-increasing timestamps
        self._last_pts = pts
        # The source gave this frame to us alone, so changing it here is safe.
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        frame.pict_type = PictureType.I if force else PictureType.NONE
        encoded = []
        for packet in self._codec.encode(frame):
            packet.time_base = VIDEO_TIME_BASE
            if packet.pts is None:
                packet.pts = pts
            # Once here for every viewer; aiortc's loop would redo this per sender.
            payloads, timestamp = self._packetizer.pack(packet)
            encoded.append(EncodedVideo(packet, tuple(payloads), timestamp))
        self.frames_encoded += 1
        if force:
            self.forced_keyframes += 1
        self.encode_seconds += time.perf_counter() - started
        return encoded
