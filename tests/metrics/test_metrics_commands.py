"""The metrics options of ``local``, ``signer``, ``viewer`` and ``master``: what they serve and
how a bad address is refused."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket
from prometheus_client.parser import text_string_to_metric_families
from support import MS, credentials_in_environment, write_signer_config

from kvs_peer.cli import build_parser, main
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.metrics.rtcp import count_rtcp, rtcp_counts

TOKEN = "vwr-5e1d7c3b9a0f42e8b6d1"


def parse(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.stop = asyncio.Event()
    return args


async def metrics_url(capsys: pytest.CaptureFixture[str], *, also: str | None = None) -> str:
    """Wait for the command's ``metrics on URL`` line (and ``also`` on stdout)."""
    err = out = ""
    async with asyncio.timeout(10_000 * MS):
        while "metrics on" not in err or (also is not None and also not in out):
            await asyncio.sleep(0.01)
            captured = capsys.readouterr()
            err, out = err + captured.err, out + captured.out
    return re.search(r"metrics on (\S+)/metrics", err)[1]


async def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for sample in [*family.samples]
        for s in [sample]
    }


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[int]]]:
    """Command tasks to stop (their ``args.stop``) and await at the end."""
    tasks: list[asyncio.Task[int]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_local_serves_emulator_figures_and_health(
    capsys: pytest.CaptureFixture[str], running: list[asyncio.Task[int]]
) -> None:
    args = parse("local", "--port", "0", "--channel", "a", "--channel", "b", "--metrics-port", "0")
    task = asyncio.create_task(args.handler(args))
    running.append(task)
    url = await metrics_url(capsys, also="listening on")
    samples = await scrape(url)
    role = frozenset({("role", "local")})
    assert samples[("kvs_peer_emulator_channels", role)] == 2
    assert samples[("kvs_peer_emulator_masters_connected", role)] == 0
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
        assert response.status == 200
    args.stop.set()
    assert await asyncio.wait_for(task, 10_000 * MS) == 0


async def test_signer_counts_requests_by_status_with_latencies(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    running: list[asyncio.Task[int]],
) -> None:
    async with LocalKvs(EmulatorConfig()) as kvs:
        kvs.create_channel("cam-1")
        credentials_in_environment(monkeypatch, kvs)
        config = write_signer_config(tmp_path, TOKEN)
        args = parse(
            "signer", "--config", str(config), "--port", "0", "--metrics-port", "0",
            "--region", kvs.region, "--endpoint-url", kvs.endpoint_url,
        )  # fmt: skip
        task = asyncio.create_task(args.handler(args))
        running.append(task)
        err = out = ""
        async with asyncio.timeout(10_000 * MS):
            while "listening on" not in out or "metrics on" not in err:
                await asyncio.sleep(0.01)
                captured = capsys.readouterr()
                err, out = err + captured.err, out + captured.out
        signer = re.search(r"listening on (\S+)", out)[1]
        url = re.search(r"metrics on (\S+)/metrics", err)[1]
        role = ("role", "signer")
        latency = ("kvs_peer_signer_request_seconds_count", frozenset({role}))
        ok = ("kvs_peer_signer_requests_total", frozenset({role, ("status", "200")}))
        refused = ("kvs_peer_signer_requests_total", frozenset({role, ("status", "401")}))
        before = await scrape(url)
        assert before[latency] == 0 and ok not in before

        params = {"channel": "cam-1", "role": "VIEWER", "clientId": "v1"}
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(
                    f"{signer}/kinesis-video-url", params=params, headers=headers
                ) as response:
                    assert response.status == 200, await response.text()
            async with http.get(f"{signer}/kinesis-video-url", params=params) as response:
                assert response.status == 401
            async with http.get(f"{signer}/healthz") as response:  # not an API request
                assert response.status == 200
        after = await scrape(url)
        assert after[ok] == 3 and after[refused] == 1
        assert after[latency] == 4
        total = after[("kvs_peer_signer_request_seconds_sum", frozenset({role}))]
        assert 0 < total < 4 * 5.0
        inf = ("kvs_peer_signer_request_seconds_bucket", frozenset({role, ("le", "+Inf")}))
        assert after[inf] == 4
        describe = frozenset({role, ("operation", "GetSignalingChannelEndpoint")})
        assert after[("kvs_peer_control_plane_calls_total", describe)] >= 1
        args.stop.set()
        assert await asyncio.wait_for(task, 10_000 * MS) == 0


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("command", ["viewer", "master", "local"])
def test_a_metrics_port_in_use_is_one_clear_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--channel", "cam"] if command != "local" else ["--port", "0"]
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        code = main([command, *extra, "--metrics-port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    errors = [line for line in err if "error:" in line]
    assert errors == [
        f"kvs-peer {command}: error: cannot serve metrics on 127.0.0.1:{port}: Address already "
        "in use; pick another --metrics-port (0 picks a free one) or --metrics-host"
    ], err


def test_a_metrics_host_not_on_this_machine_is_one_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["viewer", "--channel", "cam", "--metrics-host", "192.0.2.1", "--metrics-port", "0"]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 1
    assert len(errors) == 1 and "cannot serve metrics on 192.0.2.1:0" in errors[0], errors


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--metrics-port", "70000", "is not a port"),
        ("--metrics-port", "-1", "is not a port"),
        ("--stats-interval", "0", "is not a number of seconds"),
    ],
)
def test_out_of_range_values_are_refused_by_the_parser(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["viewer", "--channel", "cam", f"{option}={value}"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert (
        errors[0].startswith(f"kvs-peer viewer: error: argument {option}: ")
        and message in errors[0]
    )


async def test_rtcp_feedback_is_counted_once_per_connection() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video")
        counts = count_rtcp(pc)
        assert count_rtcp(pc) is counts and rtcp_counts(pc) is counts  # idempotent
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=2)
        nack.lost = [10, 11, 13]
        # Remote feedback reaching our sender, as aiortc's DTLS transport hands it over.
        await transceiver.sender._handle_rtcp_packet(nack)
        await transceiver.sender._handle_rtcp_packet(
            RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2)
        )
        # Feedback our receiver sends.
        await transceiver.receiver._send_rtcp_nack(2, [5])
        await transceiver.receiver._send_rtcp_pli(2)
        assert (counts.nacks, counts.plis) == (4, 2)
        assert rtcp_counts(RTCPeerConnection(RTCConfiguration(iceServers=[]))) is None
    finally:
        await pc.close()
