"""The recorder's TOML config: valid files parse, every mistake names its key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import EXIT_USAGE, MS

from kvs_peer.errors import InvalidArgument
from kvs_peer.record.config import load_config, parse_config, parse_size, with_environment

GOOD = """
region = "eu-west-1"
channels = ["garage", "cam-*", "garage"]
processes = 2

[output]
dir = "spool"
segment_seconds = 5
max_bytes = "2GiB"
max_age = 3600

[s3]
bucket = "my-recordings"
prefix = "/site-1/"
storage_class = "STANDARD_IA"
"""


def test_a_full_config_parses(tmp_path: Path) -> None:
    path = tmp_path / "recorder.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.channels == ("garage", "cam-*")
    assert config.exact_channels == ("garage",)
    assert config.globs == ("cam-*",)
    assert config.output.dir == tmp_path / "spool"
    assert config.output.segment_seconds == 5
    assert config.output.max_bytes == 2 * 1024**3
    assert config.s3.region == "eu-west-1"
    assert config.s3.key("garage", "20250101T000000.000Z.mkv") == (
        "site-1/garage/20250101T000000.000Z.mkv"
    )
    assert config.processes == 2


def test_sizes() -> None:
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size(10_000_000) == 10_000_000
    with pytest.raises(InvalidArgument, match="not a size"):
        parse_size("lots")


def _mutate(change: str) -> dict:
    data = tomllib.loads(GOOD)
    exec(change, {}, {"data": data})
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("data['segment_second'] = 5", r"config: unknown key segment_second"),
        ("data['output']['segment_second'] = 5", r"output: unknown key segment_second"),
        ("data['s3']['bukket'] = 'x'", r"s3: unknown key bukket"),
        ("data['token'] = 'abc'", r"token: keep the signer token out"),
        ("del data['channels']", r"missing 'channels'"),
        ("data['channels'] = []", r"channels: must be a non-empty list"),
        ("data['channels'] = ['cam 1']", r"channels: invalid channel name 'cam 1'"),
        ("data['channels'] = ['..']", r"channels: '..' cannot be recorded"),
        (
            "data['channels'] = ['cam/*']",
            r"channels: 'cam/\*' is not a channel glob: use 1-256 characters from a-z",
        ),
        ("data['channels'] = ['c*' * 129]", r"is not a channel glob"),
        ("del data['s3']", r"missing the \[s3\] table"),
        ("del data['s3']['bucket']", r"s3: missing 'bucket'"),
        ("data['s3']['bucket'] = 's3://b/x'", r"s3.bucket: 's3://b/x' is not a bucket name"),
        ("data['s3']['storage_class'] = 'COLD'", r"s3.storage_class: 'COLD' is not"),
        ("data['s3']['endpoint_url'] = 'localhost:9000'", r"s3.endpoint_url: must be an http"),
        ("data['output']['segment_seconds'] = 0.5", r"output.segment_seconds: must be from 1"),
        ("data['output']['max_bytes'] = 100", r"output.max_bytes: must be at least 1 MiB"),
        ("data['output']['audio'] = 'yes'", r"output.audio: must be true or false"),
        ("del data['output']['dir']", r"output: missing 'dir'"),
        ("data['processes'] = 0", r"processes: must be a whole number from 1"),
        ("data['token_file'] = 't'", r"token_file: only makes sense with signer_url"),
        (
            "data['signer_url'] = 'https://signer.example.com'",
            r"channels: globs need ListSignalingChannels",
        ),
    ],
)
def test_mistakes_name_the_key(change: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_config(_mutate(change))


def test_cli_refuses_a_bad_config_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "recorder.toml"
    path.write_text(GOOD.replace("segment_seconds = 5", "segment_secs = 5"))
    result = subprocess.run(
        [sys.executable, "-m", "kvs_peer", "record", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60_000 * MS,
    )
    assert result.returncode == EXIT_USAGE  # as `master --config` and argparse
    assert "output: unknown key segment_secs" in result.stderr
    assert str(path) in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "kvs_peer", "record", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60_000 * MS,
    )
    assert missing.returncode == EXIT_USAGE
    assert "not found: pass --config" in missing.stderr


def test_glob_characters_are_channel_name_characters() -> None:
    # Wildcards next to every character a channel name may hold ('-' last, where a class
    # could read it as a range).
    data = _mutate("data['channels'] = ['cam-[0-9]?_.*', '[!x]-*', '*-']")
    assert parse_config(data).globs == ("cam-[0-9]?_.*", "[!x]-*", "*-")


def test_the_environment_gives_the_endpoint_the_file_does_not() -> None:
    env = {"KVS_PEER_ENDPOINT_URL": "http://127.0.0.1:4577"}
    config = with_environment(parse_config(tomllib.loads(GOOD)), env)
    assert config.endpoint_url == "http://127.0.0.1:4577"
    assert config.s3.endpoint_url is None  # the control plane's, not S3's
    in_file = parse_config(_mutate("data['endpoint_url'] = 'https://kvs.example.com'"))
    assert with_environment(in_file, env).endpoint_url == "https://kvs.example.com"
    signer = parse_config(
        _mutate("data['signer_url'] = 'https://signer.example.com'; data['channels'] = ['a']")
    )
    assert with_environment(signer, env).endpoint_url is None
    assert with_environment(parse_config(tomllib.loads(GOOD)), {}).endpoint_url is None
    with pytest.raises(InvalidArgument, match="KVS_PEER_ENDPOINT_URL: must be an http"):
        with_environment(parse_config(tomllib.loads(GOOD)), {"KVS_PEER_ENDPOINT_URL": "kvs:1"})
