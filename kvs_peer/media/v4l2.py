"""V4L2 cameras (``/dev/videoN``): FFmpeg input options, and whether H.264 output is usable.

A UVC webcam with an H.264 endpoint, or a camera behind a V4L2 hardware encoder, hands
FFmpeg's ``v4l2`` input an H.264 stream when asked with ``input_format=h264``; passthrough
then sends it without decoding. A camera without that format refuses the open (FFmpeg
checks the format the driver settled on), and the master falls back to raw frames and its
encoder. These are the pure parts of that decision; opening the device is
:func:`kvs_peer.media.open_master_video`'s (``passthrough.py``) and
:func:`kvs_peer.media.open_video_source`'s (``sources.py``).

Only the option building and the decision are tested here: no V4L2 camera was available.
"""

from __future__ import annotations

from collections.abc import Mapping

DEVICE_PREFIX = "/dev/video"
H264_INPUT_FORMAT = "h264"
"""FFmpeg ``v4l2`` demuxer's ``input_format`` value for the driver's H.264 pixel format."""


def is_v4l2_device(spec: str) -> bool:
    """Whether ``spec`` names a V4L2 device node (``/dev/videoN``)."""
    return spec.strip().startswith(DEVICE_PREFIX)


def v4l2_options(
    *,
    width: int | None,
    height: int | None,
    fps: float | None,
    options: Mapping[str, str] | None = None,
    h264: bool = False,
) -> dict[str, str]:
    """FFmpeg ``v4l2`` input options for a capture.

    Args:
        width: requested width (with ``height``: ``video_size``); None keeps the driver's.
        height: requested height.
        fps: requested frame rate (``framerate``); None keeps the driver's.
        options: the user's own FFmpeg options; they win over everything derived here.
        h264: ask the camera for H.264 output (``input_format=h264``).

    Returns:
        The options for ``av.open(device, format="v4l2", options=...)``.
    """
    result: dict[str, str] = {}
    if width and height:
        result["video_size"] = f"{width}x{height}"
    if fps:
        result["framerate"] = f"{fps:g}"
    if h264:
        result["input_format"] = H264_INPUT_FORMAT
    result.update(options or {})
    return result


def wants_h264(video_mode: str, options: Mapping[str, str] | None) -> bool:
    """Whether to ask a camera for H.264 output.

    In ``passthrough`` and ``auto`` modes, unless the user chose another ``input_format``
    (e.g. ``mjpeg``) in the FFmpeg options: their choice stands.
    """
    if video_mode == "transcode":
        return False
    chosen = (options or {}).get("input_format")
    return chosen is None or chosen == H264_INPUT_FORMAT


def h264_refusal(*, codec: str | None, error: str | None) -> str | None:
    """Why a camera opened with ``input_format=h264`` cannot be passed through.

    Args:
        codec: the codec of the opened stream (None if the open failed).
        error: the open's error message (None if it opened).

    Returns:
        None when the stream is H.264 and can be passed through; otherwise the reason, for
        the log line that announces the fall back to raw frames and the encoder.
    """
    if error is not None:
        return f"it refused H.264 output ({error})"
    if codec != "h264":
        return f"it delivered {codec or 'an unknown format'} when asked for H.264"
    return None
