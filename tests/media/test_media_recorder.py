"""Recorder, snapshots and numpy conversion: files are decoded back and their stamps read."""

from __future__ import annotations

import asyncio
import fractions
import signal
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from support import MS

from kvs_peer.errors import InvalidArgument, InvalidState, MediaError
from kvs_peer.media import (
    Recorder,
    TestPatternTrack,
    ToneTrack,
    frame_to_ndarray,
    read_stamp,
    save_snapshot,
    write_stamp,
)


def video_frame(counter: int, width: int = 320, height: int = 240) -> av.VideoFrame:
    """A stamped grey frame with 30 fps timestamps (90 kHz), like a decoded remote frame."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        np.frombuffer(plane, np.uint8)[:] = 60 + counter % 100
    write_stamp(frame, counter, 1000 + counter)
    frame.pts = 123_456 + counter * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def decode_file(path: Path) -> tuple[list[int | None], list[bool], float]:
    """Stamps and keyframe flags of every video frame in ``path``, and its last frame time."""
    counters, keyframes, last = [], [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            stamp = read_stamp(frame)
            counters.append(None if stamp is None else stamp.counter)
            keyframes.append(frame.key_frame)
            last = float(frame.time or 0.0)
    return counters, keyframes, last


async def test_records_a_decodable_mkv_with_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    async with Recorder(path, queue_size=100) as recorder:
        for counter in range(60):
            assert recorder.write_video(video_frame(counter))
    stats = recorder.stats()
    assert (stats.frames_written, stats.frames_dropped, stats.files) == (60, 0, (path,))
    counters, keyframes, last = decode_file(path)
    assert counters == list(range(60))
    assert keyframes[0]
    assert 1.9 <= last <= 2.0  # timestamps followed the frames' pts: 59 frames at 30 fps


async def test_frames_given_to_the_recorder_are_not_modified(tmp_path: Path) -> None:
    frame = video_frame(5)
    frame.pict_type = av.video.frame.PictureType.P
    before = bytes(frame.planes[0]), frame.pts, frame.time_base, frame.pict_type
    async with Recorder(tmp_path / "same.mkv") as recorder:
        recorder.write_video(frame)
    assert (bytes(frame.planes[0]), frame.pts, frame.time_base, frame.pict_type) == before


async def test_a_writer_behind_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    path = tmp_path / "burst.mkv"
    async with Recorder(path, queue_size=3) as recorder:
        accepted = sum(recorder.write_video(video_frame(c, 640, 480)) for c in range(200))
    stats = recorder.stats()
    assert stats.frames_dropped > 0
    assert stats.frames_written == accepted == 200 - stats.frames_dropped
    counters, _, _ = decode_file(path)
    assert len(counters) == stats.frames_written
    assert counters == sorted(counters)


async def test_segments_rotate_by_duration(tmp_path: Path) -> None:
    # A queue larger than the burst: on a loaded machine the writer may lag, and dropping
    # is tested elsewhere; here every frame must land in the right segment.
    async with Recorder(tmp_path / "seg.mkv", segment_seconds=1.0, queue_size=128) as recorder:
        for counter in range(105):  # 3.5 s at 30 fps
            assert recorder.write_video(video_frame(counter))
    names = [p.name for p in recorder.files]
    assert names == ["seg-0000.mkv", "seg-0001.mkv", "seg-0002.mkv", "seg-0003.mkv"]
    everything: list[int | None] = []
    for path in recorder.files:
        counters, keyframes, last = decode_file(path)
        assert keyframes[0], path  # each file plays on its own
        assert last <= 1.0
        everything += counters
    assert everything == list(range(105))
    assert recorder.frames_dropped == 0


async def test_segment_names_from_a_pattern(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "cam-{index:03d}.mkv", segment_seconds=0.5)
    assert recorder.segment_path(7) == tmp_path / "cam-007.mkv"
    async with recorder:
        for counter in range(20):
            recorder.write_video(video_frame(counter))
    assert [p.name for p in recorder.files] == ["cam-000.mkv", "cam-001.mkv"]


async def test_records_audio_with_video(tmp_path: Path) -> None:
    path = tmp_path / "av.mkv"
    tone = ToneTrack(440, layout="stereo")
    pattern = TestPatternTrack(320, 240, 30)
    async with Recorder(path, audio=True) as recorder:
        video_task = recorder.add_track(pattern)
        audio_task = recorder.add_track(tone)
        await asyncio.sleep(1.0)
    assert video_task.done() and audio_task.done()
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.audio[0].codec_context.name == "opus"
        samples = sum(f.samples for f in container.decode(audio=0))
    assert recorder.audio_frames_written > 30
    assert 0.6 * 48000 <= samples <= 1.1 * 48000
    counters, _, _ = decode_file(path)
    assert len(counters) >= 25 and counters == sorted(counters)


async def test_mp4_on_request(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    async with Recorder(path) as recorder:
        for counter in range(10):
            recorder.write_video(video_frame(counter))
    assert recorder.container == "mp4"
    assert decode_file(path)[0] == list(range(10))


async def test_add_track_stops_when_the_track_ends(tmp_path: Path) -> None:
    class Three(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.sent = 0

        async def recv(self) -> av.VideoFrame:
            if self.sent == 3:
                raise MediaStreamError
            self.sent += 1
            return video_frame(self.sent)

    async with Recorder(tmp_path / "three.mkv") as recorder:
        await asyncio.wait_for(recorder.add_track(Three()), 1000 * MS)
    assert recorder.frames_written == 3


async def test_bad_recorder_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown recording format '\.avi'"):
        Recorder(tmp_path / "x.avi")
    with pytest.raises(InvalidArgument, match="segment_seconds"):
        Recorder(tmp_path / "x.mkv", segment_seconds=0)
    with pytest.raises(InvalidArgument, match="video, audio or both"):
        Recorder(tmp_path / "x.mkv", video=False)
    assert Recorder(tmp_path / "plain").container == "matroska"
    with pytest.raises(MediaError, match="does not exist"):
        Recorder(tmp_path / "missing" / "x.mkv").start()
    recorder = Recorder(tmp_path / "closed.mkv")
    await recorder.close()
    assert not recorder.write_video(video_frame(0))
    with pytest.raises(InvalidState):
        recorder.start()


async def test_writer_failure_is_reported_by_close(tmp_path: Path) -> None:
    target = tmp_path / "taken.mkv"
    target.mkdir()  # a directory where the file should go
    recorder = Recorder(target)
    recorder.write_video(video_frame(0))
    await asyncio.sleep(0.2)
    assert not recorder.write_video(video_frame(1))  # failed writers accept nothing
    with pytest.raises(MediaError, match=r"recording to .*taken\.mkv failed"):
        await recorder.close()


CRASH_SCRIPT = """
import asyncio, sys
from kvs_peer.media import Recorder, TestPatternTrack

