"""A Chromium viewer (KVS JS SDK) plays a 1080p High-profile stream that the master passes
through from a camera-like H.264 pipe, with the stream's profile-level-id in the answer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser_page import CHANNEL, assert_stamped_frames, page_options
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.master import Master
from kvs_peer.media import open_master_video
from kvs_peer.media.passthrough import H264Source
from kvs_peer.media.stamp import read_stamp
from kvs_peer.protocol import Role

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WRITER = Path(__file__).resolve().parent.parent / "media" / "h264_writer.py"


def camera_fifo(fifo: Path) -> subprocess.Popen[bytes]:
    """A 1080p15 High-profile camera writing into ``fifo``, 2 s GOP."""
    os.mkfifo(fifo)
    args = ["--size", "1920x1080", "--fps", "15", "--profile", "high", "--gop", "30"]
    return subprocess.Popen(
        [sys.executable, str(WRITER), *args, "--bitrate", "3000000"],
        stdout=os.open(fifo, os.O_RDWR),  # RDWR: the open does not wait for a reader
        stderr=subprocess.DEVNULL,
    )


async def test_browser_plays_a_1080p_high_profile_passthrough_stream(
    kvs, resolver, open_page, tmp_path, record_property
):
    writer = camera_fifo(tmp_path / "camera.h264")
    try:
        peer = await open_page()
        source = open_master_video(str(tmp_path / "camera.h264"), video_mode="passthrough")
        assert isinstance(source, H264Source)
        async with Master(
            AwsAccess(resolver, CHANNEL, Role.MASTER),
            video=source,
            video_mode="passthrough",
            signaling={"ssl": kvs.ssl_context()},
        ) as master:
            options = await page_options(kvs, resolver, CHANNEL, Role.VIEWER, client_id="hd")
            await peer.start_viewer(options)
            await peer.wait_for("s.firstFrameMs !== null", 15_000 * MS)
            grabs = []
            for _ in range(3):
                image, counts = await peer.grab_frame()
                grabs.append((read_stamp(image), counts, image.shape))
                await asyncio.sleep(500 * MS)
            state = await peer.state()
            await peer.close()
            assert master.passthrough is not None and master.passthrough.replays >= 1
            sps = master.passthrough.sps
    finally:
        writer.kill()
        writer.wait()
    assert sps is not None and sps.profile_level_id == "640028"
    assert_stamped_frames(grabs, state, (1080, 1920, 3))
    answered = [detail for _, name, detail in state["events"] if name == "sdp-answer"]
    assert answered == ["640028"], answered  # the stream's own profile and level
    record_property(
        "measurement", f"browser, 1080p High passthrough: TTFF {state['firstFrameMs']} ms"
    )
