"""kvs_peer.aiortc_internals against the installed aiortc and aioice, on real peer connections.

Each private name kvs-peer relies on is exercised here, so an upgrade that renames one fails
in this file (with the name in the error) rather than as a stalled stream elsewhere.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import fractions
import hashlib
import hmac
import importlib.metadata
import queue
import re
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice
import aiortc
import av
import pytest
from aioice import Candidate, Connection
from aioice.ice import StunProtocol
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    VideoStreamTrack,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import RtcpPacket
from support import MS
from turn_support import free_port, require_turnserver

from kvs_peer import aiortc_internals as internals
from kvs_peer.channel import IceServer
from kvs_peer.emulator.turn import TurnServer
from kvs_peer.media.rtpsender import rtp_datagrams
from kvs_peer.peerconnection import rtc_configuration

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@pytest.mark.parametrize(
    ("package", "tested"),
    [("aiortc", internals.AIORTC_VERSION), ("aioice", internals.AIOICE_VERSION)],
)
def test_installed_version_is_the_one_checked(package: str, tested: str) -> None:
    installed = importlib.metadata.version(package)
    assert _minor(installed) == tested, (
        f"{package} {installed} is installed, but kvs_peer/aiortc_internals.py was checked "
        f"against {tested}: run this file's tests, fix what they find, then update "
        f"{package.upper()}_VERSION there and the pin in pyproject.toml"
    )


@pytest.mark.parametrize(
    ("package", "tested"),
    [("aiortc", internals.AIORTC_VERSION), ("aioice", internals.AIOICE_VERSION)],
)
def test_pyproject_pins_the_minor_version_checked(package: str, tested: str) -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(rf"{package}\b", d)]
    major, minor = tested.split(".")
    assert pins == [f"{package}>={tested},<{major}.{int(minor) + 1}"]


DOCUMENTED_SUBMODULES = {"aiortc.contrib.media"}
"""aiortc's helpers documented in its own docs (MediaPlayer, MediaRelay, ...): public."""


def test_no_other_module_imports_what_aiortc_or_aioice_does_not_export() -> None:
    exported = {"aiortc": set(aiortc.__all__), "aioice": set(aioice.__all__)}
    offenders = []
    for path in sorted((PYPROJECT.parent / "kvs_peer").rglob("*.py")):
        if path.name == "aiortc_internals.py":
            continue
        where = path.relative_to(PYPROJECT.parent)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                offenders += [
                    f"{where}:{node.lineno} import {alias.name}"
                    for alias in node.names
                    if alias.name.split(".")[0] in exported and "." in alias.name
                ]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                package = node.module.split(".")[0]
                if package not in exported or node.module in DOCUMENTED_SUBMODULES:
                    continue
                offenders += [
                    f"{where}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name not in exported[package]
                ]
    assert not offenders, f"take these through kvs_peer.aiortc_internals: {offenders}"


# -- peers --------------------------------------------------------------------------------------


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])  # host candidates only: never the internet


@dataclass
class Pair:
    """A viewer (offerer: recvonly video and a data channel) and a master sending video."""

    viewer: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(_config()))
    master: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(_config()))

    def __post_init__(self) -> None:
        self.viewer.addTransceiver("video", direction="recvonly")
        self.channel = self.viewer.createDataChannel("x")

    async def offer(self) -> None:
        await self.viewer.setLocalDescription(await self.viewer.createOffer())
        await self.master.setRemoteDescription(self.viewer.localDescription)

    async def answer(self) -> None:
        await self.master.setLocalDescription(await self.master.createAnswer())
        await self.viewer.setRemoteDescription(self.master.localDescription)

    async def connected(self) -> None:
        async with asyncio.timeout(10_000 * MS):
            while not (
                self.viewer.connectionState == "connected"
                and self.master.connectionState == "connected"
            ):
                await asyncio.sleep(20 * MS)

    @property
    def sender(self) -> RTCRtpSender:
        return self.master.getTransceivers()[0].sender


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    peers = Pair()
    try:
        yield peers
    finally:
        await asyncio.wait_for(peers.master.close(), 5000 * MS)
        await peers.viewer.close()


