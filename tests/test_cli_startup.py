"""The first hour with the CLI (issue 15): starting, stopping and failing without surprises.

Each case runs the real command line in a subprocess against the emulator or against a port
nothing listens on: ``--duration`` while still connecting, Ctrl+C while connecting, connect
errors said once and in words, the signer's 401, a closed stdout pipe, usage errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    EXIT_ERROR,
    EXIT_NO_VIDEO,
    EXIT_USAGE,
    KVS_PEER,
    MS,
    assert_one_error,
    interrupt,
    kill,
    read_until,
    run_kvs_peer,
    spawn,
    write_signer_config,
)

from kvs_peer.access import AwsAccess
from kvs_peer.emulator import LocalKvs
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id

# What `viewer --json` and `demo --json` both report, under the same names (item 9).
SHARED_REPORT_KEYS = {
    "ok",
    "problem",
    "channel",
    "timeToFirstFrame",
    "framesReceived",
    "fps",
    "width",
    "height",
    "duration",
    "recording",
    "snapshot",
}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    yield port


def unreachable(device_env: dict[str, str], port: int) -> dict[str, str]:
    return dict(device_env, KVS_PEER_ENDPOINT_URL=f"http://127.0.0.1:{port}")


def assert_said_in_words(err: str, port: int) -> None:
    """Connect errors name host:port and what failed, without aiohttp's object reprs, and
    no library log line repeats them at the default verbosity."""
    assert f"127.0.0.1:{port}" in err, err
    assert "object at 0x" not in err and "ssl:" not in err, err
    assert not re.search(r"\b(WARNING|ERROR)\b", err), err


# -- item 1: --duration while connecting; Ctrl+C while connecting --------------------------


async def test_viewer_duration_ends_a_start_that_does_not_connect(
    device_env: dict[str, str], closed_port: int
) -> None:
    started = time.monotonic()
    code, out, err = await run_kvs_peer(
        "viewer", "--channel", "cam", "--duration", "2", "--json",
        env=unreachable(device_env, closed_port), timeout=20_000 * MS,
    )  # fmt: skip
    took = time.monotonic() - started
    line = assert_one_error(
        code, err, EXIT_NO_VIDEO, "signaling did not connect within 2 s", "--endpoint-url"
    )
    assert_said_in_words(line, closed_port)
    assert_said_in_words(err, closed_port)
    assert took < 2 + 6_000 * MS, took  # the interpreter's start-up, then 2 s
    report = json.loads(out)
    assert report["ok"] is False and report["problem"] in line
    assert report["signalingConnected"] is False
    assert report["framesReceived"] == 0 and report["offersSent"] == 0
    assert SHARED_REPORT_KEYS <= report.keys()


async def test_master_duration_ends_a_start_that_does_not_connect(
    device_env: dict[str, str], closed_port: int
) -> None:
    code, out, err = await run_kvs_peer(
        "master", "--channel", "cam", "--duration", "2", "--json",
        env=unreachable(device_env, closed_port), timeout=20_000 * MS,
    )  # fmt: skip
    line = assert_one_error(code, err, EXIT_ERROR, "signaling did not connect within 2 s")
    assert_said_in_words(err, closed_port)
    report = json.loads(out)
    assert report["ok"] is False and report["signalingConnected"] is False
    assert report["problem"] in line


async def test_master_duration_without_viewers_just_ends(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("lonely")
    code, out, err = await run_kvs_peer(
        "master", "--channel", "lonely", "--duration", "2", "--json", env=device_env
    )
    assert code == 0, err
    assert "error" not in err, err
    report = json.loads(out)
    assert report["ok"] is True and report["signalingConnected"] is True
    assert report["sessionsStarted"] == 0 and report["problem"] is None
    assert 2 <= report["duration"] < 2 + 5_000 * MS


async def test_ctrl_c_while_connecting_still_prints_the_master_summary(
    device_env: dict[str, str], closed_port: int
) -> None:
    proc = await spawn(
        *KVS_PEER, "master", "--channel", "cam", "--json",
        env=unreachable(device_env, closed_port),
    )  # fmt: skip
    # Retrying, and saying so (after 2 s of failed attempts), before the Ctrl+C.
    said_so = await read_until(proc, "cannot connect to signaling yet", 20_000 * MS, stderr=True)
    assert proc.returncode is None
    code, out, rest = await interrupt(proc, 15_000 * MS)
    err = said_so + rest
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    assert_said_in_words(err, closed_port)
    said = [line for line in err.splitlines() if "cannot connect to signaling yet" in line]
    assert len(said) == 1, err  # once, not per attempt
    report = json.loads(out)
    assert report["ok"] is True and report["signalingConnected"] is False
    assert report["problem"].startswith("stopped while connecting")


# -- item 4: rejections said once -------------------------------------------------------------


async def test_a_rejection_is_said_once(kvs: LocalKvs, device_env: dict[str, str]) -> None:
    code, _, err = await run_kvs_peer("viewer", "--channel", "missing", env=device_env)
    assert_one_error(code, err, EXIT_ERROR, "'missing' not found", "--create-channel")
    assert err.count("not found") == 1, err
    # -v keeps the details: every attempt, and the reconnect policy's verdict.
    code, _, err = await run_kvs_peer("viewer", "--channel", "missing", "-v", env=device_env)
    assert code == EXIT_ERROR
    assert "attempt 1" in err and "gives up" in err, err


# -- item 5: the signer's own refusal ---------------------------------------------------------


async def test_a_refused_signer_token_is_blamed_not_iam(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("cam-1")
    config = write_signer_config(tmp_path, "the-right-token")
    signer = await spawn(
        *KVS_PEER, "signer", "--config", str(config), "--port", "0", env=device_env
    )
    try:
        banner = await read_until(signer, "listening on")
        url = re.search(r"listening on (\S+)", banner)
        assert url, banner
        env = dict(device_env, KVS_PEER_SIGNER_TOKEN="a-wrong-token")
        code, _, err = await run_kvs_peer(
            "viewer", "--channel", "cam-1", "--signer", url[1], "--duration", "5", env=env
        )
        # The right token, for a channel it does not grant.
        env = dict(device_env, KVS_PEER_SIGNER_TOKEN="the-right-token")
        other_code, _, other_err = await run_kvs_peer(
            "viewer", "--channel", "other", "--signer", url[1], "--duration", "5", env=env
        )
    finally:
        await interrupt(signer)
    assert_one_error(code, err, EXIT_ERROR, "HTTP 401", "KVS_PEER_SIGNER_TOKEN", "--token")
    assert "IAM" not in err, err
    assert_one_error(other_code, other_err, EXIT_ERROR, "HTTP 403", "other channels or roles")
    assert "IAM" not in other_err, other_err


# -- item 6: a reader that leaves -------------------------------------------------------------


async def test_a_closed_stdout_pipe_ends_quietly(kvs: LocalKvs, device_env: dict[str, str]) -> None:
    kvs.create_channel("cam")
    read, write = os.pipe()
    os.close(read)  # `| head -1` after its line: nobody reads any more
    try:
        proc = await asyncio.create_subprocess_exec(
            *KVS_PEER, "url", "--channel", "cam", "--json",
            env=device_env, stdout=write, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write)
    async with asyncio.timeout(30_000 * MS):
        _, err_bytes = await proc.communicate()
    err = err_bytes.decode()
    # It got as far as printing (a signed URL for the generated client id), then stopped.
    assert "generated client id" in err, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "error:" not in err, err
    assert proc.returncode == EXIT_ERROR


# -- item 7: usage errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (["viewer", "--channel", "c", "--signer", "localhost:8080"], ["http://localhost:8080"]),
        (["url", "--channel", "c", "--role", "MASTER", "--client-id", "x"], ["drop --client-id"]),
        (["url", "--channel", "c", "--role", "PEER"], ["--role", "'MASTER', 'VIEWER'"]),
    ],
    ids=["signer-without-scheme", "master-with-client-id", "unknown-role"],
)
async def test_usage_errors_exit_2(
    device_env: dict[str, str], argv: list[str], phrases: list[str]
) -> None:
    code, _, err = await run_kvs_peer(*argv, env=device_env, timeout=30_000 * MS)
    assert_one_error(code, err, EXIT_USAGE, *phrases)


async def test_signer_from_the_environment_without_scheme_is_a_usage_error(
    device_env: dict[str, str],
) -> None:
    env = dict(device_env, KVS_PEER_SIGNER_URL="localhost:8080")
    code, _, err = await run_kvs_peer("viewer", "--channel", "c", env=env)
    assert_one_error(code, err, EXIT_USAGE, "KVS_PEER_SIGNER_URL", "http://")


async def test_url_for_a_viewer_without_client_id_generates_one(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("cam")
    code, out, err = await run_kvs_peer("url", "--channel", "cam", "--json", env=device_env)
    assert code == 0, err
    report = json.loads(out)
    said = re.search(r"generated client id (\S+)", err)
    assert said and report["clientId"] == said[1], err
    assert f"X-Amz-ClientId={said[1]}" in report["url"]


# -- item 8: -vvv ------------------------------------------------------------------------------


def test_most_verbose_level_warns_about_credentials_in_third_party_logs() -> None:
    code = (
        "import sys; from kvs_peer.cli import _configure_logging; "
        "_configure_logging(int(sys.argv[1]))"
    )
    said = [
        subprocess.run(
            [sys.executable, "-c", code, str(level)], capture_output=True, text=True, check=True
        ).stderr
        for level in (2, 3)
    ]
    assert said[0] == ""
    assert said[1].count("\n") == 1 and "credentials" in said[1] and "-vvv" in said[1]


# -- item 9: short runs --------------------------------------------------------------------------


def test_no_fps_in_the_summary_of_a_run_too_short_for_one() -> None:
    from kvs_peer.commands import _viewer_summary

    report = {
        "duration": 1.0,
        "framesReceived": 3,
        "fps": 40.0,
        "timeToFirstFrame": 0.95,
        "recording": [],
        "snapshot": None,
    }
    assert "fps" not in _viewer_summary(report)
    report.update(duration=5.0, framesReceived=120, fps=30.0)
    assert "30.0 fps" in _viewer_summary(report)


# -- item 3: one Ctrl+C, a clean end ------------------------------------------------------------

# A command whose peers left a task behind that needs a moment to finish once cancelled, as
# aiortc's connection-state listeners do when peer connections close; the Ctrl+C comes while
# asyncio cancels it, after the command itself returned.
LATE_SIGNAL = """
import asyncio, os, signal, sys
from kvs_peer.cli import build_parser, _run_until_signal

