"""``kvs-peer signer`` parsed by the real command line and run in-process (signer.cli.run)."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from signer_helpers import VIEWER_TOKEN
from support import EXIT_USAGE, MS, credentials_in_environment, write_signer_config

from kvs_peer.cli import build_parser
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import InvalidArgument
from kvs_peer.protocol import Role
from kvs_peer.signer import hash_token
from kvs_peer.signer.cli import run
from kvs_peer.signer.config import parse_config


def parse(*argv: str) -> argparse.Namespace:
    """``kvs-peer signer ARGV`` as the command line parses it."""
    return build_parser().parse_args(["signer", *argv])


async def test_hash_token_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(VIEWER_TOKEN + "\n"))
    assert await run(parse("hash-token", "--name", "viewer-app")) == 0
    out = capsys.readouterr().out
    assert f"sha256: {hash_token(VIEWER_TOKEN)}" in out
    assert 'name = "viewer-app"' in out
    assert VIEWER_TOKEN not in out  # the token itself is only printed when generated


@pytest.mark.parametrize(
    ("token", "hint"),
    [("short-token", "shorter than 16"), ("has a space in it, long", "one line of letters")],
)
async def test_hash_token_refuses_weak_or_unsendable_tokens(
    monkeypatch: pytest.MonkeyPatch, token: str, hint: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    with pytest.raises(InvalidArgument, match=hint):
        await run(parse("hash-token"))


async def test_hash_token_generate(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(parse("hash-token", "--generate")) == 0
    out = capsys.readouterr().out
    token = re.search(r"^token:  (\S+)$", out, re.M)[1]
    assert len(token) >= 40
    assert f"sha256: {hash_token(token)}" in out


async def test_hash_token_with_empty_stdin_says_what_to_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(InvalidArgument, match="no token on stdin") as caught:
        await run(parse("hash-token"))
    assert "echo -n TOKEN | kvs-peer signer hash-token --channel garage --role MASTER" in str(
        caught.value
    )
    assert "--generate" in str(caught.value)


async def test_hash_token_snippet_is_a_valid_token_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command the docs and error messages show: its table pastes into a working config.
    monkeypatch.setattr("sys.stdin", io.StringIO(VIEWER_TOKEN + "\n"))
    args = parse("hash-token", "--channel", "garage", "--role", "master", "--name", "cam")
    assert await run(args) == 0
    table = capsys.readouterr().out.partition("\n\n")[2]
    [rule] = parse_config(tomllib.loads(table)).tokens
    assert rule.name == "cam"
    assert rule.channels == ("garage",)
    assert rule.roles == {Role.MASTER}
    assert rule.digest.hex() == hash_token(VIEWER_TOKEN)


@pytest.mark.parametrize(
    ("config", "phrases"),
    [
        (None, ["--config is required", "hash-token --generate", "KVS_PEER_SIGNER_TOKEN"]),
        (
            "create_channels = false\n",
            ["has no token", "[[tokens]]", "hash-token --generate", "KVS_PEER_SIGNER_TOKEN"],
        ),
        ("tokens = 1\n", ["signer config", "tokens: must be an array of tables"]),
        ("", ["has no token"]),
    ],
)
async def test_missing_bad_or_tokenless_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str | None, phrases: list[str]
) -> None:
    argv: list[str] = ["--region", "us-east-1"]
    if config is not None:
        path = tmp_path / "signer.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    assert await run(parse(*argv)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("kvs-peer signer: error: "), err
    for phrase in phrases:
        assert phrase in err, (phrase, err)


async def test_serves_until_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with LocalKvs(EmulatorConfig()) as kvs:
        kvs.create_channel("cam-1")
        credentials_in_environment(monkeypatch, kvs)
        config = write_signer_config(tmp_path, VIEWER_TOKEN)
        args = parse(
            "--config",
            str(config),
            "--port",
            "0",
            "--region",
            kvs.region,
            "--endpoint-url",
            kvs.endpoint_url,
        )
        task = asyncio.create_task(run(args))
        try:
            out = ""
            async with asyncio.timeout(5000 * MS):
                while "listening on" not in out:
                    await asyncio.sleep(0.01)
                    out += capsys.readouterr().out
            url = re.search(r"listening on (\S+)", out)[1]
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{url}/kinesis-video-url",
                    params={"channel": "cam-1", "role": "VIEWER"},
                    headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
                ) as response,
            ):
                body = await response.json()
                assert response.status == 200, body
                assert body["channelARN"] == kvs.channel_arn("cam-1")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
