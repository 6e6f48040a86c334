"""A small RTSP server for tests: one live H.264 stream, RTP interleaved over the RTSP connection.

It speaks what an RTSP camera speaks to FFmpeg with ``rtsp_transport=tcp``: OPTIONS, DESCRIBE
(an SDP with one H.264 track), SETUP (``RTP/AVP/TCP;interleaved=0-1``), PLAY, GET_PARAMETER
keep-alives and TEARDOWN (RFC 2326; interleaving is section 10.12). After PLAY it sends stamped
test-pattern frames, encoded by libx264 and packetized as RFC 6184 RTP (single NAL, STAP-A,
FU-A). Each session starts at an IDR with SPS/PPS in front, as cameras do. Each client gets its own
encoder. It has no authentication and no UDP transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import random
import struct
from collections.abc import AsyncIterator
from typing import Self

import av
from aiortc.codecs.h264 import H264Encoder

from kvs_peer.media import TestPatternTrack
from kvs_peer.media.rtpsender import rtp_datagrams

_PAYLOAD_TYPE = 96


class RtspServer:
    """Serve ``rtsp://127.0.0.1:PORT/live`` until the ``async with`` block ends.

    ``port=0`` picks a free port; pass a previous server's ``port`` to bring a camera back.

    Attributes:
        url: the stream's URL, set on entry.
        requests: every request line received, in order (e.g. ``"PLAY rtsp://.../live"``).
        frames_sent: frames sent to all clients.
    """

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15, port: int = 0) -> None:
        self.width, self.height, self.fps, self.port = width, height, fps, port
        self.url = ""
        self.requests: list[str] = []
        self.frames_sent = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the listener and every client connection (a camera going away)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _sdp(self) -> str:
        return (
            "v=0\r\n"
            "o=- 0 0 IN IP4 127.0.0.1\r\n"
            "s=kvs-peer test camera\r\n"
            "c=IN IP4 0.0.0.0\r\n"
            "t=0 0\r\n"
            f"m=video 0 RTP/AVP {_PAYLOAD_TYPE}\r\n"
            f"a=rtpmap:{_PAYLOAD_TYPE} H264/90000\r\n"
            f"a=fmtp:{_PAYLOAD_TYPE} packetization-mode=1\r\n"
            "a=control:track1\r\n"
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        streaming: asyncio.Task[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                }
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                self.requests.append(f"{method} {target}")
                extra, body, cseq = "", "", headers.get("cseq", "0")
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
                elif method == "DESCRIBE":
                    body = self._sdp()
                    extra = (
                        f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
                        f"Content-Length: {len(body)}\r\n"
                    )
                elif method == "SETUP":
                    extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4242\r\n"
                elif method in ("PLAY", "GET_PARAMETER"):
                    extra = "Session: 4242\r\n"
                elif method != "TEARDOWN":
                    writer.write(f"RTSP/1.0 501 Not Implemented\r\nCSeq: {cseq}\r\n\r\n".encode())
                    continue
                writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}\r\n{body}".encode())
                await writer.drain()
                if method == "PLAY" and streaming is None:
                    streaming = asyncio.create_task(self._stream(writer))
                    self._tasks.add(streaming)
                elif method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if streaming is not None:
                streaming.cancel()
                self._tasks.discard(streaming)
            self._writers.discard(writer)
            writer.close()

    async def packets(self) -> AsyncIterator[av.Packet]:
        """The H.264 packets to send, paced in real time; a subclass may serve other ones.

        Each packet carries ``pts`` and ``time_base``. This one encodes the stamped test pattern.
        """
        pattern = TestPatternTrack(self.width, self.height, self.fps)
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = self.width, self.height, "yuv420p"
        codec.time_base = fractions.Fraction(1, 90_000)
        codec.framerate = fractions.Fraction(self.fps)
        codec.bit_rate = 3_000_000  # generous: the stamp must survive a second encode
        codec.gop_size = self.fps
        codec.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
        try:
            while True:
                frame = await pattern.recv()
                for packet in codec.encode(frame):
                    packet.time_base = codec.time_base
                    yield packet
        finally:
            pattern.stop()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        packetizer = H264Encoder()
        ssrc, sequence_number = random.getrandbits(32), random.getrandbits(16)
        try:
            async with contextlib.aclosing(self.packets()) as packets:
                async for packet in packets:
                    payloads, timestamp = packetizer.pack(packet)
                    for datagram in rtp_datagrams(
                        payloads,
                        payload_type=_PAYLOAD_TYPE,
                        ssrc=ssrc,
                        sequence_number=sequence_number,
                        timestamp=timestamp,
                    ):
                        writer.write(b"$\x00" + struct.pack("!H", len(datagram)) + datagram)
                    sequence_number = (sequence_number + len(payloads)) & 0xFFFF
                    self.frames_sent += 1
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
