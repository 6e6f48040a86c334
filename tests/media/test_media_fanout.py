"""AudioFanout: one tone to several real aiortc viewers, and shared frames are safe to encode."""

from __future__ import annotations

import asyncio
import threading
import time

import av
import numpy as np
import pytest
from aiortc import RTCRtpSender
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import compute_audio_level_dbov
from media_peers import connect
from support import MS

from kvs_peer.errors import InvalidArgument, InvalidState, MediaError
from kvs_peer.media import AudioFanout, TestPatternTrack, ToneTrack
from kvs_peer.media.fanout import audio_level_dbov
from kvs_peer.media.rtpsender import RtpHistory


async def count_audio(track, seconds: float) -> int:
    await track.recv()
    end, frames = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        await asyncio.wait_for(track.recv(), 1000 * MS)
        frames += 1
    return frames


async def test_three_viewers_each_hear_the_whole_tone() -> None:
    source = ToneTrack(440)
    async with AudioFanout(source) as fanout:
        links = [await connect(fanout=fanout) for _ in range(3)]
        try:
            counts = await asyncio.gather(*(count_audio(link.audio, 1.5) for link in links))
        finally:
            for link in links:
                await link.close()
    print(f"audio frames per viewer in 1.5 s: {counts}, source frames read {fanout.frames_read}")
    # 20 ms frames: 75 in 1.5 s for each viewer, not 75 split three ways.
    assert all(60 <= count <= 90 for count in counts), counts
    # One read of the source per frame, whatever the number of viewers.
    assert fanout.frames_read < sum(counts) / 2


def test_one_frame_encoded_by_several_opus_encoders_at_once() -> None:
    """What aiortc does with a fanned-out frame: each sender's encoder reads it in a thread."""
    rng = np.random.default_rng(1)
    frames = [audio_frame(rng.integers(-8000, 8000, 1920, dtype=np.int16), i) for i in range(150)]
    reference = OpusEncoder()
    expected = [
        reference.encode(audio_frame(f.to_ndarray()[0], i))[0] for i, f in enumerate(frames)
    ]

    results: list[list] = [[] for _ in range(3)]
    start = threading.Barrier(3)

    def run(slot: int) -> None:
        encoder = OpusEncoder()
        start.wait()
        for frame in frames:
            results[slot].append(encoder.encode(frame)[0])

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Same bytes as encoding private copies one after the other: no interference.
    assert all(result == expected for result in results)


def audio_frame(samples: np.ndarray, index: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="stereo")
    frame.sample_rate, frame.pts = 48000, index * 960
    return frame


async def test_subscribers_start_on_first_read_and_stalled_ones_stay_bounded() -> None:
    source = ToneTrack(440)
    async with AudioFanout(source, queue_size=5) as fanout:
        idle = fanout.subscribe()
        reader, stalled = fanout.subscribe(), fanout.subscribe()
        await stalled.recv()
        frames = [await reader.recv() for _ in range(25)]
        assert len(idle._queue) == 0  # never read: nothing queued for it
        assert len(stalled._queue) <= 5 and stalled.frames_dropped > 0
        pts = [f.pts for f in frames]
        assert pts == list(range(pts[0], pts[0] + 25 * 960, 960))
        reader.stop()
        stalled.stop()
        await asyncio.sleep(0.1)
        read = fanout.frames_read
        await asyncio.sleep(0.2)
        assert fanout.frames_read == read  # nobody reading: the source is left alone
        assert fanout.subscribers == 1
    assert source.readyState == "ended"
    with pytest.raises(InvalidState):
        fanout.subscribe()


def test_video_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="audio track"):
        AudioFanout(TestPatternTrack())


class FailingTone(ToneTrack):
    """A tone whose source breaks (not ends) after ``frames`` frames."""

    def __init__(self, frames: int) -> None:
        super().__init__(440)
        self.left = frames

    async def recv(self) -> av.AudioFrame:
        if self.left == 0:
            raise OSError("device unplugged")
        self.left -= 1
        return await super().recv()


async def drain_until_ended(track) -> int:
    frames = 0
    with pytest.raises(MediaStreamError):
        for _ in range(200):
            await asyncio.wait_for(track.recv(), 1000 * MS)
            frames += 1
    return frames


@pytest.mark.parametrize("failure", ["source stopped", "source raised"])
async def test_source_end_or_failure_ends_every_subscriber(failure: str) -> None:
    source = ToneTrack(440) if failure == "source stopped" else FailingTone(frames=5)
    async with AudioFanout(source) as fanout:
        tracks = [fanout.subscribe() for _ in range(2)]
        await asyncio.gather(*(t.recv() for t in tracks))
        assert fanout.running and fanout.active_subscribers == 2
        if failure == "source stopped":
            source.stop()
        counts = await asyncio.gather(*(drain_until_ended(t) for t in tracks))
        assert all(count < 10 for count in counts), counts
        assert all(t.readyState == "ended" for t in tracks)
        assert not fanout.running and fanout.subscribers == 0
        with pytest.raises(InvalidState, match="audio fan-out"):
            fanout.subscribe()


