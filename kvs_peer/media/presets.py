"""The video encoder's settings users type (x264 presets, bit rates), in a module light
enough for the CLI and the config readers to import at start-up."""

from __future__ import annotations

from ..errors import InvalidArgument

__all__ = ["BITRATE_EXAMPLES", "MAX_BITRATE", "MIN_BITRATE", "X264_PRESETS", "parse_bitrate"]

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
"""Fastest (least CPU, most bits for the same picture) first."""

MIN_BITRATE = 50_000
"""Lowest video bit rate the encoder takes (bit/s): below it x264 gives an unwatchable picture."""
MAX_BITRATE = 50_000_000
"""Highest video bit rate the encoder takes (bit/s): above H.264 level 4.0's 1080p budget."""

BITRATE_EXAMPLES = "800000, 800k or 1.5M"

_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_bitrate(value: str | int) -> int:
    """A video bit rate as users write it: ``800000``, ``"800k"`` or ``"1.5M"`` (decimal).

    Raises:
        InvalidArgument: (a ``ValueError``) not a bit rate, or outside
            ``MIN_BITRATE``..``MAX_BITRATE``; the message says what is accepted.
    """
    if isinstance(value, bool):
        rate = 0
    elif isinstance(value, int):
        rate = value
    else:
        text = value.strip().lower().removesuffix("bit/s").removesuffix("bps")
        number, suffix = (text[:-1], text[-1]) if text[-1:] in ("k", "m") else (text, "")
        try:
            rate = round(float(number) * _SUFFIXES[suffix])
        except (ValueError, OverflowError):
            rate = 0
    if rate <= 0:
        raise InvalidArgument(
            f"{value!r} is not a bit rate: give bits per second, e.g. {BITRATE_EXAMPLES}"
        )
    if not MIN_BITRATE <= rate <= MAX_BITRATE:
        raise InvalidArgument(
            f"{value!r} is outside the encoder's range: give {MIN_BITRATE // 1000}k to "
            f"{MAX_BITRATE // 1_000_000}M bit/s"
        )
    return rate
