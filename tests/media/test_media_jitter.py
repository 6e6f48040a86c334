"""The marker-aware jitter buffer: frames leave on their last packet, never with a gap."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from aiortc.jitterbuffer import JitterBuffer

from kvs_peer.errors import InvalidArgument
from kvs_peer.media.jitter import MarkerJitterBuffer


@dataclass
class Packet:
    """The fields of aiortc's ``RtpPacket`` the buffer reads (``_data`` as the receiver sets)."""

    sequence_number: int
    timestamp: int
    marker: int
    _data: bytes


def frames(count: int, per_frame: int = 3, first_seq: int = 1, marker: bool = True) -> list:
    packets = []
    seq = first_seq
    for f in range(count):
        for p in range(per_frame):
            last = marker and p == per_frame - 1
            packets.append(Packet(seq & 0xFFFF, 3000 * f, int(last), bytes([f, p])))
            seq += 1
    return packets


def feed(buffer: object, packets: list) -> list[tuple[int, int, bytes]]:
    """(index of the packet that released it, timestamp, data) for every frame out."""
    out = []
    for i, packet in enumerate(packets):
        _, frame = buffer.add(packet)  # type: ignore[attr-defined]
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_a_frame_leaves_on_its_marked_last_packet() -> None:
    packets = frames(3)
    ours = feed(MarkerJitterBuffer(), packets)
    assert [i for i, _, _ in ours] == [2, 5, 8]
    assert ours[0][2] == bytes([0, 0, 0, 1, 0, 2])
    # aiortc's waits for the next frame's first packet: one frame later, and the last not at all.
    theirs = feed(JitterBuffer(capacity=512, is_video=True), packets)
    assert [i for i, _, _ in theirs] == [3, 6]
    assert [(t, d) for _, t, d in ours[:2]] == [(t, d) for _, t, d in theirs]


def test_reordered_packets_come_out_in_order() -> None:
    first, (a, b, c) = frames(2)[:3], frames(2)[3:]
    out = feed(MarkerJitterBuffer(), [*first, b, a, c])
    assert out[1] == (5, 3000, bytes([1, 0, 1, 1, 1, 2]))


def test_a_gap_holds_the_frame_until_the_missing_packet_arrives() -> None:
    a, b, c, d, e, f = frames(2)
    buffer = MarkerJitterBuffer()
    assert feed(buffer, [a, c, d, e, f]) == []
    _, frame = buffer.add(b)
    assert frame is not None and frame.data == bytes([0, 0, 0, 1, 0, 2])
    # The next frame was complete meanwhile: it leaves with the next packet added.
    _, frame = buffer.add(Packet(7, 6000, 1, b"z"))
    assert frame is not None and frame.timestamp == 3000


def test_without_markers_it_behaves_as_aiortcs() -> None:
    rng = random.Random(7)
    packets = frames(40, per_frame=4, marker=False)
    # Local reordering, as a network does.
    for i in range(0, len(packets) - 2, 5):
        if rng.random() < 0.5:
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
    ours = feed(MarkerJitterBuffer(), packets)
    theirs = feed(JitterBuffer(capacity=512, is_video=True), packets)
    assert ours == theirs
    assert len(ours) == 39


def test_sequence_numbers_wrap() -> None:
    packets = frames(4, first_seq=65530)
    out = feed(MarkerJitterBuffer(), packets)
    assert [t for _, t, _ in out] == [0, 3000, 6000, 9000]


def test_a_restart_of_the_numbering_asks_for_a_key_frame() -> None:
    buffer = MarkerJitterBuffer()
    feed(buffer, frames(2, first_seq=5000))
    pli, _ = buffer.add(Packet(100, 90000, 0, b"x"))
    assert pli
    pli, frame = buffer.add(Packet(101, 90000, 1, b"y"))
    assert not pli and frame is not None and frame.data == b"xy"


def test_a_late_duplicate_is_ignored() -> None:
    buffer = MarkerJitterBuffer()
    packets = frames(2)
    feed(buffer, packets)
    assert buffer.add(packets[0]) == (False, None)


def test_overflow_drops_whole_frames_and_asks_for_a_key_frame() -> None:
    buffer = MarkerJitterBuffer(capacity=16)
    # Frame 0 is never completed (its second packet is lost): the buffer fills up behind it.
    packets = [p for p in frames(8, per_frame=3) if p.sequence_number != 2]
    results = [buffer.add(p) for p in packets]
    assert any(pli for pli, _ in results)
    released = [f.timestamp for _, f in results if f is not None]
    assert 0 not in released and released == sorted(released) and released


@pytest.mark.parametrize("capacity", [100, 0, -4])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    with pytest.raises(InvalidArgument, match=r"capacity .* must be a power of 2") as caught:
        MarkerJitterBuffer(capacity=capacity)
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still do
