"""The examples run as documented, against the local emulator."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import av

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


async def test_camera_master_with_recording_and_motion_viewers(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    env = device_env
    kvs.create_channel("ex")
    master = await run_example(
        "camera_master.py", "--channel", "ex", "--source", "testsrc", "--duration", "20", env=env
    )
    try:
        async with asyncio.timeout(30):
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
        rec_out, rec_err = await asyncio.wait_for(recorder.communicate(), 40)
        mot_out, mot_err = await asyncio.wait_for(motion.communicate(), 40)
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
    assert "motion:" in mot_out.decode()  # the test pattern moves
    assert list((tmp_path / "motion").glob("motion-*.png"))
