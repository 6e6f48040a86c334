"""V4L2 cameras with H.264 output: the options asked for and the fall-back decision.

No V4L2 camera is attached here, so the device open itself is not exercised: these tests
cover the pure parts (``kvs_peer.media.v4l2``) and the missing-device error.
"""

from __future__ import annotations

import logging

import pytest

from kvs_peer.errors import MediaError
from kvs_peer.media import open_master_video
from kvs_peer.media.v4l2 import h264_refusal, is_v4l2_device, v4l2_options, wants_h264


def test_options_ask_for_size_rate_and_h264() -> None:
    assert v4l2_options(width=1920, height=1080, fps=30, h264=True) == {
        "video_size": "1920x1080",
        "framerate": "30",
        "input_format": "h264",
    }
    assert v4l2_options(width=None, height=None, fps=29.97) == {"framerate": "29.97"}
    # A width alone is not a size the driver can be asked for.
    assert v4l2_options(width=640, height=None, fps=None) == {}


def test_the_users_options_win() -> None:
    options = {"input_format": "mjpeg", "video_size": "640x480", "timestamps": "abs"}
    assert v4l2_options(width=1280, height=720, fps=None, options=options, h264=True) == options


@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        ("passthrough", None, True),
        ("auto", {}, True),
        ("auto", {"input_format": "h264"}, True),
        ("transcode", None, False),
        ("passthrough", {"input_format": "mjpeg"}, False),
        ("auto", {"input_format": "yuyv422"}, False),
    ],
)
def test_when_h264_is_asked_for(mode: str, options: dict[str, str] | None, expected: bool) -> None:
    assert wants_h264(mode, options) is expected


def test_refusal_reasons() -> None:
    assert h264_refusal(codec="h264", error=None) is None
    refused = h264_refusal(codec=None, error="Invalid argument")
    assert refused is not None and "refused H.264" in refused and "Invalid argument" in refused
    other = h264_refusal(codec="rawvideo", error=None)
    assert other is not None and "rawvideo" in other
    assert "unknown format" in (h264_refusal(codec=None, error=None) or "")


def test_device_names() -> None:
    assert is_v4l2_device("/dev/video0") and is_v4l2_device(" /dev/video12 ")
    assert not is_v4l2_device("0") and not is_v4l2_device("rtsp://cam/dev/video0")


def test_a_missing_camera_is_not_found_without_a_fallback_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvs_peer")
    with pytest.raises(MediaError, match=r"camera device /dev/video97 not found"):
        open_master_video("/dev/video97", video_mode="passthrough")
    assert "capturing raw frames" not in caplog.text
