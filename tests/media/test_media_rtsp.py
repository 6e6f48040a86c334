"""RTSP sources against a small RTSP server on loopback, and live sources that reopen."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from media_files import mpegts_bytes
from rtsp_server import RtspServer
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.commands import _master_status, _Meter
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import MediaError
from kvs_peer.master import Master
from kvs_peer.media import ReopeningVideoTrack, TestPatternTrack, open_video_source, read_stamp
from kvs_peer.protocol import Role
from kvs_peer.reconnect import backoff
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer


async def test_rtsp_source_decodes_the_camera_stream() -> None:
    async with RtspServer(320, 240, fps=15) as camera:
        track = await asyncio.to_thread(open_video_source, camera.url, timeout=5)
        counters = []
        try:
            while len(counters) < 20:
                frame = await asyncio.wait_for(track.recv(), 5000 * MS)
                assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
                stamp = read_stamp(frame)
                assert stamp is not None
                counters.append(stamp.counter)
        finally:
            track.stop()
    # A live source keeps the newest frames: it may skip some but never goes backwards.
    assert counters == sorted(counters) and counters[-1] - counters[0] >= 15
    methods = [request.split()[0] for request in camera.requests]
    assert methods[:4] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]


async def test_rtsp_source_ends_when_the_camera_goes_away() -> None:
    async with RtspServer(320, 240, fps=15) as camera:
        track = await asyncio.to_thread(open_video_source, camera.url, timeout=5)
        try:
            await asyncio.wait_for(track.recv(), 5000 * MS)
            await camera.stop()
            with pytest.raises(MediaStreamError):
                async with asyncio.timeout(10_000 * MS):
                    while True:
                        await track.recv()
        finally:
            track.stop()


async def test_rtsp_url_with_nothing_listening_is_a_clear_error() -> None:
    async with RtspServer() as camera:
        url = camera.url
    # The server is gone: its port refuses connections.
    with pytest.raises(MediaError, match=r"rtsp://127\.0\.0\.1"):
        await asyncio.to_thread(open_video_source, url, timeout=3)


@pytest.mark.slow
async def test_master_streams_an_rtsp_camera_through_a_camera_restart(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("rtsp")
    check = VideoCheck()
    camera = RtspServer(320, 240, fps=15)
    async with camera:
        video = await asyncio.to_thread(open_video_source, camera.url, timeout=5, reopen=True)
        master = Master(AwsAccess(resolver, "rtsp", Role.MASTER), video=video, connect_timeout=10)
        async with (
            master,
            Viewer(
                AwsAccess(resolver, "rtsp", Role.VIEWER, client_id="rtsp-viewer"),
                on_frame=check.add,
            ) as viewer,
        ):
            await viewer.wait_first_frame(timeout=15_000 * MS)
            await wait_until(lambda: check.frames >= 20)
            # Two H.264 encodes (camera, then master) and the stamps still read back in order.
            check.assert_ok(min_frames=20, size=(320, 240), max_gap_s=1.0)
            assert check.counters_advanced >= 15

            meter = _Meter()
            await camera.stop()  # the camera reboots...
            await wait_until(lambda: video.reopening)
            assert "| source reopening |" in await _master_status(master, meter)
            await asyncio.sleep(1.0)
            before = check.frames
            async with RtspServer(320, 240, fps=15, port=camera.port):  # ...and is back
                await wait_until(lambda: check.frames >= before + 20, timeout=20_000 * MS)
                await _master_status(master, meter)
                await asyncio.sleep(0.5)
                status = await _master_status(master, meter)
    # Frames are encoded for the viewer again (about 15 fps from this camera).
    assert re.search(r"\| viewers 1/1 \| [1-9]\d* fps \|", status), status
    assert video.opens == 1
    # The same viewer session saw the new stream: no new offer was needed.
    assert viewer.stats.offers_sent == 1


@pytest.mark.slow
async def test_reopening_source_comes_back_after_a_camera_restart() -> None:
    camera = RtspServer(320, 240, fps=15)
    async with camera:
        track = await asyncio.to_thread(open_video_source, camera.url, timeout=3, reopen=True)
        assert isinstance(track, ReopeningVideoTrack)
        pts = []
        try:
            for _ in range(5):
                pts.append((await asyncio.wait_for(track.recv(), 5000 * MS)).pts)
            await camera.stop()
            # The old stream drains, then the track retries while nothing listens.
            await asyncio.sleep(1.0)
            async with RtspServer(320, 240, fps=15, port=camera.port) as again:
                counters = []
                async with asyncio.timeout(20_000 * MS):
                    while len(counters) < 5:
                        frame = await track.recv()
                        pts.append(frame.pts)
                        stamp = read_stamp(frame)
                        if again.frames_sent and stamp is not None:
                            counters.append(stamp.counter)
        finally:
            track.stop()
    assert track.opens == 1
    assert pts == sorted(set(pts))  # one clock across both connections: never backwards
    assert counters == sorted(counters)


async def test_stopping_a_reopening_source_ends_its_wait() -> None:
    async with RtspServer() as camera:
        track = await asyncio.to_thread(open_video_source, camera.url, timeout=3, reopen=True)
        await asyncio.wait_for(track.recv(), 5000 * MS)
    # Nothing listens any more: the track keeps trying until it is stopped.
    reader = asyncio.ensure_future(_drain(track))
    await asyncio.sleep(1.5)
    assert not reader.done()
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(reader, 5000 * MS)
    assert track.failed_attempts >= 1


async def _drain(track: MediaStreamTrack) -> None:
    while True:
        await track.recv()


async def test_files_and_the_test_pattern_are_not_reopened(tmp_path: Path) -> None:
    assert not isinstance(open_video_source("testsrc", reopen=True), ReopeningVideoTrack)
    path = tmp_path / "clip.ts"
    path.write_bytes(mpegts_bytes(3))
    track = open_video_source(str(path), reopen=True)
    try:
        assert not isinstance(track, ReopeningVideoTrack)
    finally:
        track.stop()


class SlowCamera:
    """An opener that blocks until released, as a camera slow to answer does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.opened: list[TestPatternTrack] = []

    def __call__(self) -> MediaStreamTrack:
        self.release.wait(5)
        self.opened.append(TestPatternTrack(64, 60, 30))
        return self.opened[-1]


