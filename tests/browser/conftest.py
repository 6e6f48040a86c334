"""Fixtures of the browser tests: the SDK bundle, Chromium, and the emulator serving the page.

Helpers and constants are in ``browser_page.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_page import (
    CHANNEL,
    PAGE_PATH,
    BrowserPeer,
    OpenPage,
    add_page_routes,
    chromium_args,
    find_chromium,
    require_network_interface,
    unavailable,
)
from js_sdk import SdkUnavailable, ensure_sdk
from support import MS

from kvs_peer.emulator import CertificateBundle, EmulatorConfig, LocalKvs, generate_certificate

try:
    from playwright.async_api import async_playwright
except ImportError:  # the open_page fixture skips (or fails, in CI) with the reason
    async_playwright = None


@pytest.fixture(scope="module")
def sdk_bundle() -> Path:
    """The verified ``kvs-webrtc.min.js`` from tests/browser/vendor/ (never fetched here)."""
    try:
        return ensure_sdk(fetch=None)
    except SdkUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    require_network_interface()
    return find_chromium()


@pytest.fixture(scope="module")
def certificate() -> CertificateBundle:
    """One certificate per module, so every emulator matches Chromium's SPKI allowance."""
    return generate_certificate()


@pytest.fixture
async def kvs(
    emulator_config: EmulatorConfig, certificate: CertificateBundle, sdk_bundle: Path
) -> AsyncIterator[LocalKvs]:
    """The emulator over TLS, also serving the test page (overrides tests/conftest.py)."""
    emulator = LocalKvs(emulator_config, tls=certificate)
    add_page_routes(emulator.app, sdk_bundle)
    async with emulator:
        emulator.create_channel(CHANNEL)
        yield emulator


@pytest.fixture
async def open_page(
    chromium_executable: str, certificate: CertificateBundle, kvs: LocalKvs
) -> AsyncIterator[OpenPage]:
    """``await open_page(hide_host_ips=False)`` -> the loaded test page in a fresh Chromium.

    A browser per page keeps per-test launch flags (mDNS on/off) simple; a launch costs about
    0.3 s. Everything is closed at teardown.
    """
    if async_playwright is None:
        unavailable("Playwright for Python is not installed (pip install -e '.[test]')")

    async with async_playwright() as playwright:
        browsers = []

        async def open_page(*, hide_host_ips: bool = False) -> BrowserPeer:
            browser = await playwright.chromium.launch(
                executable_path=chromium_executable,
                headless=True,
                args=chromium_args(certificate.spki_sha256, hide_host_ips=hide_host_ips),
            )
            browsers.append(browser)
            page = await (await browser.new_context()).new_page()
            peer = BrowserPeer(page)
            page.on("console", lambda m: peer.console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: peer.console.append(f"pageerror: {e}"))
            await page.goto(kvs.endpoint_url + PAGE_PATH)
            await page.wait_for_function(
                "() => window.kvsTest !== undefined", timeout=5000 * MS * 1000
            )
            return peer

        try:
            yield open_page
        finally:
            for browser in browsers:
                await browser.close()
