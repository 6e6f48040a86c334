"""Media for kvs-peer: sources, one shared H.264 encoder, shared Opus fan-out, recording.

Pipeline of a master (data flows one way)::

    open_video_source("testsrc" | file | 0 | /dev/video0 | rtsp://...)   yuv420p, 90 kHz pts
        -> SharedVideoEncoder (one libx264, worker thread)                 av.Packet, Annex-B
            -> PacketTrack per viewer -> RTCRtpSender (lean send loop) -> RTP   no re-encode
    open_audio_source("tone" | file | none)                                s16, 48 kHz, 20 ms
        -> AudioFanout (one Opus encoder) -> track per viewer -> lean send loop

Per viewer, before ``setRemoteDescription(offer)``: :func:`add_shared_video` (or
``encoder.subscribe()`` + ``pc.addTransceiver(track, direction="sendonly")`` +
:func:`force_h264` + :func:`attach_keyframe_requests` + :func:`use_fast_send`), then
``pc.addTransceiver(fanout.subscribe(), direction="sendonly")`` + :func:`use_fast_send` for
audio (a viewer that negotiates PCMU/PCMA gets its own encoding from aiortc).

An H.264 source (stdin, a FIFO, an RTSP camera...; :func:`open_master_video`) skips the
encoder: :class:`PassthroughVideo` forwards its access units to every viewer that offered its
profile, serving joins and PLI from the GOP since the last IDR (:mod:`.passthrough`).

A viewer hands received H.264 and Opus frames to :class:`Recorder` as they arrived, without
decoding (:mod:`.encoded`; other codecs are decoded and encoded again), and decodes only for
whoever asks for frames: :func:`save_snapshot` (PNG), :func:`frame_to_ndarray`
(numpy/OpenCV), ``Viewer.frames()``. :class:`~.jitter.MarkerJitterBuffer` hands each received
video frame on at its last packet.
:mod:`kvs_peer.media.stamp` draws and reads a frame counter and capture time in the picture,
which is how tests measure frame rate, order and latency end to end.

Traps this package is built around (measured with aiortc 1.16 / PyAV 18, see
docs/protocol.md#aiortc-notes):

1. **One track object shared by N senders splits its frames** (each viewer gets 30/N fps):
   every sender needs its own track. Hence :meth:`SharedVideoEncoder.subscribe` and
   :meth:`AudioFanout.subscribe`.
2. **Sharing a non-yuv420p video frame between threads that reformat it deadlocks or
   segfaults PyAV 18** (``VideoFrame.reformat`` caches one converter on the frame and runs it
   without the GIL). Sources convert to yuv420p once, on a frame nobody else holds; the
   recorder and :func:`frame_to_ndarray` use private converters. Audio frames are safe to share
   (aiortc's Opus path only reads them; tested).
3. **Pre-encoded packets need H.264 forced before** ``setRemoteDescription``: aiortc picks the
   answer's codec there and will happily send H.264 bytes labelled VP8. :func:`force_h264`.
4. **Keyframes**: aiortc ignores PLI/FIR for packet tracks. A :class:`PacketTrack` queues
   nothing until its sender's first ``recv()`` (after DTLS), which requests an IDR, and starts at
   a keyframe; :func:`attach_keyframe_requests` forwards PLI/FIR through a per-sender hook;
   requests are rate-limited and coalesced; a periodic GOP backs both up.
5. **Backlog**: queues are bounded everywhere. A viewer that falls behind loses its queue and
   resumes at the next keyframe without slowing the others; live sources drop their oldest
   frames; the encoder stops reading its source when nobody is subscribed.
6. **aiortc's MediaRecorder encodes on the event loop, and MP4 is unreadable after a crash**:
   :class:`Recorder` encodes in a thread and writes Matroska with ``flush_packets=1``.
7. **aiortc's send loop costs about 0.008 core per viewer** even for pre-encoded packets (it
   re-packetizes and re-serializes every packet for every viewer):
   :mod:`kvs_peer.media.rtpsender` packetizes once and sends with a leaner loop (0.0025).

Costs measured on the 2-core test VM at 640x480@30: the test pattern 0.017 core; pattern plus
shared encoder (``veryfast``, zerolatency, 2.7-3.3 ms per frame) 0.11 core; a whole master
process (pattern, encoder, aiortc peers) 0.13 core with 1 viewer and 0.14-0.15 with 10, all
at 30 fps (``docs/benchmarks.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .capture import CameraTrack, FileAudioTrack, PyAVVideoTrack
    from .encoder import (
        EncodedVideo,
        PacketTrack,
        SharedVideoEncoder,
        add_shared_video,
        attach_keyframe_requests,
        force_h264,
        h264_codec_preferences,
    )
    from .fanout import AudioFanout, AudioSubscriberTrack, EncodedAudio
    from .passthrough import (
        H264Source,
        PassthroughVideo,
        open_h264_source,
        open_master_video,
    )
    from .recorder import Recorder, RecorderStats, frame_to_ndarray, save_snapshot
    from .reopen import ReopeningVideoTrack
    from .rtpsender import use_fast_send
    from .sources import (
        TestPatternTrack,
        ToneTrack,
        open_audio_source,
        open_video_source,
    )
    from .stamp import Stamp, read_stamp, write_stamp

# Submodules load on first use, so ``import kvs_peer.media.stamp`` (numpy only, used by test
# helpers) does not pull in aiortc and PyAV.
_SUBMODULE = {
    "EncodedVideo": "encoder",
    "PacketTrack": "encoder",
    "SharedVideoEncoder": "encoder",
    "add_shared_video": "encoder",
    "attach_keyframe_requests": "encoder",
    "force_h264": "encoder",
    "h264_codec_preferences": "encoder",
    "AudioFanout": "fanout",
    "AudioSubscriberTrack": "fanout",
    "EncodedAudio": "fanout",
    "H264Source": "passthrough",
    "PassthroughVideo": "passthrough",
    "open_h264_source": "passthrough",
    "open_master_video": "passthrough",
    "Recorder": "recorder",
    "RecorderStats": "recorder",
    "frame_to_ndarray": "recorder",
    "save_snapshot": "recorder",
    "ReopeningVideoTrack": "reopen",
    "use_fast_send": "rtpsender",
    "CameraTrack": "capture",
    "FileAudioTrack": "capture",
    "PyAVVideoTrack": "capture",
    "TestPatternTrack": "sources",
    "ToneTrack": "sources",
    "open_audio_source": "sources",
    "open_video_source": "sources",
    "Stamp": "stamp",
    "read_stamp": "stamp",
    "write_stamp": "stamp",
}

__all__ = [
    "AudioFanout",
    "AudioSubscriberTrack",
    "CameraTrack",
    "EncodedAudio",
    "EncodedVideo",
    "FileAudioTrack",
    "H264Source",
    "PacketTrack",
    "PassthroughVideo",
    "PyAVVideoTrack",
    "Recorder",
    "RecorderStats",
    "ReopeningVideoTrack",
    "SharedVideoEncoder",
    "Stamp",
    "TestPatternTrack",
    "ToneTrack",
    "add_shared_video",
    "attach_keyframe_requests",
    "force_h264",
    "frame_to_ndarray",
    "h264_codec_preferences",
    "open_audio_source",
    "open_h264_source",
    "open_master_video",
    "open_video_source",
    "read_stamp",
    "save_snapshot",
    "use_fast_send",
    "write_stamp",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SUBMODULE)
