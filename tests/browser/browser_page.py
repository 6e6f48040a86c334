"""Python side of the browser test page: finding Chromium, serving the page, driving it.

Plain helpers imported by name (like ``from support import MS``); the fixtures live in
``conftest.py`` next to it.

Locally the browser tests skip when Chromium, Playwright or the SDK is missing; with
``KVS_PEER_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead.

The page (``kvs_page.html`` + ``kvs_page.js``) and the pinned SDK bundle are served by the
emulator's own aiohttp app, so page, control plane and ``wss://`` signaling share one https
origin (a secure context, as ``getUserMedia`` requires) and one certificate. The JS SDK only
connects to ``wss://``; Chromium is told to accept exactly the emulator's key
(``--ignore-certificate-errors-spki-list=<sha256 of its SPKI>``), not every certificate error.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np
import pytest
from aiohttp import web

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.protocol import Role

HERE = Path(__file__).resolve().parent
PAGE_PATH = "/kvs_page.html"
CHANNEL = "browser-interop"
BROWSER_VIEWER = "browser-viewer"
REQUIRE_BROWSER = os.environ.get("KVS_PEER_REQUIRE_BROWSER") == "1"

FAKE_MEDIA_PERMISSION = "--use-fake-ui-for-media-stream"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    FAKE_MEDIA_PERMISSION,
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)
SHOW_HOST_IPS = "--disable-features=WebRtcHideLocalIpsWithMdns"
"""Turns off mDNS obfuscation of host candidates (``<uuid>.local`` by default)."""


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail when CI requires the browser tests to run."""
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason} (KVS_PEER_REQUIRE_BROWSER=1: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str:
    """Debian's Chromium (``KVS_PEER_CHROMIUM`` overrides the path), or skip/fail."""
    path = os.environ.get("KVS_PEER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        unavailable(f"Chromium not found at {path}: apt-get install chromium")
    return path


def require_network_interface() -> None:
    """Skip/fail on a host whose only interface is loopback.

    Chromium gathers no ICE candidates on loopback (and aioice none either, unless asked), so
    no browser peer connection could ever connect there.
    """
    from aioice.ice import get_host_addresses

    if not get_host_addresses(use_ipv4=True, use_ipv6=True):
        unavailable(
            "this host has no network interface besides loopback, where Chromium gathers no ICE "
            "candidates: run the browser tests where eth0 (or any non-loopback address) exists"
        )


def chromium_args(spki_sha256: str, *, hide_host_ips: bool = False) -> list[str]:
    """Launch flags, trusting the emulator's certificate key.

    Args:
        spki_sha256: base64 SHA-256 of the emulator certificate's SubjectPublicKeyInfo.
        hide_host_ips: keep Chromium's default for a page without media permission, which
            sends host candidates as ``<uuid>.local`` mDNS names. A media permission reveals
            the real addresses and ``--use-fake-ui-for-media-stream`` grants it up front, so
            that flag is left out in this mode (``getUserMedia`` is then unavailable).
            Otherwise ``--disable-features=WebRtcHideLocalIpsWithMdns`` is added as well.
    """
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_sha256}"]
    if hide_host_ips:
        args.remove(FAKE_MEDIA_PERMISSION)
    else:
        args.append(SHOW_HOST_IPS)
    return args


def add_page_routes(app: web.Application, sdk_bundle: Path) -> None:
    """Serve the test page, its script and the SDK bundle (call before the app starts)."""
    files = {
        PAGE_PATH: HERE / "kvs_page.html",
        "/kvs_page.js": HERE / "kvs_page.js",
        "/sdk/kvs-webrtc.min.js": sdk_bundle,
    }

    def serve(path: Path) -> Any:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path, headers={"Cache-Control": "no-store"})

        return handler

    for route, path in files.items():
        app.router.add_get(route, serve(path))


async def page_options(
    kvs: LocalKvs,
    resolver: ChannelResolver,
    channel: str,
    role: Role,
    *,
    client_id: str | None = None,
    data_channel: bool = False,
) -> dict[str, Any]:
    """What ``kvsTest.startViewer/startMaster`` need: endpoint, ARN and a presigned URL."""
    resolved = await resolver.resolve(channel, role, client_id=client_id)
    return {
        "channelArn": resolved.arn,
        "endpoint": resolved.wss_endpoint,
        "region": kvs.region,
        "clientId": client_id,
        "signedUrl": resolver.sign(resolved, client_id=client_id),
        # Never the browser's default STUN servers: the tests stay off the internet.
        "iceServers": [s.to_json() for s in resolved.ice_servers],
        "dataChannel": data_channel,
    }


def decode_png(data_url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL as a BGR array (OpenCV order)."""
    header, _, payload = data_url.partition(",")
    assert header == "data:image/png;base64", f"not a PNG data URL: {header[:40]!r}"
    image = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the page's PNG did not decode"
    return image


@dataclass
class BrowserPeer:
    """One test page in one browser context."""

    page: Any  # playwright.async_api.Page
    console: list[str] = field(default_factory=list)

    async def state(self) -> dict[str, Any]:
        return await self.page.evaluate("() => kvsTest.state")

    async def start_viewer(self, options: dict[str, Any]) -> None:
        await self.page.evaluate("(o) => kvsTest.startViewer(o)", options)

    async def start_master(self, options: dict[str, Any]) -> None:
        await self.page.evaluate("(o) => kvsTest.startMaster(o)", options)

    async def send(self, text: str) -> int:
        return int(await self.page.evaluate("(t) => kvsTest.send(t)", text))

    async def audio_stats(self) -> dict[str, Any] | None:
        """The viewer's inbound audio stats (``mimeType``, packets, samples, ``audioLevel``)."""
        return await self.page.evaluate("() => kvsTest.audioStats()")

    async def grab_frame(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The current remote video frame (BGR) and the page's frame counters."""
        grab = await self.page.evaluate("() => kvsTest.grabFrame()")
        assert grab is not None, f"the page has no video yet: {await self.describe()}"
        return decode_png(grab.pop("png")), grab

    async def wait_for(self, expression: str, timeout: float) -> None:
        """Wait until the JS ``expression`` (over ``s`` = kvsTest.state) is truthy."""
        try:
            await self.page.wait_for_function(
                f"() => {{ const s = kvsTest.state; return {expression}; }}",
                timeout=timeout * 1000,
                polling=20,
            )
        except Exception as exc:
            raise AssertionError(
                f"page never reached {expression!r} in {timeout:g} s: {await self.describe()}"
            ) from exc

    async def describe(self) -> str:
        """The page's state and console, for assertion messages."""
        state = await self.state()
        return json.dumps(state, default=str)[:3000] + f" console: {self.console[-20:]}"

    async def close(self) -> None:
        await self.page.evaluate("() => kvsTest.close()")


OpenPage = Callable[..., Awaitable[BrowserPeer]]


def assert_stamped_frames(
    grabs: list[tuple[Any, object, tuple[int, ...]]], state: dict[str, Any], shape: tuple[int, ...]
) -> None:
    """Frames the page grabbed (``(read_stamp(image), counts, image.shape)``, in order) carry
    readable stamps with advancing counters, all of ``shape``; the page saw no error."""
    stamps = [g[0] for g in grabs]
    assert all(s is not None for s in stamps), f"unreadable stamp in a browser frame: {stamps}"
    counters = [s.counter for s in stamps]
    assert counters == sorted(counters) and counters[0] < counters[-1], counters
    assert all(g[2] == shape for g in grabs)
    assert not state["errors"], state["errors"]
