"""Received media as it arrived: encoded frames taken from aiortc before its decoder.

aiortc's remote tracks yield decoded frames only. Inside its ``RTCRtpReceiver`` the jitter
buffer assembles each RTP frame (for H.264 an Annex-B access unit, for Opus one packet) and
puts ``(codec, frame)`` on a queue that a decoder thread reads. :class:`ReceiverTap` replaces
that queue on one receiver with one that shows every frame to a callback first and hands it
to the decoder only when the callback says so: a viewer that records what it receives and
shows nothing decodes nothing.

The private parts of aiortc this relies on are used through
:func:`kvs_peer.aiortc_internals.replace_decoder_queue` and
:func:`~kvs_peer.aiortc_internals.send_pli`; if they are not found the tap is not installed and
the receiver decodes as usual.

:class:`H264Continuity` tells, from slice headers alone, where an H.264 stream can be
stored or decoded from: at an IDR, and not after a lost reference frame until the next IDR.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..aiortc_internals import replace_decoder_queue, send_pli
from .h264 import (
    _HIGH_PROFILES,
    AccessUnit,
    NalType,
    ParameterSetCache,
    Sps,
    _Bits,
    _rbsp,
    _skip_scaling_list,
    join_annexb,
    nal_type,
    parse_sps,
    split_annexb,
)

__all__ = ["EncodedFrame", "H264Continuity", "ReceiverTap", "sps_size"]

logger = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL = 0.5
"""Seconds between two keyframe requests (PLI) from one tap: a sender answers each with an
IDR, several times the size of other frames."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One received frame before decoding.

    Attributes:
        kind: ``"video"`` or ``"audio"``.
        codec: lower-case codec name (``"h264"``, ``"vp8"``, ``"opus"``, ``"pcmu"``...).
        data: the payload: an Annex-B access unit for H.264, one packet for Opus.
        timestamp: RTP timestamp, unwrapped and counted from the stream's first frame.
        clock_rate: RTP clock rate (90000 for video, 48000 for Opus).
        arrival: ``time.monotonic()`` when the frame was complete.
    """

    kind: str
    codec: str
    data: bytes
    timestamp: int
    clock_rate: int
    arrival: float

    @property
    def pts(self) -> int:
        """The timestamp, named as PyAV names it (so timelines treat frames alike)."""
        return self.timestamp

    @property
    def time_base(self) -> fractions.Fraction:
        """One RTP clock tick."""
        return fractions.Fraction(1, self.clock_rate)

    @property
    def keyframe(self) -> bool:
        """Whether decoding can start here (H.264: an IDR; VP8: a key frame; audio: always)."""
        if self.codec == "h264":
            return any(nal_type(nal) == NalType.IDR for nal in split_annexb(self.data))
        if self.codec == "vp8":
            return bool(self.data) and not self.data[0] & 1  # RFC 6386 9.1: 0 means key frame
        return self.kind == "audio" or self.codec not in ("vp9", "av1")


class ReceiverTap:
    """Shows each encoded frame of one aiortc ``RTCRtpReceiver`` to ``on_frame`` first.

    ``on_frame`` returns whether the frame should also be decoded (for the remote track's
    ``recv()``). Decoding that starts, or starts again, waits for a key frame and asks the
    sender for one, so the decoder never begins in the middle of a GOP.

    Install it right after ``addTransceiver`` (before the remote description is applied: the
    receiver starts its decoder thread then).

    Args:
        receiver: the transceiver's ``receiver``.
        kind: ``"video"`` or ``"audio"``.
        on_frame: called on the event loop for every complete frame; exceptions are logged.

    Attributes:
        installed: whether the tap is in place (False: aiortc internals not found, the
            receiver decodes everything as usual).
        frames: frames seen.
        decoded: frames handed to the decoder.
        keyframe_requests: PLIs sent.
    """

    def __init__(
        self,
        receiver: Any,
        kind: str,
        on_frame: Callable[[EncodedFrame], bool],
    ) -> None:
        self.kind = kind
        self._receiver = receiver
        self._on_frame = on_frame
        self._decoding = False
        self._last_request = -KEYFRAME_REQUEST_INTERVAL
        self._pending: set[asyncio.Task[None]] = set()
        self.frames = 0
        self.decoded = 0
        self.keyframe_requests = 0
        self.installed = replace_decoder_queue(receiver, _TapQueue(self._put))
        if not self.installed:
            logger.warning(
                "aiortc internals changed: the %s receiver decodes every frame and records "
                "after decoding",
                kind,
            )

    def request_keyframe(self) -> None:
        """Ask the sender for a key frame (PLI), at most every ``KEYFRAME_REQUEST_INTERVAL``."""
        now = time.monotonic()
        if self.kind != "video" or now - self._last_request < KEYFRAME_REQUEST_INTERVAL:
            return
        self._last_request = now
        try:
            task = asyncio.get_running_loop().create_task(self._send_pli())
        except RuntimeError:
            return  # no loop: closing
        self.keyframe_requests += 1
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_pli(self) -> None:
        try:
            await send_pli(self._receiver)
        except Exception as exc:  # a closing transport: nothing to ask any more
            logger.debug("PLI not sent: %s", exc)

    def _put(self, codec: Any, encoded: Any) -> bool:
        frame = EncodedFrame(
            kind=self.kind,
            codec=str(codec.name).lower(),
            data=bytes(encoded.data),
            timestamp=int(encoded.timestamp),
            clock_rate=int(codec.clockRate),
            arrival=time.monotonic(),
        )
        self.frames += 1
        try:
            wanted = self._on_frame(frame)
        except Exception:
            logger.exception("encoded %s frame callback failed", self.kind)
            wanted = True
        if not wanted:
            self._decoding = False
            return False
        if not self._decoding:
            if not frame.keyframe:
                self.request_keyframe()
                return False
            self._decoding = True
        self.decoded += 1
        return True


class _TapQueue(queue.Queue[Any]):
    """The decoder queue of one receiver: frames pass only when ``decide`` says so.

    The end marker (None) always passes: it stops the decoder thread, which ends the track.
    """

    def __init__(self, decide: Callable[[Any, Any], bool]) -> None:
        super().__init__()
        self._decide = decide

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None or self._decide(*item):
            super().put(item, block, timeout)


@dataclass
class H264Continuity:
    """Follows an H.264 stream by its slice headers: where it can be stored from.

    A recording must start at an IDR and, after a lost reference frame, skip to the next IDR
    (what follows refers to a picture the decoder never got). Loss shows as a gap in
    ``frame_num``, which counts reference pictures modulo ``MaxFrameNum``. Each IDR also gets
    the latest SPS/PPS in front when it lacks them, so a file or a segment starting there
    decodes on its own.

    Attributes:
        sps: the latest SPS seen, or None.
        losses: gaps in ``frame_num`` seen (lost reference frames).
    """

    sps: Sps | None = None
    losses: int = 0
    _cache: ParameterSetCache = field(default_factory=ParameterSetCache)
    _frame_num_bits: dict[int, int] = field(default_factory=dict)
    _pps_sps: dict[int, int] = field(default_factory=dict)
    _previous: int | None = None
    _wrap: int = 1 << 16
    _synced: bool = False

    def push(self, data: bytes) -> tuple[bytes | None, bool]:
        """Take one access unit (Annex-B).

        Returns:
            The access unit to store (an IDR with parameter sets completed), or None while
            waiting for an IDR; and whether it is an IDR.
        """
        nals = split_annexb(data)
        self._learn(nals)
        unit = self._cache.complete(AccessUnit(tuple(nals)))
        self.sps = self._cache.sps
        idr = unit.is_idr
        slice_nal = next((n for n in nals if nal_type(n) in (NalType.SLICE, NalType.IDR)), None)
        frame_num = self._frame_num(slice_nal) if slice_nal is not None else None
        if idr:
            self._synced = self._cache.ready
        elif self._synced and frame_num is not None and self._previous is not None:
            if frame_num not in (self._previous, (self._previous + 1) % self._wrap):
                self._synced = False
                self.losses += 1
        if slice_nal is not None and frame_num is not None and slice_nal[0] & 0x60:
            self._previous = frame_num  # nal_ref_idc != 0: a reference picture
        if not self._synced:
            return None, False
        return join_annexb(unit.nals), idr

    def resync(self) -> None:
        """Wait for the next IDR (a frame of the stream was dropped on purpose)."""
        self._synced = False

    def _learn(self, nals: list[bytes]) -> None:
        for nal in nals:
            kind = nal_type(nal)
            try:
                if kind == NalType.SPS:
                    sps_id, bits = _sps_frame_num_bits(nal)
                    self._frame_num_bits[sps_id] = bits
                elif kind == NalType.PPS:
                    reader = _Bits(_rbsp(nal, 8))
                    pps_id, sps_id = reader.ue(), reader.ue()
                    self._pps_sps[pps_id] = sps_id
            except ValueError:
                continue

    def _frame_num(self, nal: bytes) -> int | None:
        try:
            reader = _Bits(_rbsp(nal, 16))
            reader.ue()  # first_mb_in_slice
            reader.ue()  # slice_type
            pps_id = reader.ue()
            sps_id = self._pps_sps.get(pps_id)
            bits = self._frame_num_bits.get(sps_id) if sps_id is not None else None
            if bits is None:
                return None
            self._wrap = 1 << bits
            return reader.u(bits)
        except ValueError:
            return None


def sps_size(data: bytes) -> tuple[int, int] | None:
    """The picture size from the SPS in an Annex-B access unit, or None if it has none."""
    for nal in split_annexb(data):
        if nal_type(nal) == NalType.SPS:
            try:
                sps = parse_sps(nal)
            except ValueError:
                return None
            return sps.width, sps.height
    return None


def _sps_frame_num_bits(nal: bytes) -> tuple[int, int]:
    """``seq_parameter_set_id`` and the bit length of ``frame_num`` in slices using it.

    :func:`kvs_peer.media.h264.parse_sps` skips ``log2_max_frame_num_minus4``; this reads
    the SPS as far as that field.
    """
    bits = _Bits(_rbsp(nal))
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, level_idc
    sps_id = bits.ue()
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            bits.u(1)
        bits.ue()
        bits.ue()
        bits.u(1)
        if bits.u(1):
            for index in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    return sps_id, bits.ue() + 4
