"""The papercuts of a first hour with kvs-peer (issue 15, items 9 and 11), each as users meet it:
the command line in real processes, the emulator on real sockets."""

from __future__ import annotations

import argparse
import asyncio
import errno
import inspect
import os
import re
import signal
import socket
import sys
import tomllib
from pathlib import Path

import pytest
from support import MS

from kvs_peer.cli import build_parser
from kvs_peer.emulator import LocalKvs
from kvs_peer.errors import ChannelNotFound, InvalidArgument
from kvs_peer.media.redact import describe_url
from kvs_peer.netfail import bind_failure
from kvs_peer.signer.config import parse_config
from kvs_peer.testing import KvsMasterFactory, KvsViewerFactory

KVS_PEER = [sys.executable, "-m", "kvs_peer"]
DOCS = Path(__file__).resolve().parent.parent / "docs"


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60_000 * MS)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- local --env-file --------------------------------------------------------------------------


async def test_local_env_file_is_written_when_ready_and_removed_on_exit(tmp_path: Path) -> None:
    env_file = tmp_path / "kvs.env"
    env_file.write_text("export KVS_PEER_ENDPOINT_URL=http://127.0.0.1:1\n")  # a killed run's
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        *("local", "--port", "0", "--channel", "demo", "--env-file", str(env_file)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30_000 * MS):
            while "127.0.0.1:1\n" in env_file.read_text() if env_file.exists() else True:
                await asyncio.sleep(0.02)
        text = env_file.read_text()
        values = dict(re.findall(r"^export (\w+)=(\S+)$", text, re.MULTILINE))
        assert len(values) == len(text.splitlines()), text
        endpoint = values["KVS_PEER_ENDPOINT_URL"]
        assert values["AWS_ENDPOINT_URL_KINESIS_VIDEO"] == endpoint
        # What the file holds is enough for plain boto3: the endpoint comes from the
        # environment, as in a shell that sourced the file.
        boto_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        boto_env.update(values, AWS_CONFIG_FILE="/nonexistent")
        code = (
            "import boto3; print(boto3.client('kinesisvideo').describe_signaling_channel("
            "ChannelName='demo')['ChannelInfo']['ChannelName'])"
        )
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=boto_env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(check.communicate(), 30_000 * MS)
        assert out.decode().strip() == "demo"
        # The banner names the page and the file.
        banner = []
        while not banner or "Ctrl+C" not in banner[-1]:
            banner.append((await proc.stdout.readline()).decode())
        assert f"Watch a channel in a browser: {endpoint}/?channel=demo\n" in banner
        assert f"Environment written to {env_file}" in "".join(banner)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 20_000 * MS)
    assert proc.returncode == 0
    assert not env_file.exists()


async def test_local_env_file_in_a_missing_folder_fails_before_starting(tmp_path: Path) -> None:
    code, out, err = await run("local", "--port", "0", "--env-file", str(tmp_path / "no/kvs.env"))
    assert code == 1 and "listening" not in out
    assert "cannot write the environment file" in err and "does not exist" in err, err


# -- addresses -----------------------------------------------------------------------------------


async def test_an_address_of_another_machine_is_not_called_a_port_problem() -> None:
    with pytest.raises(InvalidArgument) as caught:
        async with LocalKvs(host="192.0.2.1", port=0):  # TEST-NET-1: on no machine's interface
            pass
    message = str(caught.value)
    assert "192.0.2.1 is not an address of this machine" in message, message
    assert "--host" in message and "port" not in message.split(":", 2)[2]


async def test_a_port_in_use_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidArgument, match="the port is in use; pick another --port"):
            async with LocalKvs(port=port):
                pass


def test_bind_failure_names_the_options_given() -> None:
    exc = OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    text = bind_failure(exc, "10.9.9.9", 9090, host_option="--metrics-host")
    assert text.startswith("cannot listen on 10.9.9.9:9090: 10.9.9.9 is not an address")
    assert "--metrics-host" in text


# -- command-line values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1M", 1_000_000), ("800k", 800_000), ("1.5M", 1_500_000), ("250000", 250_000)],
)
def test_bitrate_takes_k_and_m(given: str, expected: int) -> None:
    args = build_parser().parse_args(["master", "--channel", "c", "--bitrate", given])
    assert args.bitrate == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--duration", "0"],
        ["demo", "--duration", "-1"],
        ["demo", "--duration", "nan"],
        ["viewer", "--channel", "c", "--duration", "0"],
        ["viewer", "--channel", "c", "--segment", "-5"],
        ["master", "--channel", "c", "--duration", "inf"],
        ["master", "--channel", "c", "--bitrate", "fast"],
        ["master", "--channel", "c", "--bitrate=-1M"],
    ],
)
def test_nonsense_numbers_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"is not a (duration|bit rate): give", err), err


def test_sources_that_are_not_urls_are_shown_as_given() -> None:
    assert describe_url("testsrc") == "testsrc"
    assert describe_url("/dev/video0") == "/dev/video0"
    assert describe_url("rtsp://cam:secret@10.0.0.5/live?x=1") == "rtsp://cam:***@10.0.0.5/live?..."


# -- output ----------------------------------------------------------------------------------------


