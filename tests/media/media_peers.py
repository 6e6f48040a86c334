"""Real aiortc peer pairs on loopback for the media tests (no signaling: SDP in memory)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from support import MS

from kvs_peer.media import (
    AudioFanout,
    SharedVideoEncoder,
    add_shared_video,
    read_stamp,
    use_fast_send,
)


@dataclass
class Link:
    """One viewer connected to a master peer connection."""

    viewer: RTCPeerConnection
    master: RTCPeerConnection
    started: float
    video: MediaStreamTrack | None = None
    audio: MediaStreamTrack | None = None
    video_transceiver: RTCRtpTransceiver | None = None

    async def close(self) -> None:
        await self.viewer.close()
        await self.master.close()


async def connect(
    encoder: SharedVideoEncoder | None = None,
    fanout: AudioFanout | None = None,
    *,
    viewer_codecs: list | None = None,
    audio_codecs: list | None = None,
    fast_audio: bool = False,
) -> Link:
    """Offer from a fresh viewer, answer from a fresh master fed by ``encoder``/``fanout``."""
    config = RTCConfiguration(iceServers=[])
    viewer, master = RTCPeerConnection(config), RTCPeerConnection(config)
    link = Link(viewer=viewer, master=master, started=time.perf_counter())
    if encoder is not None:
        transceiver = viewer.addTransceiver("video", direction="recvonly")
        if viewer_codecs is not None:
            transceiver.setCodecPreferences(viewer_codecs)
    if fanout is not None:
        audio = viewer.addTransceiver("audio", direction="recvonly")
        if audio_codecs is not None:
            audio.setCodecPreferences(audio_codecs)

    @viewer.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        setattr(link, track.kind, track)

    await viewer.setLocalDescription(await viewer.createOffer())
    if encoder is not None:
        link.video_transceiver = add_shared_video(master, encoder)
    if fanout is not None:
        sender = master.addTransceiver(fanout.subscribe(), direction="sendonly").sender
        if fast_audio:
            assert use_fast_send(sender)
    await master.setRemoteDescription(viewer.localDescription)
    await master.setLocalDescription(await master.createAnswer())
    await viewer.setRemoteDescription(master.localDescription)
    return link


@dataclass
class Watch:
    """What a viewer saw: time to first frame, decoded stamps, frame rate."""

    ttff: float | None = None
    counters: list[int] = field(default_factory=list)
    unreadable: int = 0
    frames: int = 0
    fps: float = 0.0

    @property
    def increasing(self) -> bool:
        return all(b > a for a, b in itertools.pairwise(self.counters))


async def watch(link: Link, seconds: float) -> Watch:
    """Receive video for ``seconds`` after the first frame, reading every stamp."""
    assert link.video is not None
    result = Watch()
    first = await link.video.recv()
    result.ttff = time.perf_counter() - link.started
    _note(result, first)
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            _note(result, await asyncio.wait_for(link.video.recv(), 2000 * MS))
    except MediaStreamError:
        pass
    result.fps = (result.frames - 1) / seconds
    return result


def _note(result: Watch, frame: object) -> None:
    result.frames += 1
    stamp = read_stamp(frame)
    if stamp is None:
        result.unreadable += 1
    else:
        result.counters.append(stamp.counter)