async def _until(condition: Any, what: str, seconds: float = 5.0) -> None:
    try:
        async with asyncio.timeout(seconds * 1000 * MS):
            while not condition():
                await asyncio.sleep(10 * MS)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# -- ICE -----------------------------------------------------------------------------------------


async def test_ice_connection_and_loopback_gathering(pair: Pair) -> None:
    transport = pair.viewer.getTransceivers()[0].receiver.transport.transport
    connection = internals.ice_connection(transport)
    assert isinstance(connection, Connection)
    internals.gather_loopback(connection)
    wrapped = connection.get_component_candidates
    internals.gather_loopback(connection)  # idempotent: not wrapped twice
    assert connection.get_component_candidates is wrapped
    await pair.viewer.setLocalDescription(await pair.viewer.createOffer())
    hosts = [c.host for c in internals.local_candidates(connection)]
    assert "127.0.0.1" in hosts
    protocols = internals.local_protocols(connection)
    assert protocols and all(isinstance(p, StunProtocol) for p in protocols)
    assert {p.local_candidate.host for p in protocols} == set(hosts)


async def test_late_candidates_are_taken_and_paired(pair: Pair) -> None:
    await pair.offer()
    await pair.answer()
    connection = internals.ice_connection(pair.sender.transport.transport)
    assert internals.takes_late_candidates(connection)

    reflexive = Candidate("9", 1, "udp", 100, "203.0.113.7", 40000, "srflx", "192.0.2.2", 5000)
    internals.add_local_candidate(connection, reflexive)
    assert reflexive in internals.local_candidates(connection)

    # A socket of our own standing in for a TURN allocation: aioice pairs it with every
    # remote candidate, as it does the relay candidates it gathers itself.
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(connection), local_addr=("127.0.0.1", 0)
    )
    port = protocol.transport.get_extra_info("sockname")[1]
    relay = Candidate("8", 1, "udp", 50, "127.0.0.1", port, "relay", "127.0.0.1", port)
    protocol.local_candidate = relay
    internals.add_relay_candidate(connection, protocol, relay)
    assert relay in internals.local_candidates(connection)
    assert protocol in internals.local_protocols(connection)
    # The pairing itself is aioice's (private) check list: the new pairs must be on it.
    assert any(p.local_candidate is relay for p in connection._check_list)


def test_ice_server_kwargs_are_the_first_usable_stun_and_turn() -> None:
    servers = rtc_configuration(
        [
            IceServer(("stun:s.example:3478", "stun:other.example:3478")),
            IceServer(("turn:t.example:3478?transport=tcp",), "u", "p"),
            IceServer(("turn:later.example:3478?transport=udp",), "v", "q"),
        ]
    ).iceServers
    kwargs = internals.ice_server_kwargs(servers or [])
    assert kwargs == {
        "stun_server": ("s.example", 3478),
        "turn_server": ("t.example", 3478),
        "turn_ssl": False,
        "turn_transport": "tcp",
        "turn_username": "u",
        "turn_password": "p",
    }
    assert internals.ice_server_kwargs([]) == {}


def _turn_credentials(secret: str) -> tuple[str, str]:
    """TURN REST credentials, minted as the emulator's control plane does."""
    username = f"{int(time.time()) + 300}:test"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