async def lingering():
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.2)

async def command(args):
    asyncio.get_running_loop().create_task(lingering())
    await asyncio.sleep(0)
    return 0

args = build_parser().parse_args(["url", "--channel", "c"])
sys.exit(asyncio.run(_run_until_signal(command, args)))
"""


def test_a_signal_during_asyncio_shutdown_changes_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LATE_SIGNAL], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("deliveries", [1, 2], ids=["once", "forwarded-twice"])
async def test_one_ctrl_c_stops_a_streaming_master_cleanly(
    kvs: LocalKvs, device_env: dict[str, str], deliveries: int
) -> None:
    # Twice: the terminal signals the process group, and a wrapper (uv run, a shell script)
    # forwards the same Ctrl+C to its child.
    kvs.create_channel("cam")
    master = await spawn(*KVS_PEER, "master", "--channel", "cam", "--json", env=device_env)
    try:
        async with (
            kvs.resolver() as resolver,
            Viewer(
                AwsAccess(resolver, "cam", Role.VIEWER, client_id=new_client_id()),
                loopback_candidates=True,
            ) as viewer,
        ):
            await viewer.wait_first_frame(timeout=30_000 * MS)  # a session is up, video flows
            if deliveries == 2:
                master.send_signal(signal.SIGINT)
                await asyncio.sleep(50 * MS)  # the forwarded copy lands while the master ends
            code, out, err = await interrupt(master)
    finally:
        await kill(master)
    assert code == 0, err
    assert "Traceback" not in err and "destroyed" not in err and "pending" not in err, err
    assert json.loads(out)["sessionsStarted"] >= 1
