"""Relay-only ICE (``relay_only=True``, ``--relay-only``) through the emulator's coturn.

A stream that works with relay candidates alone works behind symmetric NATs and on mobile
networks, where only TURN gets through. Each test checks that frames flow *and* that the
candidate pair in use is a relay pair, and the host-pair run next to it shows that the check
can tell the difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from support import KVS_PEER, MS, finish, interrupt, read_until, spawn
from turn_support import free_port, local_candidate_types, require_turnserver, selected_pair

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver, IceServer
from kvs_peer.emulator import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    EmulatorConfig,
    LocalKvs,
)
from kvs_peer.errors import InvalidArgument
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.peerconnection import rtc_configuration
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer

CHANNEL = "relay"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """The conftest emulator, with coturn on a free port (overrides tests/conftest.py)."""
    require_turnserver()
    return EmulatorConfig(turn=True, turn_port=free_port())


def _print(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n  {text}")


async def _frames(check: VideoCheck, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while check.frames < count:
            await asyncio.sleep(0.02)


def test_relay_only_without_a_turn_server_is_a_clear_error() -> None:
    stun = IceServer(("stun:stun.example.com:3478",))
    for servers in ([], [stun]):
        with pytest.raises(InvalidArgument, match=r"needs a TURN server.*--turn"):
            rtc_configuration(servers, transport_policy="relay")
    with pytest.raises(InvalidArgument, match="'all' or 'relay'"):
        rtc_configuration([], transport_policy="relayed")


async def _stream(
    resolver: ChannelResolver, *, relay_only: bool
) -> tuple[float, tuple[str, str], tuple[str, str], set[str], set[str]]:
    """Master -> viewer on CHANNEL; returns TTFF, both selected pairs, both local types."""
    check = VideoCheck()
    async with (
        Master(
            AwsAccess(resolver, CHANNEL, Role.MASTER),
            video=TestPatternTrack(320, 240, 30),
            relay_only=relay_only,
            connect_timeout=10,
        ) as master,
        Viewer(
            AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=f"v-{relay_only}"),
            on_frame=check.add,
            relay_only=relay_only,
            reconnect=False,
        ) as viewer,
    ):
        ttff = await viewer.wait_first_frame(timeout=15_000 * MS)
        await _frames(check, 30, 10)
        assert viewer.pc is not None
        (session,) = master.viewers.values()
        pairs = selected_pair(viewer.pc), selected_pair(session.pc)
        types = local_candidate_types(viewer.pc), local_candidate_types(session.pc)
    check.assert_ok(min_frames=30, size=(320, 240), max_gap_s=1.0)
    return ttff, *pairs, *types


async def test_relay_only_master_to_viewer(
    kvs: LocalKvs, resolver: ChannelResolver, capsys: pytest.CaptureFixture[str]
) -> None:
    kvs.create_channel(CHANNEL)
    # The same emulator and TURN server both times: only the policy differs.
    host_ttff, viewer_pair, master_pair, _, _ = await _stream(resolver, relay_only=False)
    assert viewer_pair[0] == "host" and master_pair[0] == "host", (viewer_pair, master_pair)

    ttff, viewer_pair, master_pair, viewer_types, master_types = await _stream(
        resolver, relay_only=True
    )
    assert viewer_types == master_types == {"relay"}
    assert viewer_pair == master_pair == ("relay", "relay")
    _print(
        capsys, f"time to first frame: host {host_ttff * 1000:.0f} ms, relay {ttff * 1000:.0f} ms"
    )


# -- the commands ----------------------------------------------------------------------------


@pytest.fixture
async def local_turn() -> AsyncIterator[str]:
    """``kvs-peer local --turn`` as a process; yields its endpoint URL."""
    require_turnserver()
    process = await spawn(
        *KVS_PEER,
        *("local", "--port", "0", "--turn", "--turn-port", str(free_port()), "--channel", CHANNEL),
        env=_env(),
    )
    try:
        banner = await read_until(process, "Press Ctrl+C")
        assert "TURN server (coturn" in banner, banner
        match = re.search(r"listening on (\S+)", banner)
        assert match, banner
        yield match[1]
    finally:
        await interrupt(process)


def _env(endpoint_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_ACCESS_KEY,
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    if endpoint_url:
        env["KVS_PEER_ENDPOINT_URL"] = endpoint_url
    return env


async def test_cli_master_relay_only_through_cli_local_turn(local_turn: str) -> None:
    master = await spawn(
        *KVS_PEER,
        *("master", "--channel", CHANNEL, "--width", "320", "--height", "240", "--relay-only"),
        "--json",
        env=_env(local_turn),
    )
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    check = VideoCheck()
    try:
        async with (
            ChannelResolver(endpoint_url=local_turn, session=session) as resolver,
            Viewer(
                AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="relay-viewer"),
                on_frame=check.add,
                relay_only=True,
            ) as viewer,
        ):
            await viewer.wait_first_frame(timeout=20_000 * MS)
            await _frames(check, 30, 10)
            assert viewer.pc is not None
            assert selected_pair(viewer.pc) == ("relay", "relay")
            remote = {c.type for c in _ice(viewer.pc).getRemoteCandidates()}
            assert remote == {"relay"}, f"the --relay-only master offered {remote}"
    finally:
        code, out, err = await interrupt(master)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["sessionsStarted"], summary["sessionsFailed"]) == (1, 0), summary
    check.assert_ok(min_frames=30, size=(320, 240))


def _ice(pc: Any) -> Any:
    return pc.getTransceivers()[0].receiver.transport.transport


async def test_cli_viewer_relay_only(
    kvs: LocalKvs, resolver: ChannelResolver, device_env: dict[str, str]
) -> None:
    kvs.create_channel(CHANNEL)
    async with Master(
        AwsAccess(resolver, CHANNEL, Role.MASTER), video=TestPatternTrack(320, 240, 30)
    ) as master:
        viewer = await spawn(
            *KVS_PEER,
            *("viewer", "--channel", CHANNEL, "--relay-only", "--duration", "3", "--json"),
            env=device_env,
        )
        await master.wait_for_viewers(1, timeout=20_000 * MS)
        (session,) = master.viewers.values()
        pair = selected_pair(session.pc)
        remote = {c.type for c in _ice(session.pc).getRemoteCandidates()}
        code, out, err = await finish(viewer, 30_000 * MS)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["framesReceived"] >= 30, report
    assert pair[1] == "relay", f"the master reached the --relay-only viewer over {pair}"
    assert remote == {"relay"}, f"the --relay-only viewer offered {remote}"