async def test_server_candidates_from_a_real_turn_server() -> None:
    require_turnserver()
    async with TurnServer("s3cret", port=free_port()) as turn:
        username, password = _turn_credentials("s3cret")
        servers = rtc_configuration([IceServer(turn.uris, username, password)]).iceServers
        kwargs = internals.ice_server_kwargs(servers or [])
        assert kwargs["turn_server"] == ("127.0.0.1", turn.port)
        connection = Connection(ice_controlling=True)
        try:
            internals.gather_loopback(connection)
            await connection.gather_candidates()
            [(protocol, host)] = [
                (p, c) for p, c in internals.host_protocols(connection) if c.host == "127.0.0.1"
            ]
            assert all(c.type == "host" for _, c in internals.host_protocols(connection))
            # coturn answers STUN too; on loopback there is no NAT: the same address comes back.
            reflexive = await asyncio.wait_for(
                internals.query_reflexive(protocol, ("127.0.0.1", turn.port)), 5000 * MS
            )
            assert reflexive.type == "srflx"
            assert (reflexive.host, reflexive.port) == (host.host, host.port)
            relay, allocation = await asyncio.wait_for(
                internals.allocate_relay(connection, kwargs), 5000 * MS
            )
            try:
                assert relay.type == "relay" and relay.component == 1
                assert relay.host == "127.0.0.1" and relay.port != turn.port
                assert isinstance(allocation, StunProtocol)
            finally:
                await allocation.close()
        finally:
            await connection.close()


async def test_a_refused_allocation_raises() -> None:
    require_turnserver()
    async with TurnServer("s3cret", port=free_port()) as turn:
        servers = rtc_configuration([IceServer(turn.uris, "1:test", "wrong")]).iceServers
        connection = Connection(ice_controlling=True)
        try:
            with pytest.raises(Exception, match="401"):
                await asyncio.wait_for(
                    internals.allocate_relay(
                        connection, internals.ice_server_kwargs(servers or [])
                    ),
                    5000 * MS,
                )
        finally:
            await connection.close()


def test_candidate_lines_are_aiortcs() -> None:
    candidate = Candidate("9", 1, "udp", 100, "203.0.113.7", 40000, "srflx", "192.0.2.2", 5000)
    rtc = internals.to_rtc_candidate(candidate)
    assert (rtc.ip, rtc.port, rtc.type, rtc.foundation) == ("203.0.113.7", 40000, "srflx", "9")
    line = internals.candidate_line(rtc)
    assert line == "9 1 udp 100 203.0.113.7 40000 typ srflx raddr 192.0.2.2 rport 5000"
    parsed = internals.candidate_from_line(line)
    assert (parsed.ip, parsed.port, parsed.type, parsed.relatedAddress, parsed.relatedPort) == (
        "203.0.113.7",
        40000,
        "srflx",
        "192.0.2.2",
        5000,
    )
    with pytest.raises((AssertionError, ValueError, IndexError)):
        internals.candidate_from_line("not a candidate")


# -- DTLS, SCTP, data channels ---------------------------------------------------------------------


async def test_incoming_packets_are_seen_until_unhooked(pair: Pair) -> None:
    pair.master.addTrack(VideoStreamTrack())
    await pair.offer()
    seen = 0

    def on_packet() -> None:
        nonlocal seen
        seen += 1

    hooks = internals.hook_incoming_packets(pair.master, on_packet)
    names = sorted(name for _, name in hooks)
    # One bundled DTLS transport (RTP and RTCP) and the SCTP transport.
    assert names == ["_handle_data", "_handle_rtcp_data", "_handle_rtp_data"]
    assert internals.hook_incoming_packets(pair.master, on_packet) == []  # already hooked
    await pair.answer()
    await pair.connected()
    # The viewer sends RTCP receiver reports and the data channel's SCTP packets.
    await _until(lambda: seen > 0, "a packet from the viewer")
    internals.remove_hooks(hooks)
    internals.remove_hooks(hooks)  # idempotent
    assert all(name not in vars(obj) for obj, name in hooks)
    before = seen
    await asyncio.sleep(1500 * MS)  # receiver reports keep coming, at most 1.5 s apart
    assert seen == before


async def test_data_channel_opens_without_the_ack(pair: Pair) -> None:
    opened: list[bool] = []
    pair.channel.on("open", lambda: opened.append(True))
    assert pair.channel.readyState == "connecting"
    internals.open_data_channel(pair.channel)
    assert pair.channel.readyState == "open"
    assert opened == [True]


# -- RTCP and codecs -----------------------------------------------------------------------------


