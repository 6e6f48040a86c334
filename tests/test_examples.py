"""The examples run as their docstrings say, against the local emulator.

Each example's first documented command (``python examples/NAME.py ...``) is taken from its
docstring and run as written, from a scratch folder (relative output paths land there), with
options appended only to shorten it (``--duration``, a shorter ``--segment``/``--cooldown``).
"""

from __future__ import annotations

import ast
import asyncio
import re
import shlex
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from support import MS, finish, kill, spawn, wait_until

from kvs_peer.emulator import LocalKvs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def documented_command(name: str) -> list[str]:
    """The first ``python examples/NAME ...`` command of ``name``'s docstring, as argv."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))) or ""
    for line in doc.replace("\\\n", " ").splitlines():
        if line.strip().startswith(f"python examples/{name} "):
            return [sys.executable, str(EXAMPLES / name), *shlex.split(line)[2:]]
    raise AssertionError(f"the docstring of examples/{name} shows no `python examples/{name}`")


async def run_example(name: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await spawn(sys.executable, str(EXAMPLES / name), *args, env=env)


def count_frames(files: list[Path]) -> int:
    frames = 0
    for path in files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    return frames


@pytest.mark.slow
async def test_documented_commands_run_against_the_emulator(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    master_argv = documented_command("camera_master.py")
    channel = master_argv[master_argv.index("--channel") + 1]
    # The master creates the channel (as against AWS); the viewers then join it.
    master = await spawn(*master_argv, "--duration", "30", env=device_env, cwd=tmp_path)
    try:
        await wait_until(
            lambda: channel in kvs.channel_names() and kvs.connected(channel).master,
            30_000 * MS,
            "the master to create the channel and connect",
        )
        recorder = await spawn(
            *documented_command("recording_viewer.py"),
            *("--segment", "1.5", "--duration", "4"),
            env=device_env,
            cwd=tmp_path,
        )
        motion = await spawn(
            *documented_command("motion_viewer.py"),
            *("--cooldown", "1", "--duration", "4"),
            env=device_env,
            cwd=tmp_path,
        )
        rec_code, rec_out, rec_err = await finish(recorder, 40_000 * MS)
        mot_code, mot_out, mot_err = await finish(motion, 40_000 * MS)
        assert master.returncode is None, "the master stopped before its --duration"
    finally:
        await kill(master)
    _, _, master_err = await finish(master)

    assert rec_code == 0, rec_err
    # recordings/cam.mkv in the docstring: the example creates the folder.
    segments = sorted((tmp_path / "recordings").glob("cam-*.mkv"))
    assert [p.name for p in segments[:2]] == ["cam-0000.mkv", "cam-0001.mkv"], rec_out
    assert count_frames(segments) >= 40

    assert mot_code == 0, mot_err
    # One line per motion event, not per frame: the test pattern moves all the time, so a new
    # event starts every --cooldown (1 s) of the ~3-4 s of video.
    lines = mot_out.splitlines()
    events = [line for line in lines if line.startswith("motion:")]
    summary = re.fullmatch(r"(\d+) motion events \((\d+) frames with motion\)", lines[-1])
    assert summary, mot_out
    assert 2 <= len(events) <= 5 and int(summary[1]) == len(events), mot_out
    assert int(summary[2]) > 3 * len(events), mot_out
    pngs = sorted((tmp_path / "motion").glob("motion-*.png"))
    assert len(pngs) == len(events), [p.name for p in pngs]

    # Libraries log warnings only: aioice's INFO lines (every ICE check) stay out.
    for name, err in [("master", master_err), ("recorder", rec_err), ("motion", mot_err)]:
        assert "kvs_peer." in err, f"{name} logged nothing of kvs-peer's own: {err}"
        assert "aioice" not in err, f"{name}: {err}"


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
    frames = count_frames(list(tmp_path.glob("rec*.mkv")))
    assert frames > 30, f"{frames} frames: the 15-frame file was not looped"
