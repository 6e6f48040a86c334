"""Master faults under churn and abuse: real aiortc peers through the emulator on loopback.

Sessions are released the moment they end (issue 10 item 8), offers that never connect do not
keep viewers out (item 9), and every remote candidate counts once toward the cap (item 10).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import time
import weakref
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import (
    MAX_CANDIDATES_PER_PEER,
    CandidateBuffer,
    IceCandidate,
    Role,
    SdpAnswer,
    SdpOffer,
)
from kvs_peer.signaling import SignalingClient
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer

CHANNEL = "faults"


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel(CHANNEL)
    return CHANNEL


def master_for(resolver: ChannelResolver, **kwargs: Any) -> Master:
    return Master(
        AwsAccess(resolver, CHANNEL, Role.MASTER), video=TestPatternTrack(320, 240, 15), **kwargs
    )


def _strip_candidates(sdp: str) -> str:
    lines = sdp.split("\r\n")
    kept = [x for x in lines if not x.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept)


class RawViewer:
    """A viewer signaling connection that sends offers from fresh aiortc peer connections."""

    def __init__(self, resolver: ChannelResolver, client_id: str, *, pace: bool = True) -> None:
        self.client_id = client_id
        access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=client_id)
        self.signaling = SignalingClient(access, role=Role.VIEWER, client_id=client_id, pace=pace)
        self.pc: RTCPeerConnection | None = None
        self.pcs: list[RTCPeerConnection] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawViewer:
        await self.signaling.connect()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pc in self.pcs:
            await pc.close()
        self.pcs.clear()
        self.pc = None
        await self.signaling.close()
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for event in self.signaling:
            if isinstance(event, SdpAnswer) and self.pc is not None:
                if self.pc.signalingState == "have-local-offer":
                    answer = RTCSessionDescription(event.sdp, "answer")
                    await self.pc.setRemoteDescription(answer)

    async def offer(self, *, abandon: bool = False) -> RTCPeerConnection:
        """Offer from a new peer connection; ``abandon`` closes it at once (never connects)."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self.pc = pc
        self.pcs.append(pc)
        await self.signaling.send_offer(pc.localDescription.sdp)
        if abandon:
            await pc.close()
        return pc

    async def close_pcs(self) -> None:
        for pc in self.pcs:
            await pc.close()
        self.pcs.clear()
        self.pc = None


# -- item 8: sessions are released as soon as they end ----------------------------------------


def _baseline() -> dict[str, int]:
    gc.collect()
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "peer_connections": sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection)),
    }


async def _back_to(baseline: dict[str, int], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = _baseline()
        if all(now[k] <= baseline[k] for k in baseline) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


async def test_a_session_is_released_as_soon_as_its_viewer_leaves(
    resolver: ChannelResolver, channel: str
) -> None:
    # The default 30 s connect timeout: nothing may keep a finished session until then.
    async with master_for(resolver) as master, RawViewer(resolver, "leaver") as viewer:
        pc = await viewer.offer()
        await master.wait_for_viewers(1, timeout=10_000 * MS)
        session = weakref.ref(master.viewers["leaver"])
        master_pc = weakref.ref(master.viewers["leaver"].pc)
        await wait_until(lambda: pc.connectionState == "connected")
        await viewer.close_pcs()
        await wait_until(lambda: not master.viewers, timeout=3000 * MS)
        started = time.monotonic()
        while session() is not None or master_pc() is not None:
            assert time.monotonic() - started < 2000 * MS, "the master still holds the session"
            await asyncio.sleep(0.05)
            gc.collect()
        assert master.encoder.subscribers == 0


async def test_a_connected_session_outlives_the_connect_timeout_and_a_pending_one_does_not(
    resolver: ChannelResolver, channel: str
) -> None:
    check = VideoCheck()
    async with master_for(resolver, connect_timeout=1.5) as master:
        access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="stays")
        async with Viewer(access, on_frame=check.add) as viewer:
            await viewer.wait_first_frame(timeout=10_000 * MS)
            session = master.viewers["stays"]
            async with RawViewer(resolver, "ghost") as ghost:
                await ghost.offer(abandon=True)
                await wait_until(lambda: "ghost" in master.viewers)
                gone = weakref.ref(master.viewers["ghost"])
                await wait_until(lambda: "ghost" not in master.viewers, timeout=4000 * MS)
                # Released once its close (already under way) finishes: nothing keeps it.
                await wait_until(lambda: gc.collect() >= 0 and gone() is None, 2000 * MS)
            before = check.frames
            await asyncio.sleep(1.0)  # well past the connect timeout of "stays"
            assert master.viewers.get("stays") is session
            assert check.frames - before >= 8
        assert master.stats.sessions_failed == 1  # the ghost only