async def test_a_new_subscriber_restarts_reading_after_everyone_left() -> None:
    source = ToneTrack(440)
    async with AudioFanout(source) as fanout:
        first = fanout.subscribe()
        await first.recv()
        first.stop()
        await asyncio.sleep(0.1)
        assert not fanout.running and fanout.active_subscribers == 0
        read = fanout.frames_read
        again = fanout.subscribe()
        frames = [await again.recv() for _ in range(3)]
        assert fanout.running and fanout.frames_read >= read + 3
        assert frames[1].pts - frames[0].pts == 960


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_audio_level_is_aiortcs_number(layout: str) -> None:
    rng = np.random.default_rng(3)
    channels = 1 if layout == "mono" else 2
    for amplitude in (0, 1, 30, 1000, 20000, 32767):
        samples = rng.integers(-amplitude, amplitude + 1, 960 * channels, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout=layout)
        frame.sample_rate = 48000
        assert audio_level_dbov(frame) == compute_audio_level_dbov(frame), amplitude


async def hear(track, frames: int) -> tuple[int, float]:
    """Receive ``frames`` decoded audio frames; return how many and their RMS level."""
    await asyncio.wait_for(track.recv(), 5000 * MS)
    energy = 0.0
    for _ in range(frames):
        frame = await asyncio.wait_for(track.recv(), 1000 * MS)
        energy += float(np.mean(frame.to_ndarray().astype(np.float64) ** 2))
    return frames, (energy / frames) ** 0.5


def aiortc_encoder(link) -> object:
    """The encoder aiortc's own code made for the master's audio sender (None if unused)."""
    return link.master.getTransceivers()[0].sender._RTCRtpSender__encoder


async def test_opus_is_encoded_once_for_every_viewer() -> None:
    async with AudioFanout(ToneTrack(440)) as fanout:
        links = [await connect(fanout=fanout, fast_audio=True) for _ in range(3)]
        try:
            heard = await asyncio.gather(*(hear(link.audio, 50) for link in links))
            encoders = [aiortc_encoder(link) for link in links]
            histories = [
                link.master.getTransceivers()[0].sender._RTCRtpSender__rtp_history for link in links
            ]
        finally:
            for link in links:
                await link.close()
    print(f"heard {heard}; read {fanout.frames_read}, encoded {fanout.frames_encoded}")
    # The tone (peak 0.2 of full scale) decodes at an RMS near 3300 after the upmix to stereo;
    # silence or garbage would not.
    assert all(2000 < rms < 4700 for _, rms in heard), heard
    # No sender made an encoder of its own: every one sent the fan-out's payloads.
    assert encoders == [None, None, None]
    assert fanout.frames_encoded >= 50
    for history in histories:
        assert isinstance(history, RtpHistory) and len(history) > 20
        # The audio-level extension went out: the tone's RMS is 0.2 / sqrt(2) of full scale,
        # -17 dBov, sent as 17 (RFC 6465).
        levels = {history.get(slot).extensions.audio_level for slot in list(history)[-10:]}
        assert levels == {(False, 17)}, levels


async def test_a_pcmu_viewer_gets_its_own_encoding() -> None:
    pcmu = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
    async with AudioFanout(ToneTrack(440)) as fanout:
        link = await connect(fanout=fanout, fast_audio=True, audio_codecs=pcmu)
        try:
            answer = link.master.localDescription.sdp
            _, rms = await hear(link.audio, 25)
            encoder = aiortc_encoder(link)
            history = link.master.getTransceivers()[0].sender._RTCRtpSender__rtp_history
        finally:
            await link.close()
    assert "PCMU/8000" in answer and "opus" not in answer.lower()
    # PCMU made from the fan-out's frames by aiortc's encoder, sent by the fast loop; the
    # fan-out encoded no Opus for nobody.
    assert type(encoder).__name__ == "PcmuEncoder"
    assert 4000 < rms < 5300  # mono PCMU keeps the tone's full RMS (about 4630)
    assert isinstance(history, RtpHistory) and len(history) > 10
    assert fanout.frames_read > 0 and fanout.frames_encoded == 0


async def test_audio_that_is_not_s16_is_refused_clearly() -> None:
    class FloatTone(ToneTrack):
        async def recv(self) -> av.AudioFrame:
            frame = await super().recv()
            return av.AudioFrame.from_ndarray(
                frame.to_ndarray().astype(np.float32) / 32768, format="flt", layout="mono"
            )

    async with AudioFanout(FloatTone(440)) as fanout:
        track = fanout.subscribe()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(track.recv(), 5000 * MS)
    assert isinstance(fanout.error, MediaError)
    assert "s16 mono or stereo" in str(fanout.error) and "got flt mono" in str(fanout.error)
