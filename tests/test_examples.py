"""The examples run as documented, against the local emulator."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from support import MS

from kvs_peer.emulator import LocalKvs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def run_example(name: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
async def test_camera_master_with_recording_and_motion_viewers(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    env = device_env
    kvs.create_channel("ex")
    master = await run_example(
        "camera_master.py", "--channel", "ex", "--source", "testsrc", "--duration", "20", env=env
    )
    try:
        async with asyncio.timeout(30_000 * MS):
            await kvs.wait_connected("ex", master=True)
        recorder = await run_example(
            "recording_viewer.py",
            "--channel",
            "ex",
            "--out",
            str(tmp_path / "rec.mkv"),
            "--segment",
            "1.5",
            "--duration",
            "4",
            env=env,
        )
        motion = await run_example(
            "motion_viewer.py",
            "--channel",
            "ex",
            "--duration",
            "4",
            "--snapshots",
            str(tmp_path / "motion"),
            env=env,
        )
        rec_out, rec_err = await asyncio.wait_for(recorder.communicate(), 40_000 * MS)
        mot_out, mot_err = await asyncio.wait_for(motion.communicate(), 40_000 * MS)
    finally:
        master.terminate()
        await master.wait()
    assert recorder.returncode == 0, rec_err.decode()
    segments = sorted(tmp_path.glob("rec-*.mkv"))
    assert len(segments) >= 2, rec_out.decode()  # rotated every 1.5 s
    frames = 0
    for segment in segments:
        with av.open(str(segment)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 40
    assert motion.returncode == 0, mot_err.decode()
    assert mot_out.decode().count("motion:") > 1  # the test pattern moves
    # One PNG: the default --cooldown (5 s) outlasts the 4 s run.
    assert len(list((tmp_path / "motion").glob("motion-*.png"))) == 1


def write_clip(path: Path, frames: int) -> None:
    """A short H.264 clip of a moving gray level, 160x120 at 30 fps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(frames):
            image = np.full((120, 160, 3), (index * 8) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.slow
async def test_camera_master_loops_a_file(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mkv"
    write_clip(clip, frames=15)  # half a second
    kvs.create_channel("loop")
    master = await run_example(
        "camera_master.py",
        *("--channel", "loop", "--source", str(clip), "--loop", "--bitrate", "300k"),
        *("--duration", "20"),
        env=device_env,
    )
    try:
        async with asyncio.timeout(30_000 * MS):
            await kvs.wait_connected("loop", master=True)
        recorder = await run_example(
            "recording_viewer.py",
            *("--channel", "loop", "--out", str(tmp_path / "rec.mkv"), "--duration", "3"),
            env=device_env,
        )
        _, rec_err = await asyncio.wait_for(recorder.communicate(), 40_000 * MS)
        assert master.returncode is None, "the master stopped at the end of the file"
    finally:
        master.terminate()
        await master.wait()
    assert recorder.returncode == 0, rec_err.decode()
    frames = 0
    for segment in tmp_path.glob("rec*.mkv"):
        with av.open(str(segment)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames > 30, f"{frames} frames: the 15-frame file was not looped"
