"""``Master(storage=True)`` with an H.264 passthrough source: the stored file decodes.

The stream comes from a raw Annex-B file written by tests/media/h264_writer.py (stamped
frames, as ``rpicam-vid -o -`` writes them), read by :class:`~kvs_peer.media.passthrough.H264Source`
and sent to the emulator's storage session as it is, without decoding, whenever the session's
offer takes the stream's profile (as for viewers).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from storage_support import link_stream, read_recording
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.ingestion import StorageOptions
from kvs_peer.master import Master
from kvs_peer.media import ToneTrack, open_master_video
from kvs_peer.media.passthrough import H264Source
from kvs_peer.protocol import Role

WRITER = Path(__file__).parents[1] / "media" / "h264_writer.py"


@pytest.fixture
def emulator_config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(storage_dir=tmp_path / "storage")


@pytest.fixture(scope="module")
def h264_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four seconds of stamped 320x240 Constrained Baseline at 30 fps, an IDR every second."""
    path = tmp_path_factory.mktemp("passthrough") / "camera.h264"
    with path.open("wb") as out:
        subprocess.run(
            [
                sys.executable,
                str(WRITER),
                "--size",
                "320x240",
                "--gop",
                "30",
                "--frames",
                "120",
                "--fast",
            ],
            stdout=out,
            check=True,
            timeout=60_000 * MS,
        )
    return path


@pytest.mark.parametrize(
    ("audio", "video_mode"),
    [(True, "auto"), (False, "auto"), (True, "passthrough")],
    ids=["with-opus", "video-only", "passthrough-only"],
)
async def test_passthrough_master_is_stored(
    kvs: LocalKvs, resolver: ChannelResolver, h264_file: Path, audio: bool, video_mode: str
) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    source = open_master_video(str(h264_file), fps=30)
    assert isinstance(source, H264Source)
    async with Master(
        AwsAccess(resolver, "cam", Role.MASTER),
        video=source,
        audio=ToneTrack() if audio else None,
        video_mode=video_mode,
        storage=True,
        storage_options=StorageOptions(offer_timeout=1.0, backoff_base=0.1, backoff_cap=0.5),
        takeover_check=None,
    ) as master:
        async with asyncio.timeout(15_000 * MS):
            await kvs.storage.wait_for(
                lambda: (s := kvs.storage.session("cam")) is not None and s.frames_written >= 60
            )
        # The storage session gets the camera's H.264 as it is: nothing decoded or encoded.
        assert master.passthrough is not None
        assert master.passthrough.frames_forwarded >= 60
        assert master.encoder is None or master.encoder.frames_encoded == 0
    async with asyncio.timeout(5_000 * MS):
        await kvs.storage.wait_for(lambda: kvs.storage.session("cam") is None)
    [recording] = kvs.storage.recordings()
    stored = read_recording(recording)
    stored.video.assert_ok(min_frames=55, max_gap_s=None, size=(320, 240))
    assert stored.video.backwards == 0
    if audio:
        assert stored.audio_codec == "opus" and stored.audio_frames > 20
    else:
        assert stored.audio_codec is None