async def test_short_churn_releases_everything(resolver: ChannelResolver, channel: str) -> None:
    """A few seconds of the churn benchmarks/churn.py runs for a minute, at the same rate."""
    async with master_for(resolver) as master:
        seen: list[weakref.ref[Any]] = []

        def note_sessions() -> None:
            for s in master.viewers.values():
                if not any(r() is s for r in seen):
                    seen.extend((weakref.ref(s), weakref.ref(s.pc)))

        # Warm-up: the first viewer starts the encoder thread and aiortc's lazy parts.
        async with RawViewer(resolver, "warm") as warm:
            await warm.offer()
            await wait_until(lambda: warm.pc.connectionState == "connected")
        await wait_until(lambda: not master.viewers, timeout=3000 * MS)
        baseline = _baseline()

        kinds = itertools.cycle(("watch", "abandon", "watch", "reoffer"))
        clients = [RawViewer(resolver, f"churn-{i}") for i in range(3)]
        for client in clients:
            await client.__aenter__()
        try:
            started = time.monotonic()
            for n in range(20):  # 5 offers per second for 4 s
                await asyncio.sleep(max(0.0, started + n / 5 - time.monotonic()))
                client = clients[n % len(clients)]
                kind = next(kinds)
                if kind != "reoffer":
                    await client.close_pcs()
                await client.offer(abandon=kind == "abandon")
                note_sessions()
            # Each ends as a viewer that connects and leaves: nothing is left pending.
            for client in clients:
                await client.close_pcs()
                await client.offer()
            await wait_until(lambda: len(master.viewers) == len(clients), timeout=10_000 * MS)
            note_sessions()
            await wait_until(
                lambda: all(
                    c.pc is not None and c.pc.connectionState == "connected" for c in clients
                )
            )
            for client in clients:
                await client.close_pcs()
            await wait_until(lambda: not master.viewers, timeout=3000 * MS)
        finally:
            for client in clients:
                await client.__aexit__()
        assert master.stats.offers >= 23 and master.stats.sessions_replaced >= 5
        gc.collect()
        assert len(seen) >= 2 * 20
        assert [r for r in seen if r() is not None] == []
        assert master.encoder.subscribers == 0
        now = await _back_to(baseline, timeout=5000 * MS)
        assert all(now[k] <= baseline[k] for k in baseline), (now, baseline)
        assert now["peer_connections"] == 0


# -- item 9: offers that never connect do not keep viewers out --------------------------------


async def test_a_viewer_joins_within_2_s_while_squatters_hold_every_slot(
    resolver: ChannelResolver, channel: str
) -> None:
    async with master_for(resolver, max_viewers=9) as master:
        squatters = [RawViewer(resolver, f"squatter-{i}") for i in range(9)]
        try:
            for squatter in squatters:
                await squatter.__aenter__()
                await squatter.offer(abandon=True)
            await wait_until(lambda: len(master.viewers) == 9)
            # A squatter renewing its offer holds its own slot, not one more.
            await squatters[3].offer(abandon=True)
            await wait_until(lambda: master.stats.sessions_replaced == 1)
            assert len(master.viewers) == 9
            access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="legit")
            async with Viewer(access) as viewer:
                ttff = await viewer.wait_first_frame(timeout=10_000 * MS)
                assert ttff < 2000 * MS, ttff
                # Connected once its first packet confirms DTLS: from then on, never evicted.
                await wait_until(
                    lambda: master.viewers["legit"].connected_at is not None, 5000 * MS
                )
        finally:
            for squatter in squatters:
                await squatter.__aexit__()
    assert master.stats.sessions_evicted == 1
    assert master.stats.refused_over_limit == 0


