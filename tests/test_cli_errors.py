"""What users see when something is wrong: one ``error:`` line with a hint, an exit code.

Every case runs the real command line in a subprocess (issue 10, items 11-13): bad output
paths, a disk that fills up during a recording, a broken AWS setup, an untrusted
certificate, a viewer that gets no video or loses it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import pytest
from support import (
    EXIT_ERROR,
    EXIT_NO_VIDEO,
    EXIT_USAGE,
    KVS_PEER,
    MS,
    assert_one_error,
    finish,
    interrupt,
    run_kvs_peer,
    spawn,
)

from kvs_peer.access import AwsAccess
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
async def master(kvs: LocalKvs) -> AsyncIterator[Master]:
    """A library master streaming a 320x240 test pattern on channel ``cam``."""
    kvs.create_channel("cam")
    async with (
        kvs.resolver() as resolver,
        Master(AwsAccess(resolver, "cam", Role.MASTER), video=TestPatternTrack(320, 240)) as m,
    ):
        await kvs.wait_connected("cam", master=True)
        yield m


# -- item 11: outputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (
            ["viewer", "--channel", "nochannel", "--record", "/nonexistent/x.mkv"],
            ["folder /nonexistent does not exist", "create it or choose another path"],
        ),
        (
            ["viewer", "--channel", "nochannel", "--snapshot", "/proc/x.png"],
            ["cannot write the snapshot to /proc/x.png", "choose a folder you can write to"],
        ),
        (
            ["viewer", "--channel", "nochannel", "--snapshot", "last.jpg"],
            ["should end in .png"],
        ),
        (
            ["demo", "--output", "/proc/x"],
            ["cannot create the output folder /proc/x", "pass --output a folder"],
        ),
        (
            ["viewer", "--channel", "nochannel", "--record", "x.avi"],
            ["--record cannot write '.avi' files", ".mkv"],
        ),
    ],
    ids=[
        "record-missing-folder",
        "snapshot-on-proc",
        "snapshot-not-png",
        "demo-output-on-proc",
        "record-unknown-container",
    ],
)
async def test_outputs_are_checked_before_connecting(
    kvs: LocalKvs, device_env: dict[str, str], args: list[str], phrases: list[str]
) -> None:
    # The channel does not exist: had the viewer connected first, it would say "not found".
    code, out, err = await run_kvs_peer(
        *args, "--duration", "2", "--json", env=device_env, timeout=60_000 * MS
    )
    line = assert_one_error(code, err, EXIT_ERROR, *phrases)
    assert "container=" not in line  # the library's hint names a Python argument
    assert json.loads(out)["ok"] is False
    assert not Path("/proc/x").exists()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MiB tmpfs with 64 KiB left: a disk about to fill up (needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip()}); the file-size case runs")
    try:
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 64 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# The viewer in a process whose files may not grow past 100 kB (RLIMIT_FSIZE): a write
# beyond fails with EFBIG, as a full disk fails with ENOSPC (Python ignores SIGXFSZ).
FSIZE_LIMITED = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'kvs_peer', *sys.argv[1:]])\n"
)


@pytest.mark.parametrize("limit", ["tmpfs-full", "file-size-limit"])
async def test_a_full_disk_ends_the_viewer_with_an_error(
    request: pytest.FixtureRequest,
    kvs: LocalKvs,
    master: Master,
    device_env: dict[str, str],
    tmp_path: Path,
    limit: str,
) -> None:
    if limit == "tmpfs-full":
        folder, command, reason = request.getfixturevalue("small_tmpfs"), KVS_PEER, "No space"
    else:
        folder, command = tmp_path, [sys.executable, "-c", FSIZE_LIMITED]
        reason = "File too large"
    record = folder / "cam.mkv"
    started = time.monotonic()
    proc = await spawn(
        *command,
        *("viewer", "--channel", "cam", "--record", str(record), "--duration", "30", "--json"),
        env=device_env,
    )
    code, out, err = await finish(proc)
    elapsed = time.monotonic() - started
    line = assert_one_error(code, err, EXIT_ERROR, f"recording to {record} failed", reason)
    assert "check the free space" in line
    assert elapsed < 20_000 * MS, "the viewer ran on without recording"
    assert json.loads(out)["ok"] is False
    # Video arrived and what fit on the disk stays playable. (Not the master's session
    # count: the master counts a session once the viewer's first SRTCP packet arrives,
    # which a viewer that fails this fast may never send.)
    with av.open(str(record)) as container:
        assert sum(1 for p in container.demux(video=0) if p.size) > 0


# -- item 12: setup errors ------------------------------------------------------------------


async def test_aws_setup_errors_are_one_line(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("cam")
    viewer = ["viewer", "--channel", "cam", "--duration", "2"]

    env = dict(device_env, AWS_PROFILE="nosuch")
    code, _, err = await run_kvs_peer(*viewer, env=env)
    assert_one_error(code, err, EXIT_ERROR, "AWS profile 'nosuch' not found", "unset AWS_PROFILE")

    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIALOCALKVSPEER0000\n")
    env = {k: v for k, v in device_env.items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    env.pop("AWS_SECRET_ACCESS_KEY")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
    code, _, err = await run_kvs_peer(*viewer, env=env, timeout=30_000 * MS)
    assert_one_error(
        code,
        err,
        EXIT_ERROR,
        f"incomplete AWS credentials in {credentials}",
        "aws_secret_access_key is missing",
    )

    bare = kvs.endpoint_url.removeprefix("http://")
    code, _, err = await run_kvs_peer(*viewer, "--endpoint-url", bare, env=device_env)
    assert_one_error(code, err, EXIT_USAGE, f"{bare!r} is not an http://", "http://127.0.0.1")
    env = dict(device_env, KVS_PEER_ENDPOINT_URL=bare)
    code, _, err = await run_kvs_peer(*viewer, env=env)
    assert_one_error(code, err, EXIT_USAGE, "KVS_PEER_ENDPOINT_URL")


async def test_an_untrusted_certificate_is_one_line(device_env: dict[str, str]) -> None:
    async with LocalKvs(tls=True) as kvs:
        kvs.create_channel("cam")
        env = dict(device_env, KVS_PEER_ENDPOINT_URL=kvs.endpoint_url)
        args = ["url", "--channel", "cam", "--client-id", "c1"]
        code, _, err = await run_kvs_peer(*args, env=env, timeout=30_000 * MS)
        assert_one_error(
            code,
            err,
            EXIT_ERROR,
            f"certificate of {kvs.endpoint_url} is not trusted",
            "AWS_CA_BUNDLE",
        )
        # The hint works: the same command with the emulator's CA trusted.
        env["AWS_CA_BUNDLE"] = str(kvs.ca_cert_path)
        code, out, err = await run_kvs_peer(*args, env=env, timeout=30_000 * MS)
        assert code == 0, err
        assert out.startswith("wss://")


async def test_camera_example_without_a_camera_is_one_line(device_env: dict[str, str]) -> None:
    proc = await spawn(
        *(sys.executable, str(EXAMPLES / "camera_master.py")),
        *("--channel", "cam", "--source", "/dev/video97"),
        env=device_env,
    )
    code, _, err = await finish(proc, 30_000 * MS)
    assert_one_error(code, err, EXIT_ERROR, "camera device /dev/video97 not found", "ls")


# -- item 13: a viewer without video ----------------------------------------------------------


async def test_viewer_without_a_master_says_why(kvs: LocalKvs, device_env: dict[str, str]) -> None:
    kvs.create_channel("empty")
    args = ["viewer", "--channel", "empty", "--duration", "2", "--json"]
    code, out, err = await run_kvs_peer(*args, env=device_env)
    assert_one_error(
        code, err, EXIT_NO_VIDEO, "no answer from a master within 2 s", "no master is connected"
    )
    report = json.loads(out)
    assert report["ok"] is False and report["problem"].startswith("no video")
    assert report["offersSent"] >= 1 and report["answersReceived"] == 0
    assert report["framesReceived"] == 0 and report["fps"] == 0


async def test_viewer_refused_by_a_full_master_says_why(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("full")
    async with (
        kvs.resolver() as resolver,
        Master(
            AwsAccess(resolver, "full", Role.MASTER),
            video=TestPatternTrack(320, 240),
            max_viewers=1,
        ) as master,
        Viewer(
            AwsAccess(resolver, "full", Role.VIEWER, client_id=new_client_id()),
            loopback_candidates=True,
        ) as first,
    ):
        await first.wait_first_frame(timeout=30_000 * MS)
        code, _, err = await run_kvs_peer(
            "viewer", "--channel", "full", "--duration", "3", env=device_env
        )
        assert master.stats.refused_over_limit >= 1
        assert first.stats.frames_received > 30
    assert_one_error(code, err, EXIT_NO_VIDEO, "no answer from a master", "viewer limit")


async def test_viewer_json_when_the_master_leaves_midway(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("leave")
    duration = 6.0
    async with kvs.resolver() as resolver:
        master = Master(AwsAccess(resolver, "leave", Role.MASTER), video=TestPatternTrack(320, 240))
        async with master:
            proc = await spawn(
                *KVS_PEER,
                *("viewer", "--channel", "leave", "--duration", str(duration), "--json"),
                env=device_env,
            )
            async with asyncio.timeout(30_000 * MS):
                while master.stats.sessions_connected == 0:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # video flows, then the master leaves
    code, out, err = await finish(proc, 30_000 * MS)
    line = assert_one_error(code, err, EXIT_NO_VIDEO, "video stopped")
    report = json.loads(out)
    assert report["ok"] is False and report["problem"] in line
    stopped, first = report["videoStoppedAt"], report["timeToFirstFrame"]
    assert stopped == report["lastFrameAt"]
    assert first < stopped < duration - 2, report
    # fps over the run from the first frame, not over the seconds that had video
    run_fps = (report["framesReceived"] - 1) / (report["duration"] - first)
    assert report["fps"] == pytest.approx(run_fps, rel=0.05)
    assert report["fps"] < 0.75 * report["framesReceived"] / (stopped - first)
    said = re.search(r"video stopped (\d+\.\d) s into the run", line)
    # The message rounds to a tenth; the JSON keeps the full value.
    assert said and float(said.group(1)) == pytest.approx(stopped, abs=0.051), line


async def test_a_signal_stops_a_viewer_still_connecting(device_env: dict[str, str]) -> None:
    # Nothing listens on the endpoint: connect attempts back off and retry for ever (the
    # network may come up), so the first Ctrl+C must end the start, not wait for it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the viewer starts
    env = dict(device_env, KVS_PEER_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    proc = await spawn(*KVS_PEER, "viewer", "--channel", "cam", "--duration", "60", env=env)
    await asyncio.sleep(3)  # the CLI is up and retrying
    assert proc.returncode is None
    code, _, err = await interrupt(proc, 10_000 * MS)
    assert code == 0, err
    assert "Traceback" not in err
    assert "could not reach" in err  # it was connecting when stopped
