"""The emulator's page in a real Chromium: it plays a kvs-peer master's stamped test pattern.

Needs Debian's chromium (``/usr/bin/chromium``, or ``KVS_PEER_CHROMIUM``) and the
``playwright`` package; Playwright never downloads a browser here. Skipped when either is
missing, unless ``KVS_PEER_REQUIRE_BROWSER=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support import MS

from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.media import read_stamp
from kvs_peer.testing import KvsMasterFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("KVS_PEER_CHROMIUM") or "/usr/bin/chromium")
WAIT = 20_000 * MS


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed ({CHROMIUM}); apt-get install chromium"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


@pytest.fixture
async def browser(kvs_emulator: LocalKvs) -> AsyncIterator[Any]:
    """Chromium, trusting exactly the emulator's certificate key when it serves TLS."""
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("KVS_PEER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KVS_PEER_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    certificate = kvs_emulator.certificate
    args = (
        []
        if certificate is None
        else [f"--ignore-certificate-errors-spki-list={certificate.spki_sha256}"]
    )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield chromium
        await chromium.close()


@pytest.fixture(params=["http", "https"])
async def kvs_emulator(
    request: pytest.FixtureRequest, kvs_emulator_config: EmulatorConfig
) -> AsyncIterator[LocalKvs]:
    """The plugin's emulator, overridden to serve plain HTTP and TLS in turn."""
    async with LocalKvs(kvs_emulator_config, tls=request.param == "https") as kvs:
        yield kvs


async def snapshot_stamp(page: Any) -> int | None:
    """The test pattern's frame counter in the picture the page shows now."""
    data_url = await page.evaluate(
        """() => {
            const video = document.getElementById('video');
            const canvas = document.createElement('canvas');
            canvas.width = video.videoWidth;
            canvas.height = video.videoHeight;
            canvas.getContext('2d').drawImage(video, 0, 0);
            return canvas.toDataURL('image/png');
        }"""
    )
    png = base64.b64decode(data_url.split(",", 1)[1])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    stamp = read_stamp(image)
    return None if stamp is None else stamp.counter


async def test_page_plays_a_channel_and_explains_failures(
    browser: Any,
    kvs_emulator: LocalKvs,
    kvs_channel: str,
    kvs_master: KvsMasterFactory,
) -> None:
    master = await kvs_master(kvs_channel)
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{kvs_emulator.endpoint_url}/?channel={kvs_channel}")

    await page.wait_for_function(
        "() => window.kvsPage.stats && window.kvsPage.stats.framesDecoded >= 30",
        timeout=WAIT * 1000,
    )
    assert await page.evaluate("window.kvsPage.state") == "connected"
    playing = await page.evaluate(
        """() => {
            const video = document.getElementById('video');
            return [video.videoWidth, video.videoHeight, video.paused, video.currentTime > 0];
        }"""
    )
    assert playing == [640, 480, False, True]
    assert await page.evaluate("window.kvsPage.stats.codec") == "video/H264"

    # The picture is live: the stamped counter in it advances.
    first = await snapshot_stamp(page)
    await asyncio.sleep(0.5)
    second = await snapshot_stamp(page)
    assert first is not None and second is not None, "no readable stamp in the page's video"
    assert second > first

    # The page is a real viewer of the channel, and it lists the channel as live.
    viewers = kvs_emulator.connected(kvs_channel).viewers
    assert len(viewers) == 1 and viewers[0].startswith("kvs-page-")
    assert viewers[0] in master.viewers
    await page.wait_for_function(
        f"""() => [...document.querySelectorAll('#channels tbody tr')].some(
            (row) => row.cells[0].textContent === {kvs_channel!r}
                && row.cells[1].textContent === 'connected')""",
        timeout=WAIT * 1000,
    )
    assert errors == []

    # Stop closes the viewer: the emulator sees it leave.
    await page.click("#stop")
    async with asyncio.timeout(WAIT):
        await kvs_emulator.wait_presence(kvs_channel, lambda p: not p.viewers)
    assert await page.evaluate("window.kvsPage.state") == "idle"

    # A channel the emulator does not know: the page says so instead of spinning.
    await page.goto(f"{kvs_emulator.endpoint_url}/?channel=nobody-here")
    await page.wait_for_selector('#state[data-state="failed"]', timeout=WAIT * 1000)
    assert "no channel 'nobody-here' on this emulator" in await page.inner_text("#log")
    await context.close()
