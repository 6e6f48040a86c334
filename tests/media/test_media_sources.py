"""Sources: test pattern and tone pacing, files decoded in a thread, clear errors."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from media_files import mpegts_bytes
from support import MS

from kvs_peer.errors import InvalidArgument, MediaError
from kvs_peer.media import (
    FileAudioTrack,
    PyAVVideoTrack,
    TestPatternTrack,
    ToneTrack,
    open_audio_source,
    open_video_source,
    read_stamp,
    write_stamp,
)

FILE_FRAMES = 20


def make_media_file(path: Path, *, frames: int = FILE_FRAMES, audio: bool = True) -> Path:
    """A 320x240 yuv444p H.264 file at 30 fps with stamped frames, plus 1 s of AAC tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv444p"
        sound = container.add_stream("aac", rate=48000) if audio else None
        for index in range(frames):
            luma = np.full((240, 320), 100, np.uint8)
            write_stamp(luma, index, 1000 + index)
            planes = np.stack([luma, np.full_like(luma, 90), np.full_like(luma, 160)])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv444p")
            frame.pts = index
            frame.time_base = fractions.Fraction(1, 30)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            t = np.arange(48000) / 48000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, 48000, 1024):
                chunk = samples[start : start + 1024]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                frame.sample_rate = 48000
                frame.pts = start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


@pytest.fixture
def media_file(tmp_path: Path) -> Path:
    return make_media_file(tmp_path / "clip.mkv")


async def test_test_pattern_is_paced_stamped_yuv420p() -> None:
    track = TestPatternTrack(320, 240, 30)
    started = time.perf_counter()
    frames = [await track.recv() for _ in range(31)]
    elapsed = time.perf_counter() - started
    assert 0.9 <= elapsed <= 1.0 + 300 * MS, elapsed
    assert {(f.width, f.height, f.format.name) for f in frames} == {(320, 240, "yuv420p")}
    assert [f.pts for f in frames] == [i * 3000 for i in range(31)]
    assert frames[0].time_base == fractions.Fraction(1, 90000)
    stamps = [read_stamp(f) for f in frames]
    assert [s.counter for s in stamps] == list(range(31))
    times = [s.timestamp_ms for s in stamps]
    assert all(b >= a for a, b in itertools.pairwise(times))
    assert 900 <= times[-1] - times[0] <= 1000 + 300 * MS * 1000  # ms
    # It moves: consecutive pictures differ below the stamp band.
    a, b = (f.to_ndarray(format="gray")[60:] for f in frames[:2])
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_test_pattern_skips_rather_than_bursts_after_a_pause() -> None:
    track = TestPatternTrack(160, 120, 30)
    await track.recv()
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    frames = [await track.recv() for _ in range(4)]
    elapsed = time.perf_counter() - started
    # The first frame after the pause is due at once, the next ones one period apart.
    assert elapsed >= 0.08, elapsed
    assert frames[0].pts >= 0.45 * 90000  # timestamps stayed on the wall clock
    assert [read_stamp(f).counter for f in frames] == [1, 2, 3, 4]


async def test_tone_is_paced_48k_s16_20ms() -> None:
    track = ToneTrack(1000)
    started = time.perf_counter()
    frames = [await track.recv() for _ in range(26)]
    elapsed = time.perf_counter() - started
    assert 0.45 <= elapsed <= 0.5 + 200 * MS, elapsed
    first = frames[0]
    assert (first.format.name, first.layout.name, first.sample_rate, first.samples) == (
        "s16",
        "mono",
        48000,
        960,
    )
    assert [f.pts for f in frames] == [i * 960 for i in range(26)]
    samples = np.concatenate([f.to_ndarray()[0] for f in frames[:5]]).astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 48000 / len(samples) - 1000) < 15


async def test_file_source_decodes_in_a_thread_converts_and_paces(media_file: Path) -> None:
    before = threading.active_count()
    track = open_video_source(str(media_file))
    assert isinstance(track, PyAVVideoTrack)
    started = time.perf_counter()
    frames = [await track.recv() for _ in range(FILE_FRAMES)]
    elapsed = time.perf_counter() - started
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), 2000 * MS)
    assert 0.5 <= elapsed <= 0.63 + 300 * MS, elapsed  # 20 frames at 30 fps
    assert {(f.width, f.height, f.format.name) for f in frames} == {(320, 240, "yuv420p")}
    assert [read_stamp(f).counter for f in frames] == list(range(FILE_FRAMES))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert frames[0].time_base == fractions.Fraction(1, 90000)
    track.stop()
    assert threading.active_count() == before


