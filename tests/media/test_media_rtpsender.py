"""The fast RTP send loop: bytes equal to aiortc's, NACKs answered, stats and fallbacks intact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    clock,
)
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, RtpPacket
from media_peers import Link, connect, watch
from support import MS

from kvs_peer.media import SharedVideoEncoder, TestPatternTrack, add_shared_video
from kvs_peer.media.rtpsender import (
    ExtensionTemplate,
    RtpHistory,
    extension_block,
    ntp_now,
    rtp_datagrams,
    use_fast_send,
)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def extensions_map(mid_id: int = 1, abs_id: int = 2) -> HeaderExtensionsMap:
    result = HeaderExtensionsMap()
    result.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=mid_id, uri=MID),
                RTCRtpHeaderExtensionParameters(id=abs_id, uri=ABS_SEND_TIME),
            ]
        )
    )
    return result


def test_datagrams_are_byte_for_byte_what_aiortc_serializes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        ids = rng.sample(range(1, 15), 2)
        mapping = extensions_map(*ids) if rng.random() < 0.8 else HeaderExtensionsMap()
        extensions = HeaderExtensions()
        extensions.mid = rng.choice(["0", "1", "video", "a" * 16])
        extensions.abs_send_time = rng.getrandbits(24)
        payloads = [os.urandom(rng.randint(1, 1300)) for _ in range(rng.randint(1, 6))]
        fields = {
            "payload_type": rng.randint(96, 127),
            "ssrc": rng.getrandbits(32),
            "timestamp": rng.getrandbits(32),
        }
        first = rng.choice([0, 1, 0xFFFE, 0xFFFF, rng.getrandbits(16)])
        ours = rtp_datagrams(
            payloads,
            sequence_number=first,
            extensions=extension_block(mapping, extensions),
            **fields,
        )
        expected = []
        for index, payload in enumerate(payloads):
            packet = RtpPacket(
                marker=int(index == len(payloads) - 1),
                sequence_number=(first + index) & 0xFFFF,
                payload=payload,
                **fields,
            )
            packet.extensions = extensions
            expected.append(packet.serialize(mapping))
        assert ours == expected


def test_history_rebuilds_what_was_sent_and_forgets_what_was_overwritten() -> None:
    mapping = extensions_map()
    extensions = HeaderExtensions()
    extensions.mid = "0"
    extensions.abs_send_time = 123456
    history = RtpHistory()
    payloads = [b"first", b"second"]
    datagrams = rtp_datagrams(
        payloads,
        payload_type=102,
        ssrc=0xDEADBEEF,
        sequence_number=0xFFFF,
        timestamp=90_000,
        extensions=extension_block(mapping, extensions),
    )
    sent = {"payload_type": 102, "ssrc": 0xDEADBEEF, "timestamp": 90_000, "mid": "0"}
    history.remember_frame(0xFFFF, payloads, abs_send_time=123456, **sent)
    # aiortc's NACK handler looks packets up by sequence number modulo the history size.
    assert history.get(0xFFFF % 128).serialize(mapping) == datagrams[0]
    assert history.get(0).serialize(mapping) == datagrams[1]
    assert history.get(5) is None
    history.remember_frame(128, [b"x"], abs_send_time=1, **sent)
    # Slot 0 now holds 128: aiortc compares sequence numbers and will not resend the wrong one.
    assert history.get(0).sequence_number == 128


def test_audio_history_keeps_the_audio_level() -> None:
    history = RtpHistory()
    history.remember_frame(
        7,
        [b"opus"],
        payload_type=111,
        ssrc=9,
        timestamp=960,
        mid="1",
        abs_send_time=5,
        audio_level=-33,
    )
    assert history.get(7).extensions.audio_level == (False, 33)


@pytest.mark.parametrize("audio", [False, True])
def test_extension_template_writes_what_aiortc_writes(audio: bool) -> None:
    rng = random.Random(11)
    patched = 0
    for _ in range(200):
        uris = [MID, ABS_SEND_TIME] + ([AUDIO_LEVEL] if audio else [])
        chosen = [uri for uri in uris if rng.random() < 0.8]
        # Ids above 14 force aiortc's two-byte form; the template must follow it there too.
        ids = rng.sample(range(1, 15) if rng.random() < 0.8 else range(1, 40), len(chosen))
        mapping = HeaderExtensionsMap()
        mapping.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=i, uri=uri)
                    for i, uri in zip(ids, chosen, strict=True)
                ]
            )
        )
        mid = rng.choice(["0", "1", "audio", "a" * 16, "b" * 17, None])
        template = ExtensionTemplate(mapping, mid, audio=audio)
        patched += template.patched
        for _ in range(5):
            abs_send_time = rng.getrandbits(24)
            level = rng.randint(-127, 0) if audio else None
            extensions = HeaderExtensions()
            extensions.mid = mid
            extensions.abs_send_time = abs_send_time
            if level is not None:
                extensions.audio_level = (False, -level)
            assert template.block(abs_send_time, level) == extension_block(mapping, extensions)
    # Most draws are the usual one-byte layouts, which the template serves without aiortc.
    assert patched > 150


def test_ntp_now_is_aiortcs_clock() -> None:
    before = clock.current_ntp_time()
    ours = ntp_now()
    after = clock.current_ntp_time()
    assert before - (1 << 22) <= ours <= after + (1 << 22)  # within a millisecond


@contextlib.asynccontextmanager
async def _sending(
    track: TestPatternTrack, **encoder_options: Any
) -> AsyncIterator[tuple[SharedVideoEncoder, Link, RTCRtpSender]]:
    """A shared encoder of ``track`` sending to one connected viewer; yields the encoder, the
    link and the master's video sender."""
    async with SharedVideoEncoder(track, **encoder_options) as encoder:
        link = await connect(encoder)
        try:
            assert link.video_transceiver is not None
            yield encoder, link, link.video_transceiver.sender
        finally:
            await link.close()


