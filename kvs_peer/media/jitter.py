"""A video jitter buffer that hands a frame on as soon as its last packet arrives.

aiortc's ``JitterBuffer`` knows a frame is complete only when the first packet of the *next*
frame arrives (a new RTP timestamp), so every frame waits one frame interval before it is
decoded: 33 ms at 30 fps, on the first frame too. Senders mark the last packet of each frame
with the RTP marker bit (RFC 6184 5.1 for H.264, RFC 7741 4.1 for VP8; browsers, the C SDK
and aiortc all do), so a contiguous run of packets that ends in a marked one is a whole frame
already. This buffer emits it then, and still falls back to the timestamp change for a sender
that never sets the marker.

It keeps the interface aiortc's receiver uses (``add(packet) -> (pli_flag, frame)``) and its
rules for reordering, overflow and loss: a run with a missing packet is never emitted, and a
jump of ``MAX_MISORDER`` or more, or an overflow, asks for a key frame.

Synchronous, with no I/O and no clock: it only orders the packets it is given. It is not free
of aiortc, though: it reads the depayloaded bytes aiortc's receiver put on each packet and
hands on aiortc's ``JitterFrame``.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..aiortc_internals import JitterFrame, depayloaded
from ..errors import InvalidArgument

__all__ = ["MAX_MISORDER", "MarkerJitterBuffer"]

MAX_MISORDER = 100  # as aiortc: an older sequence number this far back means a restart


class _Packet(Protocol):
    sequence_number: int
    timestamp: int
    marker: int


def _seq_distance(a: int, b: int) -> int:
    """``a - b`` on the 16-bit sequence number circle, in 0..65535."""
    return (a - b) & 0xFFFF


class MarkerJitterBuffer:
    """Reassembles video frames from RTP packets in sequence order.

    Args:
        capacity: packets held at most (a power of 2, as aiortc's).
    """

    def __init__(self, capacity: int = 512) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise InvalidArgument(
                f"jitter buffer capacity {capacity!r} must be a power of 2 (e.g. 128, 512)"
            )
        self.capacity = capacity
        self._packets: list[_Packet | None] = [None] * capacity
        self._origin: int | None = None
        self.frames_by_marker = 0
        """Frames emitted on their marked last packet (not on the next frame's first)."""

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        """Store ``packet``; return (ask for a key frame, the next complete frame or None)."""
        pli = False
        if self._origin is None:
            self._origin = packet.sequence_number
        delta = _seq_distance(packet.sequence_number, self._origin)
        behind = _seq_distance(self._origin, packet.sequence_number)
        if behind < delta:
            # Older than the origin: a late duplicate, or the sender restarted its numbering.
            if behind < MAX_MISORDER:
                return False, None
            self._drop(self.capacity)
            self._origin = packet.sequence_number
            delta = 0
            pli = True
        if delta >= self.capacity:
            # Overflow: drop whole frames from the front until the packet fits.
            if self._drop_frames(delta - self.capacity + 1):
                self._origin = packet.sequence_number
            pli = True
        self._packets[packet.sequence_number % self.capacity] = packet
        return pli, self._next_frame()

    def _next_frame(self) -> JitterFrame | None:
        assert self._origin is not None
        run: list[_Packet] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for it (or for NACK's retransmission)
            if run and packet.timestamp != run[0].timestamp:
                self._drop(count)
                return JitterFrame(b"".join(depayloaded(p) for p in run), run[0].timestamp)
            run.append(packet)
            if packet.marker:
                self._drop(count + 1)
                self.frames_by_marker += 1
                return JitterFrame(b"".join(depayloaded(p) for p in run), run[0].timestamp)
        return None

    def _drop(self, count: int) -> None:
        assert self._origin is not None
        for _ in range(count):
            self._packets[self._origin % self.capacity] = None
            self._origin = (self._origin + 1) & 0xFFFF

    def _drop_frames(self, count: int) -> bool:
        """Drop at least ``count`` slots, never half a frame. True when the buffer is empty."""
        assert self._origin is not None
        timestamp = None
        for i in range(self.capacity):
            slot = self._origin % self.capacity
            packet = self._packets[slot]
            if packet is not None:
                if i >= count and packet.timestamp != timestamp:
                    return False
                timestamp = packet.timestamp
            self._packets[slot] = None
            self._origin = (self._origin + 1) & 0xFFFF
        return True
