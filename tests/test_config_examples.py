"""``--config-example``: each config-reading command prints a commented file that its own
reader accepts, and a missing file's error names that option (a pip install has no docs/)."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvs_peer.cli import build_parser
from kvs_peer.errors import InvalidArgument
from kvs_peer.masterconfig import CONFIG_EXAMPLE as MASTER_EXAMPLE
from kvs_peer.masterconfig import load_master_config, parse_master_config
from kvs_peer.record.config import CONFIG_EXAMPLE as RECORD_EXAMPLE
from kvs_peer.record.config import load_config as load_record_config
from kvs_peer.signer.config import CONFIG_EXAMPLE as SIGNER_EXAMPLE
from kvs_peer.signer.config import load_config as load_signer_config

# The signer's example holds a placeholder where `hash-token` output goes.
A_TOKEN_HASH = hashlib.sha256(b"a token of at least sixteen characters").hexdigest()

COMMANDS: list[tuple[str, str, Callable[[Path], Any]]] = [
    ("master", MASTER_EXAMPLE, load_master_config),
    ("record", RECORD_EXAMPLE, load_record_config),
    ("signer", SIGNER_EXAMPLE, load_signer_config),
]


@pytest.mark.parametrize(("command", "example", "load"), COMMANDS)
def test_the_printed_example_is_a_file_the_command_reads(
    command: str,
    example: str,
    load: Callable[[Path], Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `record` requires --config, and --config-example must still work without it.
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--config-example"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert printed == example
    assert printed.count("#") >= 10, "the example explains its keys"
    path = tmp_path / f"{command}.toml"
    path.write_text(printed.replace("<64 hex digits>", A_TOKEN_HASH))
    config = load(path)
    assert config is not None


def test_the_master_example_reads_as_its_comments_say() -> None:
    (front, garage) = parse_master_config(tomllib.loads(MASTER_EXAMPLE)).cameras
    assert (front.channel, front.bitrate, front.preset) == ("front-door", 800_000, "ultrafast")
    assert (garage.channel, garage.width, garage.height, garage.fps) == ("garage", 1280, 720, 15)


@pytest.mark.parametrize(("command", "example", "load"), COMMANDS)
def test_a_missing_file_points_to_the_example(
    command: str, example: str, load: Callable[[Path], Any], tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        load(tmp_path / "absent.toml")
    message = str(raised.value)
    assert "absent.toml' not found" in message
    assert f"`kvs-peer {command} --config-example` prints a commented example" in message
    assert "docs/" not in message
