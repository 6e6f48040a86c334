"""Small encoded media for the source tests, made on the fly."""

from __future__ import annotations

import fractions
import io

import av
import numpy as np

from kvs_peer.media import write_stamp


def mpegts_bytes(frames: int) -> bytes:
    """An MPEG-TS H.264 stream of stamped 320x240 frames, as a camera or encoder would send."""
    return h264_bytes(frames, "mpegts")


def h264_bytes(frames: int, container_format: str) -> bytes:
    """Stamped 320x240 H.264 frames in ``container_format`` (``mpegts``, ``mp4``, ...)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        for index in range(frames):
            luma = np.full((240, 320), 100, np.uint8)
            write_stamp(luma, index, 1000 + index)
            planes = [luma, np.full((120, 160), 128, np.uint8), np.full((120, 160), 128, np.uint8)]
            frame = av.VideoFrame.from_ndarray(
                np.concatenate([p.reshape(-1) for p in planes]).reshape(360, 320), format="yuv420p"
            )
            frame.pts = index
            frame.time_base = fractions.Fraction(1, 30)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return buffer.getvalue()