async def test_fast_loop_is_in_use_with_this_aiortc() -> None:
    # If an aiortc upgrade renames what the loop relies on, or stops starting its loop through
    # self._run_rtp, the master silently falls back to aiortc's slower loop; this notices.
    async with _sending(TestPatternTrack(320, 240, 30)) as (_encoder, link, sender):
        assert "_run_rtp" in vars(sender)
        result = await watch(link, 1.0)
        history = sender._RTCRtpSender__rtp_history
    assert result.frames >= 20 and result.increasing and not result.unreadable
    # Only the fast loop fills an RtpHistory: the packets really went through it.
    assert isinstance(history, RtpHistory) and len(history) > 20


async def test_a_changed_aiortc_falls_back_to_its_own_loop(caplog: Any) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        del sender._RTCRtpSender__rtp_history  # as if a new aiortc had renamed it
        with caplog.at_level(logging.WARNING, logger="kvs_peer.media.rtpsender"):
            assert use_fast_send(sender) is False
        assert "rtp_history" in caplog.text and "slower" in caplog.text
        assert "_run_rtp" not in vars(sender)
    finally:
        await pc.close()


async def test_lost_packets_are_resent_from_the_history() -> None:
    async with _sending(TestPatternTrack(640, 480, 30), gop=None) as (encoder, link, sender):
        receiver_dtls = link.viewer.getTransceivers()[0].receiver.transport
        original = receiver_dtls._handle_rtp_data
        dropped: set[int] = set()
        seen = 0
        resent = 0

        async def lossy(data: bytes, arrival_time_ms: int) -> None:
            nonlocal resent, seen
            packet = RtpPacket.parse(data)
            if packet.ssrc == sender._ssrc:
                seen += 1
                # Drop about one media packet in eight, the first time only. Not among the
                # first packets: a receiver cannot NACK a loss before the first packet it
                # sees (it then asks for a keyframe instead, which is not what is tested).
                number = packet.sequence_number
                if seen > 20 and number % 8 == 3 and number not in dropped:
                    dropped.add(number)
                    return
            elif packet.ssrc == sender._rtx_ssrc:
                resent += 1
            await original(data, arrival_time_ms)

        receiver_dtls._handle_rtp_data = lossy
        result = await watch(link, 2.0)
        encoded = encoder.frames_encoded
    print(f"dropped {len(dropped)}, resent {resent}, frames {result.frames} of {encoded}")
    assert len(dropped) >= 20
    assert resent >= len(dropped) - 3  # the last few may still be in flight at the end
    # This viewer is the encoder's only subscriber, from the join keyframe on, so it must have
    # decoded every frame made but the last few in flight. With no periodic keyframes, a frame
    # that lost a packet for good would stop the picture until the end of the test.
    assert result.frames >= encoded - 3
    assert result.increasing and not result.unreadable