async def test_a_source_opened_after_its_reader_left_is_kept_for_the_next_read() -> None:
    camera = SlowCamera()
    release, opened = camera.release, camera.opened
    track = ReopeningVideoTrack(camera, description="slow camera")
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.8)  # past the first backoff delay: the opener is running
    reader.cancel()  # as the shared encoder does when the last viewer leaves
    with pytest.raises(asyncio.CancelledError):
        await reader
    release.set()
    async with asyncio.timeout(5000 * MS):
        while track.opens == 0:
            await asyncio.sleep(0.02)
    try:
        frame = await asyncio.wait_for(track.recv(), 5000 * MS)
        assert (frame.width, frame.height) == (64, 60)
        assert len(opened) == 1  # adopted, not opened a second time
    finally:
        track.stop()
    assert opened[0].readyState == "ended"


async def test_a_reader_arriving_during_an_open_waits_for_it_instead_of_opening_again() -> None:
    camera = SlowCamera()
    release, opened = camera.release, camera.opened
    track = ReopeningVideoTrack(camera, description="slow camera")
    first = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.8)  # the opener is running
    first.cancel()  # the last viewer left...
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(track.recv())  # ...and a new one came before the open ended
    await asyncio.sleep(0.2)
    release.set()
    try:
        frame = await asyncio.wait_for(second, 5000 * MS)
        assert (frame.width, frame.height) == (64, 60)
    finally:
        track.stop()
    assert len(opened) == 1 and track.opens == 1
    assert opened[0].readyState == "ended"


class _DiesAtOnce(MediaStreamTrack):
    """A camera that accepts the session, then drops it before the first frame."""

    kind = "video"

    async def recv(self) -> None:
        raise MediaStreamError


@pytest.mark.slow
async def test_a_source_that_keeps_dying_backs_off_more_and_more() -> None:
    track = ReopeningVideoTrack(_DiesAtOnce, description="flaky camera", rng=random.Random(5))
    reader = asyncio.ensure_future(_drain(track))
    await asyncio.sleep(3.0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(reader, 5000 * MS)
    # The same seeded delays: how many attempts fit in 3 s if every one waits longer.
    delays = backoff(base=0.5, cap=10.0, rng=random.Random(5))
    elapsed, expected = 0.0, 0
    while (elapsed := elapsed + next(delays)) < 3.0:
        expected += 1
    assert 1 <= track.opens <= expected
    assert expected <= 6  # a fresh backoff per attempt would allow about 12 (mean 0.25 s)
