"""The kvs-peer command line, run as users run it: real processes against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import av
import pytest
from support import KVS_PEER, MS, interrupt, read_until, run_kvs_peer, spawn

from kvs_peer.cli import build_parser, main
from kvs_peer.emulator import LocalKvs
from kvs_peer.signing import verify_presigned_url


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "master", "viewer", "local", "url"):
        assert command in out
    parser = build_parser()
    assert parser.parse_args(["viewer", "--channel", "c"]).record is None


def test_master_preset_is_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["master", "--channel", "c"]).preset == "veryfast"
    assert parser.parse_args(["master", "--channel", "c", "--preset", "ultrafast"]).preset
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["master", "--channel", "c", "--preset", "warp"])
    assert info.value.code == 2
    assert "invalid choice: 'warp'" in capsys.readouterr().err


def test_master_reopens_live_sources_unless_told_not_to() -> None:
    parser = build_parser()
    assert parser.parse_args(["master", "--channel", "c"]).reopen is True
    assert parser.parse_args(["master", "--channel", "c", "--no-reopen"]).reopen is False


async def test_url_prints_a_verifiable_signed_url(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("cli")
    code, out, err = await run_kvs_peer(
        "url",
        "--channel",
        "cli",
        "--role",
        "VIEWER",
        "--client-id",
        "cli-1",
        "-vv",
        env=device_env,
    )
    assert code == 0, err
    url = out.strip()
    verified = verify_presigned_url(
        url, secrets={kvs.credentials.access_key: kvs.credentials.secret_key}
    )
    assert verified.params["X-Amz-ClientId"] == "cli-1"
    # debug logs are on (-vv) but never show the signature, credential or full URL
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    assert signature not in err
    assert kvs.credentials.secret_key not in err
    assert url not in err


async def test_url_errors_are_clear(kvs: LocalKvs, device_env: dict[str, str]) -> None:
    env = device_env
    code, _, err = await run_kvs_peer("url", "--channel", "missing", "--client-id", "x", env=env)
    assert code == 1
    assert "not found" in err and "--create-channel" in err
    # A VIEWER without --client-id gets a generated one (tests/test_cli_startup.py).
    code, _, err = await run_kvs_peer("url", "--channel", "bad name", "--client-id", "x", env=env)
    assert code == 1 and "invalid channel name" in err


async def test_master_and_viewer_commands_stream_and_record(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    kvs.create_channel("cam")
    env = device_env
    master = await spawn(
        *KVS_PEER,
        *("master", "--channel", "cam", "--source", "testsrc", "--width", "320", "--height", "240"),
        "--json",
        env=env,
    )
    try:
        async with asyncio.timeout(30_000 * MS):
            await kvs.wait_connected("cam", master=True)
        record = tmp_path / "out.mkv"
        snapshot = tmp_path / "last.png"
        code, out, err = await run_kvs_peer(
            "viewer",
            "--channel",
            "cam",
            "--duration",
            "3",
            "--json",
            "--record",
            str(record),
            "--snapshot",
            str(snapshot),
            env=env,
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["ok"] and report["framesReceived"] >= 40
        assert report["signalingConnected"] is True
        assert report["timeToFirstFrame"] < 5
        assert (report["width"], report["height"]) == (320, 240)
        assert snapshot.read_bytes().startswith(b"\x89PNG")
        with av.open(str(record)) as container:
            assert sum(1 for _ in container.decode(video=0)) >= 0.9 * report["framesReceived"]
    finally:
        code, out, err = await interrupt(master)  # clean shutdown, exit code 0
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sessionsConnected"] == 1


async def test_master_with_a_missing_file_fails_clearly(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("cam")
    code, _, err = await run_kvs_peer(
        "master",
        "--channel",
        "cam",
        "--source",
        "/nonexistent/video.mp4",
        env=device_env,
    )
    assert code == 1
    assert "/nonexistent/video.mp4" in err


async def test_demo_json(tmp_path: Path) -> None:
    code, out, err = await run_kvs_peer(
        "demo",
        "--duration",
        "2",
        "--json",
        "--output",
        str(tmp_path / "demo"),
        env=dict(os.environ),
        timeout=90,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"], result["problem"]
    assert result["video"]["countersAdvanced"] >= 40
    assert result["framesDecoded"] >= 40 and result["framesReceived"] >= result["framesDecoded"]
    assert 0 < result["timeToFirstFrame"] < 5, result  # seconds, as `viewer --json`
    assert result["recording"] == [str(tmp_path / "demo" / "demo.mkv")]
    assert Path(result["snapshot"]).exists()
    # The same facts under the same names as `viewer --json` (issue 15, item 9).
    from test_cli_startup import SHARED_REPORT_KEYS

    assert SHARED_REPORT_KEYS <= result.keys()


async def test_local_prints_what_to_export_and_stops_cleanly() -> None:
    proc = await spawn(*KVS_PEER, "local", "--port", "0", "--channel", "demo")
    text = await read_until(proc, "Ctrl+C", 30_000 * MS)
    endpoint = text.split("KVS_PEER_ENDPOINT_URL=")[1].split()[0]
    assert "AWS_ACCESS_KEY_ID=AKIALOCALKVSPEER0000" in text
    # the printed endpoint really is a KVS control plane with the channel created
    import boto3

    kv = boto3.client(
        "kinesisvideo",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIALOCALKVSPEER0000",
        aws_secret_access_key="kvs-peer-local-secret",
    )
    info = await asyncio.to_thread(kv.describe_signaling_channel, ChannelName="demo")
    assert info["ChannelInfo"]["ChannelName"] == "demo"
    code, _, err = await interrupt(proc)
    assert code == 0, err


def test_package_root_exports_load_lazily() -> None:
    import subprocess

    code = (
        "import sys, kvs_peer; assert 'aiortc' not in sys.modules;"
        "from kvs_peer import Master, Viewer, Role, AwsAccess, ChannelResolver, LocalKvs;"
        "assert Master.__module__ == 'kvs_peer.master'; print(sorted(kvs_peer.__all__)[:3])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def test_viewer_ctrl_c_still_reports_and_snapshots(
    kvs: LocalKvs, device_env: dict[str, str], tmp_path: Path
) -> None:
    from kvs_peer.access import AwsAccess
    from kvs_peer.master import Master
    from kvs_peer.media import TestPatternTrack
    from kvs_peer.protocol import Role

    kvs.create_channel("sig")
    snapshot = tmp_path / "last.png"
    async with (
        kvs.resolver() as resolver,
        Master(AwsAccess(resolver, "sig", Role.MASTER), video=TestPatternTrack(320, 240)),
    ):
        viewer = await spawn(
            *KVS_PEER,
            "viewer",
            "--channel",
            "sig",
            "--json",
            "--snapshot",
            str(snapshot),
            env=device_env,
        )
        async with asyncio.timeout(30_000 * MS):
            while not kvs.connected("sig").viewers:
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # some frames
        code, out, err = await interrupt(viewer)
    assert code == 0, err
    report = json.loads(out)
    assert report["framesReceived"] > 10
    assert snapshot.read_bytes().startswith(b"\x89PNG")


async def test_viewer_exits_when_the_channel_refuses_it(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("closed")
    kvs.fail_next_connects("closed", 403, count=5)
    code, _, err = await run_kvs_peer(
        "viewer", "--channel", "closed", env=device_env, timeout=30_000 * MS
    )
    assert code == 1
    assert "HTTP 403" in err and "clock" in err