async def test_sender_reports_and_stats_count_what_was_sent() -> None:
    async with _sending(TestPatternTrack(320, 240, 30)) as (_encoder, link, sender):
        await watch(link, 2.5)  # sender reports go out every 0.5-1.5 s
        sender.replaceTrack(None)  # no more packets: compare counts with nothing in flight
        await asyncio.sleep(0.5)
        sent = await sender.getStats()
        received = await link.viewer.getTransceivers()[0].receiver.getStats()
    outbound = next(s for s in sent.values() if s.type == "outbound-rtp")
    transport = next(s for s in sent.values() if s.type == "transport")
    inbound = next(s for s in received.values() if s.type == "inbound-rtp")
    remote = next(s for s in received.values() if s.type == "remote-outbound-rtp")
    assert outbound.packetsSent > 100 and outbound.bytesSent > 50_000
    # Loopback loses nothing: the viewer got exactly the packets the sender counted.
    assert outbound.packetsSent == inbound.packetsReceived
    assert transport.packetsSent >= outbound.packetsSent
    # The counters reached the viewer in a sender report.
    assert 0 < remote.packetsSent <= outbound.packetsSent


async def test_a_replaced_frame_track_is_encoded_by_aiortc() -> None:
    async with _sending(TestPatternTrack(320, 240, 30)) as (_encoder, link, sender):
        first = await watch(link, 0.5)
        # Frames instead of packets: the fast loop hands them to aiortc's own encoder.
        sender.replaceTrack(TestPatternTrack(320, 240, 30))
        await asyncio.sleep(0.3)
        second = await watch(link, 1.0)
    assert first.frames >= 10
    assert second.frames >= 15 and not second.unreadable


@pytest.mark.parametrize("sequence_number", [0, 0xFFFE])
def test_sequence_numbers_wrap(sequence_number: int) -> None:
    datagrams = rtp_datagrams(
        [b"a", b"b", b"c"], payload_type=96, ssrc=1, sequence_number=sequence_number, timestamp=0
    )
    numbers = [RtpPacket.parse(d).sequence_number for d in datagrams]
    assert numbers == [(sequence_number + i) & 0xFFFF for i in range(3)]
    assert [RtpPacket.parse(d).marker for d in datagrams] == [0, 0, 1]


async def test_an_offer_aiortc_cannot_serialize_does_not_hang_close() -> None:
    # A remote offer can negotiate an extension id over 255, which aiortc's serializer refuses
    # (an assertion). The loop must still end cleanly, or RTCRtpSender.stop() waits forever.
    async with SharedVideoEncoder(TestPatternTrack(320, 240, 30)) as encoder:
        config = RTCConfiguration(iceServers=[])
        viewer, master = RTCPeerConnection(config), RTCPeerConnection(config)
        try:
            viewer.addTransceiver("video", direction="recvonly")
            await viewer.setLocalDescription(await viewer.createOffer())
            offer = viewer.localDescription.sdp.replace(
                "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
                "a=extmap:300 urn:ietf:params:rtp-hdrext:sdes:mid",
            )
            assert "a=extmap:300 " in offer
            transceiver = add_shared_video(master, encoder)
            await master.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await master.setLocalDescription(await master.createAnswer())
            await viewer.setRemoteDescription(master.localDescription)
            async with asyncio.timeout(10_000 * MS):
                while transceiver.sender._RTCRtpSender__rtp_exited.is_set() is False:
                    await asyncio.sleep(0.05)
        finally:
            await asyncio.wait_for(master.close(), 5000 * MS)
            await viewer.close()
