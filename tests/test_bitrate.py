"""Bit rates as users write them: one parser for ``--bitrate``, the master's TOML file and
the encoder's bounds (kvs_peer.media.presets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvs_peer.cli import build_parser
from kvs_peer.errors import InvalidArgument
from kvs_peer.masterconfig import load_master_config
from kvs_peer.media.encoder import SharedVideoEncoder
from kvs_peer.media.presets import MAX_BITRATE, MIN_BITRATE, parse_bitrate
from kvs_peer.media.sources import TestPatternTrack

WRITTEN = [
    ("1M", 1_000_000),
    ("800k", 800_000),
    ("1.5M", 1_500_000),
    (" 2m ", 2_000_000),
    ("250000", 250_000),
    ("64kbps", 64_000),
    ("3Mbit/s", 3_000_000),
]


@pytest.mark.parametrize(("given", "expected"), WRITTEN)
def test_written_bit_rates(given: str, expected: int) -> None:
    assert parse_bitrate(given) == expected


@pytest.mark.parametrize("given", ["fast", "", "M", "1.5G", "-1M", "0", "nan", "infM", True])
def test_what_is_not_a_bit_rate(given: str | bool) -> None:
    with pytest.raises(ValueError, match=r"is not a bit rate: give bits per second, e\.g\. 800000"):
        parse_bitrate(given)


@pytest.mark.parametrize("given", ["49999", 10, "51M", MAX_BITRATE + 1])
def test_bit_rates_outside_the_encoders_range(given: str | int) -> None:
    with pytest.raises(ValueError, match=r"outside the encoder's range: give 50k to 50M"):
        parse_bitrate(given)


def test_the_range_is_the_encoders() -> None:
    # What the parser accepts the encoder takes, and one step beyond it does not.
    for rate in (MIN_BITRATE, MAX_BITRATE):
        assert parse_bitrate(str(rate)) == rate
        SharedVideoEncoder(TestPatternTrack(), bitrate=rate)
    for rate in (MIN_BITRATE - 1, MAX_BITRATE + 1):
        with pytest.raises(InvalidArgument, match=r"bitrate must be within 50 kbit/s\.\.50 Mbit/s"):
            SharedVideoEncoder(TestPatternTrack(), bitrate=rate)


@pytest.mark.parametrize(("given", "expected"), WRITTEN[:3])
def test_command_line_and_config_file_agree(given: str, expected: int, tmp_path: Path) -> None:
    args = build_parser().parse_args(["master", "--channel", "c", "--bitrate", given])
    path = tmp_path / "cameras.toml"
    path.write_text(f'[[camera]]\nchannel = "c"\nbitrate = "{given}"\n')
    (camera,) = load_master_config(path).cameras
    assert args.bitrate == camera.bitrate == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"fast"', "camera[0].bitrate: 'fast' is not a bit rate"),
        ("1.5", "camera[0].bitrate: must be bits per second"),
        ("true", "camera[0].bitrate: True is not a bit rate"),
        ("20000", "camera[0].bitrate: 20000 is outside the encoder's range"),
    ],
)
def test_config_file_bit_rate_errors_name_the_key(value: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "cameras.toml"
    path.write_text(f'[[camera]]\nchannel = "c"\nbitrate = {value}\n')
    with pytest.raises(InvalidArgument) as raised:
        load_master_config(path)
    assert message in str(raised.value)
    assert path.read_text().endswith(f"bitrate = {value}\n")  # the file is left as it was
