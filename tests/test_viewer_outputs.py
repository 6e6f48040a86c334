"""A library Viewer's recording: checked before connecting, failures stop the viewer and reach
the caller (issue 10, item 11), and why video is missing (item 13)."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import MediaError
from kvs_peer.master import Master
from kvs_peer.media import Recorder, TestPatternTrack
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, ViewerStats, new_client_id

WAIT = 20_000 * MS


def viewer_access(resolver: ChannelResolver, channel: str) -> AwsAccess:
    return AwsAccess(resolver, channel, Role.VIEWER, client_id=new_client_id())


async def test_a_bad_recording_path_fails_before_connecting(
    kvs: LocalKvs, resolver: ChannelResolver, tmp_path: Path
) -> None:
    kvs.create_channel("cam")
    viewer = Viewer(
        viewer_access(resolver, "cam"), recorder=Recorder(tmp_path / "missing" / "cam.mkv")
    )
    with pytest.raises(MediaError, match=r"folder .*missing does not exist"):
        await viewer.start()
    assert resolver.calls == {}  # not even the control plane was asked
    await viewer.close()


class Sink:
    """A user's recorder whose disk gives out after a few frames."""

    def __init__(self, frames_before_failure: int) -> None:
        self.left = frames_before_failure
        self.closed = False

    def write_video(self, frame: Any) -> None:
        self.left -= 1
        if self.left < 0:
            raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.closed = True


async def test_a_failing_sink_stops_the_viewer_and_close_raises(
    kvs: LocalKvs, resolver: ChannelResolver, caplog: pytest.LogCaptureFixture
) -> None:
    kvs.create_channel("cam")
    sink = Sink(frames_before_failure=10)
    seen = 0
    master = Master(AwsAccess(resolver, "cam", Role.MASTER), video=TestPatternTrack(320, 240))
    async with master:
        viewer = Viewer(viewer_access(resolver, "cam"), recorder=sink, loopback_candidates=True)
        with pytest.raises(MediaError, match="No space left on device"):
            async with viewer:
                async with asyncio.timeout(WAIT):
                    async for _ in viewer.frames():  # ends when the recording fails
                        seen += 1
    assert seen == 10 and sink.closed
    assert viewer.end_reason is not None and "No space left" in viewer.end_reason
    assert isinstance(viewer.error, MediaError)
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_recorder_failing_mid_run_ends_wait_closed(
    kvs: LocalKvs, resolver: ChannelResolver, tmp_path: Path
) -> None:
    kvs.create_channel("cam")
    target = tmp_path / "cam.mkv"
    recorder = Recorder(target)
    viewer = Viewer(viewer_access(resolver, "cam"), recorder=recorder, loopback_candidates=True)
    async with viewer:
        # The path was fine at start; then a folder takes its place before the first frame,
        # so the real writer fails opening the file.
        target.mkdir()
        master = Master(AwsAccess(resolver, "cam", Role.MASTER), video=TestPatternTrack(320, 240))
        async with master:
            with pytest.raises(MediaError, match=r"recording to .*cam\.mkv failed"):
                await asyncio.wait_for(viewer.wait_closed(), WAIT)
        frames_at_stop = viewer.stats.frames_received
    # Raised once: by wait_closed(), not again when the viewer closed.
    assert recorder.error is not None
    assert frames_at_stop >= 1


def test_video_problem_names_what_went_missing() -> None:
    stats = ViewerStats(started_at=100.0)
    assert stats.video_problem(101.0) == (
        "no video: no offer was sent (signaling did not connect in time)"
    )
    stats.offer_error = "signer unreachable"
    assert "signer unreachable" in (stats.video_problem(101.0) or "")
    stats.offers_sent, stats.first_offer_at = 2, 100.5
    assert "no answer from a master within 10 s (2 offers sent)" in (
        stats.video_problem(110.5) or ""
    )
    stats.answers_received = 1
    assert "no connection came up" in (stats.video_problem(110.5) or "")
    stats.connected_at = 101.0
    assert "the master sent no video" in (stats.video_problem(110.5) or "")
    stats.first_frame_at, stats.last_frame_at, stats.frames_received = 101.0, 104.0, 91
    assert stats.video_problem(105.0) is None  # 1 s without a frame: still flowing
    assert stats.video_problem(110.0) == (
        "video stopped 4.0 s into the run, 6.0 s before its end (the master stopped sending video)"
    )
    stats.lost_at, stats.lost_state = 104.2, "closed"
    assert "the peer connection closed: the master left" in (stats.video_problem(110.0) or "")
    # A 0.25 fps source is not stalled after 3 s, only after three frame intervals.
    slow = ViewerStats(started_at=0.0, first_frame_at=1.0, last_frame_at=9.0, frames_received=3)
    assert slow.stall_seconds() == pytest.approx(12.0)
    assert slow.video_problem(20.0) is None
    assert slow.video_problem(22.0) is not None


async def test_video_gaps_are_recorded(
    kvs: LocalKvs, resolver: ChannelResolver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    kvs.create_channel("gap")
    async with Viewer(viewer_access(resolver, "gap"), loopback_candidates=True) as viewer:
        for _ in range(2):  # a master, then a gap, then another master
            master = Master(
                AwsAccess(resolver, "gap", Role.MASTER), video=TestPatternTrack(160, 120)
            )
            async with master:
                await asyncio.wait_for(viewer.wait_first_frame(), WAIT)
                before = viewer.stats.frames_received
                async with asyncio.timeout(WAIT):
                    while viewer.stats.frames_received < before + 10:
                        await asyncio.sleep(0.05)
            await asyncio.sleep(2.5)
        stats = viewer.stats
    assert len(stats.video_gaps) == 1, stats.video_gaps
    at, length = stats.video_gaps[0]
    assert length > 2.5 and 0 < at < length + at
