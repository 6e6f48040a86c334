"""STUN/TURN candidates gathered after the SDP went out (kvs_peer.gathering).

A TURN server that does not answer must not hold up the offer or the answer (aioice waits
5 s for it inside setLocalDescription, on each side); one that answers must still be used:
its relay candidate is trickled to the other side and added to our ICE connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiortc import RTCPeerConnection
from support import MS
from turn_support import free_port, local_candidate_types, require_turnserver

from kvs_peer.access import AwsAccess
from kvs_peer.aiortc_internals import ice_server_kwargs
from kvs_peer.channel import ChannelResolver, IceServer
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import ChannelError
from kvs_peer.gathering import BackgroundGathering, without_end_of_candidates
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.peerconnection import rtc_configuration
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer

CHANNEL = "gathering"


@pytest.fixture
def silent_turn() -> Iterator[int]:
    """A UDP port that receives and never answers: a TURN server behind a blocking firewall."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _dead_turn(port: int) -> dict[str, object]:
    return {
        "Uris": [f"turn:127.0.0.1:{port}?transport=udp"],
        "Username": "1999999999:kvs",
        "Password": "secret",
        "Ttl": 300,
    }


@pytest.fixture
async def turn_resolver() -> AsyncIterator[ChannelResolver]:
    """A resolver for CHANNEL on an emulator whose coturn answers."""
    require_turnserver()
    async with LocalKvs(EmulatorConfig(turn=True, turn_port=free_port())) as kvs:
        kvs.create_channel(CHANNEL)
        async with kvs.resolver() as resolver:
            yield resolver


@contextlib.asynccontextmanager
async def _watch(
    resolver: ChannelResolver, client_id: str
) -> AsyncIterator[tuple[float, Viewer, Master]]:
    """A master and a viewer on CHANNEL; yields the viewer's time to first frame and both."""
    async with (
        Master(
            AwsAccess(resolver, CHANNEL, Role.MASTER),
            video=TestPatternTrack(160, 120, 30),
            connect_timeout=10,
            takeover_check=None,
        ) as master,
        Viewer(
            AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=client_id), reconnect=False
        ) as viewer,
    ):
        yield await viewer.wait_first_frame(timeout=20_000 * MS), viewer, master


@pytest.mark.parametrize("dead", ["silent", "closed"])
async def test_an_unresponsive_turn_server_holds_up_neither_offer_nor_answer(
    silent_turn: int, dead: str
) -> None:
    # Before: aioice waited 5 s for the TURN server on each side, a first frame after ~10 s.
    port = silent_turn if dead == "silent" else free_port()
    async with LocalKvs(EmulatorConfig(ice_servers=[_dead_turn(port)])) as kvs:
        kvs.create_channel(CHANNEL)
        async with kvs.resolver() as resolver:
            resolved = await resolver.resolve(CHANNEL, Role.VIEWER, client_id="probe")
            assert any("turn:" in u for s in resolved.ice_servers for u in s.urls)
            started = time.monotonic()
            async with _watch(resolver, f"viewer-{dead}") as (ttff, viewer, master):
                assert viewer.stats.first_offer_at is not None
                offer_after = viewer.stats.first_offer_at - viewer.stats.started_at
                assert offer_after < 1000 * MS, f"offer sent after {offer_after:.2f} s"
                assert master.stats.last_answer_time is not None
                assert master.stats.last_answer_time < 1000 * MS
                assert ttff < 2500 * MS, f"first frame after {ttff:.2f} s"
                assert time.monotonic() - started < 3000 * MS
                # The dead server gave no relay candidate; nothing was trickled for it.
                assert viewer._gathering is not None and viewer._gathering.trickled == []


async def test_a_turn_server_that_answers_is_trickled_and_used_by_both_sides(
    turn_resolver: ChannelResolver,
) -> None:
    async with _watch(turn_resolver, "viewer-turn") as (ttff, viewer, master):
        (session,) = master.viewers.values()
        # Host pairs connect first; a relay allocation that completes after ICE is
        # released rather than trickled, so wait for the ICE-state-independent part:
        # the viewer's gathering finished (relay trickled or dropped) without error.
        gathering = viewer._gathering
        assert gathering is not None and gathering.error is None
        assert ttff < 5000 * MS
        assert session.gathering is not None and session.gathering.error is None


async def test_a_late_relay_candidate_is_added_and_trickled_before_ice_completes(
    turn_resolver: ChannelResolver,
) -> None:
    ice = await AwsAccess(turn_resolver, CHANNEL, Role.VIEWER, client_id="v").ice_config()
    sent: list[tuple[str, str | None, int | None]] = []

    async def send(line: str, mid: str | None, index: int | None) -> None:
        sent.append((line, mid, index))

    pc = RTCPeerConnection(rtc_configuration(()))
    gathering = BackgroundGathering(pc, ice, send, label="test")
    try:
        pc.addTransceiver("video", direction="recvonly")
        gathering.prepare()
        started = time.monotonic()
        await pc.setLocalDescription(await pc.createOffer())
        gathered_in = time.monotonic() - started
        sdp = without_end_of_candidates(pc.localDescription.sdp)
        assert "typ relay" not in sdp and "end-of-candidates" not in sdp
        assert local_candidate_types(pc) <= {"host"}
        gathering.described(sdp)
        async with asyncio.timeout(5000 * MS):
            while not any("typ relay" in line for line, _, _ in sent):
                await asyncio.sleep(0.01)
        (line, mid, index) = next(s for s in sent if "typ relay" in s[0])
        assert line.startswith("candidate:") and (mid, index) == ("0", 0)
        # No remote side: ICE never completes, so the relay went into the connection.
        assert "relay" in local_candidate_types(pc)
        assert gathered_in < 500 * MS
    finally:
        await gathering.close()
        await pc.close()


async def test_ice_servers_that_cannot_be_had_leave_host_candidates_only() -> None:
    async def failing() -> object:
        raise ChannelError("GetIceServerConfig failed (ServiceUnavailable: down)")

    pc = RTCPeerConnection(rtc_configuration(()))
    sent: list[str] = []

    async def send(line: str, mid: str | None, index: int | None) -> None:
        sent.append(line)

    gathering = BackgroundGathering(pc, failing(), send)
    try:
        pc.addTransceiver("video", direction="recvonly")
        gathering.prepare()
        await pc.setLocalDescription(await pc.createOffer())
        gathering.described(pc.localDescription.sdp)
        async with asyncio.timeout(2000 * MS):
            while gathering.error is None:
                await asyncio.sleep(0.01)
        assert isinstance(gathering.error, ChannelError) and sent == []
    finally:
        await gathering.close()
        await pc.close()


def test_without_end_of_candidates() -> None:
    sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n"
    sdp_end = sdp + "a=end-of-candidates\r\n"
    assert without_end_of_candidates(sdp_end) == sdp
    assert without_end_of_candidates(sdp) == sdp


def test_stun_and_turn_servers_are_parsed_as_aiortc_would() -> None:
    # The background gathering uses the first usable STUN and TURN URL, as aiortc does.
    servers = [
        IceServer(
            ("turns:t.example:443?transport=udp", "turn:t.example:3478?transport=udp"), "u", "p"
        ),
        IceServer(("stun:s.example:3478",)),
    ]
    kwargs = ice_server_kwargs(rtc_configuration(servers).iceServers)
    assert kwargs["turn_server"] == ("t.example", 3478) and kwargs["turn_transport"] == "udp"
    assert kwargs["stun_server"] == ("s.example", 3478)
