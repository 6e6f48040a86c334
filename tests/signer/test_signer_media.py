"""A master and a viewer stream video with no AWS credentials, through the signer."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from signer_helpers import MASTER_TOKEN, VIEWER_TOKEN, clear_aws_environment, signer_stack
from support import MS

from kvs_peer.access import SignerAccess
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_aws_environment(monkeypatch, tmp_path)


async def test_master_and_viewer_stream_through_the_signer(no_aws_env: None) -> None:
    assert boto3.Session().get_credentials() is None
    check = VideoCheck()
    async with signer_stack() as stack:
        master_access = SignerAccess(stack.url, "cam-1", Role.MASTER, token=MASTER_TOKEN)
        viewer_access = SignerAccess(
            stack.url, "cam-1", Role.VIEWER, client_id="signed-viewer", token=VIEWER_TOKEN
        )
        async with (
            Master(master_access, video=TestPatternTrack(320, 240, 30)),
            Viewer(viewer_access, on_frame=check.add) as viewer,
        ):
            await viewer.wait_first_frame(timeout=15_000 * MS)
            async for _ in viewer.frames():
                if check.frames >= 30:
                    break
        # every (re)connect asked the signer: one URL each so far
        assert stack.resolver.calls["GetSignalingChannelEndpoint"] == 2  # one per role
    check.assert_ok(min_frames=30, size=(320, 240))
