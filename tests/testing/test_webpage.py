"""The emulator's built-in page over HTTP: assets, channel list, signed viewer URLs, refusals."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from support import MS
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from kvs_peer.emulator import LocalKvs
from kvs_peer.protocol import decode_message
from kvs_peer.signing import verify_presigned_url
from kvs_peer.testing import KvsMasterFactory

WAIT = 5000 * MS


async def get(kvs: LocalKvs, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(kvs.endpoint_url + path, ssl=kvs.ssl_context() or True, **kwargs) as r,
    ):
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, r.headers.get("Content-Type", ""), body


async def test_page_and_assets(kvs_emulator: LocalKvs) -> None:
    status, kind, html = await get(kvs_emulator, "/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert '<script src="/_kvs/static/kvs-viewer.js"' in html
    assert '<script src="/_kvs/static/page.js"' in html
    for name, expected in [
        ("kvs-viewer.js", "text/javascript"),
        ("page.js", "text/javascript"),
        ("page.css", "text/css"),
    ]:
        status, kind, text = await get(kvs_emulator, f"/_kvs/static/{name}")
        assert (status, kind.split(";")[0]) == (200, expected), name
        assert text.strip()
    for missing in ("/_kvs/static/server.py", "/_kvs/static/..%2Fserver.py", "/_kvs/nope"):
        status, _, _ = await get(kvs_emulator, missing)
        assert status == 404, missing


async def test_channels_list_presence_from_the_registry(
    kvs_emulator: LocalKvs, kvs_master: KvsMasterFactory
) -> None:
    status, _, body = await get(kvs_emulator, "/_kvs/channels")
    assert (status, body) == (200, {"channels": []})
    arn_b = kvs_emulator.create_channel("b-live")
    arn_a = kvs_emulator.create_channel("a-idle")
    await kvs_master("b-live", width=160, height=120)
    # A failure injected for the app under test is not consumed by the page.
    kvs_emulator.fail_next_api_calls("ListSignalingChannels")
    status, _, body = await get(kvs_emulator, "/_kvs/channels")
    assert status == 200
    rows = [{k: v for k, v in c.items() if k != "createdAt"} for c in body["channels"]]
    assert rows == [
        {"name": "a-idle", "arn": arn_a, "master": False, "viewers": 0},
        {"name": "b-live", "arn": arn_b, "master": True, "viewers": 0},
    ]
    assert all(isinstance(c["createdAt"], float) for c in body["channels"])


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_viewer_url_is_accepted_by_the_emulator(tls: bool) -> None:
    async with LocalKvs(tls=tls) as kvs:
        arn = kvs.create_channel("page")
        status, _, body = await get(kvs, "/_kvs/viewer-url?channel=page&clientId=page-viewer-1")
        assert status == 200
        url = body.pop("url")
        assert body == {
            "channelArn": arn,
            "clientId": "page-viewer-1",
            "region": kvs.region,
            "expiresIn": 299,
        }
        assert url.startswith(("wss://" if tls else "ws://") + "127.0.0.1:")
        verified = verify_presigned_url(
            url, secrets={kvs.config.access_key_id: kvs.config.secret_access_key}, now=kvs.now()
        )
        assert verified.params["X-Amz-ChannelARN"] == arn
        assert verified.params["X-Amz-ClientId"] == "page-viewer-1"
        async with connect(url, ssl=kvs.ssl_context()) as ws:
            async with asyncio.timeout(WAIT):
                await kvs.wait_connected("page", viewers=["page-viewer-1"])
            # The socket is live: the emulator routes to it.
            assert await kvs.send_reconnect_ice_server("page", client_id="page-viewer-1") == 1
            async with asyncio.timeout(WAIT):
                event = decode_message(await ws.recv())
            assert event is not None and type(event).__name__ == "ReconnectIceServer"


async def test_viewer_url_signed_for_the_host_the_page_was_loaded_from(
    kvs_emulator: LocalKvs,
) -> None:
    kvs_emulator.create_channel("by-name")
    # Loaded as http://localhost:PORT/: the URL (and its signature) must name localhost too,
    # since the browser's WebSocket upgrade will carry Host: localhost:PORT.
    host = f"localhost:{kvs_emulator.port}"
    status, _, body = await get(
        kvs_emulator, "/_kvs/viewer-url?channel=by-name&clientId=v", headers={"Host": host}
    )
    assert status == 200
    assert body["url"].startswith(f"ws://{host}/signaling/viewer?")
    async with connect(body["url"]):
        async with asyncio.timeout(WAIT):
            await kvs_emulator.wait_connected("by-name", viewers=["v"])
    # The signature covers the host: the same URL through 127.0.0.1 is refused.
    with pytest.raises(InvalidStatus) as refused:
        async with connect(body["url"].replace("localhost", "127.0.0.1")):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("query", "status", "error", "message"),
    [
        ("", 400, "invalid_argument", "pass ?channel=NAME&clientId=ID"),
        ("?channel=known", 400, "invalid_argument", "pass ?channel=NAME&clientId=ID"),
        ("?channel=known&clientId=a%20b", 400, "invalid_argument", "invalid client id 'a b'"),
        ("?channel=unknown&clientId=v", 404, "channel_not_found", "no channel 'unknown'"),
    ],
)
async def test_viewer_url_bad_input(
    kvs_emulator: LocalKvs, query: str, status: int, error: str, message: str
) -> None:
    kvs_emulator.create_channel("known")
    got_status, _, body = await get(kvs_emulator, f"/_kvs/viewer-url{query}")
    assert (got_status, body["error"]) == (status, error)
    assert message in body["message"]


@pytest.mark.parametrize("path", ["/_kvs/channels", "/_kvs/viewer-url?channel=c&clientId=v"])
async def test_json_routes_refuse_foreign_host_headers(kvs_emulator: LocalKvs, path: str) -> None:
    kvs_emulator.create_channel("c")
    # What a DNS-rebinding page would send: a name of its own resolving to 127.0.0.1.
    status, _, body = await get(kvs_emulator, path, headers={"Host": "attacker.example:4577"})
    assert (status, body["error"]) == (403, "host_not_allowed")
    assert "127.0.0.1 or localhost" in body["message"]


def _non_loopback_address() -> str | None:
    # The source address of the default route; nothing is sent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_json_routes_refuse_other_machines() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with LocalKvs(host="0.0.0.0") as kvs:
        kvs.create_channel("c")
        url = f"http://{address}:{kvs.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/") as page:
                assert page.status == 200  # the page itself is harmless
            for path in ("/_kvs/channels", "/_kvs/viewer-url?channel=c&clientId=v"):
                # Host names loopback, yet the connection comes from another address.
                async with session.get(url + path, headers={"Host": "127.0.0.1"}) as r:
                    body = await r.json()
                assert (r.status, body["error"]) == (403, "loopback_only"), path
                assert "this machine only" in body["message"]
