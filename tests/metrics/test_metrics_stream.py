"""Metrics of real ``kvs-peer master`` and ``viewer`` processes streaming through the local
emulator: scraped over HTTP while video flows, and checked against their ``--json`` reports."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from support import MS

from kvs_peer.emulator import LocalKvs
from kvs_peer.metrics.figures import SERIES

KVS_PEER = [sys.executable, "-m", "kvs_peer"]

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def start(*args: str, env: Mapping[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    """Start a kvs-peer command with ``--metrics-port 0``; returns it and its metrics URL."""
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        *args,
        "--metrics-port",
        "0",
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20_000 * MS):
        line = (await proc.stderr.readline()).decode()
    found = re.search(r"metrics on (http://\S+)/metrics", line)
    assert found, line
    return proc, found[1]


async def scrape(http: aiohttp.ClientSession, url: str) -> Scrape:
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: Scrape = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("kvs_peer_"):
            assert family.name in SERIES or f"{family.name}_total" in SERIES, family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Scrape, name: str, role: str, channel: str = "cam") -> float:
    return samples[(name, (("channel", channel), ("role", role)))]


async def test_metrics_move_during_a_stream_and_match_json(
    kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("cam")
    master, master_url = await start(
        "master", "--channel", "cam", "--width", "320", "--height", "240", "--json",
        env=device_env,
    )  # fmt: skip
    viewer, viewer_url = await start(
        "viewer", "--channel", "cam", "--json", "--stats-interval", "0.5", env=device_env
    )
    try:
        async with aiohttp.ClientSession() as http:
            # Viewers decode before the master counts them connected (it waits for their
            # first RTCP packet): wait for both.
            async with asyncio.timeout(20_000 * MS):
                while True:
                    first_v = await scrape(http, viewer_url)  # empty until it connected
                    first_m = await scrape(http, master_url)
                    frames = (
                        "kvs_peer_frames_received_total",
                        (("channel", "cam"), ("role", "viewer")),
                    )
                    viewers = (
                        "kvs_peer_viewers_connected",
                        (("channel", "cam"), ("role", "master")),
                    )
                    if first_v.get(frames, 0) > 0 and first_m.get(viewers) == 1:
                        break
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            second_v = await scrape(http, viewer_url)
            second_m = await scrape(http, master_url)

            def moved(samples_a: Scrape, samples_b: Scrape, name: str, role: str) -> bool:
                return value(samples_b, name, role) > value(samples_a, name, role)

            for name in ("frames_received", "bytes_received"):
                assert moved(first_v, second_v, f"kvs_peer_{name}_total", "viewer"), name
            for name in ("frames_encoded", "frames_sent", "bytes_sent", "encode_seconds"):
                assert moved(first_m, second_m, f"kvs_peer_{name}_total", "master"), name
            assert value(second_m, "kvs_peer_viewers_connected", "master") == 1
            assert value(second_m, "kvs_peer_signaling_connected", "master") == 1
            assert 10 < value(second_v, "kvs_peer_fps", "viewer") < 40
            assert value(second_v, "kvs_peer_time_to_first_frame_seconds_count", "viewer") == 1
            calls = ("kvs_peer_control_plane_calls_total", "GetSignalingChannelEndpoint")
            assert second_m[(calls[0], (("operation", calls[1]), ("role", "master")))] >= 1
            assert second_m[("process_cpu_seconds_total", ())] > 0  # this process, not ours
            for url in (master_url, viewer_url):
                async with http.get(f"{url}/healthz") as response:
                    assert response.status == 200
                    assert (await response.json())["status"] == "ok"

            # A second viewer comes and goes: the master's totals keep what it was sent.
            code = await _run_viewer_for(2.0, device_env)
            assert code == 0
            async with asyncio.timeout(10_000 * MS):
                while True:
                    third_m = await scrape(http, master_url)
                    rtt = ("kvs_peer_rtt_seconds", (("channel", "cam"), ("role", "master")))
                    # RTT needs the viewer's RTCP receiver reports: a few seconds in.
                    if (
                        value(third_m, "kvs_peer_viewers_connected", "master") == 1
                        and rtt in third_m
                    ):
                        break
                    await asyncio.sleep(0.1)
            assert 0 < third_m[rtt] < 500 * MS
            assert value(third_m, "kvs_peer_sessions_started_total", "master") == 2
            assert value(third_m, "kvs_peer_session_setup_seconds_count", "master") == 2
            for name in ("bytes_sent", "frames_sent"):
                assert moved(second_m, third_m, f"kvs_peer_{name}_total", "master"), name

            # The master stops: its --json report agrees with what it served.
            master.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(master.communicate(), 20_000 * MS)
            assert master.returncode == 0, err.decode()
            report = json.loads(out.decode())
            assert report["sessionsStarted"] == value(
                third_m, "kvs_peer_sessions_started_total", "master"
            )
            assert report["sessionsConnected"] == value(
                third_m, "kvs_peer_sessions_connected_total", "master"
            )

            # No more video: once the viewer's count stands still, it is the final one.
            async with asyncio.timeout(10_000 * MS):
                last = -1.0
                while True:
                    await asyncio.sleep(0.3)
                    final_v = await scrape(http, viewer_url)
                    frames = value(final_v, "kvs_peer_frames_received_total", "viewer")
                    if frames == last:
                        break
                    last = frames
        viewer.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(viewer.communicate(), 20_000 * MS)
    finally:
        for proc in (master, viewer):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert viewer.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    report = next(line for line in lines if "ok" in line)
    assert report["framesReceived"] == frames
    assert report["offersSent"] == value(final_v, "kvs_peer_offers_sent_total", "viewer")

    # --stats-interval 0.5: JSON lines with the names /metrics uses, the last one final.
    stats = [line for line in lines if "time" in line and line.get("channel") == "cam"]
    assert len(stats) >= 6, len(stats)
    for line in stats:
        names = {re.sub(r"(_count|_sum)?(\{.*)?$", "", key) for key in line}
        names -= {"time", "role", "channel"}
        assert names <= set(SERIES) | {n[: -len("_total")] for n in SERIES}, names
        assert line["role"] == "viewer"
    counts = [line["kvs_peer_frames_received_total"] for line in stats]
    assert counts == sorted(counts) and counts[-1] == report["framesReceived"]
    assert stats[-1]["kvs_peer_signaling_connected"] == 0  # printed after the viewer closed


async def _run_viewer_for(seconds: float, env: Mapping[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        "viewer",
        "--channel",
        "cam",
        "--duration",
        str(seconds),
        env=dict(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30_000 * MS)
    assert proc.returncode == 0, err.decode()
    return proc.returncode