async def test_feedback_reaches_every_hook(pair: Pair) -> None:
    pair.master.addTrack(VideoStreamTrack())
    await pair.offer()
    received: list[Any] = []
    nacks: list[tuple[int, list[int]]] = []
    plis: list[int] = []
    keyframes: list[bool] = []
    sender = pair.sender
    assert internals.on_rtcp_received(sender, received.append)
    assert internals.on_rtcp_received(sender, received.append)  # once only
    assert internals.on_keyframe_request(sender, lambda: keyframes.append(True))
    receiver = pair.viewer.getTransceivers()[0].receiver
    assert internals.on_feedback_sent(
        receiver, lambda ssrc, lost: nacks.append((ssrc, lost)), plis.append
    )
    await pair.answer()
    await pair.connected()
    ssrc = sender._ssrc
    # aiortc's receiver sends these on loss and decoder errors; ask it directly.
    await receiver._send_rtcp_nack(ssrc, [7, 8])
    await receiver._send_rtcp_pli(ssrc)
    assert nacks == [(ssrc, [7, 8])] and plis == [ssrc]
    await _until(lambda: keyframes, "the PLI at the sender")

    def kinds() -> set[str]:
        found = set()
        for packet in received:
            if (
                isinstance(packet, internals.RtcpRtpfbPacket)
                and packet.fmt == internals.RTCP_RTPFB_NACK
            ):
                found.add("nack")
            if (
                isinstance(packet, internals.RtcpPsfbPacket)
                and packet.fmt == internals.RTCP_PSFB_PLI
            ):
                found.add("pli")
        return found

    assert kinds() == {"nack", "pli"}


async def test_negotiated_codecs_are_the_transceivers_own(pair: Pair) -> None:
    pair.master.addTransceiver("video", direction="sendonly")
    await pair.offer()
    [transceiver] = pair.master.getTransceivers()
    codecs = internals.negotiated_codecs(transceiver)
    assert codecs and all(isinstance(c, RTCRtpCodecParameters) for c in codecs)
    assert internals.negotiated_codecs(transceiver) is codecs  # the list itself, not a copy
    first = codecs[0]
    first.payloadType = 121
    codecs[:] = [first]
    await pair.master.setLocalDescription(await pair.master.createAnswer())
    media = [line for line in pair.master.localDescription.sdp.splitlines() if "m=video" in line]
    assert media[0].split()[3:] == ["121"]


# -- the send loop -------------------------------------------------------------------------------


async def test_a_loop_made_of_these_fields_sends_counted_decodable_video(pair: Pair) -> None:
    track = VideoStreamTrack()
    pair.master.addTrack(track)
    sender = pair.sender
    assert internals.missing_send_loop_fields(sender) == []
    assert internals.RTP_HISTORY_SIZE is not None
    fields = internals.SenderFields(sender)
    history: dict[int, Any] = {}
    sent = {"frames": 0, "packets": 0, "octets": 0}

    async def loop(codec: RTCRtpCodecParameters) -> None:
        fields.loop_started()
        fields.use_history(history)
        assert codec.payloadType is not None
        sequence_number = 1000
        try:
            while True:
                assert fields.track is track and fields.enabled
                frame = await fields.next_encoded_frame(codec)
                if frame is None:
                    continue
                datagrams = rtp_datagrams(
                    frame.payloads,
                    payload_type=codec.payloadType,
                    ssrc=fields.ssrc,
                    sequence_number=sequence_number,
                    timestamp=frame.timestamp,
                )
                await internals.send_rtp(sender.transport, datagrams)
                octets = sum(map(len, frame.payloads))
                fields.count_sent(1 << 32, frame.timestamp, octets, len(datagrams))
                sent["frames"] += 1
                sent["packets"] += len(datagrams)
                sent["octets"] += octets
                sequence_number += len(datagrams)
        except (asyncio.CancelledError, ConnectionError):
            pass
        fields.loop_exited()

    internals.replace_send_loop(sender, loop)
    received: list[Any] = []
    pair.viewer.on("track", lambda remote: received.append(remote))
    await pair.offer()
    await pair.answer()
    await pair.connected()
    await _until(lambda: received, "the viewer's track")
    assert fields.mid == pair.master.getTransceivers()[0].mid  # set when the sender starts
    assert fields.extensions_map is not None
    for _ in range(3):  # aiortc's receiver decodes what the loop sent
        frame = await asyncio.wait_for(received[0].recv(), 5000 * MS)
        assert frame.width == 640
    stats = await sender.getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    transport = next(s for s in stats.values() if s.type == "transport")
    assert sent["frames"] >= 3
    assert outbound.packetsSent >= sent["packets"] - 5  # a frame may be in flight
    assert transport.packetsSent >= outbound.packetsSent > 0
    # close() returns only once the loop set the exited event; the track was stopped.
    await asyncio.wait_for(pair.master.close(), 5000 * MS)
    assert fields.track is None and track.readyState == "ended"


