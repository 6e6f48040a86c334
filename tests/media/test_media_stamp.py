"""Frame stamps: round trip through real libx264 and refusal of damaged input."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from kvs_peer.errors import InvalidArgument
from kvs_peer.media.stamp import (
    COLUMNS,
    GRID_ROWS,
    ROWS,
    Stamp,
    read_stamp,
    stamp_band_height,
    write_stamp,
)

NOW_MS = 1_780_000_000_123


def stamped_frame(
    width: int, height: int, counter: int, rng: np.random.Generator, noise_rows: int
) -> av.VideoFrame:
    """A grey yuv420p frame with ``noise_rows`` of fresh noise at the bottom, stamped on top."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        np.frombuffer(plane, np.uint8)[:] = 128
    luma = np.frombuffer(frame.planes[0], np.uint8).reshape(height, -1)
    luma[height - noise_rows :] = rng.integers(0, 256, (noise_rows, luma.shape[1]), np.uint8)
    write_stamp(frame, counter, NOW_MS + counter * 33)
    return frame


@pytest.mark.parametrize(
    ("width", "height", "bitrate", "noise"),
    [
        # Fresh noise over the whole picture below the band: the worst case for an encoder.
        (640, 480, 1_000_000, 1.0),
        (320, 240, 1_000_000, 1.0),
        # Low bitrates with noise over half the picture.
        (640, 480, 300_000, 0.5),
        (320, 240, 150_000, 0.5),
    ],
)
def test_round_trip_through_libx264(width: int, height: int, bitrate: int, noise: float) -> None:
    rng = np.random.default_rng(7)
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.bit_rate = bitrate
    encoder.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    decoder = av.CodecContext.create("h264", "r")
    read: list[Stamp | None] = []
    for counter in range(60):
        noise_rows = int((height - stamp_band_height(height)) * noise)
        frame = stamped_frame(width, height, counter, rng, noise_rows)
        frame.pts = counter
        for packet in encoder.encode(frame):
            read.extend(read_stamp(decoded) for decoded in decoder.decode(packet))
    expected = [Stamp(c, NOW_MS + c * 33) for c in range(len(read))]
    assert len(read) == 60
    wrong = [(r, e) for r, e in zip(read, expected, strict=True) if r is not None and r != e]
    assert wrong == []
    assert read.count(None) <= (0 if bitrate >= 1_000_000 else 3)


def test_every_single_block_flip_is_refused() -> None:
    luma = np.full((240, 320), 128, np.uint8)
    write_stamp(luma, 12345, NOW_MS)
    assert read_stamp(luma) == Stamp(12345, NOW_MS)
    xs = [i * 320 // COLUMNS for i in range(COLUMNS + 1)]
    ys = [i * 240 // GRID_ROWS for i in range(ROWS + 1)]
    for row in range(ROWS):
        for col in range(COLUMNS):
            damaged = luma.copy()
            block = damaged[ys[row] : ys[row + 1], xs[col] : xs[col + 1]]
            block[:] = 251 - block  # black <-> white
            assert read_stamp(damaged) is None, (row, col)


def test_ambiguous_block_is_refused() -> None:
    luma = np.zeros((480, 640), np.uint8)
    write_stamp(luma, 1, NOW_MS)
    luma[0:16, 40:80] = 128  # one block neither black nor white
    assert read_stamp(luma) is None


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_and_noise_images_have_no_stamp(value: int) -> None:
    assert read_stamp(np.full((240, 320), value, np.uint8)) is None
    rng = np.random.default_rng(value)
    assert read_stamp(rng.integers(0, 256, (240, 320), dtype=np.uint8)) is None


def test_binary_noise_never_reads_as_a_stamp() -> None:
    # Random clean black/white blocks pass the per-block check; only the CRC stops them.
    rng = np.random.default_rng(3)
    false = 0
    for _ in range(500):
        bits = rng.integers(0, 2, (GRID_ROWS, COLUMNS), dtype=np.uint8)
        luma = np.kron(bits * 219 + 16, np.ones((8, 20), np.uint8)).astype(np.uint8)
        false += read_stamp(luma) is not None
    assert false <= 1  # CRC-16: about 500 / 65536 expected


def test_values_wrap_to_their_field_sizes() -> None:
    luma = np.zeros((120, 160), np.uint8)
    write_stamp(luma, 2**32 + 5, 2**48 + 9)
    assert read_stamp(luma) == Stamp(5, 9)


def test_reads_bgr_arrays_frames_and_rescaled_copies() -> None:
    frame = av.VideoFrame(640, 480, "yuv420p")
    for plane in frame.planes:
        np.frombuffer(plane, np.uint8)[:] = 90
    write_stamp(frame, 777, NOW_MS)
    assert read_stamp(frame) == Stamp(777, NOW_MS)
    bgr = frame.to_ndarray(format="bgr24")
    assert read_stamp(bgr) == Stamp(777, NOW_MS)
    assert read_stamp(frame.reformat(format="bgr24")) == Stamp(777, NOW_MS)
    assert read_stamp(frame.reformat(format="rgb24")) == Stamp(777, NOW_MS)
    assert read_stamp(frame.reformat(width=320, height=240)) == Stamp(777, NOW_MS)
    assert read_stamp(frame.reformat(format="rgba")) == Stamp(777, NOW_MS)
    # The chroma under the band is neutral, so the band is grey, not tinted.
    cb = np.frombuffer(frame.planes[1], np.uint8).reshape(240, -1)
    assert (cb[: stamp_band_height(480) // 2] == 128).all()


def test_too_small_or_wrong_input() -> None:
    with pytest.raises(InvalidArgument, match="too small"):
        write_stamp(np.zeros((40, 40), np.uint8), 1, 1)
    with pytest.raises(InvalidArgument, match="uint8"):
        write_stamp(np.zeros((240, 320), np.float32), 1, 1)
    with pytest.raises(InvalidArgument, match="yuv420p"):
        write_stamp(av.VideoFrame(320, 240, "rgb24"), 1, 1)
    assert read_stamp(np.zeros((40, 40), np.uint8)) is None
    assert read_stamp(np.zeros((240, 320, 4), np.uint8)) is None
