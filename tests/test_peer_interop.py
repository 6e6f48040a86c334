"""kvs-peer against peers that are not kvs-peer, through the emulator on loopback.

A "go2rtc-like" viewer here is a raw WebSocket client with its own aiortc peer connection,
which sends its own client id as ``recipientClientId`` (go2rtc does). Tampering with the
fingerprint it receives reproduces what the KVS C SDK did with aiortc's fingerprints: its
DTLS fails after the handshake, with no alert, while ours completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from support import MS, wait_until
from websockets.asyncio.client import ClientConnection, connect

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.commands import _master_status, _Meter
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import (
    Role,
    SdpAnswer,
    SdpOffer,
    decode_payload,
    encode_message,
    sdp_payload,
)
from kvs_peer.sdp import TRICKLE_LINE
from kvs_peer.viewer import Viewer

CHANNEL = "interop"
FINGERPRINT = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)", re.MULTILINE)


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel(CHANNEL)
    return CHANNEL


@pytest.fixture
async def master(resolver: ChannelResolver, channel: str) -> AsyncIterator[Master]:
    async with Master(
        AwsAccess(resolver, channel, Role.MASTER),
        video=TestPatternTrack(160, 120, 15),
        connect_timeout=4,
    ) as m:
        yield m


def tamper(sdp: str) -> str:
    """Change one hex digit of every fingerprint: the certificate no longer matches."""

    def flip(match: re.Match[str]) -> str:
        value = match.group(2)
        return f"a=fingerprint:{match.group(1)} {'1' if value[0] != '1' else '2'}{value[1:]}"

    return FINGERPRINT.sub(flip, sdp)


def assert_kvs_readable(sdp: str) -> None:
    """One sha-256 fingerprint per media section, and session-level trickle."""
    found = FINGERPRINT.findall(sdp)
    assert found and {algorithm for algorithm, _ in found} == {"sha-256"}
    assert len(found) == sdp.count("\nm=")
    assert sdp.count(TRICKLE_LINE) == 1
    assert sdp.index(TRICKLE_LINE) < sdp.index("\nm=")


@contextlib.asynccontextmanager
async def raw_viewer(
    resolver: ChannelResolver, client_id: str, *, tamper_answer: bool = False
) -> AsyncIterator[tuple[RTCPeerConnection, str]]:
    """A go2rtc-like viewer; yields its peer connection (answer applied) and the answer."""
    resolved = await resolver.resolve(CHANNEL, Role.VIEWER, client_id=client_id)
    url = await resolver.presign(resolved, client_id=client_id)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ws: ClientConnection
    try:
        async with connect(url) as ws:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            # go2rtc addresses its offer to its own client id; KVS ignores a viewer's recipient.
            await ws.send(
                encode_message(
                    "SDP_OFFER", sdp_payload("offer", pc.localDescription.sdp), client_id
                )
            )
            answer = await next_answer(ws)
            await pc.setRemoteDescription(
                RTCSessionDescription(tamper(answer) if tamper_answer else answer, "answer")
            )
            yield pc, answer
    finally:
        await pc.close()


async def next_answer(ws: ClientConnection) -> str:
    async with asyncio.timeout(10_000 * MS):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("messageType") == "SDP_ANSWER":
                payload = decode_payload(frame["messagePayload"])
                assert payload is not None
                return str(payload["sdp"])


async def test_go2rtc_style_viewer_connects_with_the_rewritten_answer(
    master: Master, resolver: ChannelResolver
) -> None:
    async with raw_viewer(resolver, "go2rtc-1") as (pc, answer):
        assert_kvs_readable(answer)
        await master.wait_for_viewers(1, timeout=10_000 * MS)
        await wait_until(lambda: pc.connectionState == "connected")
    assert master.stats.sessions_connected == 1


async def test_a_viewer_whose_dtls_failed_never_counts_as_connected(
    master: Master, resolver: ChannelResolver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvs_peer.master")
    async with raw_viewer(resolver, "go2rtc-bad", tamper_answer=True) as (pc, _):
        await wait_until(lambda: pc.connectionState == "failed")
        session = master.viewers["go2rtc-bad"]
        # Our side completed DTLS (the viewer checks fingerprints only after the handshake)...
        await wait_until(lambda: session.pc.connectionState == "connected")
        await asyncio.sleep(1500 * MS)  # longer than any viewer takes to send its first RTCP
        # ...yet the session is not connected anywhere the user looks.
        assert session.state == "connecting"
        assert session.connected_at is None
        assert master.stats.sessions_connected == 0
        assert "| viewers 0/1 |" in await _master_status(master, _Meter())
        with pytest.raises(TimeoutError):
            await master.wait_for_viewers(1, timeout=200 * MS)
        # connect_timeout (4 s) drops it as failed, saying why.
        await wait_until(lambda: "go2rtc-bad" not in master.viewers, timeout=10_000 * MS)
    assert master.stats.sessions_failed == 1
    assert master.stats.sessions_connected == 0
    assert "DTLS is up on our side only" in caplog.text


async def test_kvs_peer_loopback_uses_the_rewritten_sdps(
    master: Master, resolver: ChannelResolver
) -> None:
    # What went over the wire (aiortc's remoteDescription is its own re-serialization).
    offers: list[str] = []
    answers: list[str] = []
    master.signaling.on_event(lambda e: offers.append(e.sdp) if isinstance(e, SdpOffer) else None)
    viewer = Viewer(
        AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="loop-1"), data_channel=True
    )
    viewer.signaling.on_event(lambda e: answers.append(e.sdp) if isinstance(e, SdpAnswer) else None)
    async with viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        await viewer.wait_connected(timeout=5000 * MS)
        await master.wait_for_viewers(1, timeout=10_000 * MS)
        assert viewer.connection_state == "connected"
        assert master.viewers["loop-1"].state == "connected"
    assert len(offers) == len(answers) == 1
    assert_kvs_readable(offers[0])
    assert_kvs_readable(answers[0])


@contextlib.asynccontextmanager
async def raw_master(
    resolver: ChannelResolver, *, tamper_offer: bool
) -> AsyncIterator[list[RTCPeerConnection]]:
    """A master that answers every offer with aiortc, optionally refusing the viewer's
    certificate (as the C SDK did); yields its peer connections."""
    resolved = await resolver.resolve(CHANNEL, Role.MASTER)
    url = await resolver.presign(resolved)
    pcs: list[RTCPeerConnection] = []

    async def serve(ws: ClientConnection) -> None:
        async for text in ws:
            frame = json.loads(text)
            if frame.get("messageType") != "SDP_OFFER":
                continue
            payload: dict[str, Any] | None = decode_payload(frame["messagePayload"])
            assert payload is not None
            offer = str(payload["sdp"])
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc)
            pc.addTrack(TestPatternTrack(160, 120, 15))
            await pc.setRemoteDescription(
                RTCSessionDescription(tamper(offer) if tamper_offer else offer, "offer")
            )
            await pc.setLocalDescription(await pc.createAnswer())
            answer = sdp_payload("answer", pc.localDescription.sdp)
            await ws.send(encode_message("SDP_ANSWER", answer, frame["senderClientId"]))

    async with connect(url) as ws:
        task = asyncio.create_task(serve(ws))
        try:
            yield pcs
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for pc in pcs:
                await pc.close()


async def test_viewer_is_not_connected_when_the_master_refused_its_certificate(
    resolver: ChannelResolver, channel: str
) -> None:
    async with (
        raw_master(resolver, tamper_offer=True) as pcs,
        Viewer(
            AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="refused"), reconnect=False
        ) as viewer,
    ):
        await wait_until(lambda: bool(pcs) and pcs[0].connectionState == "failed")
        assert viewer.pc is not None
        pc = viewer.pc
        await wait_until(lambda: pc.connectionState == "connected")
        with pytest.raises(TimeoutError):
            await viewer.wait_connected(timeout=1500 * MS)
        assert viewer.connection_state == "connecting"
        assert viewer.stats.connected_at is None
        assert viewer.stats.frames_received == 0
