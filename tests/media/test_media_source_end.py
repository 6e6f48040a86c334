"""A master whose source ends stops by itself, and `kvs-peer master` exits and says why."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path

import pytest
from media_files import mpegts_bytes
from support import KVS_PEER, MS, finish, kill, spawn

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import open_video_source
from kvs_peer.protocol import Role
from kvs_peer.testing.video import VideoCheck
from kvs_peer.viewer import Viewer


def clip(tmp_path: Path, frames: int = 30) -> Path:
    path = tmp_path / "clip.ts"
    path.write_bytes(mpegts_bytes(frames))
    return path


async def test_master_stops_when_its_file_ends(
    kvs: LocalKvs, resolver: ChannelResolver, tmp_path: Path
) -> None:
    kvs.create_channel("clip")
    check = VideoCheck()
    master = Master(
        AwsAccess(resolver, "clip", Role.MASTER), video=open_video_source(str(clip(tmp_path)))
    )
    async with (
        master,
        Viewer(AwsAccess(resolver, "clip", Role.VIEWER, client_id="c1"), on_frame=check.add),
    ):
        # The file is read only while someone watches: one second of video, then the end.
        await asyncio.wait_for(master.wait_closed(), 15_000 * MS)
        assert master.end_reason == "the video source ended"
        assert master.encoder is not None and master.encoder.ended
    assert check.frames >= 20


async def test_master_command_exits_when_its_file_ends(
    kvs: LocalKvs, resolver: ChannelResolver, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("clip")
    process = await spawn(
        *(*KVS_PEER, "master", "--channel", "clip", "--source", str(clip(tmp_path)), "--json"),
        env=device_env,
    )
    try:
        await asyncio.wait_for(kvs.wait_connected("clip", master=True), 30_000 * MS)
        async with Viewer(AwsAccess(resolver, "clip", Role.VIEWER, client_id="c1")) as viewer:
            await viewer.wait_first_frame(timeout=15_000 * MS)
            code, out, err = await finish(process, 20_000 * MS)
    finally:
        await kill(process)
    assert code == 0, err
    assert "the video source ended; stopping (--loop repeats a file)" in err
    assert json.loads(out)["endReason"] == "the video source ended"


async def test_a_failing_camera_is_named_without_its_password(
    kvs: LocalKvs, resolver: ChannelResolver, caplog: pytest.LogCaptureFixture
) -> None:
    payload = mpegts_bytes(60)

    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload[: len(payload) // 2])
        await writer.drain()
        await asyncio.sleep(0.5)
        # A reset, not a clean end: FFmpeg reports an error that quotes the whole URL.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    kvs.create_channel("cam")
    server = await asyncio.start_server(reset_midway, "127.0.0.1", 0)
    url = f"tcp://admin:s3cret@127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        video = await asyncio.to_thread(open_video_source, url, timeout=5)
        master = Master(AwsAccess(resolver, "cam", Role.MASTER), video=video)
        async with (
            master,
            Viewer(AwsAccess(resolver, "cam", Role.VIEWER, client_id="c1")),
        ):
            await asyncio.wait_for(master.wait_closed(), 15_000 * MS)
    assert master.end_reason is not None
    assert master.end_reason.startswith("the video source failed: ")
    assert "tcp://admin:***@127.0.0.1" in master.end_reason
    assert "s3cret" not in master.end_reason and "s3cret" not in caplog.text
