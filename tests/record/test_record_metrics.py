"""``kvs-peer record``'s ``/metrics`` with worker processes: each channel's viewer series come
from the worker recording it, through the supervisor, and move while it records."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from record_support import RecorderProcess, free_port, mastered_channels, write_config
from support import MS, process_env

from kvs_peer.metrics.figures import SERIES, Figure
from kvs_peer.metrics.relay import dump_figures, load_figures
from kvs_peer.metrics.tally import Buckets


def test_figures_survive_the_pipe() -> None:
    hist = Buckets((0.5, 1.0))
    hist.observe(0.7)
    labels = {"role": "record", "channel": "cam"}
    sent = [
        Figure(SERIES["kvs_peer_frames_received_total"], 42, labels),
        Figure(SERIES["kvs_peer_time_to_first_frame_seconds"], hist.value(), labels),
    ]
    got = load_figures(dump_figures(sent) + "\n", SERIES)
    assert got is not None
    assert [(f.series.name, f.value, dict(f.labels)) for f in got] == [
        (f.series.name, f.value, dict(f.labels)) for f in sent
    ]
    assert got[1].value.buckets[-1] == (float("inf"), 1)
    # Other output of a worker, or a series this side does not know, is not a figure.
    assert load_figures("[h264 @ 0x1] non-existing PPS 0 referenced", SERIES) is None
    assert load_figures('{"kvs_peer_figures": [{"name": "kvs_peer_fps"}]}', SERIES) is None
    assert load_figures(dump_figures(sent), {}) == []


async def channel_samples(url: str) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, s.labels["channel"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("role") == "record" and "channel" in s.labels
    }


async def test_worker_processes_channel_series_reach_the_supervisor(
    tmp_path: Path, kvs_emulator, kvs_master
) -> None:
    names = await mastered_channels(kvs_emulator, kvs_master, "met", 2)
    config = write_config(
        tmp_path,
        kvs_emulator,
        channels=names,
        s3_url=f"http://127.0.0.1:{free_port()}",  # S3 down: uploads wait, metrics do not
        segment_seconds=5,
        processes=2,
    )
    recorder = RecorderProcess(
        config, process_env(kvs_emulator), "--metrics-port", "0", "--drain-timeout", "1"
    )
    await recorder.start()
    frames = ("kvs_peer_frames_received_total",)
    try:
        async with asyncio.timeout(40_000 * MS):
            while not (url := re.search(r"metrics on (http://\S+)/metrics", recorder.text())):
                await asyncio.sleep(0.1)
            first: dict[tuple[str, str], float] = {}
            while not all(first.get((*frames, n), 0) > 0 for n in names):
                await asyncio.sleep(0.5)
                first = await channel_samples(url[1])
            later = first
            while not all(later[(*frames, n)] > first[(*frames, n)] for n in names):
                await asyncio.sleep(0.5)
                later = await channel_samples(url[1])
        for name in names:
            assert later[("kvs_peer_signaling_connected", name)] == 1
            assert later[("kvs_peer_video_flowing", name)] == 1
            assert later[("kvs_peer_time_to_first_frame_seconds_count", name)] == 1
            assert later[("kvs_peer_recorder_frames_written_total", name)] > 0
            assert later[("kvs_peer_record_viewer_restarts_total", name)] == 0
            assert 5 <= later[("kvs_peer_fps", name)] <= 20  # the masters send 15 fps
    finally:
        code = await recorder.stop()
    log = recorder.text()
    assert code == 0, log
    assert "2 channels, 2 worker processes of 1 channel each" in log
    assert "Traceback" not in log
