"""kvs-peer master -> the official JS SDK in Chromium, relay-only through the emulator's coturn.

Both ends use ICE transport policy ``relay``: the master ``relay_only=True``, the page
``iceTransportPolicy: 'relay'``. The browser's own getStats names the selected pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from browser_page import BROWSER_VIEWER, CHANNEL, OpenPage, page_options
from support import MS
from turn_support import free_port, require_turnserver, selected_pair

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.media.stamp import read_stamp
from kvs_peer.protocol import Role

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """The interop emulator with coturn on a free port."""
    require_turnserver()
    return EmulatorConfig(turn=True, turn_port=free_port())


async def test_kvs_master_to_browser_viewer_relay_only(
    kvs: LocalKvs,
    resolver: ChannelResolver,
    open_page: OpenPage,
    record_property: Callable[[str, object], None],
) -> None:
    peer = await open_page()
    access = AwsAccess(resolver, CHANNEL, Role.MASTER)
    async with Master(
        access,
        video=TestPatternTrack(640, 480, 30),
        relay_only=True,
        signaling={"ssl": kvs.ssl_context()},
    ) as master:
        options = await page_options(kvs, resolver, CHANNEL, Role.VIEWER, client_id=BROWSER_VIEWER)
        assert any(url.startswith("turn:") for s in options["iceServers"] for url in s["urls"])
        await peer.start_viewer({**options, "iceTransportPolicy": "relay"})
        await peer.wait_for("s.firstFrameMs !== null", 10_000 * MS)
        counters = []
        for _ in range(3):
            image, _ = await peer.grab_frame()
            stamp = read_stamp(image)
            assert stamp is not None, "unreadable stamp in a browser frame"
            counters.append(stamp.counter)
            await asyncio.sleep(200 * MS)
        pair = await peer.page.evaluate("() => kvsTest.selectedPair()")
        (session,) = master.viewers.values()
        master_pair = selected_pair(session.pc)
        state = await peer.state()
        await peer.close()

    assert counters == sorted(set(counters)), f"stamped counters did not advance: {counters}"
    assert not state["errors"], state["errors"]
    assert pair is not None, f"the browser selected no candidate pair: {await peer.describe()}"
    assert pair["local"]["candidateType"] == "relay", pair
    assert pair["remote"]["candidateType"] == "relay", pair
    assert master_pair == ("relay", "relay")
    kinds = {c.split(" typ ")[1].split()[0] for c in state["localCandidates"]}
    assert kinds == {"relay"}, f"the relay-only page gathered {kinds}"
    record_property(
        "measurement", f"browser relay-only: first frame after {state['firstFrameMs']} ms"
    )
