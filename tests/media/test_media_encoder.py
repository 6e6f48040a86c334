"""SharedVideoEncoder and PacketTrack: real libx264, real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from media_peers import connect, watch
from support import MS

from kvs_peer.errors import InvalidArgument, InvalidState
from kvs_peer.media import (
    SharedVideoEncoder,
    TestPatternTrack,
    ToneTrack,
    add_shared_video,
    h264_codec_preferences,
    read_stamp,
)


def nal_types(packet: av.Packet) -> list[int]:
    data = bytes(packet)
    types, index = [], 0
    while (index := data.find(b"\x00\x00\x01", index)) >= 0:
        types.append(data[index + 3] & 0x1F)
        index += 3
    return types


async def test_three_viewers_share_one_encode() -> None:
    source = TestPatternTrack(640, 480, 30)
    async with SharedVideoEncoder(source) as encoder:
        links = [await connect(encoder) for _ in range(3)]
        try:
            seconds = 2.0
            watches = asyncio.gather(*(watch(link, seconds) for link in links))
            await asyncio.sleep(0.5)  # every viewer is past its first frame
            encoded0, generated0, t0 = (
                encoder.frames_encoded,
                source.frames_generated,
                time.perf_counter(),
            )
            await asyncio.sleep(1.0)
            encoded = encoder.frames_encoded - encoded0
            generated = source.frames_generated - generated0
            window = time.perf_counter() - t0
            results = await watches
        finally:
            for link in links:
                await link.close()
    for index, result in enumerate(results):
        print(
            f"viewer {index}: ttff {result.ttff * 1000:.0f} ms, {result.fps:.1f} fps, "
            f"{result.unreadable} unreadable stamps"
        )
        assert result.fps >= 24, result
        assert result.increasing
        assert result.unreadable <= result.frames // 20
        # Viewers joining within min_keyframe_gap of another wait for the next allowed IDR.
        assert result.ttff < 1500 * MS
    print(f"encoder: {encoded} frames encoded in {window:.2f} s for 3 viewers")
    assert encoder.encoder_contexts == 1
    # One encode per source frame, not one per viewer.
    assert encoded <= generated + 1
    assert 0.8 * 30 * window <= encoded <= 1.2 * 30 * window
    # Where their windows overlap, every viewer decoded the same frames: one stream.
    low = max(r.counters[0] for r in results)
    high = min(r.counters[-1] for r in results)
    seen = [{c for c in r.counters if low <= c <= high} for r in results]
    assert high - low >= 30
    assert len(seen[0] & seen[1] & seen[2]) >= 0.9 * (high - low + 1)


async def test_late_joiner_gets_a_keyframe_at_once() -> None:
    # No periodic keyframes at all: only the join-time IDR can start the late viewer.
    async with SharedVideoEncoder(TestPatternTrack(640, 480, 30), gop=None) as encoder:
        first = await connect(encoder)
        try:
            early = asyncio.create_task(watch(first, 2.0))
            await asyncio.sleep(1.0)
            late = await connect(encoder)
            try:
                late_result = await watch(late, 0.5)
            finally:
                await late.close()
            early_result = await early
        finally:
            await first.close()
    print(
        f"first viewer ttff {early_result.ttff * 1000:.0f} ms, "
        f"late viewer ttff {late_result.ttff * 1000:.0f} ms"
    )
    assert late_result.ttff is not None and late_result.ttff < 1000 * MS
    assert early_result.ttff is not None and early_result.ttff < 1000 * MS
    assert early_result.fps >= 24 and early_result.increasing
    # First viewer, late viewer: one forced IDR each (a stray PLI may add one).
    assert 2 <= encoder.forced_keyframes <= 4
    assert encoder.keyframes == encoder.forced_keyframes


async def test_pli_from_a_viewer_forces_a_keyframe() -> None:
    async with SharedVideoEncoder(
        TestPatternTrack(320, 240, 30), gop=None, min_keyframe_gap=0.1
    ) as encoder:
        link = await connect(encoder)
        try:
            await watch(link, 0.3)
            track = link.video_transceiver.sender.track
            requests, forced = track.keyframe_requests, encoder.forced_keyframes
            # A real RTCP PLI from the viewer's receiver (aiortc's own sender for it).
            receiver = link.viewer.getTransceivers()[0].receiver
            await receiver._send_rtcp_pli(link.video_transceiver.sender._ssrc)
            deadline = time.monotonic() + 1000 * MS
            while encoder.forced_keyframes == forced and time.monotonic() < deadline:
                await link.video.recv()
        finally:
            await link.close()
    assert track.keyframe_requests == requests + 1
    assert encoder.forced_keyframes == forced + 1


async def test_stalled_subscriber_does_not_slow_the_others() -> None:
    source = TestPatternTrack(320, 240, 30)
    async with SharedVideoEncoder(source, gop=30, queue_size=10) as encoder:
        stalled = encoder.subscribe()
        await stalled.recv()  # active, then never read for a while
        link = await connect(encoder)
        try:
            result = await watch(link, 2.0)
            queued = len(stalled._queue)
            forced_while_stalled = encoder.forced_keyframes
            # The stalled viewer comes back: its queue starts at a keyframe and decodes.
            decoder = av.CodecContext.create("h264", "r")
            packets = [await stalled.recv() for _ in range(15)]
        finally:
            await link.close()
    print(
        f"live viewer {result.fps:.1f} fps while the other stalled; stalled queue {queued}, "
        f"{stalled.resyncs} resyncs, {stalled.packets_dropped} packets dropped"
    )
    assert result.fps >= 24 and result.increasing
    assert queued <= 10
    assert stalled.resyncs >= 2 and stalled.packets_dropped > 0
    # A viewer that stopped reading must not force keyframes on everyone: the join-time
    # IDRs of the two subscribers only.
    assert forced_while_stalled <= 2
    assert packets[0].is_keyframe
    counters = []
    for packet in packets:
        for frame in decoder.decode(packet):
            stamp = read_stamp(frame)
            assert stamp is not None
            counters.append(stamp.counter)
    assert counters == list(range(counters[0], counters[0] + len(counters)))


async def test_bitstream_is_annexb_constrained_baseline_with_headers_on_every_idr() -> None:
    async with SharedVideoEncoder(TestPatternTrack(320, 240, 30), gop=10) as encoder:
        track = encoder.subscribe()
        packets = [await track.recv() for _ in range(25)]
    keyframes = [p for p in packets if p.is_keyframe]
    assert packets[0].is_keyframe and len(keyframes) >= 3
    for packet in keyframes:
        types = nal_types(packet)
        assert types[:2] == [7, 8] and 5 in types  # SPS, PPS, then IDR slices
        sps = bytes(packet)[bytes(packet).find(b"\x00\x00\x01\x67") + 4 :]
        assert sps[0] == 66 and sps[1] & 0x40  # profile_idc Baseline, constraint_set1
    for packet in packets:
        assert packet.time_base == fractions.Fraction(1, 90000)
        assert 5 not in nal_types(packet) or packet.is_keyframe
    pts = [p.pts for p in packets]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert 2000 <= (pts[-1] - pts[0]) / (len(pts) - 1) <= 4000  # ~3000 ticks at 30 fps


async def test_encoder_reads_its_source_only_while_someone_reads() -> None:
    source = TestPatternTrack(160, 120, 30)
    async with SharedVideoEncoder(source) as encoder:
        track = encoder.subscribe()
        await asyncio.sleep(0.2)
        assert source.frames_generated == 0 and not encoder.running
        for _ in range(5):
            await track.recv()
        assert encoder.running and encoder.active_subscribers == 1
        track.stop()
        await asyncio.sleep(0.1)
        generated = source.frames_generated
        await asyncio.sleep(0.3)
        assert not encoder.running and encoder.subscribers == 0
        assert source.frames_generated == generated
        with pytest.raises(MediaStreamError):
            await track.recv()
        # A new subscriber restarts it, with a keyframe first.
        again = encoder.subscribe()
        assert (await again.recv()).is_keyframe
    assert source.readyState == "ended"  # close() stopped the source
    with pytest.raises(InvalidState):
        encoder.subscribe()


async def test_source_end_ends_every_subscriber() -> None:
    source = TestPatternTrack(160, 120, 30)
    encoder = SharedVideoEncoder(source)
    tracks = [encoder.subscribe() for _ in range(2)]
    await asyncio.gather(*(t.recv() for t in tracks))
    source.stop()
    for track in tracks:
        with pytest.raises(MediaStreamError):
            while True:
                await asyncio.wait_for(track.recv(), 1000 * MS)
    await encoder.close()


async def test_h264_is_forced_even_when_the_viewer_prefers_vp8() -> None:
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    vp8_first = sorted(capabilities, key=lambda c: c.mimeType != "video/VP8")
    async with SharedVideoEncoder(TestPatternTrack(320, 240, 30)) as encoder:
        link = await connect(encoder, viewer_codecs=vp8_first)
        try:
            answer = link.master.localDescription.sdp
            result = await watch(link, 0.3)
        finally:
            await link.close()
    assert "H264" in answer and "VP8" not in answer
    assert result.frames > 0 and result.increasing


async def test_offer_without_h264_is_refused() -> None:
    vp8_only = [
        c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"
    ]
    config = RTCConfiguration(iceServers=[])
    viewer, master = RTCPeerConnection(config), RTCPeerConnection(config)
    async with SharedVideoEncoder(TestPatternTrack(320, 240, 30)) as encoder:
        try:
            viewer.addTransceiver("video", direction="recvonly").setCodecPreferences(vp8_only)
            await viewer.setLocalDescription(await viewer.createOffer())
            add_shared_video(master, encoder)
            with pytest.raises(Exception, match="video"):
                await master.setRemoteDescription(viewer.localDescription)
        finally:
            await viewer.close()
            await master.close()


def test_h264_preferences_are_h264_and_rtx_only() -> None:
    mimes = {c.mimeType for c in h264_codec_preferences()}
    assert mimes == {"video/H264", "video/rtx"}


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="video track"):
        SharedVideoEncoder(ToneTrack())
    with pytest.raises(InvalidArgument, match="bitrate"):
        SharedVideoEncoder(TestPatternTrack(), bitrate=10)
    with pytest.raises(InvalidArgument, match="gop"):
        SharedVideoEncoder(TestPatternTrack(), gop=0)
    with pytest.raises(InvalidArgument, match="queue_size"):
        SharedVideoEncoder(TestPatternTrack(), queue_size=1)
    with pytest.raises(InvalidArgument, match="unknown x264 preset 'warp': use one of ultrafast"):
        SharedVideoEncoder(TestPatternTrack(), preset="warp")


async def test_the_cheapest_preset_streams_too() -> None:
    async with SharedVideoEncoder(TestPatternTrack(320, 240, 30), preset="ultrafast") as encoder:
        link = await connect(encoder)
        try:
            result = await watch(link, 1.0)
        finally:
            await link.close()
    assert result.frames >= 20 and result.increasing and not result.unreadable


async def test_join_right_after_a_periodic_keyframe_is_served_at_once() -> None:
    """The keyframe rate limit counts forced keyframes only: a viewer that joins just after a
    periodic keyframe (which it never saw) gets its own keyframe without waiting."""
    encoder = SharedVideoEncoder(TestPatternTrack(320, 240, 30), gop=20, min_keyframe_gap=0.5)
    async with encoder:
        first = encoder.subscribe()
        assert (await first.recv()).is_keyframe  # forced on activation
        while not (await first.recv()).is_keyframe:  # the periodic one, ~0.67 s later
            pass
        started = time.monotonic()
        joiner = encoder.subscribe()
        packet = await asyncio.wait_for(joiner.recv(), 2000 * MS)
        waited = time.monotonic() - started
        first.stop()
        joiner.stop()
    assert packet.is_keyframe
    assert waited < 250 * MS, f"joiner waited {waited:.3f} s for its keyframe"


@pytest.mark.parametrize(("size", "level"), [((1280, 720), 31), ((1920, 1080), 40)])
async def test_level_fits_the_frame_size(size: tuple[int, int], level: int) -> None:
    async with SharedVideoEncoder(TestPatternTrack(*size, 10)) as encoder:
        track = encoder.subscribe()
        encoded = await asyncio.wait_for(track.recv_encoded(), 10_000 * MS)
    data = bytes(encoded.packet)
    sps = data.index(b"\x00\x00\x01\x67") + 4  # NAL type 7 with nal_ref_idc 3, as x264 writes
    profile_idc, constraints, level_idc = data[sps : sps + 3]
    assert (profile_idc, constraints & 0x40, level_idc) == (66, 0x40, level)  # Constrained Baseline
    # The RTP payloads carry the same access unit: SPS and PPS aggregated first (STAP-A).
    assert encoded.payloads[0][0] & 0x1F == 24
