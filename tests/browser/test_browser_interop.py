"""Interop with the official KVS JS SDK (``SignalingClient``) in real headless Chromium.

kvs-peer's master and viewer on one side, a browser page built on the SDK on the other, both
through the local emulator's ``wss://`` signaling. What a browser user would see is checked in
the browser (frames presented, stamped counters advancing, data-channel messages), and what
kvs-peer records is decoded with PyAV.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import av
import pytest
from browser_page import BROWSER_VIEWER, CHANNEL, BrowserPeer, assert_stamped_frames, page_options
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import Recorder, TestPatternTrack, ToneTrack
from kvs_peer.media.stamp import read_stamp
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id

try:
    from playwright.async_api import Error as PlaywrightError
except ImportError:  # the open_page fixture skips (or fails, in CI) with the reason
    PlaywrightError = Exception

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _is_mdns(candidate: str) -> bool:
    # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    parts = candidate.split()
    return len(parts) > 4 and parts[4].endswith(".local")


def _print(record_property: Callable[[str, object], None], text: str) -> None:
    # Measurements are listed at the end of the run (tests/conftest.py), not in the
    # progress line.
    record_property("measurement", text)


def _event_times(state: dict[str, Any]) -> dict[str, int]:
    """First time (ms since start) of each page event."""
    times: dict[str, int] = {}
    for ms, name, _ in state["events"]:
        times.setdefault(name, ms)
    return times


async def _stream_to_browser(
    kvs: LocalKvs,
    resolver: ChannelResolver,
    peer: BrowserPeer,
    *,
    size: tuple[int, int] = (640, 480),
    fps: int = 30,
    grab_every_ms: int = 200,
    **viewer_options: Any,
) -> tuple[dict[str, Any], list[tuple[Any, dict[str, Any], tuple[int, ...]]]]:
    """kvs-peer master -> browser viewer; returns the page state and three grabbed frames."""
    access = AwsAccess(resolver, CHANNEL, Role.MASTER)
    async with Master(
        access, video=TestPatternTrack(*size, fps), signaling={"ssl": kvs.ssl_context()}
    ):
        options = await page_options(kvs, resolver, CHANNEL, Role.VIEWER, client_id=BROWSER_VIEWER)
        await peer.start_viewer({**options, **viewer_options})
        await peer.wait_for("s.firstFrameMs !== null", 10_000 * MS)
        state = await peer.state()
        grabs = []
        for _ in range(3):
            image, counts = await peer.grab_frame()
            grabs.append((read_stamp(image), counts, image.shape))
            await asyncio.sleep(grab_every_ms * MS)
        await peer.close()
    return state, grabs


@pytest.mark.parametrize(
    ("hide_ips", "trickle"),
    [(True, True), (False, True), (False, False)],
    ids=["trickle-mdns-candidates", "trickle-raw-ip-candidates", "non-trickle-raw-ip-candidates"],
)
async def test_kvs_master_to_browser_viewer(
    hide_ips, trickle, kvs, resolver, open_page, record_property
):
    peer = await open_page(hide_host_ips=hide_ips)
    state, grabs = await _stream_to_browser(kvs, resolver, peer, trickle=trickle)

    stamps = [g[0] for g in grabs]
    assert all(s is not None for s in stamps), f"unreadable stamp in a browser frame: {stamps}"
    counters = [s.counter for s in stamps]
    assert counters == sorted(set(counters)), f"stamped counters did not advance: {counters}"
    presented = [g[1]["presentedFrames"] for g in grabs]
    decoded = [g[1]["totalVideoFrames"] for g in grabs]
    assert presented[0] < presented[-1] and decoded[0] < decoded[-1], (presented, decoded)
    assert all(g[2] == (480, 640, 3) for g in grabs)
    assert not state["errors"], state["errors"]

    host = [c for c in state["localCandidates"] if " typ host" in c]
    assert host, f"the browser gathered no host candidates: {state['localCandidates']}"
    mdns = [c for c in host if _is_mdns(c)]
    # The point of the parametrization: the browser really sent what the test is named after.
    assert len(mdns) == (len(host) if hide_ips else 0), host

    times = _event_times(state)
    _print(
        record_property,
        f"browser viewer, {'trickle' if trickle else 'non-trickle'}, "
        f"{'mDNS host candidates' if hide_ips else 'raw host IPs'}: "
        f"TTFF {state['firstFrameMs']} ms (offer sent at {times['sdp-offer-sent']} ms, "
        f"answer at {times['sdp-answer']} ms, connected at {times['connection-connected']} ms)",
    )


async def test_full_hd_plays_in_the_browser(kvs, resolver, open_page, record_property):
    # Above 1280x720 the encoder needs H.264 level 4.0, while the answer keeps the level the
    # browser offered (3.1, profile-level-id 42e01f): Chromium must decode it anyway.
    peer = await open_page()
    # Grabs 0.6 s apart: at 10 fps, 1080p encode and decode on 2 cores may stall a moment.
    state, grabs = await _stream_to_browser(
        kvs, resolver, peer, size=(1920, 1080), fps=10, grab_every_ms=600
    )
    assert_stamped_frames(grabs, state, (1080, 1920, 3))
    levels = [detail for _, name, detail in state["events"] if name == "sdp-answer"]
    assert levels and levels[0].lower().endswith("1f"), levels  # the answer says level 3.1
    _print(
        record_property, f"browser viewer, 1920x1080 at level 4.0: TTFF {state['firstFrameMs']} ms"
    )


async def test_browser_hears_the_shared_opus_audio(kvs, resolver, open_page, record_property):
    # Several browsers, so the Opus packets they decode are the fan-out's shared encoding.
    peers = [await open_page() for _ in range(2)]
    access = AwsAccess(resolver, CHANNEL, Role.MASTER)
    async with Master(
        access,
        video=TestPatternTrack(320, 240, 15),
        audio=ToneTrack(440),
        signaling={"ssl": kvs.ssl_context()},
    ) as master:
        for index, peer in enumerate(peers):
            options = await page_options(
                kvs, resolver, CHANNEL, Role.VIEWER, client_id=f"{BROWSER_VIEWER}-{index}"
            )
            await peer.start_viewer({**options, "audio": True})
        for peer in peers:
            await peer.wait_for("s.firstFrameMs !== null", 10_000 * MS)
        await asyncio.sleep(1500 * MS)
        stats = [await peer.audio_stats() for peer in peers]
        await asyncio.sleep(500 * MS)
        later = [await peer.audio_stats() for peer in peers]
        fanout = master.audio_fanout
        assert fanout is not None
        own_encoders = [
            transceiver.sender._RTCRtpSender__encoder
            for session in master.viewers.values()
            for transceiver in session.pc.getTransceivers()
            if transceiver.kind == "audio"
        ]
        for peer in peers:
            await peer.close()
    for before, after in zip(stats, later, strict=True):
        assert before is not None and after is not None
        assert after["mimeType"] == "audio/opus"
        assert after["packetsReceived"] > before["packetsReceived"] > 25
        assert after["totalSamplesReceived"] > before["totalSamplesReceived"]
        # A 0.2 full-scale tone: Chromium's level of what it decoded, not silence (0).
        assert 0.05 < after["audioLevel"] < 0.5, after
        # And the level kvs-peer wrote in the header: -17 dBov, 10 ** (-17 / 20) = 0.141.
        assert after["headerLevel"] is not None and 0.13 < after["headerLevel"] < 0.16, after
    # Both browsers got the fan-out's one Opus encoding: no sender made an encoder of its own.
    assert own_encoders == [None, None]
    assert fanout.frames_encoded > 50
    heard = ", ".join(
        f"{a['packetsReceived']} packets ({a['packetsLost']} lost) at level {a['audioLevel']:.2f}"
        for a in later
    )
    _print(
        record_property,
        f"browser audio ({len(later)} browsers): {heard}; fan-out encoded "
        f"{fanout.frames_encoded} frames",
    )


async def test_early_mdns_candidates_do_not_delay_the_answer(
    kvs, resolver, open_page, record_property
):
    # A viewer whose candidates all arrive right behind its offer (gathering was done before
    # it offered) reaches the master while it is still applying the offer. aioice resolves each
    # "<uuid>.local" name inside addIceCandidate with a 1 s timeout; applied in line before the
    # answer, two such candidates delayed it by 2.0 s (measured before RemoteCandidates).
    peer = await open_page(hide_host_ips=True)
    state, grabs = await _stream_to_browser(kvs, resolver, peer, holdCandidates=True)
    assert all(g[0] is not None for g in grabs), "video did not flow"
    mdns = [c for c in state["localCandidates"] if _is_mdns(c)]
    assert mdns, f"expected mDNS candidates: {state['localCandidates']}"
    times = _event_times(state)
    answer_ms = times["sdp-answer"] - times["sdp-offer-sent"]
    _print(
        record_property,
        f"browser viewer, {len(mdns)} mDNS candidates right behind the offer: answer after "
        f"{answer_ms} ms, TTFF {state['firstFrameMs']} ms",
    )
    assert answer_ms / 1000 < 500 * MS, f"answer {answer_ms} ms after the offer: {state['events']}"


async def test_browser_master_to_recording_kvs_viewer(
    kvs, resolver, open_page, tmp_path, record_property
):
    peer = await open_page()
    await peer.start_master(await page_options(kvs, resolver, CHANNEL, Role.MASTER))
    camera = (await peer.state())["camera"]
    assert (camera["width"], camera["height"]) == (640, 480), camera

    path = tmp_path / "browser-camera.mkv"
    received: list[str | bytes] = []
    access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=new_client_id("kvs-viewer"))
    async with Viewer(
        access,
        recorder=Recorder(path, fps=camera["frameRate"]),
        data_channel=True,
        on_message=received.append,
        signaling={"ssl": kvs.ssl_context()},
    ) as viewer:
        ttff = await viewer.wait_first_frame(timeout=10_000 * MS)
        # Data channel, kvs-peer viewer -> browser master -> back.
        await wait_until(
            lambda: viewer.channel is not None and viewer.channel.readyState == "open",
            5_000 * MS,
            "the viewer's data channel to open",
        )
        await viewer.send("ping from kvs-peer")
        await peer.wait_for("s.messages.includes('ping from kvs-peer')", 5_000 * MS)
        assert await peer.send("pong from the browser") == 1
        await wait_until(lambda: received, 5_000 * MS, "the browser's reply")
        await wait_until(
            lambda: viewer.stats.frames_received >= 20, 5_000 * MS, "20 frames from the browser"
        )
        stats = viewer.stats
        state = await peer.state()
        await peer.close()

    assert received == ["pong from the browser"]
    assert (stats.width, stats.height) == (640, 480)
    assert not state["errors"], state["errors"]
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    # Chromium's fake camera has no stamp; the recording must hold what the viewer received.
    assert len(frames) >= 0.9 * stats.frames_received, (len(frames), stats.frames_received)
    assert {(f.width, f.height) for f in frames} == {(640, 480)}
    _print(record_property, f"kvs-peer viewer TTFF from the browser master: {ttff * 1000:.0f} ms")


async def test_data_channel_browser_viewer_with_kvs_master(kvs, resolver, open_page):
    peer = await open_page()
    received: list[tuple[str, str | bytes]] = []
    access = AwsAccess(resolver, CHANNEL, Role.MASTER)
    async with Master(
        access,
        video=TestPatternTrack(320, 240, 15),
        on_message=lambda client_id, message: received.append((client_id, message)),
        signaling={"ssl": kvs.ssl_context()},
    ) as master:
        options = await page_options(
            kvs, resolver, CHANNEL, Role.VIEWER, client_id=BROWSER_VIEWER, data_channel=True
        )
        await peer.start_viewer(options)
        await peer.wait_for("s.openChannels === 1", 10_000 * MS)
        assert await peer.send("hello from the browser") == 1
        await wait_until(lambda: received, 5_000 * MS, "the browser's message at the master")
        assert await master.send("hello from kvs-peer") == 1
        await peer.wait_for("s.messages.length > 0", 5_000 * MS)
        state = await peer.state()
        await peer.close()

    assert received == [(BROWSER_VIEWER, "hello from the browser")]
    assert state["messages"] == ["hello from kvs-peer"]
    assert not state["errors"], state["errors"]


async def test_sdk_reports_a_tampered_signed_url(kvs, resolver, open_page, caplog):
    caplog.set_level(logging.INFO, logger="kvs_peer.emulator")
    peer = await open_page()
    options = await page_options(kvs, resolver, CHANNEL, Role.VIEWER, client_id=BROWSER_VIEWER)
    # Another client id than the one signed: the signature no longer matches the query.
    options["signedUrl"] = options["signedUrl"].replace(
        f"X-Amz-ClientId={BROWSER_VIEWER}", "X-Amz-ClientId=someone-else"
    )
    assert "someone-else" in options["signedUrl"]
    options["clientId"] = "someone-else"
    with pytest.raises(PlaywrightError, match="signaling error"):
        await peer.start_viewer(options)
    await peer.wait_for("s.events.some((e) => e[1] === 'signaling-close')", 5_000 * MS)
    refusals = [
        r.getMessage() for r in caplog.records if "refused viewer connect" in r.getMessage()
    ]
    assert len(refusals) == 1 and "signature" in refusals[0].lower(), refusals
