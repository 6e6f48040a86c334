"""The signer's TOML format: a full file round-trips; every mistake is named. Pure, no I/O
besides tmp files."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from kvs_peer.errors import InvalidArgument
from kvs_peer.protocol import Role
from kvs_peer.signer import hash_token, load_config, parse_config
from kvs_peer.signer.config import DEFAULT_ANONYMOUS_RATE, channel_allowed

DIGEST = "a" * 64

FULL = f"""
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:4577"
create_channels = false
url_expires = 120
request_timeout = 2.5
header_timeout = 65
max_connections_per_address = 8
cors_origins = ["https://App.Example.com", "http://localhost:8080"]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]
static_dir = "web"

[[tokens]]
name = "garage-camera"
sha256 = "{DIGEST.upper()}"
channels = ["garage", "cam-*"]
roles = ["MASTER"]
rate_per_minute = 20
burst = 5
create_channels = true

[[tokens]]
name = "viewers"
sha256 = "{"b" * 64}"
channels = ["cam-*"]
roles = ["viewer", "MASTER"]

[[anonymous]]
channels = ["lobby-*"]
rate_per_minute = 30

[[anonymous]]
channels = ["public"]
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "signer.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.region == "eu-west-1"
    assert config.endpoint_url == "http://127.0.0.1:4577"
    assert config.create_channels is True  # some token may
    assert config.url_expires == 120
    assert (config.request_timeout, config.header_timeout) == (2.5, 65.0)
    assert config.max_connections_per_address == 8
    # Origins are compared exactly, so scheme and host are normalized to lower case.
    assert config.cors_origins == {"https://app.example.com", "http://localhost:8080"}
    assert config.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert config.static_dir == tmp_path / "web"
    camera, viewers = config.tokens
    assert camera.name == "garage-camera"
    assert camera.digest == bytes.fromhex(DIGEST)
    assert camera.channels == ("garage", "cam-*")
    assert camera.roles == {Role.MASTER}
    assert (camera.rate_per_minute, camera.burst) == (20.0, 5.0)
    assert camera.create_channels is True
    assert viewers.roles == {Role.VIEWER, Role.MASTER}
    assert viewers.rate_per_minute is None
    assert viewers.create_channels is False
    lobby, public = config.anonymous
    assert lobby.channels == ("lobby-*",) and lobby.rate_per_minute == 30.0
    assert public.rate_per_minute == DEFAULT_ANONYMOUS_RATE


def test_defaults_are_closed() -> None:
    config = parse_config({})
    assert config.tokens == () and config.anonymous == ()
    assert config.create_channels is False
    assert config.cors_origins == frozenset()
    assert config.trusted_proxies == ()
    assert config.url_expires == 299
    assert (config.request_timeout, config.header_timeout) == (5.0, 10.0)
    assert config.max_connections_per_address == 32