async def test_send_rtp_refuses_an_unconnected_transport(pair: Pair) -> None:
    pair.master.addTrack(VideoStreamTrack())
    with pytest.raises(ConnectionError, match="not connected"):
        await internals.send_rtp(pair.sender.transport, [b"x"])


async def test_nacks_are_answered_from_the_history_given(pair: Pair) -> None:
    pair.master.addTrack(VideoStreamTrack())
    fields = internals.SenderFields(pair.sender)
    history: dict[int, Any] = {}
    fields.use_history(history)
    # aiortc's _retransmit reads this field (name-mangled in RTCRtpSender).
    assert pair.sender._RTCRtpSender__rtp_history is history


# -- receivers (the viewer's recording path) -----------------------------------------------------


async def test_receiver_buffer_and_queue_are_swapped_before_start(pair: Pair) -> None:
    receiver = pair.viewer.getTransceivers()[0].receiver
    buffer = JitterBuffer(capacity=128, is_video=True)
    assert internals.use_jitter_buffer(receiver, buffer)
    assert receiver._RTCRtpReceiver__jitter_buffer is buffer  # what _handle_rtp_packet reads
    frames: queue.Queue[Any] = queue.Queue()
    assert internals.replace_decoder_queue(receiver, frames)
    pair.master.addTrack(VideoStreamTrack())
    await pair.offer()
    await pair.answer()
    await pair.connected()
    # aiortc's receiver now puts (codec, JitterFrame) on our queue instead of decoding.
    codec, frame = await asyncio.get_running_loop().run_in_executor(None, frames.get, True, 5)
    assert codec.mimeType == "video/VP8" and frame.data
    # Once started, the receiver keeps its queue: too late to swap.
    assert not internals.replace_decoder_queue(receiver, queue.Queue())


async def test_send_pli_asks_the_media_ssrc(pair: Pair) -> None:
    pair.master.addTrack(VideoStreamTrack())
    await pair.offer()
    keyframes: list[bool] = []
    plis: list[int] = []
    receiver = pair.viewer.getTransceivers()[0].receiver
    assert internals.on_keyframe_request(pair.sender, lambda: keyframes.append(True))
    assert internals.on_feedback_sent(receiver, lambda ssrc, lost: None, plis.append)
    await pair.answer()
    await pair.connected()
    await _until(lambda: receiver.getSynchronizationSources(), "media at the viewer")
    await internals.send_pli(receiver)
    assert plis == [pair.sender._ssrc]  # the media SSRC, not the RTX one
    await _until(lambda: keyframes, "the PLI at the sender")


# -- aiortc's unexported building blocks, used as they are -----------------------------------------


