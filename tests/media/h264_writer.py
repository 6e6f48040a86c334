"""Writes a stamped H.264 Annex-B stream to stdout in real time, as ``rpicam-vid -o -`` does.

Run as a subprocess (``python tests/media/h264_writer.py --size 640x480 ...``): the stdin
pipeline tests and the passthrough benchmark use it where no ``ffmpeg`` binary is installed.
Each frame carries a :mod:`kvs_peer.media.stamp` (counter, capture time), so a viewer can tell
which frame it decoded and how late.
"""

from __future__ import annotations

import argparse
import fractions
import os
import sys
import time

import av
import numpy as np

from kvs_peer.media.h264 import NalType, join_annexb, nal_type, split_annexb
from kvs_peer.media.stamp import write_stamp


def frames(width: int, height: int, count: int | None):
    """Stamped yuv420p frames with moving content (a box and scrolling bars)."""
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    index = 0
    while count is None or index < count:
        luma = ((x + y + index * 4) % 160 + 40).astype(np.uint8)
        box = max(8, min(width, height) // 8)
        bx = (index * 5) % max(1, width - box)
        luma[height // 4 : height // 4 + box, bx : bx + box] = 235
        write_stamp(luma, index, int(time.time() * 1000))
        chroma = np.full((height // 2, width // 2), 128, np.uint8)
        chroma_v = ((np.arange(width // 2)[None, :] + index) % 64 + 96).astype(np.uint8)
        chroma_v = np.repeat(chroma_v, height // 2, axis=0)
        data = np.concatenate([luma.reshape(-1), chroma.reshape(-1), chroma_v.reshape(-1)])
        frame = av.VideoFrame.from_ndarray(data.reshape(height * 3 // 2, width), format="yuv420p")
        yield index, frame
        index += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--gop", type=int, default=60)
    parser.add_argument("--profile", default="baseline", choices=["baseline", "main", "high"])
    parser.add_argument("--bitrate", type=int, default=1_000_000)
    parser.add_argument("--frames", type=int, help="stop after this many (default: forever)")
    parser.add_argument("--sps-once", action="store_true", help="SPS/PPS with the first IDR only")
    parser.add_argument("--aud", action="store_true", help="access unit delimiters")
    parser.add_argument("--fast", action="store_true", help="do not pace (write a file)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 90_000)
    codec.framerate = fractions.Fraction(args.fps).limit_denominator(1001)
    codec.bit_rate = args.bitrate
    codec.gop_size = args.gop
    params = "scenecut=0" + (":aud=1" if args.aud else "")
    codec.options = {
        # x264 announces the lowest profile its tools need: ultrafast is always Constrained
        # Baseline, veryfast uses CABAC (Main) and 8x8 transforms (High).
        "preset": "ultrafast" if args.profile == "baseline" else "veryfast",
        "tune": "zerolatency",
        "profile": args.profile,
        "x264-params": params,
    }
    out = sys.stdout.buffer
    started = time.monotonic()
    sent_parameters = False
    try:
        for index, frame in frames(width, height, args.frames):
            due = started + index / args.fps
            if not args.fast and due > time.monotonic():
                time.sleep(due - time.monotonic())
            frame.pts = round(index * 90_000 / args.fps)
            for packet in codec.encode(frame):
                data = bytes(packet)
                if args.sps_once:
                    nals = split_annexb(data)
                    if sent_parameters:
                        nals = [n for n in nals if nal_type(n) not in (NalType.SPS, NalType.PPS)]
                    sent_parameters = sent_parameters or any(
                        nal_type(n) == NalType.SPS for n in nals
                    )
                    data = join_annexb(nals)
                out.write(data)
                out.flush()
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)


if __name__ == "__main__":
    main()