async def test_connected_viewers_are_never_evicted(resolver: ChannelResolver, channel: str) -> None:
    async with master_for(resolver, max_viewers=2) as master:
        first = Viewer(AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="first"))
        second = Viewer(AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="second"))
        async with first, RawViewer(resolver, "squatter") as squatter:
            await first.wait_first_frame(timeout=10_000 * MS)
            await squatter.offer(abandon=True)
            await wait_until(lambda: "squatter" in master.viewers)
            async with second:
                await second.wait_first_frame(timeout=10_000 * MS)  # took the squatter's place
                assert set(master.viewers) == {"first", "second"}
                assert master.stats.sessions_evicted == 1
                kept = dict(master.viewers)
                await squatter.offer(abandon=True)  # both connected: refused
                await wait_until(lambda: master.stats.refused_over_limit == 1)
                assert master.viewers == kept
                before = first.stats.frames_received
                await asyncio.sleep(0.5)
                assert first.stats.frames_received > before


# -- item 10: each remote candidate counts once toward the cap --------------------------------


def _remote_candidates(master: Master, client_id: str) -> int:
    session = master.viewers.get(client_id)
    if session is None or not session.pc.getTransceivers():
        return -1
    ice = session.pc.getTransceivers()[0].sender.transport.transport
    return len(ice.getRemoteCandidates())


@pytest.mark.parametrize(("sent", "applied"), [(150, 150), (260, MAX_CANDIDATES_PER_PEER)])
async def test_candidates_that_arrive_before_the_offer_count_once(
    resolver: ChannelResolver, channel: str, sent: int, applied: int
) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        # Unpaced: the emulator enforces no rate here, and KVS's 20 ICE/s would take 13 s.
        viewer = RawViewer(resolver, "early", pace=False)
        async with master_for(resolver) as master, viewer:
            for i in range(sent):
                await viewer.signaling.send_ice_candidate(
                    f"candidate:{i} 1 udp 2122260223 127.0.0.1 {20000 + i} typ host",
                    sdp_mid="0",
                    sdp_mline_index=0,
                )
            # Trickle only: the offer itself carries no candidate and no end-of-candidates.
            await viewer.signaling.send_offer(_strip_candidates(pc.localDescription.sdp))
            await wait_until(lambda: _remote_candidates(master, "early") >= applied)
            await asyncio.sleep(0.3)  # nothing more arrives
            assert _remote_candidates(master, "early") == applied
    finally:
        await pc.close()


def _cand(sender: str | None, n: int) -> IceCandidate:
    return IceCandidate(
        f"candidate:{n} 1 udp 1 10.0.0.1 {n} typ host", "0", 0, sender_client_id=sender
    )


def test_the_buffer_holds_as_many_as_a_session_takes_and_is_bounded_in_total() -> None:
    buffer = CandidateBuffer()
    for n in range(MAX_CANDIDATES_PER_PEER + 10):
        assert buffer.receive(_cand("a", n)) == []
    released = buffer.receive(SdpOffer("v=0\r\n", "a"))[1:]
    assert [c.candidate for c in released] == [
        _cand("a", n).candidate for n in range(MAX_CANDIDATES_PER_PEER)
    ]
    # Together, senders hold at most max_held; the least recently active lose theirs first.
    small = CandidateBuffer(max_held=10, max_per_sender=4)
    for sender in ("s1", "s2", "s3", "s4"):
        for n in range(4):
            small.receive(_cand(sender, n))
    assert small.receive(SdpOffer("v=0\r\n", "s1"))[1:] == []
    assert len(small.receive(SdpOffer("v=0\r\n", "s4"))[1:]) == 4
    assert len(small.receive(SdpOffer("v=0\r\n", "s3"))[1:]) == 4
    small.forget("s2")
    small.clear()
    for n in range(10):
        small.receive(_cand(f"x{n}", 0))  # the total restarts from 0 after clear()
    assert len(small.receive(SdpOffer("v=0\r\n", "x0"))) == 2
