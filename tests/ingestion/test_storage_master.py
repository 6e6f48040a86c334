"""kvs-peer's master in storage mode against the emulator's storage session (real aiortc).

The stored file is decoded and the test pattern's stamped counters read back; the master
re-joins after the storage peer drops, after the session maximum, on its own before the
limit, and after a lost offer; a rejected answer stops it with the reason.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from storage_support import link_stream, read_recording
from support import MS, run_kvs_peer

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import ChannelError, SessionError
from kvs_peer.ingestion import StorageOptions
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack, ToneTrack
from kvs_peer.protocol import MessageType, Role, encode_event

FAST = StorageOptions(offer_timeout=1.0, backoff_base=0.1, backoff_cap=0.5)


@pytest.fixture
def emulator_config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(storage_dir=tmp_path / "storage")


def _master(
    resolver: ChannelResolver,
    *,
    audio: bool = True,
    options: StorageOptions = FAST,
) -> Master:
    return Master(
        AwsAccess(resolver, "cam", Role.MASTER),
        video=TestPatternTrack(width=320, height=240, fps=30),
        audio=ToneTrack() if audio else None,
        storage=True,
        storage_options=options,
        takeover_check=None,
    )


async def _stored_frames(kvs: LocalKvs, frames: int, *, sessions: int = 1) -> None:
    """Wait until the channel's ``sessions``-th session has recorded ``frames`` frames."""

    def done() -> bool:
        current = kvs.storage.session("cam")
        return (
            current is not None
            and len(kvs.storage.sessions("cam")) >= sessions
            and current.frames_written >= frames
        )

    async with asyncio.timeout(15_000 * MS):
        await kvs.storage.wait_for(done)


async def test_master_stores_stamped_video_and_audio(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    stream = await link_stream(kvs, "cam", "cam-stream")
    async with _master(resolver) as master:
        await _stored_frames(kvs, 45)
        stats = master.storage.stats
        assert (stats.joined, stats.connected, stats.stream_arn) == (True, True, stream)
        assert stats.joins == 1 and stats.rejoins == 0
        assert await master.storage.bytes_sent() > 10_000
    await _ended(kvs)
    [recording] = kvs.storage.recordings()
    assert recording.parent == kvs.storage.storage_dir / "cam-stream"
    stored = read_recording(recording)
    stored.video.assert_ok(min_frames=40, max_gap_s=None, size=(320, 240))
    assert stored.video.backwards == 0
    assert stored.audio_codec == "opus" and stored.audio_frames > 20


async def _ended(kvs: LocalKvs) -> None:
    async with asyncio.timeout(5000 * MS):
        await kvs.storage.wait_for(lambda: kvs.storage.session("cam") is None)


async def test_video_only_master_is_stored(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    async with _master(resolver, audio=False):
        await _stored_frames(kvs, 30)
    await _ended(kvs)
    [recording] = kvs.storage.recordings()
    stored = read_recording(recording)
    stored.video.assert_ok(min_frames=25, max_gap_s=None)
    assert stored.audio_codec is None


async def test_rejoins_after_the_storage_peer_drops(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    async with _master(resolver) as master:
        await _stored_frames(kvs, 10)
        assert kvs.storage.end_session("cam", "test: storage peer dropped")
        await _stored_frames(kvs, 10, sessions=2)
        assert master.storage.stats.rejoins == 1
        assert master.storage.stats.joins == 2
        assert master.storage.stats.connected
    await _ended(kvs)
    first, second = kvs.storage.recordings()
    assert first.name < second.name  # start times
    before, after = read_recording(first).video, read_recording(second).video
    assert before.last_counter is not None and after.first_counter is not None
    assert after.first_counter > before.last_counter  # one source, counters go on


async def test_rejoins_after_the_session_maximum(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    kvs.storage.max_duration = 1.5
    async with _master(resolver) as master:
        await _stored_frames(kvs, 5, sessions=3)
        reasons = [s.end_reason for s in kvs.storage.sessions("cam")[:2]]
        assert reasons == ["the session reached its maximum duration"] * 2
        assert master.storage.stats.rejoins >= 2


async def test_planned_rejoin_before_the_limit(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    options = StorageOptions(offer_timeout=1.0, backoff_base=0.1, rejoin_after=1.0)
    async with _master(resolver, options=options) as master:
        await _stored_frames(kvs, 5, sessions=2)
        assert master.storage.stats.rejoins >= 1
    reasons = {s.end_reason for s in kvs.storage.sessions("cam")[:1]}
    assert reasons == {"replaced by a newer JoinStorageSession"}


async def test_lost_offer_is_retried(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    kvs.storage.drop_next_offers("cam", 2)
    async with _master(resolver) as master:
        await _stored_frames(kvs, 5, sessions=3)
        stats = master.storage.stats
        assert stats.offer_timeouts == 2 and stats.joins == 3 and stats.offers == 1


async def test_rejected_answer_stops_the_master_with_the_reason(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    async with _master(resolver) as master:
        await _stored_frames(kvs, 1)
        correlation = kvs.storage.session("cam").answer_correlation_id
        assert correlation
        status = {
            "correlationId": correlation,
            "description": "unsupported H.264 profile",
            "errorType": "InvalidArgumentException",
            "statusCode": "400",
            "success": False,
        }
        await kvs.send_raw(
            "cam", encode_event(MessageType.STATUS_RESPONSE, status_response=status), master=True
        )
        with pytest.raises(SessionError, match=r"unsupported H\.264 profile"):
            async with asyncio.timeout(5000 * MS):
                await master.wait_closed()


async def test_channel_without_storage_is_a_clear_error(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("cam")
    with pytest.raises(ChannelError, match="UpdateMediaStorageConfiguration"):
        async with _master(resolver):
            pass
    assert not kvs.connected("cam").master


async def test_cli_master_storage(kvs: LocalKvs, device_env: dict[str, str]) -> None:
    await link_stream(kvs, "cam", "cam-stream")
    code, out, err = await run_kvs_peer(
        *("master", "--channel", "cam", "--storage", "--source", "testsrc"),
        *("--width", "320", "--height", "240", "--duration", "4", "--json"),
        env=device_env,
    )
    assert code == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    storage = report["storage"]
    assert storage["joins"] == 1 and storage["sessionsConnected"] == 1
    assert storage["bytesSent"] > 10_000
    await _ended(kvs)
    [recording] = kvs.storage.recordings()
    read_recording(recording).video.assert_ok(min_frames=30, max_gap_s=None, size=(320, 240))