async def test_master_and_viewer_say_what_they_did(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("cam")
    master = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        *("master", "--channel", "cam", "--source", "testsrc", "--bitrate", "500k"),
        env=device_env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30_000 * MS):
            await kvs.wait_connected("cam", master=True)
        record = tmp_path / "cam.mkv"
        code, out, err = await run(
            "viewer", "--channel", "cam", "--duration", "2", "--record", str(record), env=device_env
        )
    finally:
        master.send_signal(signal.SIGINT)
        _, master_err = await asyncio.wait_for(master.communicate(), 20_000 * MS)
    assert code == 0, err
    assert out == ""  # the summary goes to stderr; stdout stays for --json
    summary = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"viewer: (\d+\.\d) s, (\d+) frames, (\d+\.\d) fps, first frame after (\d+) ms, "
        r"recorded to (.+)",
        summary,
    )
    assert match, summary
    # --duration counts from the command's start; the summary's seconds from the viewer's
    # (after the channel lookup and the recording's setup), as its first-frame time does.
    assert 1.0 <= float(match[1]) <= 2.0 and int(match[2]) >= 20 and float(match[3]) > 10
    assert match[5] == str(record) and record.exists()
    assert "streaming testsrc on channel 'cam'" in master_err.decode()


async def test_opencv_warnings_stay_out_of_the_output(device_env: dict[str, str]) -> None:
    # A camera index with no camera: OpenCV's V4L2 and FFmpeg backends print [ WARN ] lines.
    code, _, err = await run("master", "--channel", "c", "--source", "7", env=device_env)
    assert code == 1
    assert err.startswith("kvs-peer master: error: cannot open camera 7"), err
    assert "[ WARN" not in err


def test_aioice_chatter_needs_two_v() -> None:
    code = (
        "import logging, sys; from kvs_peer.cli import _configure_logging; "
        "_configure_logging(int(sys.argv[1])); "
        "print(logging.getLevelName(logging.getLogger('aioice').getEffectiveLevel()))"
    )
    levels = [
        os.popen(f"{sys.executable} -c {code!r} {verbose}").read().strip() for verbose in (1, 2)
    ]
    assert levels == ["WARNING", "INFO"]


def test_demo_text_says_frames_decoded() -> None:
    from kvs_peer.commands import _demo_text

    video = dict.fromkeys(("firstCounter", "lastCounter", "countersBackwards"), 1)
    video.update(countersSkipped=0, latencyMedianMs=1, latencyP95Ms=2)
    result = {
        "endpointUrl": "http://127.0.0.1:1",
        "channel": "demo",
        "timeToFirstFrame": 0.09,
        "framesReceived": 151,
        "duration": 5,
        "fps": 30,
        "width": 640,
        "height": 480,
        "video": video,
        "recording": ["demo.mkv"],
        "framesDecoded": 151,
        "snapshot": "snapshot.png",
        "ok": True,
        "problem": None,
    }
    text = _demo_text(result)
    assert "demo.mkv (151 frames decoded back)" in text
    assert "time to first frame    90 ms" in text and "(30 fps, 640x480)" in text
    # Over a fraction of a second a frame rate means little: not shown (issue 15, item 9).
    result.update(duration=0.4, framesReceived=13)
    assert "fps" not in _demo_text(result)


# -- signer hash-token -----------------------------------------------------------------------------


async def test_hash_token_prints_a_table_for_the_channels_and_roles_given() -> None:
    code, out, err = await run(
        "signer",
        "hash-token",
        "--generate",
        *("--name", "door", "--channel", "garage", "--channel", "cam-*"),
        *("--role", "master", "--role", "VIEWER"),
    )
    assert code == 0, err
    table = tomllib.loads(out[out.index("[[tokens]]") :])
    assert table["tokens"][0]["channels"] == ["garage", "cam-*"]
    assert table["tokens"][0]["roles"] == ["MASTER", "VIEWER"]
    token = parse_config(table).tokens[0]  # what the signer itself accepts
    assert token.name == "door"


# -- docs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook",
    [
        "send_go_away",
        "send_reconnect_ice_server",
        "send_raw",
        "fail_next_connects",
        "fail_next_api_calls",
        "wait_connected",
        "create_channel",
    ],
)
def test_testing_guide_shows_the_hooks_real_signatures(hook: str) -> None:
    parameters = list(inspect.signature(getattr(LocalKvs, hook)).parameters.values())[1:]
    parts: list[str] = []
    for p in parameters:
        if p.kind is p.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    shown = f"{hook}({', '.join(parts)})"
    assert (
        f"`{shown}`" in (DOCS / "testing.md").read_text()
        or f"await {shown}`" in (DOCS / "testing.md").read_text()
    ), shown


def test_every_option_with_a_default_shows_it() -> None:
    missing = []

    def walk(command: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{command} {name}".strip(), sub)
            elif (
                action.option_strings
                and action.help not in (None, argparse.SUPPRESS)
                and action.default not in (None, False, True, [], argparse.SUPPRESS)
                and not isinstance(action, argparse._CountAction)
                and "default" not in action.help
                and "(env " not in action.help
            ):
                missing.append(f"{command} {action.option_strings[-1]}")

    walk("", build_parser())
    assert not missing, f"help without its default: {missing}"


async def test_fixtures_say_how_to_get_a_channel_in_a_test(
    kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory, kvs_channel: str
) -> None:
    for start in (kvs_master, kvs_viewer):
        with pytest.raises(ChannelNotFound) as caught:
            await start("missing")
        message = str(caught.value)
        assert f"(channels: {kvs_channel!r})" in message
        assert "kvs_emulator.create_channel('missing')" in message
        assert "--create-channel" not in message
