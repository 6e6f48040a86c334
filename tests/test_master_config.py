"""``kvs-peer master --config``: the file format, how the command line overrides it, bad files,
and several cameras streaming to several channels from one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import EXIT_ERROR, EXIT_USAGE, KVS_PEER, MS, assert_one_error, finish, spawn

from kvs_peer.access import AwsAccess
from kvs_peer.cli import build_parser, main
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import InvalidArgument
from kvs_peer.masterconfig import (
    CAMERA_DEFAULTS,
    CONFIG_EXAMPLE,
    MetricsConfig,
    apply_command_line,
    given_options,
    load_master_config,
    parse_master_config,
)
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id

TWO_CAMERAS = """
[connection]
region = "us-west-2"
loopback_candidates = true

[defaults]
preset = "ultrafast"
width = 320
height = 240

[[camera]]
channel = "cam-a"
source = "testsrc"
fps = 15

[[camera]]
channel = "cam-b"
source = "testsrc"
bitrate = 300000
"""


def write(tmp_path: Path, text: str, name: str = "camera.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def merged(path: Path, *argv: str):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["master", "--config", str(path), *argv])
    given = given_options(args, args.shared_defaults)
    return apply_command_line(load_master_config(path), args, given)


# -- the format ---------------------------------------------------------------------------------


def test_defaults_then_camera_tables_then_built_in_defaults(tmp_path: Path) -> None:
    config = load_master_config(write(tmp_path, TWO_CAMERAS))
    a, b = config.cameras
    assert config.channels == ("cam-a", "cam-b")
    assert (a.preset, a.width, a.fps, a.bitrate) == (
        "ultrafast",
        320,
        15.0,
        CAMERA_DEFAULTS.bitrate,
    )
    assert (b.preset, b.height, b.fps, b.bitrate) == ("ultrafast", 240, None, 300_000)
    assert config.connection.region == "us-west-2" and config.connection.loopback_candidates
    assert config.metrics.port is None


def test_the_example_keeps_metrics_on_loopback_as_the_flags_do() -> None:
    example = parse_master_config(tomllib.loads(CONFIG_EXAMPLE)).metrics
    flag_default = build_parser().parse_args(["master", "--channel", "c"]).metrics_host
    assert example.host == MetricsConfig().host == flag_default == "127.0.0.1"
    [line] = [line for line in CONFIG_EXAMPLE.splitlines() if line.startswith("host =")]
    assert "0.0.0.0" in line and "exposes" in line  # the comment says what the wildcard does


def test_token_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    text = '[connection]\nsigner = "http://127.0.0.1:9"\ntoken_file = "token"\n'
    config = load_master_config(write(tmp_path, text + '[[camera]]\nchannel = "c"\n'))
    assert config.connection.token == "s3cret-token"
    assert "s3cret" not in repr(config)


def test_command_line_overrides_one_camera_and_shared_options(tmp_path: Path) -> None:
    one = write(tmp_path, '[[camera]]\nchannel = "c"\npreset = "ultrafast"\nloop = true\n')
    # An explicit flag wins even when it repeats the built-in default.
    config = merged(one, "--preset", "veryfast", "--no-reopen", "--metrics-port", "0")
    (camera,) = config.cameras
    assert (camera.preset, camera.reopen, camera.loop) == ("veryfast", False, True)
    assert config.metrics.port == 0
    # Shared flags apply to every camera; --channel picks one camera of the file.
    two = write(tmp_path, TWO_CAMERAS, "two.toml")
    config = merged(two, "--region", "eu-west-1", "--no-channel-cache")
    assert config.connection.region == "eu-west-1" and not config.connection.channel_cache
    assert config.channels == ("cam-a", "cam-b")
    config = merged(two, "--channel", "cam-b", "--fps", "5")
    assert config.channels == ("cam-b",) and config.cameras[0].fps == 5.0


def test_camera_flags_for_several_cameras_are_ambiguous(tmp_path: Path) -> None:
    two = write(tmp_path, TWO_CAMERAS)
    with pytest.raises(InvalidArgument, match="--preset, --no-reopen would apply to 2 cameras"):
        merged(two, "--no-reopen", "--preset", "fast")
    with pytest.raises(InvalidArgument, match="'cam-z' is not a camera of the config"):
        merged(two, "--channel", "cam-z")


# -- bad files: one error line, exit code 2 --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "argv", "phrases"),
    [
        (
            '[[camera]]\nchannel = "a"\nbitrat = 5\n',
            [],
            ["camera[0]: unknown key bitrat", "allowed: audio, bitrate"],
        ),
        ('[conection]\nregion = "x"\n', [], ["config: unknown key conection"]),
        (
            '[[camera]]\nchannel = "a"\n[[camera]]\nsource = "testsrc"\n',
            [],
            ["camera[1]: missing channel"],
        ),
        (
            '[[camera]]\nchannel = "a"\n[[camera]]\nchannel = "a"\n',
            [],
            ["camera[1].channel: 'a' is already camera[0]'s", "its own channel"],
        ),
        ('[defaults]\npreset = "warp"\n[[camera]]\nchannel = "a"\n', [], ["defaults.preset"]),
        ('[metrics]\nport = 99999\n[[camera]]\nchannel = "a"\n', [], ["metrics.port"]),
        ('[connection]\nregion = "x"\n', [], ["no [[camera]] table"]),
        ("[[camera]\n", [], ["is not valid TOML"]),
        (TWO_CAMERAS, ["--width", "640"], ["--width would apply to 2 cameras", "--channel"]),
    ],
    ids=[
        "unknown-camera-key",
        "unknown-table",
        "missing-channel",
        "duplicate-channel",
        "bad-choice",
        "bad-port",
        "no-camera",
        "not-toml",
        "ambiguous-flag",
    ],
)
def test_bad_config_is_one_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    argv: list[str],
    phrases: list[str],
) -> None:
    path = write(tmp_path, text)
    code = main(["master", "--config", str(path), *argv])
    err = capsys.readouterr().err
    line = assert_one_error(code, err, EXIT_USAGE, *phrases)
    if "apply to" not in line:
        assert str(path) in line  # the file is named


def test_missing_config_and_missing_channel_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["master", "--config", str(tmp_path / "nope.toml"), "--json"])
    captured = capsys.readouterr()
    assert_one_error(
        code, captured.err, EXIT_USAGE, "not found", "kvs-peer master --config-example"
    )
    assert json.loads(captured.out)["ok"] is False
    code = main(["master"])
    assert_one_error(code, capsys.readouterr().err, EXIT_USAGE, "--channel is required")


# -- several cameras in one process ----------------------------------------------------------------


async def scrape(url: str) -> dict[tuple[str, str], float]:
    """``/metrics`` samples of the master role, by (name, channel)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    return {
        (s.name, s.labels.get("channel", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def watch(kvs: LocalKvs, channel: str, frames: int) -> int:
    """A library viewer on ``channel`` until it decoded ``frames`` frames; returns them."""
    got = 0
    enough = asyncio.Event()

    def on_frame(frame: object) -> None:
        nonlocal got
        got += 1
        if got >= frames:
            enough.set()

    async with (
        kvs.resolver() as resolver,
        Viewer(
            AwsAccess(resolver, channel, Role.VIEWER, client_id=new_client_id()),
            on_frame=on_frame,
            loopback_candidates=True,
        ),
    ):
        await asyncio.wait_for(enough.wait(), 20_000 * MS)
    return got


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        line = (await stream.readline()).decode()
        assert line, "".join(seen)
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match


async def spawn_cameras(
    config: Path, env: dict[str, str], *args: str
) -> asyncio.subprocess.Process:
    """``kvs-peer master --config CONFIG ARGS``: every camera the file lists, in one process."""
    return await spawn(*KVS_PEER, "master", "--config", str(config), *args, env=env)


@dataclass
class Cameras:
    """A ``kvs-peer master --config`` process with metrics; how it ended, after its block."""

    process: asyncio.subprocess.Process
    url: str = ""
    err: list[str] = field(default_factory=list)
    code: int | None = None
    out: str = ""
    log: str = ""

    async def read_until(self, pattern: str) -> re.Match[str]:
        assert self.process.stderr is not None
        return await read_until(self.process.stderr, pattern, self.err)


@contextlib.asynccontextmanager
async def cameras(
    config: Path, kvs: LocalKvs, env: dict[str, str], stop: signal.Signals
) -> AsyncIterator[Cameras]:
    """The cameras of ``config`` with their metrics URL read; stopped with ``stop`` at exit."""
    process = await spawn_cameras(
        config, env, "--region", kvs.region, "--metrics-port", "0", "--json"
    )
    run = Cameras(process)
    try:
        async with asyncio.timeout(30_000 * MS):
            run.url = (await run.read_until(r"metrics on (\S+)/metrics"))[1]
        yield run
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(stop)
        run.code, run.out, rest = await finish(process, 20_000 * MS)
        run.log = "".join(run.err) + rest


async def test_two_cameras_stream_to_two_channels_from_one_process(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    for name in ("cam-a", "cam-b"):
        kvs.create_channel(name)
    # SIGTERM stops every camera cleanly.
    async with cameras(write(tmp_path, TWO_CAMERAS), kvs, device_env, signal.SIGTERM) as run:
        async with asyncio.timeout(30_000 * MS):
            for name in ("cam-a", "cam-b"):
                await kvs.wait_connected(name, master=True)
        got = await asyncio.gather(watch(kvs, "cam-a", 20), watch(kvs, "cam-b", 20))
        assert min(got) >= 20
        samples = await scrape(run.url)
        for name in ("cam-a", "cam-b"):
            assert samples[("kvs_peer_signaling_connected", name)] == 1
            assert samples[("kvs_peer_sessions_started_total", name)] == 1
            assert samples[("kvs_peer_frames_encoded_total", name)] > 0
    assert run.code == 0, run.log
    assert "Traceback" not in run.log
    reports = [json.loads(line) for line in run.out.splitlines()]
    assert [r["channel"] for r in reports] == ["cam-a", "cam-b"]
    assert all(r["ok"] and r["sessionsStarted"] == 1 for r in reports), reports


async def test_one_failing_camera_leaves_the_others_running(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("cam-a")
    bad = tmp_path / "missing.mp4"
    path = write(
        tmp_path,
        TWO_CAMERAS.replace(
            'channel = "cam-b"\nsource = "testsrc"', f'channel = "cam-b"\nsource = "{bad}"'
        ),
    )
    async with cameras(path, kvs, device_env, signal.SIGINT) as run:
        async with asyncio.timeout(30_000 * MS):
            await run.read_until(r"camera 'cam-b' stopped: .*missing\.mp4")
            await kvs.wait_connected("cam-a", master=True)
        assert await watch(kvs, "cam-a", 10) >= 10
        async with aiohttp.ClientSession() as http, http.get(f"{run.url}/healthz") as response:
            assert response.status == 503
            assert "camera 'cam-b' stopped" in await response.text()
    assert run.code == 0, run.log
    assert not [line for line in run.log.splitlines() if "error:" in line], run.log
    a, b = (json.loads(line) for line in run.out.splitlines())
    assert a["ok"] and a["sessionsStarted"] == 1
    assert not b["ok"] and b["channel"] == "cam-b" and "missing.mp4" in b["message"]


async def test_every_camera_failing_is_one_error(
    device_env: dict[str, str], tmp_path: Path
) -> None:
    text = "".join(
        f'[[camera]]\nchannel = "{name}"\nsource = "{tmp_path / name}.mp4"\n' for name in "ab"
    )
    master = await spawn_cameras(write(tmp_path, text), device_env)
    code, _, err = await finish(master, 30_000 * MS)
    assert_one_error(code, err, EXIT_ERROR, "every camera failed", "a: ", "b: ")
