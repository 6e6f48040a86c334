"""The one-command demo: emulator, master and recording viewer in one process, no AWS.

Used by ``kvs-peer demo``; also a compact example of putting the parts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import av

from .access import AwsAccess
from .emulator import LocalKvs
from .errors import MediaError
from .master import Master
from .media import Recorder, TestPatternTrack, save_snapshot
from .media.recorder import check_output_path
from .protocol import Role
from .testing.video import VideoCheck
from .viewer import Viewer, new_client_id

__all__ = ["run_demo"]

CHANNEL = "kvs-peer-demo"


def count_frames(path: Path) -> int:
    """Decode a recording and count its video frames (0 if unreadable)."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, OSError, IndexError):
        return 0


async def run_demo(
    *, duration: float = 5.0, output: str | Path = "kvs-peer-demo"
) -> dict[str, Any]:
    """Stream a stamped test pattern master -> viewer through a local emulator and record it.

    Returns:
        A JSON-friendly report with the keys ``viewer --json`` uses for the same facts
        (``ok``, ``problem``, ``timeToFirstFrame`` in seconds, ``framesReceived``, ``fps``,
        ``width``, ``height``, ``duration``, ``recording`` as a list of files, ``snapshot``),
        plus the verified frame counters and latency (``video``), how many frames the
        recording decodes to (``framesDecoded``) and the emulator's ``endpointUrl``.

    Raises:
        MediaError: ``output`` cannot be created or written to (checked before streaming),
            or the recording failed.
    """
    out = Path(output)
    try:
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise MediaError(
            f"cannot create the output folder {out}: {exc.strerror or exc}; "
            "pass --output a folder you can write to"
        ) from None
    recording = out / "demo.mkv"
    snapshot = out / "snapshot.png"
    await asyncio.to_thread(check_output_path, snapshot, what="snapshot")
    check = VideoCheck()
    last: list[av.VideoFrame | None] = [None]

    def on_frame(frame: av.VideoFrame) -> None:
        check.add(frame)
        last[0] = frame

    async with LocalKvs() as kvs:
        kvs.create_channel(CHANNEL)
        async with kvs.resolver() as resolver:
            master_access = AwsAccess(resolver, CHANNEL, Role.MASTER)
            viewer_access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id=new_client_id())
            recorder = Recorder(recording)
            async with Master(master_access, video=TestPatternTrack(640, 480, 30)):
                async with Viewer(viewer_access, recorder=recorder, on_frame=on_frame) as viewer:
                    ttff = await viewer.wait_first_frame(timeout=30)
                    started = time.monotonic()
                    # wait_closed() returns early only when the recording failed: it raises.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(viewer.wait_closed(), duration)
                    streamed = time.monotonic() - started
                    stats = viewer.stats
        endpoint = kvs.endpoint_url
    if last[0] is not None:
        save_snapshot(last[0], snapshot)
    decoded = await asyncio.to_thread(count_frames, recording)
    video = check.summary()
    problems = []
    try:
        check.assert_ok(min_frames=int(duration * 20), size=(640, 480))
    except AssertionError as exc:
        problems.append(str(exc).split(" -- ")[0])
    if decoded < 0.8 * stats.frames_received:
        problems.append(f"recording decodes to {decoded} of {stats.frames_received} frames")
    # The keys `viewer --json` has for the same facts carry the same names and units.
    return {
        "ok": not problems,
        "problem": "; ".join(problems) or None,
        "problems": problems,
        "endpointUrl": endpoint,
        "channel": CHANNEL,
        "timeToFirstFrame": round(ttff, 3),
        "framesReceived": stats.frames_received,
        "fps": round(stats.fps(), 2),  # from the first frame to the last
        "width": stats.width,
        "height": stats.height,
        "duration": round(streamed, 3),
        "video": video,
        "recording": [str(recording)],
        "framesDecoded": decoded,
        "snapshot": str(snapshot) if last[0] is not None else None,
    }
