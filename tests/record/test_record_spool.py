"""The spool: states by rename, crash leftovers, and what the limits delete (and never)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import av
import numpy as np
import pytest

from kvs_peer.errors import InvalidState
from kvs_peer.record.spool import SegmentState, Spool, segment_name

MB = 1024 * 1024


def _file(spool: Spool, channel: str, minute: int, size: int, suffix: str = "") -> Path:
    when = dt.datetime(2025, 1, 1, 12, minute, tzinfo=dt.UTC)
    path = spool.channel_dir(channel) / (segment_name(when) + suffix)
    path.write_bytes(b"x" * size)
    return path


def test_names_are_utc_start_times_that_sort(tmp_path: Path) -> None:
    when = dt.datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert segment_name(when) == "20250304T030607.890Z.mkv"
    spool = Spool(tmp_path, max_bytes=10 * MB)
    moment = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    first = spool.new_part_path("cam", moment)
    first.touch()
    second = spool.new_part_path("cam", moment)  # same millisecond: the next one
    assert first.name == "20250101T000000.000Z.mkv.part"
    assert second.name == "20250101T000000.001Z.mkv.part"


def _video(path: Path, frames: int = 5) -> Path:
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((64, 64, 3), index * 7 % 256, np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_recover_finishes_what_a_crash_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10 * MB)
    _video(_file(spool, "a", 0, 0, ".part"))
    _video(_file(spool, "b", 1, 0, ".part"))
    _file(spool, "b", 2, 100)
    assert [s.state for s in spool.scan()] == [
        SegmentState.WRITING,
        SegmentState.WRITING,
        SegmentState.FINISHED,
    ]
    with caplog.at_level(logging.WARNING):
        assert len(spool.recover(["a"])) == 1
    assert "kept as it is" in caplog.text
    assert [(s.channel, s.state) for s in spool.scan()] == [
        ("a", SegmentState.FINISHED),
        ("b", SegmentState.WRITING),
        ("b", SegmentState.FINISHED),
    ]
    spool.recover()
    assert {s.state for s in spool.scan()} == {SegmentState.FINISHED}


def test_recover_removes_a_file_killed_before_its_first_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10 * MB)
    video = _video(tmp_path / "full.mkv", frames=30).read_bytes()
    empty = _file(spool, "a", 0, 0, ".part")
    header = _file(spool, "a", 1, 0, ".part")
    header.write_bytes(video[:200])  # the header, cut before any frame
    truncated = _file(spool, "a", 2, 0, ".part")
    truncated.write_bytes(video[: len(video) * 2 // 3])  # frames, cut mid-file
    with caplog.at_level(logging.WARNING):
        finished = spool.recover()
    assert [p.name for p in finished] == [truncated.name[:-5]]
    assert not empty.exists() and not header.exists()
    assert caplog.text.count("holds no frame") == 2


def test_byte_limit_deletes_uploaded_first_then_oldest_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1_000_000.0]
    spool = Spool(tmp_path, max_bytes=3 * MB, max_age=3600, clock=lambda: now[0])
    oldest = _file(spool, "a", 0, MB)
    uploaded = _file(spool, "b", 1, MB)
    middle = _file(spool, "a", 2, MB)
    busy = _file(spool, "b", 3, MB)
    writing = _file(spool, "a", 4, MB, ".part")
    [segment] = [s for s in spool.scan() if s.path == uploaded]
    spool.uploaded(segment)  # kept for max_age as a local copy
    assert not uploaded.exists()
    # 5 MB in the spool, 3 allowed: the uploaded copy goes, then the oldest un-uploaded one.
    with caplog.at_level(logging.ERROR):
        removed = spool.enforce_limits(busy=[busy])
    assert [s.state for s in removed] == [SegmentState.UPLOADED, SegmentState.FINISHED]
    assert removed[1].path == oldest
    assert "BEFORE it was uploaded" in caplog.text and oldest.name in caplog.text
    assert spool.dropped_segments == 1
    assert middle.exists() and busy.exists() and writing.exists()
    # Within the limit nothing else goes, however old.
    assert spool.enforce_limits() == []


def test_files_being_written_are_never_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MB)
    writing = _file(spool, "a", 0, 3 * MB, ".part")
    assert spool.enforce_limits() == []
    assert writing.exists()


def test_uploaded_copies_expire_by_age_and_unuploaded_never_do(tmp_path: Path) -> None:
    now = [1_000_000.0]
    spool = Spool(tmp_path, max_bytes=100 * MB, max_age=60, clock=lambda: now[0])
    old = _file(spool, "a", 0, 10)
    os.utime(old, (0, 0))  # finished long ago, never uploaded
    copy = _file(spool, "a", 1, 10)
    [segment] = [s for s in spool.scan() if s.path == copy]
    spool.uploaded(segment)
    now[0] += 59
    assert spool.enforce_limits() == []
    now[0] += 2
    assert [s.state for s in spool.enforce_limits()] == [SegmentState.UPLOADED]
    assert old.exists()


def test_without_max_age_an_uploaded_segment_is_deleted_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MB)
    path = _file(spool, "a", 0, 10)
    spool.uploaded(spool.scan()[0])
    assert not path.exists() and spool.scan() == []


def test_one_service_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MB)
    with spool.lock():
        with pytest.raises(InvalidState, match="another kvs-peer record uses the spool"):
            with Spool(tmp_path, max_bytes=MB).lock():
                pass
    with spool.lock():  # released
        pass
