"""SignerAccess never shows a password given in the signer URL (``https://user:pass@host``) or
the signature of the URL it hands out, in errors or logs; its errors say what to check."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from kvs_peer.access import SignerAccess
from kvs_peer.errors import InvalidArgument, SignerError
from kvs_peer.protocol import Role

PASSWORD = "pa55word"
SIGNATURE = "5ec7e75160a7u7e"
SIGNED = (
    "wss://v-1.kinesisvideo.us-west-2.amazonaws.com/?X-Amz-ChannelARN=arn"
    f"&X-Amz-Signature={SIGNATURE}"
)

Serve = Callable[[dict[str, Any]], Awaitable[str]]


def _with_password(base: str) -> str:
    return base.replace("http://", f"http://ops:{PASSWORD}@", 1)


@pytest.fixture
async def signer() -> AsyncIterator[Serve]:
    """``serve(body)``: the base URL of a signer answering every request with JSON ``body``."""
    runners: list[web.AppRunner] = []

    async def start(body: dict[str, Any]) -> str:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/kinesis-video-url", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def test_a_bad_scheme_is_refused_without_the_password() -> None:
    with pytest.raises(InvalidArgument, match="must start with http:// or https://") as caught:
        SignerAccess(f"ftp://ops:{PASSWORD}@signer.example", "cam", Role.MASTER)
    assert PASSWORD not in str(caught.value) and "ops:REDACTED@signer.example" in str(caught.value)


async def test_an_unreachable_signer_is_named_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    access = SignerAccess(_with_password("http://127.0.0.1:9"), "cam", Role.MASTER, timeout=5)
    with pytest.raises(SignerError) as caught:
        await access()
    message = str(caught.value)
    assert caught.value.status == 0
    assert "could not reach the signer at http://ops:REDACTED@127.0.0.1:9" in message
    assert "check the URL" in message
    assert "refused (nothing listens there)" in message and "object at" not in message
    assert PASSWORD not in message and PASSWORD not in caplog.text


async def test_a_response_without_url_says_what_to_check(signer: Serve) -> None:
    base = await signer({"configuration": {"iceServers": []}})
    access = SignerAccess(_with_password(base), "cam", Role.MASTER)
    with pytest.raises(SignerError, match="answered without a signed 'url'") as caught:
        await access()
    assert "`kvs-peer signer`" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_the_signed_url_is_logged_redacted(
    signer: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kvs_peer")
    base = await signer({"url": SIGNED, "configuration": {"iceServers": []}})
    access = SignerAccess(_with_password(base), "cam", Role.MASTER)
    assert await access() == SIGNED
    assert "signer handed out" in caplog.text and "X-Amz-Signature=REDACTED" in caplog.text
    assert SIGNATURE not in caplog.text and PASSWORD not in caplog.text
