"""``kvs-peer signer`` through its configure()/run() pair, in-process."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
from pathlib import Path

import aiohttp
import pytest
from signer_helpers import VIEWER_TOKEN
from support import MS, credentials_in_environment, write_signer_config

from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import InvalidArgument
from kvs_peer.signer import hash_token
from kvs_peer.signer.cli import configure, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvs-peer signer")
    configure(parser)
    return parser.parse_args(argv)


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


async def test_missing_or_empty_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--config is required"):
        await run(parse())
    empty = tmp_path / "signer.toml"
    empty.write_text("create_channels = false\n")
    with pytest.raises(InvalidArgument, match="grants nothing"):
        await run(parse("--config", str(empty), "--region", "us-east-1"))


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
