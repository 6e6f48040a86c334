"""Waits that run out of time say how far things got: ``WaitTimeout`` (a ``TimeoutError``
and a ``KvsPeerError``) from the viewer's and the master's waits."""

from __future__ import annotations

import pytest
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import KvsPeerError, WaitTimeout
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer


async def test_a_viewer_without_a_master_is_told_no_master_answered(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("empty")
    access = AwsAccess(resolver, "empty", Role.VIEWER, client_id="alone")
    async with Viewer(access) as viewer:
        with pytest.raises(WaitTimeout) as raised:
            await viewer.wait_first_frame(timeout=1500 * MS)
        assert str(raised.value).startswith(f"no video frame within {1500 * MS:g} s: ")
        assert "no master answered on channel 'empty'" in str(raised.value)
        with pytest.raises(TimeoutError, match="not connected within"):
            await viewer.wait_connected(timeout=100 * MS)
    assert isinstance(raised.value, KvsPeerError) and isinstance(raised.value, TimeoutError)


async def test_a_connected_viewer_without_video_is_told_so(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("quiet")
    master = Master(AwsAccess(resolver, "quiet", Role.MASTER), video=None, audio=None)
    access = AwsAccess(resolver, "quiet", Role.VIEWER, client_id="listener")
    async with master, Viewer(access, audio=False, data_channel=True) as viewer:
        await viewer.wait_connected(timeout=10_000 * MS)
        with pytest.raises(WaitTimeout, match="the peer connection is up but the master sends no"):
            await viewer.wait_first_frame(timeout=500 * MS)


async def test_waiting_for_more_viewers_than_came_says_how_many_did(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("few")
    master = Master(AwsAccess(resolver, "few", Role.MASTER), video=TestPatternTrack(160, 120, 15))
    async with master:
        with pytest.raises(WaitTimeout, match=r"^0 of 2 viewers connected within .* \(0 sessions"):
            await master.wait_for_viewers(2, timeout=300 * MS)