async def test_file_source_loops_and_scales(media_file: Path) -> None:
    track = open_video_source(str(media_file), width=160, height=120, loop=True)
    frames = [await track.recv() for _ in range(FILE_FRAMES + 5)]
    track.stop()
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    counters = [read_stamp(f).counter for f in frames]
    assert counters == [*range(FILE_FRAMES), *range(5)]
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))


async def test_stop_joins_the_worker_thread_promptly(media_file: Path) -> None:
    track = open_video_source(str(media_file), loop=True)
    await track.recv()
    worker = track._thread
    started = time.perf_counter()
    track.stop()
    assert not worker.is_alive()
    assert time.perf_counter() - started < 500 * MS


def test_a_file_source_never_read_is_closed_by_stop(media_file: Path) -> None:
    track = open_video_source(str(media_file))
    track.stop()
    with pytest.raises(AssertionError, match="not open"):  # PyAV's check on a closed input
        next(track._container.decode(video=0))


async def test_audio_from_a_file_and_tone_specs(media_file: Path) -> None:
    track = open_audio_source(str(media_file))
    assert isinstance(track, FileAudioTrack)
    frames = [await track.recv() for _ in range(10)]
    track.stop()
    assert {(f.format.name, f.sample_rate, f.samples) for f in frames} == {("s16", 48000, 960)}
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    assert open_audio_source("none") is None
    assert open_audio_source("") is None
    assert open_audio_source(None) is None
    assert isinstance(open_audio_source("tone"), ToneTrack)
    assert open_audio_source("tone:880").freq == 880


@pytest.mark.parametrize("spec", ["testsrc", "TESTSRC", "test"])
def test_testsrc_spec(spec: str) -> None:
    track = open_video_source(spec, width=320, height=240, fps=15)
    assert isinstance(track, TestPatternTrack)
    assert (track.width, track.height, track.fps) == (320, 240, 15)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match=r"video file .*nope\.mp4.* not found.*testsrc"):
        open_video_source(str(missing))
    with pytest.raises(MediaError, match=r"audio file .*nope\.mp4.* not found"):
        open_audio_source(str(missing))


def test_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(MediaError, match=r"cannot open video file .*junk\.mp4"):
        open_video_source(str(junk))
    with pytest.raises(MediaError, match="is a directory"):
        open_video_source(str(tmp_path))
    silent = make_media_file(tmp_path / "silent.mkv", frames=2, audio=False)
    with pytest.raises(MediaError, match="has no audio stream"):
        open_audio_source(str(silent))


def test_unopenable_devices_are_clear_errors() -> None:
    with pytest.raises(MediaError, match=r"camera device /dev/video99 not found"):
        open_video_source("/dev/video99")
    with pytest.raises(MediaError, match="cannot open camera 99"):
        open_video_source("99")


def test_unreachable_url_is_a_clear_error_without_the_password() -> None:
    started = time.perf_counter()
    with pytest.raises(MediaError) as caught:
        open_video_source("rtsp://admin:s3cret@127.0.0.1:1/stream?token=abc", timeout=2)
    message = str(caught.value)
    assert "cannot open video URL rtsp://admin:***@127.0.0.1:1/stream" in message
    assert "s3cret" not in message and "abc" not in message
    assert time.perf_counter() - started < 3000 * MS


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spec": ""}, "empty video source"),
        ({"spec": "testsrc", "width": 641}, "even"),
        ({"spec": "testsrc", "height": -2}, "even"),
        ({"spec": "testsrc", "fps": 0}, "fps"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        open_video_source(**kwargs)


def test_bad_audio_arguments() -> None:
    with pytest.raises(InvalidArgument, match="tone frequency"):
        open_audio_source("tone:abc")
    with pytest.raises(InvalidArgument, match="tone frequency"):
        ToneTrack(30000)


async def test_live_network_stream_source() -> None:
    """A live stream over the network (here tcp://, the same PyAV path as rtsp:// or udp://)."""
    payload = mpegts_bytes(30)

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(send, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        track = await asyncio.to_thread(open_video_source, f"tcp://127.0.0.1:{port}")
        counters = []
        try:
            while True:
                frame = await asyncio.wait_for(track.recv(), 5000 * MS)
                stamp = read_stamp(frame)
                assert stamp is not None and (frame.width, frame.height) == (320, 240)
                counters.append(stamp.counter)
        except MediaStreamError:
            pass  # the sender closed the stream
        finally:
            track.stop()
    # a live source keeps the newest frames and may skip some, but never goes backwards
    assert counters and counters == sorted(counters) and counters[-1] >= 25
