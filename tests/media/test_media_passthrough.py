"""H.264 passthrough end to end: a stamped H.264 stream from a writer process, through a FIFO
or stdin, to kvs-peer viewers via the emulator, without the master encoding anything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError
from media_files import h264_bytes
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import InvalidArgument, MediaError
from kvs_peer.master import Master
from kvs_peer.media import open_master_video
from kvs_peer.media.passthrough import H264Source, _close_reader, open_h264_source
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer

CHANNEL = "passthrough"
WRITER = Path(__file__).with_name("h264_writer.py")


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel(CHANNEL)
    return CHANNEL


@contextlib.contextmanager
def writer_into_fifo(tmp_path: Path, *args: str) -> Iterator[Path]:
    """A FIFO fed by the writer process (in real time) for as long as the block runs."""
    fifo = tmp_path / "camera.h264"
    os.mkfifo(fifo)
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), *args],
            stdout=os.open(fifo, os.O_RDWR),  # RDWR: the open does not wait for a reader
            stderr=devnull,
        )
    try:
        yield fifo
    finally:
        proc.kill()
        proc.wait()


def viewer(resolver: ChannelResolver, client_id: str, **kwargs: Any) -> Viewer:
    return Viewer(AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=client_id), **kwargs)


@contextlib.asynccontextmanager
async def passthrough_master(
    resolver: ChannelResolver, source: Any, **kwargs: Any
) -> AsyncIterator[Master]:
    async with Master(
        AwsAccess(resolver, CHANNEL, Role.MASTER), video=source, connect_timeout=10, **kwargs
    ) as master:
        yield master


async def test_fifo_stream_reaches_a_viewer_without_encoding(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    with writer_into_fifo(tmp_path, "--size", "320x240", "--gop", "30") as fifo:
        source = open_master_video(str(fifo))
        assert isinstance(source, H264Source)
        async with passthrough_master(resolver, source) as master:
            check = VideoCheck()
            async with viewer(resolver, "v1", on_frame=check.add) as v:
                await v.wait_first_frame(timeout=10_000 * MS)
                await wait_until(lambda: check.frames >= 30, 10_000 * MS)
            assert master.passthrough is not None and master.encoder is not None
            assert master.passthrough.frames_forwarded >= 30
            assert master.encoder.frames_encoded == 0  # nothing was re-encoded
            assert master.passthrough.sps is not None
            assert master.passthrough.sps.profile_level_id.startswith("42")
    check.assert_ok(min_frames=30, size=(320, 240), max_gap_s=1.0)


async def late_joiners(
    resolver: ChannelResolver, count: int, *, gap: float
) -> tuple[list[float], list[VideoCheck]]:
    """``count`` viewers joining one after the other; their times to first frame."""
    ttffs, checks = [], []
    for index in range(count):
        check = VideoCheck()
        async with viewer(resolver, f"late-{index}", on_frame=check.add) as v:
            ttffs.append(await v.wait_first_frame(timeout=10_000 * MS))
            await wait_until(lambda c=check: c.frames >= 10, 10_000 * MS)
        checks.append(check)
        await asyncio.sleep(gap)
    return ttffs, checks


async def test_late_joiners_start_from_the_cached_gop(
    channel: str, resolver: ChannelResolver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 2 s GOP: without the burst from the last IDR a joiner would wait 1 s on average.
    with writer_into_fifo(tmp_path, "--size", "320x240", "--gop", "60") as fifo:
        async with passthrough_master(resolver, open_master_video(str(fifo))) as master:
            first = VideoCheck()
            async with viewer(resolver, "first", on_frame=first.add) as v:
                await v.wait_first_frame(timeout=10_000 * MS)
                ttffs, checks = await late_joiners(resolver, 4, gap=0.37)
                frames_before = first.frames
                await asyncio.sleep(0.5)
                assert first.frames > frames_before  # the first viewer kept playing
            passthrough = master.passthrough
            assert passthrough is not None
            assert passthrough.replays >= 4  # every joiner got a burst
            assert passthrough.keyframes <= 1 + int(passthrough.frames_forwarded / 60) + 1
    for check in checks:
        assert check.frames >= 10 and check.backwards == 0
    with capsys.disabled():
        print(f"\n  passthrough late joiners, 2 s GOP: TTFF {[round(t * 1000) for t in ttffs]} ms")
    # Generous for a loaded 2-core machine; the benchmark measures the real figure.
    assert statistics.median(ttffs) < 1500 * MS


async def test_parameter_sets_sent_once_still_serve_late_joiners(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    with writer_into_fifo(tmp_path, "--size", "320x240", "--gop", "20", "--sps-once") as fifo:
        async with passthrough_master(resolver, open_master_video(str(fifo))):
            await asyncio.sleep(1.5)  # the only SPS/PPS went by long ago
            _ttffs, checks = await late_joiners(resolver, 2, gap=0.3)
    assert all(c.frames >= 10 and c.stamped == c.frames for c in checks)


async def test_high_profile_goes_to_the_encoder_for_a_baseline_only_viewer(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    # aiortc's viewers offer only (Constrained) Baseline: auto mode decodes and re-encodes.
    with writer_into_fifo(tmp_path, "--size", "320x240", "--profile", "high") as fifo:
        async with passthrough_master(resolver, open_master_video(str(fifo))) as master:
            check = VideoCheck()
            async with viewer(resolver, "baseline-only", on_frame=check.add) as v:
                await v.wait_first_frame(timeout=10_000 * MS)
                await wait_until(lambda: check.frames >= 20, 10_000 * MS)
            assert master.encoder is not None and master.encoder.frames_encoded >= 20
            assert master.passthrough is not None
            assert master.passthrough.sps is not None
            assert master.passthrough.sps.profile_level_id.startswith("64")
    check.assert_ok(min_frames=20, size=(320, 240), max_gap_s=1.0)


async def test_passthrough_mode_refuses_a_viewer_that_cannot_take_the_profile(
    channel: str, resolver: ChannelResolver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with writer_into_fifo(tmp_path, "--size", "320x240", "--profile", "high") as fifo:
        source = open_master_video(str(fifo), video_mode="passthrough")
        async with passthrough_master(resolver, source, video_mode="passthrough") as master:
            assert master.encoder is None
            v = viewer(resolver, "refused")
            async with v:
                await wait_until(lambda: master.stats.sessions_failed >= 1, 10_000 * MS)
            assert master.passthrough is not None and master.passthrough.viewers_refused >= 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and "High" in refusals[0] and "--video-mode auto" in refusals[0]


async def test_a_source_that_is_not_h264_falls_back_to_the_encoder(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.webm"
    write_vp8_clip(clip)
    source = open_master_video(str(clip), loop=True)
    assert not isinstance(source, H264Source)
    async with passthrough_master(resolver, source) as master:
        assert master.passthrough is None
        check = VideoCheck()
        async with viewer(resolver, "vp8-source", on_frame=check.add) as v:
            await v.wait_first_frame(timeout=10_000 * MS)
            await wait_until(lambda: check.frames >= 10, 10_000 * MS)
        assert master.encoder is not None and master.encoder.frames_encoded >= 10
    with pytest.raises(InvalidArgument, match=r"not H\.264"):
        open_master_video(str(clip), video_mode="passthrough")
    with pytest.raises(InvalidArgument, match=r"not H\.264"):
        open_master_video("testsrc", video_mode="passthrough")


def write_vp8_clip(path: Path, frames: int = 15) -> None:
    import fractions

    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((120, 160, 3), index * 8, np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_clip(path: Path, *args: str) -> Path:
    with open(path, "wb") as out:
        subprocess.run([sys.executable, str(WRITER), *args, "--fast"], stdout=out, check=True)
    return path


async def test_a_raw_h264_file_loops_without_seeking(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "clip.h264", "--size", "160x120", "--frames", "10")
    source = open_master_video(str(clip), loop=True)
    assert isinstance(source, H264Source) and not source.live
    async with passthrough_master(resolver, source) as master:
        check = VideoCheck()
        async with viewer(resolver, "looper", on_frame=check.add) as v:
            await v.wait_first_frame(timeout=10_000 * MS)
            await wait_until(lambda: check.frames >= 25, 10_000 * MS)  # 10-frame clip: 2+ passes
        assert master.end_reason is None
    assert source.opens >= 3
    # Each pass starts again at counter 0: the counter goes back once per loop.
    assert check.backwards >= 2 and check.stamped == check.frames
    assert (check.width, check.height) == (160, 120) and check.longest_gap_s < 1000 * MS


KVS_PEER = [sys.executable, "-m", "kvs_peer"]


def start_writer(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


async def test_stdin_pipeline_into_the_master_command(
    channel: str, resolver: ChannelResolver, device_env: dict[str, str]
) -> None:
    # What `rpicam-vid -o - | kvs-peer master --source -` does, with a PyAV writer (no ffmpeg
    # binary here) as the camera.
    writer = start_writer("--size", "320x240", "--gop", "60", "--aud")
    assert writer.stdout is not None
    master = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        "master",
        "--channel",
        CHANNEL,
        "--source",
        "-",
        "--video-mode",
        "passthrough",
        "--json",
        stdin=writer.stdout,
        env=device_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    writer.stdout.close()  # the master holds the pipe now
    try:
        check = VideoCheck()
        async with viewer(resolver, "cli-viewer", on_frame=check.add) as v:
            await v.wait_first_frame(timeout=15_000 * MS)
            await wait_until(lambda: check.frames >= 30, 10_000 * MS)
    finally:
        master.send_signal(signal.SIGINT)
        _out, err = await asyncio.wait_for(master.communicate(), 20_000 * MS)
        writer.kill()
        writer.wait()
    assert master.returncode == 0, err.decode()
    assert "H.264 on stdin" in err.decode()
    check.assert_ok(min_frames=30, size=(320, 240), max_gap_s=1.0)


async def test_a_missing_encoder_is_a_clear_error(device_env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        "master",
        "--channel",
        CHANNEL,
        "--encoder",
        "h264_vaapi",  # not in PyAV's wheel
        env=device_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30_000 * MS)
    assert proc.returncode != 0
    assert "h264_vaapi" in err.decode() and "not in this FFmpeg build" in err.decode()


async def test_rtsp_camera_is_demuxed_not_decoded(channel: str, resolver: ChannelResolver) -> None:
    from rtsp_server import RtspServer

    async with RtspServer(320, 240, fps=15) as camera:
        source = await asyncio.to_thread(open_master_video, camera.url, reopen=True)
        assert isinstance(source, H264Source) and source.live
        async with passthrough_master(resolver, source) as master:
            check = VideoCheck()
            async with viewer(resolver, "rtsp-viewer", on_frame=check.add) as v:
                await v.wait_first_frame(timeout=10_000 * MS)
                await wait_until(lambda: check.frames >= 15, 10_000 * MS)
            assert master.encoder is not None and master.encoder.frames_encoded == 0
    check.assert_ok(min_frames=15, size=(320, 240), max_gap_s=1.0)


async def test_h264_in_a_media_file_is_passed_through_and_loops(
    channel: str, resolver: ChannelResolver, tmp_path: Path
) -> None:
    from test_media_h264 import encode

    clip = tmp_path / "clip.mkv"
    clip.write_bytes(encode("baseline", (160, 120), frames=10, fmt="matroska", g="5")[0])
    source = open_master_video(str(clip), loop=True)
    assert isinstance(source, H264Source) and not source.live
    async with passthrough_master(resolver, source) as master:
        frames = 0

        def count(frame: Any) -> None:
            nonlocal frames
            frames += 1

        async with viewer(resolver, "mkv-viewer", on_frame=count) as v:
            await v.wait_first_frame(timeout=10_000 * MS)
            await wait_until(lambda: frames >= 25, 10_000 * MS)
        assert master.encoder is not None and master.encoder.frames_encoded == 0
    assert source.opens >= 3


async def test_a_damaged_avcc_header_is_a_media_error_that_says_what_to_do(
    tmp_path: Path,
) -> None:
    data = bytearray(h264_bytes(3, "mp4"))
    box = data.index(b"avcC") + 4
    data[box + 6 : box + 8] = b"\xff\xff"  # the first SPS's length now runs past the box
    path = tmp_path / "damaged.mp4"
    path.write_bytes(data)
    source = open_h264_source(str(path))
    assert source is not None
    try:
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(source.recv(), 5000 * MS)
    finally:
        source.stop()
    assert isinstance(source.error, MediaError)
    message = str(source.error)
    assert "damaged (avcC record truncated)" in message and "--video-mode transcode" in message


def test_a_reader_failing_to_close_is_logged_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Reader:
        """What PyAV raises when closing an RTSP input: FFmpeg repeats the URL."""

        def __iter__(self) -> Iterator[Any]:
            return iter(())

        def close(self) -> None:
            raise OSError("[Errno 104] Connection reset: 'rtsp://admin:s3cret@cam/live?tok=x'")

    caplog.set_level(logging.DEBUG, logger="kvs_peer")
    _close_reader(Reader())
    assert "error while closing an H.264 reader" in caplog.text
    assert "rtsp://admin:***@cam/live" in caplog.text
    assert "s3cret" not in caplog.text and "tok=x" not in caplog.text
