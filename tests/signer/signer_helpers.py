"""A real signer service on 127.0.0.1 in front of a real local KVS emulator.

Plain helpers the signer tests import by name (like ``from support import MS``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    EmulatorConfig,
    LocalKvs,
)
from kvs_peer.signer import create_app, hash_token, parse_config, serve

# Test tokens: random-looking, long enough for `hash-token`, never used anywhere else.
MASTER_TOKEN = "mst-6f1c0d7e9a2b4c58a1e3"
VIEWER_TOKEN = "vwr-0b9e2a71c4d85f36e2a9"
OTHER_TOKEN = "oth-7d3a9c1e5b2f48a06c1d"
UNKNOWN_TOKEN = "unk-2c8e4a6b0d1f3e5a7c9b"


def clear_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Leave an agent process nothing to find AWS credentials with (env, files, IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def token(name: str, value: str, channels: list[str], roles: list[str], **extra: Any) -> dict:
    """One ``[[tokens]]`` table, as the TOML file would hold it."""
    return {
        "name": name,
        "sha256": hash_token(value),
        "channels": channels,
        "roles": roles,
        **extra,
    }


def standard_tokens() -> list[dict]:
    """camera (MASTER on cam-*), viewer app (VIEWER on cam-*), other (both, on other-*)."""
    return [
        token("camera", MASTER_TOKEN, ["cam-*"], ["MASTER"]),
        token("viewer-app", VIEWER_TOKEN, ["cam-*"], ["VIEWER"]),
        token("other", OTHER_TOKEN, ["other-*"], ["MASTER", "VIEWER"]),
    ]


def emulator_resolver(kvs: LocalKvs, **kwargs: Any) -> ChannelResolver:
    """A resolver with the emulator's credentials passed explicitly (never from the env)."""
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name=kvs.region,
    )
    return ChannelResolver(
        region=kvs.region, endpoint_url=kvs.endpoint_url, session=session, **kwargs
    )


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass
class Stack:
    kvs: LocalKvs
    resolver: ChannelResolver
    url: str
    http: aiohttp.ClientSession

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        async with self.http.request(
            method, self.url + path, params=params, headers=headers
        ) as response:
            text = await response.text()
            try:
                body = await response.json(content_type=None) if text else None
            except ValueError:
                body = text
            return Response(response.status, response.headers, body)

    async def get_url(
        self,
        channel: str | None = "cam-1",
        role: str | None = "VIEWER",
        *,
        bearer: str | None = None,
        client_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        params = {}
        if channel is not None:
            params["channel"] = channel
        if role is not None:
            params["role"] = role
        if client_id is not None:
            params["clientId"] = client_id
        all_headers = dict(headers or {})
        if bearer is not None:
            all_headers["Authorization"] = f"Bearer {bearer}"
        return await self.request("GET", "/kinesis-video-url", params=params, headers=all_headers)


@contextlib.asynccontextmanager
async def signer_stack(
    config: Mapping[str, Any] | None = None,
    *,
    emulator: EmulatorConfig | None = None,
    channels: tuple[str, ...] = ("cam-1",),
    clock: Callable[[], float] = time.monotonic,
    resolver: Callable[[LocalKvs], ChannelResolver] = emulator_resolver,
) -> AsyncIterator[Stack]:
    """Emulator with ``channels`` + signer app (``config`` as the TOML mapping) + HTTP client."""
    config = {"tokens": standard_tokens()} if config is None else config
    async with LocalKvs(emulator or EmulatorConfig()) as kvs:
        for name in channels:
            kvs.create_channel(name)
        res = resolver(kvs)
        app = create_app(parse_config(config), res, clock=clock)
        async with serve(app, host="127.0.0.1", port=0) as url, aiohttp.ClientSession() as http:
            yield Stack(kvs, res, url, http)
