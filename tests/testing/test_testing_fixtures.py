"""The pytest plugin's fixtures used directly (the entry point registers them in this run too).

Real parts only: the emulator on 127.0.0.1, a kvs-peer Master streaming the stamped test
pattern and aiortc viewers.
"""

from __future__ import annotations

import re

import pytest
from support import MS

from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import ChannelNotFound, InvalidArgument
from kvs_peer.media import TestPatternTrack
from kvs_peer.testing import CheckedViewer, KvsMasterFactory, KvsViewerFactory, VideoCheck

WAIT = 20_000 * MS


async def test_master_streams_to_viewer_and_counters_advance(
    kvs_emulator: LocalKvs,
    kvs_channel: str,
    kvs_master: KvsMasterFactory,
    kvs_viewer: KvsViewerFactory,
) -> None:
    master = await kvs_master(kvs_channel)
    assert kvs_emulator.connected(kvs_channel).master
    viewer = await kvs_viewer(kvs_channel)
    assert isinstance(viewer, CheckedViewer)
    check = await viewer.wait_frames(15, timeout=WAIT)
    assert isinstance(check, VideoCheck)
    first = check.frames
    assert first >= 15
    # wait_frames counts from the call: the second wait needs 10 frames more.
    await viewer.wait_frames(10, timeout=WAIT)
    assert viewer.check.frames >= first + 10
    viewer.assert_video(min_frames=25, size=(640, 480))
    assert viewer.check.counters_advanced >= 24
    assert viewer.stats.frames_received == viewer.check.frames
    assert viewer.client_id in kvs_emulator.connected(kvs_channel).viewers
    await master.wait_for_viewers(1, timeout=WAIT)


async def test_master_options_size_and_two_viewers(
    kvs_channel: str, kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory
) -> None:
    seen: list[int] = []
    await kvs_master(kvs_channel, width=320, height=240, fps=30, max_viewers=2)
    first = await kvs_viewer(kvs_channel, on_frame=lambda frame: seen.append(frame.width))
    second = await kvs_viewer(kvs_channel, client_id="second-viewer")
    assert second.client_id == "second-viewer"
    for viewer in (first, second):
        await viewer.wait_frames(10, timeout=WAIT)
        viewer.assert_video(min_frames=10, size=(320, 240))
    assert seen and set(seen) == {320}  # the user's on_frame ran too


async def test_master_takes_a_track(
    kvs_channel: str, kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory
) -> None:
    await kvs_master(kvs_channel, source=TestPatternTrack(160, 120, 30))
    viewer = await kvs_viewer(kvs_channel)
    await viewer.wait_frames(5, timeout=WAIT)
    viewer.assert_video(size=(160, 120))


def test_channel_is_fresh_and_named_after_the_test(
    kvs_emulator: LocalKvs, kvs_channel: str
) -> None:
    assert kvs_channel.startswith("test_channel_is_fresh_and_named_after_the_test-")
    assert kvs_emulator.channel_arn(kvs_channel).split("/")[-2] == kvs_channel
    assert not kvs_emulator.connected(kvs_channel).master


@pytest.mark.parametrize(("param", "shown"), [("a", "a"), ("b/c d", "b-c-d")])
def test_channel_name_from_parametrized_test_is_valid(
    kvs_emulator: LocalKvs, kvs_channel: str, param: str, shown: str
) -> None:
    # The node name ends with "[b/c d-b-c-d]": only characters a channel name may hold remain.
    assert kvs_emulator.channel_arn(kvs_channel)
    prefix = f"test_channel_name_from_parametrized_test_is_valid-{shown}-{shown}"
    assert re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{8}}", kvs_channel), kvs_channel


async def test_wait_frames_fails_with_what_the_viewer_knows(
    kvs_channel: str, kvs_viewer: KvsViewerFactory
) -> None:
    viewer = await kvs_viewer(kvs_channel)  # no master: nothing ever arrives
    with pytest.raises(AssertionError) as failure:
        await viewer.wait_frames(3, timeout=300 * MS)
    message = str(failure.value)
    assert f"viewer {viewer.client_id} received 0 of 3 frames" in message
    assert "signaling up" in message
    assert "'frames': 0" in message
    with pytest.raises(InvalidArgument, match=r"wait_frames\(count=0\).*at least 1"):
        await viewer.wait_frames(0)


async def test_assert_video_names_the_viewer_and_the_problem(
    kvs_channel: str, kvs_viewer: KvsViewerFactory
) -> None:
    viewer = await kvs_viewer(kvs_channel)
    with pytest.raises(AssertionError, match=rf"viewer {viewer.client_id}: only 0 frames"):
        viewer.assert_video(min_frames=1)


async def test_bad_sources_are_refused(kvs_channel: str, kvs_master: KvsMasterFactory) -> None:
    with pytest.raises(InvalidArgument, match=r"video must be 'testsrc'.*got 42"):
        await kvs_master(kvs_channel, source=42)  # type: ignore[arg-type]
    track = TestPatternTrack(160, 120, 30)
    with pytest.raises(InvalidArgument, match="audio must be 'tone'"):
        await kvs_master(kvs_channel, audio=track)
    track.stop()


async def test_unknown_channel_is_a_clear_error(
    kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory
) -> None:
    with pytest.raises(ChannelNotFound, match="'no-such-channel' not found"):
        await kvs_viewer("no-such-channel")
    with pytest.raises(ChannelNotFound, match="'no-such-channel' not found"):
        await kvs_master("no-such-channel")
