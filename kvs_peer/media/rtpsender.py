"""A leaner RTP send loop for senders of the shared H.264 encoder and Opus fan-out.

With one shared encoder, the only master cost that grows with viewers is aiortc's per-sender
send loop (``RTCRtpSender._run_rtp``). Per packet and per viewer it packetizes the frame, builds
an ``RtpPacket``, reads the clock twice, serializes the header extensions and awaits five
coroutine layers down to ``sendto``. The benchmark measured about 0.008 core per viewer at
640x480@30 and 1 Mbit/s. :func:`use_fast_send` replaces that loop for one sender with one that
sends the same bytes for less work (about 0.0025 core per viewer):

- the frame is packetized once for every viewer: video in the encoder's thread
  (:class:`~kvs_peer.media.encoder.EncodedVideo`), audio by the fan-out's pump on the event
  loop (:class:`~kvs_peer.media.fanout.EncodedAudio`);
- the clock is read once per frame (:func:`ntp_now`): a frame's packets leave in one burst, so
  they share one abs-send-time (3.8 us resolution), and the sender report pairs that time with
  the frame's timestamp;
- the header extension block is aiortc's own, asked for once per sender, with the abs-send-time
  and audio-level bytes written in per frame (:class:`ExtensionTemplate`);
- each packet header is one ``struct.pack`` (:func:`rtp_datagrams`);
- the NACK history keeps the fields of each frame and builds an ``RtpPacket`` only when a
  NACK asks for one (:class:`RtpHistory`);
- the SRTP-protected bytes go straight to the ``sendto`` of the nominated candidate pair's
  transport, where aiortc's five layers end too (a UDP socket, or aioice's TURN transport for a
  relayed pair). A pair of any other kind would go through aiortc's layers.

aiortc's sender keeps the rest: negotiation, RTCP (sender reports, RTT, NACK, PLI/FIR), stats and
``replaceTrack`` and other codecs (a track that is not a ``PacketTrack`` or an
``AudioSubscriberTrack``, or a negotiated codec other than theirs, is encoded by aiortc's own
code, as before). To do that, the loop keeps the private fields aiortc's own loop keeps: the
history that NACKs are answered from, and the counters behind sender reports and ``getStats``.
It reaches them only through :mod:`kvs_peer.aiortc_internals` (:class:`SenderFields`,
:func:`send_rtp`); everything else here is plain RTP. :func:`use_fast_send` checks that those
fields exist. If they do not, it leaves the sender alone and logs a warning, so an aiortc
upgrade that renames them costs speed, not correctness. ``tests/media/test_media_rtpsender.py``
fails if frames do not go through this loop with the aiortc version it runs against.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamError, RTCRtpCodecParameters, RTCRtpSender

from ..aiortc_internals import (
    RTP_HISTORY_SIZE,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtpPacket,
    SenderFields,
    missing_send_loop_fields,
    random16,
    random32,
    replace_send_loop,
    send_rtp,
    uint32_add,
)

__all__ = [
    "ExtensionTemplate",
    "RtpHistory",
    "extension_block",
    "ntp_now",
    "rtp_datagrams",
    "use_fast_send",
]

logger = logging.getLogger(__name__)

_RTP_VERSION_BITS = 0x80  # version 2, no padding, no CSRC
_NTP_UNIX_OFFSET_NS = 2_208_988_800 * 1_000_000_000  # 1900-01-01 to 1970-01-01
_EXTENSION_BIT = 0x10
_HEADER = struct.Struct("!BBHLL")


def rtp_datagrams(
    payloads: Sequence[bytes],
    *,
    payload_type: int,
    ssrc: int,
    sequence_number: int,
    timestamp: int,
    extensions: bytes = b"",
) -> list[bytes]:
    """Serialize one frame's RTP packets, with the marker bit on the last one.

    Args:
        payloads: the frame's RTP payloads, in order.
        payload_type: the negotiated payload type.
        ssrc: the stream's SSRC.
        sequence_number: of the first packet; the others follow, modulo 2**16.
        timestamp: the RTP timestamp shared by every packet of the frame.
        extensions: the header extension block (profile, length and elements) or ``b""``.

    Returns:
        Bytes equal to what aiortc's ``RtpPacket.serialize`` gives for the same fields.
    """
    first = _RTP_VERSION_BITS | (_EXTENSION_BIT if extensions else 0)
    last = len(payloads) - 1
    pack = _HEADER.pack
    return [
        pack(
            first,
            (0x80 if i == last else 0) | payload_type,
            (sequence_number + i) & 0xFFFF,
            timestamp,
            ssrc,
        )
        + extensions
        + payload
        for i, payload in enumerate(payloads)
    ]


def extension_block(extensions_map: HeaderExtensionsMap, extensions: HeaderExtensions) -> bytes:
    """The RTP header extension block for ``extensions`` under the negotiated ids, or ``b""``.

    Made with aiortc's own ``HeaderExtensionsMap``, so exactly the extensions aiortc would send.
    """
    profile, value = extensions_map.set(extensions)
    return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""


@dataclass(frozen=True, slots=True)
class _SentFrame:
    payload_type: int
    ssrc: int
    timestamp: int
    payloads: Sequence[bytes]
    mid: str | None
    abs_send_time: int
    audio_level: int | None

    def extensions(self) -> HeaderExtensions:
        extensions = HeaderExtensions()
        extensions.mid = self.mid
        extensions.abs_send_time = self.abs_send_time
        if self.audio_level is not None:
            extensions.audio_level = (False, -self.audio_level)
        return extensions


class RtpHistory(dict[int, Any]):
    """Sent packets kept for retransmission, built into ``RtpPacket`` only when asked for.

    aiortc's NACK handler calls ``history.get(sequence_number % RTP_HISTORY_SIZE)`` and expects
    an ``RtpPacket``. Building one per packet sent costs more than the rest of this loop, and
    almost none are ever asked for, so each slot points at a record of its frame's fields and
    the packet is built on demand.
    """

    def remember_frame(
        self,
        sequence_number: int,
        payloads: Sequence[bytes],
        *,
        payload_type: int,
        ssrc: int,
        timestamp: int,
        mid: str | None,
        abs_send_time: int,
        audio_level: int | None = None,
    ) -> None:
        """Keep what ``get`` needs to rebuild the packets of one frame.

        Args:
            sequence_number: of the frame's first packet.
            payloads: the frame's payloads, in order (the last one has the marker bit).
            payload_type: as sent.
            ssrc: as sent.
            timestamp: the frame's RTP timestamp, as sent.
            mid: the MID header extension, as sent.
            abs_send_time: the abs-send-time header extension, as sent.
            audio_level: the frame's level in dBov, as sent, or None.
        """
        size = RTP_HISTORY_SIZE
        assert size is not None  # use_fast_send() checked
        frame = _SentFrame(payload_type, ssrc, timestamp, payloads, mid, abs_send_time, audio_level)
        for index in range(len(payloads)):
            number = (sequence_number + index) & 0xFFFF
            self[number % size] = (number, index, frame)

    def get(self, key: int, default: Any = None) -> Any:
        """The ``RtpPacket`` in slot ``key``, or ``default``."""
        slot = super().get(key)
        if slot is None:
            return default
        sequence_number, index, frame = slot
        packet = RtpPacket(
            payload_type=frame.payload_type,
            marker=int(index == len(frame.payloads) - 1),
            sequence_number=sequence_number,
            timestamp=frame.timestamp,
            ssrc=frame.ssrc,
            payload=frame.payloads[index],
        )
        packet.extensions = frame.extensions()
        return packet


class ExtensionTemplate:
    """One sender's header extension block, with the per-frame values written into it.

    aiortc's ``HeaderExtensionsMap`` decides which extensions go in and in which form, but
    asking it anew per frame and per viewer costs more than sending the frame's packets. Of the
    extensions aiortc's loop sets, only abs-send-time and the audio level change between frames,
    and their bytes sit at fixed places: this asks aiortc once for two blocks with different
    values, finds those places, and checks a third block against aiortc's before relying on
    them. If anything does not match, :meth:`block` asks aiortc every time.

    Args:
        extensions_map: the sender's negotiated map.
        mid: the sender's MID.
        audio: whether frames carry an audio level.
    """

    def __init__(self, extensions_map: HeaderExtensionsMap, mid: str | None, *, audio: bool):
        self._map = extensions_map
        self._mid = mid
        self._audio = audio
        self._template: bytes | None = None
        self._abs_at: int | None = None
        self._level_at: int | None = None
        low = self._from_aiortc(0, 0 if audio else None)
        high = self._from_aiortc(0xFFFFFF, -127 if audio else None)
        if len(low) != len(high):
            return
        changed = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a != b]
        # aiortc writes abs-send-time (3 bytes) before the audio level (1 byte).
        if len(changed) >= 3 and changed[2] == changed[0] + 2:
            self._abs_at = changed[0]
            changed = changed[3:]
        if audio and len(changed) == 1:
            self._level_at = changed[0]
        elif changed:
            return
        self._template = low
        probe = (0x5A3C1E, -42 if audio else None)
        if self._patched(*probe) != self._from_aiortc(*probe):
            self._template = None

    @property
    def patched(self) -> bool:
        """Whether blocks are patched from the template rather than asked of aiortc."""
        return self._template is not None

    def block(self, abs_send_time: int, audio_level: int | None = None) -> bytes:
        """The block for one frame (``b""`` when no extension was negotiated)."""
        if self._template is None or (audio_level is None and self._level_at is not None):
            return self._from_aiortc(abs_send_time, audio_level)
        return self._patched(abs_send_time, audio_level)

    def _patched(self, abs_send_time: int, audio_level: int | None) -> bytes:
        assert self._template is not None
        if self._abs_at is None and self._level_at is None:
            return self._template
        block = bytearray(self._template)
        if self._abs_at is not None:
            block[self._abs_at : self._abs_at + 3] = abs_send_time.to_bytes(3, "big")
        if self._level_at is not None and audio_level is not None:
            block[self._level_at] = -audio_level & 0x7F
        return bytes(block)

    def _from_aiortc(self, abs_send_time: int, audio_level: int | None) -> bytes:
        extensions = HeaderExtensions()
        extensions.mid = self._mid
        extensions.abs_send_time = abs_send_time
        if audio_level is not None:
            extensions.audio_level = (False, -audio_level)
        return extension_block(self._map, extensions)


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp, as ``aiortc.clock.current_ntp_time``.

    Integer arithmetic on ``time.time_ns()``, several times cheaper than aiortc's datetime.
    """
    nanoseconds = time.time_ns() + _NTP_UNIX_OFFSET_NS
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return (seconds << 32) | ((rest << 32) // 1_000_000_000)


async def _run_rtp(
    sender: RTCRtpSender, fields: SenderFields, codec: RTCRtpCodecParameters
) -> None:
    # Mirrors aiortc 1.16's RTCRtpSender._run_rtp, field for field; only the per-packet work
    # differs. First of all, as aiortc does: stop() waits for this event.
    fields.loop_started()
    try:
        history = RtpHistory()
        fields.use_history(history)
        mid = fields.mid
        extensions_map = fields.extensions_map
        # Inside the try: a remote offer can negotiate what aiortc cannot serialize (an
        # extension id over 255, a huge MID), and rtp_exited must still be set below.
        template = ExtensionTemplate(extensions_map, mid, audio=sender.kind == "audio")
        payload_type = codec.payloadType
        assert payload_type is not None  # aiortc gives a negotiated codec its payload type
        mime = codec.mimeType.lower()
        # As aiortc: a start in the lower half, so SRTP's rollover guess cannot go wrong early.
        sequence_number = random16() % 32768
        timestamp_origin = random32()
        while True:
            track = fields.track
            if track is None:
                await asyncio.sleep(0.02)
                continue
            audio_level = None
            # A PacketTrack or an AudioSubscriberTrack (duck-typed: their modules import this
            # one) hands over payloads already made, if they are in the negotiated codec.
            recv_encoded = getattr(track, "recv_encoded", None)
            if recv_encoded is not None and getattr(track, "codec_mime", None) == mime:
                encoded = await recv_encoded()
                if not fields.enabled:
                    continue
                payloads, media_timestamp = encoded.payloads, encoded.timestamp
                audio_level = getattr(encoded, "audio_level", None)
            else:
                frame = await fields.next_encoded_frame(codec)
                if frame is None:
                    continue
                payloads, media_timestamp = frame.payloads, frame.timestamp
                audio_level = frame.audio_level
            if not payloads:
                continue
            timestamp = uint32_add(timestamp_origin, media_timestamp)
            # One clock read per frame: its packets leave in one burst, and the sender report
            # pairs this send time with this frame's timestamp.
            now = ntp_now()
            abs_send_time = (now >> 14) & 0x00FFFFFF
            ssrc = fields.ssrc
            datagrams = rtp_datagrams(
                payloads,
                payload_type=payload_type,
                ssrc=ssrc,
                sequence_number=sequence_number,
                timestamp=timestamp,
                extensions=template.block(abs_send_time, audio_level),
            )
            history.remember_frame(
                sequence_number,
                payloads,
                payload_type=payload_type,
                ssrc=ssrc,
                timestamp=timestamp,
                mid=mid,
                abs_send_time=abs_send_time,
                audio_level=audio_level,
            )
            await send_rtp(sender.transport, datagrams)
            fields.count_sent(now, timestamp, sum(map(len, payloads)), len(payloads))
            sequence_number = (sequence_number + len(payloads)) & 0xFFFF
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    except Exception:
        # rtp_exited must be set whatever happens, or RTCRtpSender.stop() hangs.
        logger.warning("RTP send loop failed", exc_info=True)
    fields.loop_exited()


def use_fast_send(sender: RTCRtpSender) -> bool:
    """Make ``sender`` send with this module's loop; call it before negotiation starts it.

    Returns:
        ``False``, with a warning, if this aiortc version lacks a field the loop relies on; the
        sender then keeps aiortc's own loop.
    """
    missing = missing_send_loop_fields(sender)
    if missing:
        logger.warning(
            "aiortc's RTCRtpSender or RTCDtlsTransport has changed (no %s): using aiortc's own, "
            "slower send loop",
            ", ".join(missing),
        )
        return False
    fields = SenderFields(sender)

    async def loop(codec: RTCRtpCodecParameters) -> None:
        await _run_rtp(sender, fields, codec)

    replace_send_loop(sender, loop)
    return True