async def main(path):
    track = TestPatternTrack(320, 240, 30)
    async with Recorder(path) as recorder:
        recorder.write_video(await track.recv())
        print("recording", flush=True)
        while True:
            recorder.write_video(await track.recv())

asyncio.run(main(sys.argv[1]))
"""


async def record_then_kill(path: Path, seconds: float) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_SCRIPT, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20_000 * MS)
        assert line == b"recording\n"
        await asyncio.sleep(seconds)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


async def test_a_killed_recording_stays_readable(tmp_path: Path) -> None:
    mkv, mp4 = tmp_path / "crash.mkv", tmp_path / "crash.mp4"
    started = time.perf_counter()
    await asyncio.gather(record_then_kill(mkv, 3.0), record_then_kill(mp4, 3.0))
    assert time.perf_counter() - started < 15_000 * MS
    counters, keyframes, last = decode_file(mkv)
    print(f"killed after ~3 s (~90 frames): {len(counters)} frames readable, last at {last:.2f} s")
    assert len(counters) >= 45
    assert counters == list(range(len(counters)))
    assert keyframes[0]
    # The docstring's warning about MP4 holds: without its index nothing can be read.
    try:
        readable = len(decode_file(mp4)[0])
    except av.FFmpegError:
        readable = 0
    assert readable == 0


def test_snapshot_writes_a_valid_png(tmp_path: Path) -> None:
    frame = video_frame(4)
    path = save_snapshot(frame, tmp_path / "snap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image.shape == (240, 320, 3)
    assert read_stamp(image).counter == 4  # the picture survived the round trip
    gray = save_snapshot(np.full((10, 20), 7, np.uint8), tmp_path / "gray.png")
    assert cv2.imread(str(gray), cv2.IMREAD_UNCHANGED).shape == (10, 20)
    assert {p.name for p in tmp_path.iterdir()} == {"snap.png", "gray.png"}  # no temp files


def test_bad_snapshots(tmp_path: Path) -> None:
    frame = video_frame(0)
    with pytest.raises(InvalidArgument, match="PNG"):
        save_snapshot(frame, tmp_path / "snap.jpg")
    with pytest.raises(InvalidArgument, match="uint8"):
        save_snapshot(np.zeros((4, 4, 3), np.float32), tmp_path / "x.png")
    with pytest.raises(InvalidArgument, match="cannot snapshot"):
        save_snapshot("frame", tmp_path / "x.png")
    with pytest.raises(MediaError, match="cannot write snapshot"):
        save_snapshot(frame, tmp_path / "missing" / "x.png")


def test_frame_to_ndarray() -> None:
    frame = video_frame(9, 64, 60)
    bgr = frame_to_ndarray(frame)
    assert bgr.shape == (60, 64, 3) and bgr.dtype == np.uint8
    assert frame_to_ndarray(frame, "gray").shape == (60, 64)
    same = frame_to_ndarray(frame, "yuv420p")
    same[:] = 0  # a copy: the frame keeps its pixels
    assert read_stamp(frame).counter == 9
    with pytest.raises(InvalidArgument, match="cannot convert"):
        frame_to_ndarray(frame, "no-such-format")