def _token(**over: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "t",
        "sha256": DIGEST,
        "channels": ["cam-*"],
        "roles": ["VIEWER"],
    }
    table.update(over)
    return {k: v for k, v in table.items() if v is not None}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"tokenz": []}, "unknown key tokenz"),
        ({"tokens": {"name": "x"}}, "[[tokens]]"),
        ({"tokens": [_token(rate_limit=3)]}, "tokens[0]: unknown key rate_limit"),
        ({"tokens": [_token(sha256=None)]}, "missing 'sha256'"),
        ({"tokens": [_token(sha256="my-secret-token")]}, "tokens[0].sha256"),
        ({"tokens": [_token(name="has space")]}, "tokens[0].name"),
        ({"tokens": [_token(roles=["ADMIN"])]}, "invalid role 'ADMIN'"),
        ({"tokens": [_token(roles=[])]}, "tokens[0].roles: must not be empty"),
        ({"tokens": [_token(channels="cam-1")]}, "list of strings"),
        ({"tokens": [_token(channels=["cam/*"])]}, "'cam/*' is not a channel glob"),
        ({"tokens": [_token(rate_per_minute=0)]}, "positive number"),
        ({"tokens": [_token(rate_per_minute=True)]}, "must be a number"),
        ({"tokens": [_token(burst=3)]}, "only makes sense with rate_per_minute"),
        ({"tokens": [_token(rate_per_minute=5, burst=0.5)]}, "at least 1"),
        ({"tokens": [_token(), _token(name="u")]}, "same sha256"),
        ({"tokens": [_token(), _token(sha256="c" * 64)]}, "same name"),
        ({"anonymous": [{"channels": ["x"], "roles": ["MASTER"]}]}, "VIEWER only"),
        ({"anonymous": [{"rate_per_minute": 3}]}, "missing 'channels'"),
        ({"cors_origins": ["*"]}, "wildcards are not allowed"),
        ({"cors_origins": ["https://app.example.com/"]}, "not an origin"),
        ({"cors_origins": ["app.example.com"]}, "not an origin"),
        ({"trusted_proxies": ["proxy.local"]}, "not an IP address or network"),
        ({"url_expires": 5}, "url_expires must be from 10 to 3600"),
        ({"url_expires": 86400}, "url_expires must be from 10 to 3600"),
        ({"url_expires": "299"}, "whole number"),
        ({"create_channels": "yes"}, "true or false"),
        # A service-wide switch let anonymous viewers create channels (issue 10).
        ({"create_channels": True}, "per-token permission"),
        ({"tokens": [_token(create_channels="yes")]}, "tokens[0].create_channels"),
        ({"anonymous": [{"channels": ["x"], "create_channels": True}]}, "never create"),
        ({"tokens": [_token(roles=["ma\u017fter"])]}, "invalid role 'ma\u017fter'"),
        ({"tokens": [_token(roles=["v\u0131ewer"])]}, "invalid role 'v\u0131ewer'"),
        ({"request_timeout": 0}, "request_timeout must be from"),
        ({"request_timeout": 600}, "request_timeout must be from"),
        ({"request_timeout": "5"}, "request_timeout: must be a number"),
        ({"header_timeout": 0.001}, "header_timeout must be from"),
        ({"max_connections_per_address": 0}, "at least 1"),
        ({"max_connections_per_address": 2.5}, "whole number"),
        ({"endpoint_url": "127.0.0.1:4577"}, "http:// or https://"),
    ],
)
def test_mistakes_are_named(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_config(data)
    assert expected in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not found: pass --config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("tokens = [\n")
    with pytest.raises(InvalidArgument, match=r"bad\.toml' is not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('create_channels = "yes"\n')
    with pytest.raises(InvalidArgument, match=r"wrong.toml'.*create_channels"):
        load_config(wrong)


def test_hash_token_is_sha256_hex_of_utf8() -> None:
    # Published SHA-256 test vector (FIPS 180-2, "abc").
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token("tök") == hashlib.sha256("tök".encode()).hexdigest()


@pytest.mark.parametrize(
    ("patterns", "channel", "allowed"),
    [
        (["cam-*"], "cam-1", True),
        (["cam-*"], "cam-", True),
        (["cam-*"], "xcam-1", False),  # anchored at the start
        (["cam-?"], "cam-12", False),  # anchored at the end
        (["cam-*"], "CAM-1", False),  # case-sensitive like KVS names
        (["cam-*"], "cam-1/../x", False),  # not a channel name at all
        (["*"], "cam-1/../x", False),
        (["*"], "", False),
        (["cam-[12]"], "cam-2", True),
        (["cam-[!12]"], "cam-2", False),
        (["garage", "cam-*"], "garage", True),
        (["garage"], "garage2", False),  # exact names, never prefixes
    ],
)
def test_channel_globs(patterns: list[str], channel: str, allowed: bool) -> None:
    assert channel_allowed(patterns, channel) is allowed