def test_rtp_packets_carry_the_negotiated_extensions() -> None:
    extensions_map = internals.HeaderExtensionsMap()
    extensions_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                RTCRtpHeaderExtensionParameters(
                    id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                ),
            ]
        )
    )
    extensions = internals.HeaderExtensions()
    extensions.mid, extensions.abs_send_time = "0", 0x123456
    profile, value = extensions_map.set(extensions)
    assert profile == 0xBEDE and value  # the one-byte header form
    packet = internals.RtpPacket(
        payload_type=102, marker=1, sequence_number=65535, timestamp=7, ssrc=0x1234, payload=b"x"
    )
    packet.extensions = extensions
    parsed = internals.RtpPacket.parse(packet.serialize(extensions_map), extensions_map)
    assert (parsed.payload_type, parsed.marker, parsed.sequence_number) == (102, 1, 65535)
    assert (parsed.timestamp, parsed.ssrc, parsed.payload) == (7, 0x1234, b"x")
    assert (parsed.extensions.mid, parsed.extensions.abs_send_time) == ("0", 0x123456)


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        (internals.RtcpPsfbPacket, internals.RTCP_PSFB_PLI),
        (internals.RtcpPsfbPacket, internals.RTCP_PSFB_FIR),
        (internals.RtcpRtpfbPacket, internals.RTCP_RTPFB_NACK),
    ],
)
def test_rtcp_feedback_is_parsed_into_these_classes(kind: Any, fmt: int) -> None:
    if kind is internals.RtcpRtpfbPacket:
        sent = kind(fmt=fmt, ssrc=1, media_ssrc=2, lost=[5, 6])
    else:
        sent = kind(fmt=fmt, ssrc=1, media_ssrc=2)
    [received] = RtcpPacket.parse(bytes(sent))
    assert type(received) is kind and received.fmt == fmt and received.media_ssrc == 2


def _h264_packets() -> list[av.Packet]:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 160, 120, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for index in range(2):
        frame = av.VideoFrame(160, 120, "yuv420p")
        frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
        packets += codec.encode(frame)
    return packets + codec.encode(None)


def test_h264_pack_packetizes_without_state() -> None:
    packets = _h264_packets()
    assert len(packets) >= 2
    packer = internals.H264Encoder()
    first = [packer.pack(p) for p in packets]
    again = [internals.H264Encoder().pack(p) for p in reversed(packets)][::-1]
    assert first == again  # same answer whatever was packed before, or by which instance
    assert [timestamp for _, timestamp in first] == [p.pts * 3000 for p in packets]  # 90 kHz
    assert all(payloads and all(len(x) <= 1300 for x in payloads) for payloads, _ in first)


def test_opus_encoder_takes_s16_frames_and_counts_48khz() -> None:
    encoder = internals.OpusEncoder()
    timestamps = []
    for index in range(3):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = 48_000, index * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        payloads, timestamp = encoder.encode(frame)
        assert payloads and all(payloads)
        timestamps.append(timestamp)
    assert timestamps == [0, 960, 1920]


def test_jitter_frames_are_what_aiortcs_buffer_hands_on() -> None:
    frame = internals.JitterFrame(b"ab", 9)
    assert (frame.data, frame.timestamp) == (b"ab", 9)
    buffer = JitterBuffer(capacity=4, is_video=True)
    released = []
    for sequence_number, timestamp in ((1, 100), (2, 200)):  # a new timestamp ends a frame
        packet = internals.RtpPacket(sequence_number=sequence_number, timestamp=timestamp)
        packet._data = b"n%d" % sequence_number  # the depayloaded bytes, as the receiver sets
        assert internals.depayloaded(packet) == packet._data
        released.append(buffer.add(packet)[1])
    assert released[0] is None
    assert isinstance(released[1], internals.JitterFrame) and released[1].data == b"n1"


def test_rtp_number_helpers() -> None:
    assert internals.uint32_add(0xFFFFFFFF, 2) == 1
    assert internals.uint32_add(5, 7) == 12
    sixteen = {internals.random16() for _ in range(64)}
    thirty_two = {internals.random32() for _ in range(64)}
    assert all(0 <= n <= 0xFFFF for n in sixteen) and len(sixteen) > 32  # random, not fixed
    assert all(0 <= n <= 0xFFFFFFFF for n in thirty_two) and len(thirty_two) > 60
