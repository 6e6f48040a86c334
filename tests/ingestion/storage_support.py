"""Helpers of the ingestion tests: link a channel to a stream, read a stored recording."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import av
import boto3

from kvs_peer.emulator import LocalKvs
from kvs_peer.testing.video import VideoCheck


async def link_stream(kvs: LocalKvs, channel: str, stream: str, *, retention: int = 24) -> str:
    """Create ``channel`` and ``stream`` through boto3 and link them; returns the stream ARN."""
    kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
    channel_arn = kvs.create_channel(channel, exist_ok=True)

    def call() -> str:
        arn = kv.create_stream(StreamName=stream, DataRetentionInHours=retention)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=channel_arn,
            MediaStorageConfiguration={"StreamARN": arn, "Status": "ENABLED"},
        )
        return arn

    # boto3 blocks and the emulator serves on this event loop.
    return await asyncio.to_thread(call)


@dataclass
class Stored:
    """What a stored recording holds."""

    video: VideoCheck
    audio_frames: int
    audio_codec: str | None


def read_recording(path: Path) -> Stored:
    """Decode every frame of a recording (stamped counters and audio)."""
    check = VideoCheck()
    audio_frames = 0
    audio_codec = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio_codec = container.streams.audio[0].codec_context.name
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                check.add(frame)
            else:
                audio_frames += 1
    return Stored(check, audio_frames, audio_codec)
