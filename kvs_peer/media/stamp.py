"""A frame counter and capture time drawn into the pixels of a video frame. Pure (numpy only).

The stamp is a band across the top of the luma plane: a grid of ``COLUMNS`` x ``ROWS`` large
black or white blocks, one bit each (96 bits: a 32-bit counter, a 48-bit capture time in
milliseconds and a CRC-16). The blocks are sized relative to the frame (``1/16`` of the width,
``1/30`` of the height), so they survive H.264 at ordinary live bitrates and a decoder can read a
rescaled copy. A read returns ``None`` rather than a wrong number when the band is damaged:
every block must be clearly black or clearly white and the CRC must match.

This module imports neither av nor aiortc. ``av.VideoFrame`` objects are handled by duck typing
(``.planes``, ``.format.name``, ``.width``, ``.height``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgument

__all__ = [
    "COLUMNS",
    "ROWS",
    "Stamp",
    "read_stamp",
    "stamp_band_height",
    "write_stamp",
]

COLUMNS = 16
ROWS = 6
# A block is 1/GRID_ROWS of the frame height, so the band covers ROWS/GRID_ROWS of it.
GRID_ROWS = 30
MIN_WIDTH = 64
MIN_HEIGHT = 60

_BLACK = 16
_WHITE = 235
# Block means between these two are "neither black nor white": the read is refused.
_DARK_MAX = 85
_LIGHT_MIN = 165

_COUNTER_BITS = 32
_TIME_BITS = 48
_PAYLOAD_BYTES = (_COUNTER_BITS + _TIME_BITS) // 8
# Whitening keeps flat or regular pictures (all black, stripes) from looking like a stamp.
_MASK = bytes.fromhex("a53c96e15a0ff0c3691e87d2")

# Luma planes of these formats are plane 0 with one byte per pixel.
_PLANAR_8BIT = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "nv12",
        "nv21",
        "gray",
    }
)
_NEUTRAL_CHROMA = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a stamp carries.

    Attributes:
        counter: frame counter, modulo 2**32.
        timestamp_ms: capture time in milliseconds (e.g. ``int(time.time() * 1000)``),
            modulo 2**48.
    """

    counter: int
    timestamp_ms: int


def stamp_band_height(height: int) -> int:
    """Rows of pixels (from the top) that the stamp covers in a frame of ``height`` rows."""
    return _edges(height, GRID_ROWS)[ROWS]


