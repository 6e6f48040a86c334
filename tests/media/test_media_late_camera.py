"""A master started before its camera waits for it; a source that is wrong fails at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from rtsp_server import RtspServer
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import MediaError, SourceUnavailable
from kvs_peer.master import Master
from kvs_peer.media import ReopeningVideoTrack, open_video_source
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer


async def _free_port_url() -> tuple[int, str]:
    async with RtspServer() as camera:
        return camera.port, camera.url  # nothing listens there once the block ends


async def test_a_master_started_before_its_camera_streams_once_the_camera_is_up(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("late")
    port, url = await _free_port_url()
    started = time.monotonic()
    video = await asyncio.to_thread(open_video_source, url, timeout=3000 * MS, reopen=True)
    assert time.monotonic() - started < 2000 * MS
    assert isinstance(video, ReopeningVideoTrack)
    assert video.waiting and video.reopening
    check = VideoCheck()
    master = Master(AwsAccess(resolver, "late", Role.MASTER), video=video, connect_timeout=20)
    viewer = Viewer(
        AwsAccess(resolver, "late", Role.VIEWER, client_id="early-bird"), on_frame=check.add
    )
    async with master, viewer:
        # Signaling is up and the viewer joins while there is no camera yet.
        assert master.signaling.connected
        await viewer.wait_connected(timeout=15_000 * MS)
        assert set(master.viewers) == {"early-bird"}
        await asyncio.sleep(1.5)  # the encoder asks for frames: attempts fail and back off
        assert video.waiting and video.failed_attempts >= 1
        assert check.frames == 0 and master.end_reason is None
        async with RtspServer(320, 240, fps=15, port=port):
            await viewer.wait_first_frame(timeout=20_000 * MS)
            await wait_until(lambda: check.frames >= 15, timeout=10_000 * MS)
        assert not video.waiting
        assert (video.width, video.height) == (320, 240)
    check.assert_ok(min_frames=15, size=(320, 240), max_gap_s=None)
    assert video.opens == 1
    assert viewer.stats.offers_sent == 1  # the first session got the video


async def test_without_reopen_an_unreachable_camera_is_an_error_at_once() -> None:
    _, url = await _free_port_url()
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"rtsp://127\.0\.0\.1.*camera or server is up"):
        await asyncio.to_thread(open_video_source, url, timeout=3000 * MS)
    assert time.monotonic() - started < 2000 * MS


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rtspp://127.0.0.1:1/live", r"Protocol not found; check the scheme"),
        ("{tmp}/no-such-camera.mp4", r"not found: check the path"),
        ("{tmp}", r"is a directory"),
    ],
)
async def test_a_wrong_source_fails_at_once_even_with_reopen(
    tmp_path: Path, spec: str, message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(MediaError, match=message) as info:
        await asyncio.to_thread(open_video_source, spec.format(tmp=tmp_path), reopen=True)
    assert not isinstance(info.value, SourceUnavailable)
    assert time.monotonic() - started < 2000 * MS
