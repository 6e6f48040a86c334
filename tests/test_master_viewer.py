"""Master and viewers end to end: real aiortc peers through the emulator on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import pytest
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import InvalidArgument
from kvs_peer.master import Master
from kvs_peer.media import Recorder, TestPatternTrack, ToneTrack
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer

CHANNEL = "e2e"


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel(CHANNEL)
    return CHANNEL


def viewer_for(resolver: ChannelResolver, client_id: str, **kwargs: Any) -> Viewer:
    return Viewer(AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=client_id), **kwargs)


@pytest.fixture
async def master(resolver: ChannelResolver, channel: str) -> AsyncIterator[Master]:
    async with Master(
        AwsAccess(resolver, channel, Role.MASTER),
        video=TestPatternTrack(320, 240, 30),
        connect_timeout=10,
    ) as m:
        yield m


async def test_viewer_receives_advancing_frames(master: Master, resolver: ChannelResolver) -> None:
    check = VideoCheck()
    async with viewer_for(resolver, "v1", on_frame=check.add) as viewer:
        ttff = await viewer.wait_first_frame(timeout=15_000 * MS)
        await wait_until(lambda: check.frames >= 30)
        # Counted once the viewer's first RTCP proves its DTLS is up too (session.RemoteDtls).
        await master.wait_for_viewers(1, timeout=5000 * MS)
    check.assert_ok(min_frames=30, size=(320, 240), max_gap_s=1.0)
    assert check.counters_advanced >= 25
    assert ttff < 5000 * MS
    assert master.stats.sessions_connected == 1


async def test_three_viewers_share_one_encoder(master: Master, resolver: ChannelResolver) -> None:
    checks = [VideoCheck() for _ in range(3)]
    viewers = [viewer_for(resolver, f"v{i}", on_frame=c.add) for i, c in enumerate(checks)]
    for v in viewers:
        await v.start()
    try:
        await master.wait_for_viewers(3, timeout=15_000 * MS)
        await wait_until(lambda: all(c.frames >= 30 for c in checks), timeout=15_000 * MS)
        encoded = master.encoder.frames_encoded
        await asyncio.sleep(1.0)
        per_second = master.encoder.frames_encoded - encoded
    finally:
        for v in viewers:
            await v.close()
    for c in checks:
        c.assert_ok(min_frames=30)
    # one encoder for everyone: ~30 encoded frames per second, not 3 x 30
    assert 20 <= per_second <= 40


async def test_viewer_that_leaves_frees_its_session(
    master: Master, resolver: ChannelResolver
) -> None:
    async with viewer_for(resolver, "leaver") as viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        assert set(master.viewers) == {"leaver"}
    await wait_until(lambda: "leaver" not in master.viewers, timeout=15_000 * MS)


async def test_same_client_id_reoffer_replaces_session(
    master: Master, resolver: ChannelResolver
) -> None:
    async with viewer_for(resolver, "twin") as first:
        await first.wait_first_frame(timeout=15_000 * MS)
        old = master.viewers["twin"]
        async with viewer_for(resolver, "twin") as second:
            await second.wait_first_frame(timeout=15_000 * MS)
            assert master.viewers["twin"] is not old
            assert master.stats.sessions_replaced == 1
            assert len(master.viewers) == 1


async def test_recording_decodes_with_expected_frames(
    master: Master, resolver: ChannelResolver, tmp_path: Path
) -> None:
    path = tmp_path / "rec.mkv"
    recorder = Recorder(path)
    async with viewer_for(resolver, "rec", recorder=recorder) as viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        await wait_until(lambda: viewer.stats.frames_received >= 45)
    received = viewer.stats.frames_received
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert abs(len(frames) - received) <= 2, (len(frames), received)
    assert (frames[0].width, frames[0].height) == (320, 240)
    check = VideoCheck()
    for frame in frames:
        check.add(frame)
    check.assert_ok(min_frames=40, max_gap_s=None)


async def test_data_channel_round_trip(resolver: ChannelResolver, channel: str) -> None:
    from_viewers: list[tuple[str, Any]] = []
    from_master: list[Any] = []
    async with Master(
        AwsAccess(resolver, channel, Role.MASTER),
        video=TestPatternTrack(320, 240, 15),
        on_message=lambda cid, msg: from_viewers.append((cid, msg)),
    ) as master:
        async with viewer_for(
            resolver, "chat", data_channel=True, on_message=from_master.append
        ) as viewer:
            await viewer.wait_connected(timeout=15_000 * MS)
            await wait_until(lambda: viewer.channel.readyState == "open")
            await viewer.send("ping")
            await wait_until(lambda: from_viewers == [("chat", "ping")])
            assert await master.send("pong", client_id="chat") == 1
            await wait_until(lambda: from_master == ["pong"])
            assert await master.send(b"\x00\x01") == 1
            await wait_until(lambda: from_master == ["pong", b"\x00\x01"])


async def test_audio_arrives(resolver: ChannelResolver, channel: str) -> None:
    async with (
        Master(
            AwsAccess(resolver, channel, Role.MASTER),
            video=TestPatternTrack(320, 240, 15),
            audio=ToneTrack(),
        ),
        viewer_for(resolver, "ears", audio=True) as viewer,
    ):
        await viewer.wait_first_frame(timeout=15_000 * MS)
        await wait_until(lambda: viewer.stats.audio_frames_received >= 25)


async def test_audio_only_viewer_and_data_only_viewer(
    master: Master, resolver: ChannelResolver
) -> None:
    async with viewer_for(resolver, "data", video=False, data_channel=True) as viewer:
        await viewer.wait_connected(timeout=15_000 * MS)
    with pytest.raises(InvalidArgument):
        viewer_for(resolver, "none", video=False)


async def test_streams_survive_signaling_go_away(
    kvs: LocalKvs, master: Master, resolver: ChannelResolver
) -> None:
    check = VideoCheck()
    async with viewer_for(resolver, "steady", on_frame=check.add) as viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        await kvs.send_go_away(CHANNEL, master=True)
        await kvs.send_go_away(CHANNEL, client_id="steady")
        await wait_until(lambda: master.signaling.stats.reconnects >= 1)
        await wait_until(lambda: viewer.signaling.stats.reconnects >= 1)
        before = check.frames
        await asyncio.sleep(1.0)
        assert check.frames - before >= 20  # media kept flowing
        assert viewer.stats.offers_sent == 1  # no renegotiation needed
    check.assert_ok(max_gap_s=1.0)


async def test_max_viewers_refuses_extra_offers(resolver: ChannelResolver, channel: str) -> None:
    async with Master(
        AwsAccess(resolver, channel, Role.MASTER),
        video=TestPatternTrack(320, 240, 15),
        max_viewers=1,
    ) as master:
        async with viewer_for(resolver, "first") as first:
            await first.wait_first_frame(timeout=15_000 * MS)
            async with viewer_for(resolver, "second", connect_timeout=60):
                await wait_until(lambda: master.stats.refused_over_limit >= 1)
                assert set(master.viewers) == {"first"}


def test_roles_are_checked(resolver: ChannelResolver) -> None:
    with pytest.raises(InvalidArgument):
        Master(AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="x"))
    with pytest.raises(InvalidArgument):
        Viewer(AwsAccess(resolver, CHANNEL, Role.MASTER))


async def test_viewer_offers_again_when_the_master_restarts(
    resolver: ChannelResolver, channel: str
) -> None:
    check = VideoCheck()

    def new_master() -> Master:
        return Master(AwsAccess(resolver, channel, Role.MASTER), video=TestPatternTrack(320, 240))

    async with viewer_for(resolver, "loyal", on_frame=check.add) as viewer:
        async with new_master():
            await viewer.wait_first_frame(timeout=15_000 * MS)
        # the old master closed every session; a new one comes up
        async with new_master() as second:
            await second.wait_for_viewers(1, timeout=20_000 * MS)
            before = check.frames
            await wait_until(lambda: check.frames >= before + 15, timeout=10_000 * MS)
        assert viewer.stats.offers_sent >= 2
        assert viewer.stats.peer_reconnects >= 1


async def test_link_stats_count_bytes_and_rtt(master: Master, resolver: ChannelResolver) -> None:
    from kvs_peer.peerconnection import link_stats

    async with viewer_for(resolver, "stats") as viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        assert viewer.pc is not None
        session = master.viewers["stats"]
        # RTT needs a receiver report back from the viewer: aiortc sends them every ~1 s
        async with asyncio.timeout(10_000 * MS):
            while (sent := await link_stats(session.pc)).round_trip_time is None:
                await asyncio.sleep(0.2)
        received = await link_stats(viewer.pc)
    assert received.bytes_received > 10_000
    assert sent.bytes_sent > 10_000
    assert sent.round_trip_time < 1000 * MS


async def test_mdns_candidates_inside_a_non_trickle_offer_do_not_delay_the_answer(
    master: Master, resolver: ChannelResolver
) -> None:
    import time

    from aiortc import RTCConfiguration, RTCPeerConnection

    from kvs_peer.protocol import SdpAnswer
    from kvs_peer.signaling import SignalingClient

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    # what Chromium sends without trickle: its host candidates as mDNS names in the SDP
    fake = "".join(
        f"a=candidate:9{i} 1 udp 2122260223 {i}f00-ba4.local 6000{i} typ host\r\n" for i in range(3)
    )
    offer = pc.localDescription.sdp.replace("a=end-of-candidates", fake + "a=end-of-candidates")
    assert offer.count(".local") == 3
    access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="non-trickle")
    try:
        async with SignalingClient(access, role=Role.VIEWER, client_id="non-trickle") as sc:
            started = time.monotonic()
            await sc.send_offer(offer)
            async with asyncio.timeout(10_000 * MS):
                async for event in sc:
                    if isinstance(event, SdpAnswer):
                        break
            assert time.monotonic() - started < 800 * MS
    finally:
        await pc.close()


async def test_a_bad_viewer_does_not_hurt_the_others(
    master: Master, resolver: ChannelResolver
) -> None:
    from kvs_peer.signaling import SignalingClient

    check = VideoCheck()
    async with viewer_for(resolver, "good", on_frame=check.add) as good:
        await good.wait_first_frame(timeout=15_000 * MS)
        bad_access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="bad")
        async with SignalingClient(bad_access, role=Role.VIEWER, client_id="bad") as bad:
            await bad.send_offer("v=0\r\nthis is not an SDP\r\n")
            await bad.send_ice_candidate("candidate:garbage", sdp_mid="0", sdp_mline_index=0)
            await wait_until(lambda: master.stats.sessions_failed >= 1)
        before = check.frames
        await asyncio.sleep(1.0)
        assert check.frames - before >= 20
        assert set(master.viewers) == {"good"}
    check.assert_ok(max_gap_s=1.0)


async def test_master_survives_a_failing_control_plane_call(
    kvs: LocalKvs,
    master: Master,
    resolver_factory: Callable[..., ChannelResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with resolver_factory() as own:  # the viewer's cache stays warm
        await own.resolve(CHANNEL, Role.VIEWER, client_id="unlucky")
        # TURN rotation makes the master fetch ICE again on the next offer: that call fails
        await kvs.send_reconnect_ice_server(CHANNEL, master=True)
        kvs.fail_next_api_calls("GetIceServerConfig", count=1)
        viewer = Viewer(
            AwsAccess(own, CHANNEL, Role.VIEWER, client_id="unlucky"), connect_timeout=2
        )
        async with viewer:
            # The master answers at once with host candidates (STUN/TURN ones are gathered
            # after the answer, kvs_peer.gathering), so the failure costs no offer.
            await viewer.wait_first_frame(timeout=20_000 * MS)
        assert viewer.stats.offers_sent == 1
    assert "no STUN/TURN candidates (GetIceServerConfig" in caplog.text
    assert not master._runner.done()


async def test_viewer_reports_when_signaling_gives_up(
    kvs: LocalKvs, master: Master, resolver: ChannelResolver
) -> None:
    from kvs_peer.errors import HandshakeRejected

    async with viewer_for(resolver, "doomed", signaling={"backoff_base": 0.01}) as viewer:
        await viewer.wait_first_frame(timeout=15_000 * MS)
        kvs.fail_next_connects(CHANNEL, 403, count=10)
        await kvs.send_go_away(CHANNEL, client_id="doomed")
        with pytest.raises(HandshakeRejected) as info:
            await asyncio.wait_for(viewer.wait_closed(), 20_000 * MS)
        assert info.value.status == 403


async def test_frames_iterator_ends_after_close_even_when_full(
    master: Master, resolver: ChannelResolver
) -> None:
    viewer = viewer_for(resolver, "slow-reader", frame_queue=2)
    await viewer.start()
    frames = viewer.frames()
    first = await asyncio.wait_for(
        anext(frames), 15_000 * MS
    )  # registers the queue, then stop reading
    assert first is not None
    await asyncio.sleep(0.3)  # the queue fills up
    await viewer.close()
    rest = [f async for f in frames]
    assert len(rest) <= 2