def write_stamp(image: Any, counter: int, timestamp_ms: int) -> None:
    """Draw a stamp into ``image`` in place.

    Args:
        image: a 2-D ``uint8`` numpy luma plane (height x width), or an ``av.VideoFrame`` in an
            8-bit planar YUV or gray format (its luma plane is written; the chroma under the
            band is set to neutral grey).
        counter: frame counter; stored modulo 2**32.
        timestamp_ms: capture time in milliseconds; stored modulo 2**48.

    Raises:
        InvalidArgument: the image is too small, not 8-bit luma, or a frame format without a
            luma plane (convert to yuv420p first).
    """
    bits = _encode_bits(counter, timestamp_ms)
    if hasattr(image, "planes"):
        luma = _frame_luma(image, writable=True)
        if image.format.name in _NEUTRAL_CHROMA:
            band = stamp_band_height(image.height)
            for plane in image.planes[1:3]:
                chroma = _plane_array(plane)
                rows = -(-band * chroma.shape[0] // image.height)
                chroma[:rows] = 128
    else:
        luma = _check_luma(image)
    _draw_bits(luma, bits)


def read_stamp(image: Any) -> Stamp | None:
    """Read a stamp back.

    Args:
        image: an ``av.VideoFrame`` (8-bit YUV, gray, bgr24 and rgb24 are read without
            conversion; other formats are converted to gray), a 2-D ``uint8`` luma array, or
            a height x width x 3 array in BGR order (OpenCV convention).

    Returns:
        The stamp, or ``None`` if the band is missing, damaged or the image is too small.
    """
    try:
        if hasattr(image, "planes"):
            name = image.format.name
            if name in _PLANAR_8BIT:
                luma = _frame_luma(image, writable=False)
            elif name in ("bgr24", "rgb24"):
                packed = _plane_array(image.planes[0], channels=3)
                luma = _luma_from_array(packed if name == "bgr24" else packed[..., ::-1])
            else:
                # Converts through a converter cached on the frame: not while another thread
                # converts the same frame.
                luma = image.to_ndarray(format="gray")
        else:
            luma = _luma_from_array(image)
    except InvalidArgument:
        return None
    bits = _sample_bits(luma)
    if bits is None:
        return None
    return _decode_bits(bits)


def _edges(size: int, parts: int) -> list[int]:
    return [i * size // parts for i in range(parts + 1)]


def _check_luma(array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype != np.uint8:
        raise InvalidArgument("a stamp needs a 2-D uint8 luma array or an av.VideoFrame")
    height, width = array.shape
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise InvalidArgument(
            f"frame {width}x{height} is too small for a stamp (at least {MIN_WIDTH}x{MIN_HEIGHT})"
        )
    return array


def _plane_array(plane: Any, channels: int = 1) -> np.ndarray:
    # Planes are padded to line_size bytes per row; keep only the visible width.
    raw = np.frombuffer(plane, np.uint8)
    rows = raw[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)
    if channels == 1:
        return rows[:, : plane.width]
    return rows[:, : plane.width * channels].reshape(plane.height, plane.width, channels)


def _frame_luma(frame: Any, *, writable: bool) -> np.ndarray:
    name = frame.format.name
    if name not in _PLANAR_8BIT:
        raise InvalidArgument(f"cannot stamp a {name} frame in place: convert it to yuv420p first")
    luma = _plane_array(frame.planes[0])
    if writable and not luma.flags.writeable:
        raise InvalidArgument("the frame's luma plane is read-only")
    return _check_luma(luma)


def _luma_from_array(array: Any) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3:
        band = stamp_band_height(array.shape[0])
        top = array[:band].astype(np.float32)
        luma = np.zeros(array.shape[:2], np.uint8)
        # BT.601 weights; only the band is converted because only the band is read.
        luma[:band] = np.clip(
            0.114 * top[..., 0] + 0.587 * top[..., 1] + 0.299 * top[..., 2], 0, 255
        ).astype(np.uint8)
        return _check_luma(luma)
    return _check_luma(array)


def _crc16(data: bytes) -> int:
    # CRC-16/CCITT-FALSE; 12 bytes per frame, so a table is not worth it.
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _encode_bits(counter: int, timestamp_ms: int) -> np.ndarray:
    payload = (counter % (1 << _COUNTER_BITS)).to_bytes(4, "big") + (
        timestamp_ms % (1 << _TIME_BITS)
    ).to_bytes(6, "big")
    message = payload + _crc16(payload).to_bytes(2, "big")
    whitened = bytes(a ^ b for a, b in zip(message, _MASK, strict=True))
    return np.unpackbits(np.frombuffer(whitened, np.uint8))


def _decode_bits(bits: np.ndarray) -> Stamp | None:
    whitened = np.packbits(bits).tobytes()
    message = bytes(a ^ b for a, b in zip(whitened, _MASK, strict=True))
    payload, crc = message[:_PAYLOAD_BYTES], message[_PAYLOAD_BYTES:]
    if _crc16(payload) != int.from_bytes(crc, "big"):
        return None
    return Stamp(
        counter=int.from_bytes(payload[:4], "big"),
        timestamp_ms=int.from_bytes(payload[4:], "big"),
    )


def _draw_bits(luma: np.ndarray, bits: np.ndarray) -> None:
    height, width = luma.shape
    xs, ys = _edges(width, COLUMNS), _edges(height, GRID_ROWS)
    for index, bit in enumerate(bits):
        row, col = divmod(index, COLUMNS)
        luma[ys[row] : ys[row + 1], xs[col] : xs[col + 1]] = _WHITE if bit else _BLACK


def _sample_bits(luma: np.ndarray) -> np.ndarray | None:
    height, width = luma.shape
    xs, ys = _edges(width, COLUMNS), _edges(height, GRID_ROWS)
    bits = np.empty(COLUMNS * ROWS, np.uint8)
    for row in range(ROWS):
        # The inner half of each block: its edges ring after compression and scaling.
        y0, y1 = ys[row], ys[row + 1]
        qy = (y1 - y0) // 4
        strip = luma[y0 + qy : y1 - qy].astype(np.float32)
        for col in range(COLUMNS):
            x0, x1 = xs[col], xs[col + 1]
            qx = (x1 - x0) // 4
            mean = float(strip[:, x0 + qx : x1 - qx].mean())
            if _DARK_MAX < mean < _LIGHT_MIN:
                return None
            bits[row * COLUMNS + col] = mean >= _LIGHT_MIN
    return bits
