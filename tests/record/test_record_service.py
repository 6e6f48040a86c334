"""``kvs-peer record`` end to end: emulator masters, the recorder's processes, moto's S3 server.

The recorder runs as its own process group (``kvs-peer record --config``) against the local
KVS emulator; S3 is moto's server over real HTTP, reached through a TCP proxy that the tests
cut (connections refused, open ones dropped) to stop S3 without losing its state.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import av
import pytest
from record_support import (
    BUCKET,
    PREFIX,
    MotoS3,
    RecorderProcess,
    TcpProxy,
    mastered_channels,
    write_config,
)
from support import MS, process_env, wait_until

pytestmark = pytest.mark.slow

KEY_RE = re.compile(rf"{PREFIX}/(?P<channel>[^/]+)/(?P<name>\d{{8}}T\d{{6}}\.\d{{3}}Z\.mkv)")


@pytest.fixture
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def s3_proxy(moto_s3: MotoS3) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(moto_s3.port)
    await proxy.restore()
    try:
        yield proxy
    finally:
        await proxy.cut()


def decode(data: bytes) -> tuple[int, float]:
    """Video frames in a Matroska file, and the seconds from the first to the last."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    return len(times), (times[-1] - times[0]) if times else 0.0


def spool_names(spool: Path) -> dict[str, set[str]]:
    """Final names of the segment files in the spool, per state (``part``, ``finished``)."""
    found: dict[str, set[str]] = {"part": set(), "finished": set()}
    for folder, _, files in os.walk(spool):
        channel = Path(folder).name
        for name in files:
            if name.endswith(".mkv.part"):
                found["part"].add(f"{channel}/{name[:-5]}")
            elif name.endswith(".mkv"):
                found["finished"].add(f"{channel}/{name}")
    return found


def uploaded(moto: MotoS3) -> dict[str, int]:
    """channel/name -> size of every segment in the bucket (keys checked)."""
    found = {}
    for key, size in moto.objects().items():
        match = KEY_RE.fullmatch(key)
        assert match, f"unexpected key {key}"
        found[f"{match['channel']}/{match['name']}"] = size
    return found


async def _recorder_setup(  # type: ignore[no-untyped-def]
    tmp_path: Path, kvs_emulator, kvs_master, s3_proxy: TcpProxy, **config: int
) -> tuple[list[str], Path, Path]:
    """Two channels with masters, and a recorder config for them uploading through the proxy;
    returns the channels, the spool folder and the config file."""
    channels = await mastered_channels(kvs_emulator, kvs_master, "rec", 2)
    path = write_config(tmp_path, kvs_emulator, channels=channels, s3_url=s3_proxy.url, **config)
    return channels, tmp_path / "spool", path


async def test_two_channels_five_second_segments_reach_s3_and_decode(
    tmp_path: Path, kvs_emulator, kvs_master, moto_s3: MotoS3, s3_proxy: TcpProxy
) -> None:
    channels, spool, config = await _recorder_setup(
        tmp_path, kvs_emulator, kvs_master, s3_proxy, segment_seconds=5, processes=2
    )
    recorder = RecorderProcess(config, process_env(kvs_emulator), "--metrics-port", "0")
    await recorder.start()
    try:
        await wait_until(
            lambda: all(
                sum(k.startswith(c + "/") for k in uploaded(moto_s3)) >= 2 for c in channels
            ),
            40_000 * MS,
            "two uploaded segments per channel",
        )
        # The supervisor's metrics count the uploads S3 has, per channel. An object is in
        # the bucket a moment before its upload is confirmed and counted: scrape until then.
        url = re.search(r"metrics on (http://\S+)/metrics", recorder.text())
        assert url, recorder.text()

        def counted(text: str, channel: str) -> int:
            line = re.search(
                rf'kvs_peer_record_segments_uploaded_total{{channel="{channel}",role="record"}} '
                r"(\d+)",
                text,
            )
            assert line, text
            return int(line[1])

        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 10_000 * MS
            while True:
                async with session.get(f"{url[1]}/metrics") as response:
                    text = await response.text()
                if all(counted(text, c) >= 2 for c in channels) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            async with session.get(f"{url[1]}/healthz") as response:
                assert response.status == 200
        in_bucket = uploaded(moto_s3)
        for channel in channels:
            assert (
                2 <= counted(text, channel) <= sum(k.startswith(channel + "/") for k in in_bucket)
            )
        assert 'kvs_peer_record_workers_running{role="record"} 2.0' in text
    finally:
        code = await recorder.stop()
    log = recorder.text()
    assert code == 0, log
    assert "2 channels, 2 worker processes of 1 channel each" in log
    # Stopping completed the open segments and uploaded them: the spool is empty.
    assert spool_names(spool) == {"part": set(), "finished": set()}, log
    objects = uploaded(moto_s3)
    assert {name.split("/")[0] for name in objects} == set(channels)
    client = moto_s3.client()
    for name in sorted(objects):
        body = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read()
        frames, seconds = decode(body)
        assert frames >= 1, name
        if name not in {max(n for n in objects if n.startswith(c + "/")) for c in channels}:
            # A full segment: 5 s of video at 15 fps (the last one was cut by the stop).
            assert 4.0 <= seconds <= 5.5, (name, seconds)
            assert frames >= 50, (name, frames)


async def test_s3_outage_then_sigkill_nothing_is_lost(
    tmp_path: Path, kvs_emulator, kvs_master, moto_s3: MotoS3, s3_proxy: TcpProxy
) -> None:
    channels, spool, config = await _recorder_setup(
        tmp_path, kvs_emulator, kvs_master, s3_proxy, segment_seconds=2, processes=1
    )
    env = process_env(kvs_emulator)
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            names = spool_names(spool)
            seen.update(names["part"] | names["finished"])
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    first = RecorderProcess(config, env)
    second = RecorderProcess(config, env)
    try:
        await first.start()
        await wait_until(
            lambda: {n.split("/")[0] for n in uploaded(moto_s3)} == set(channels),
            40_000 * MS,
            "a first segment of each channel in S3",
        )
        # S3 unreachable for 20 s: segments pile up in the spool, none is lost.
        await s3_proxy.cut()
        before = set(uploaded(moto_s3))
        await asyncio.sleep(20)
        held = spool_names(spool)["finished"]
        assert len(held) >= 10, (held, first.text()[-3000:])
        assert set(uploaded(moto_s3)) == before
        await s3_proxy.restore()
        await wait_until(
            lambda: not spool_names(spool)["finished"], 20_000 * MS, "the spool to drain"
        )
        assert held <= set(uploaded(moto_s3))
        assert "S3 unreachable" in first.text()

        # S3 down again, then the whole recorder is killed: .part files stay behind.
        await s3_proxy.cut()
        await asyncio.sleep(4)

        def parts_have_frames() -> bool:
            # Kill while each open segment has a cluster on disk (not just its header).
            sizes = []
            for path in spool.rglob("*.mkv.part"):
                try:
                    sizes.append(path.stat().st_size)
                except FileNotFoundError:  # finished meanwhile
                    return False
            return len(sizes) == len(channels) and min(sizes) > 20_000

        await wait_until(parts_have_frames, 5_000 * MS, "open segments with frames")
        first.kill_all()
        await first.stop()
        left = spool_names(spool)
        assert left["finished"] and left["part"], left
        await s3_proxy.restore()
        await second.start()

        def accounted(name: str) -> bool:
            removed = f"{name} was being written when its process stopped and holds no frame"
            return name in uploaded(moto_s3) or removed in second.text()

        await wait_until(
            lambda: all(accounted(n) for n in left["finished"] | left["part"]),
            30_000 * MS,
            "the killed run's spool in S3",
        )
        assert "from an earlier run" in second.text()
        assert "kept as it is" in second.text()
    finally:
        watcher.cancel()
        await first.stop()
        code = await second.stop() if second.process else 0
    assert code == 0, second.text()
    objects = uploaded(moto_s3)
    # Only a file killed before its first frame reached the disk is missing, and it is said.
    missing = seen - set(objects)
    assert missing <= left["part"], sorted(missing)
    assert second.text().count("holds no frame") == len(missing)
    assert spool_names(spool) == {"part": set(), "finished": set()}
    client = moto_s3.client()
    for name in sorted(objects):
        body = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read()
        assert len(body) == objects[name]
        frames, _ = decode(body)
        assert frames >= 1, name


async def test_three_replicas_split_the_channels(tmp_path: Path, kvs_emulator) -> None:
    names = [f"shard-cam-{i}" for i in range(12)] + ["shard-other", "shard-cam"]
    for name in names:
        kvs_emulator.create_channel(name)
    config = write_config(
        tmp_path,
        kvs_emulator,
        channels=["shard-cam-*", "shard-other", "shard-cam-1"],
        s3_url="http://127.0.0.1:9",
        segment_seconds=5,
        processes=2,
    )
    env = process_env(kvs_emulator)
    plans = []
    for index in range(3):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "kvs_peer",
                "record",
                "--config",
                str(config),
                "--plan",
                "--shard",
                f"{index}/3",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        plans.append(json.loads(result.stdout))
    recorded = [c for plan in plans for c in plan["channels"]]
    # The glob matches whole names ("shard-cam" is not "shard-cam-*"); every channel once.
    expected = sorted([n for n in names if n.startswith("shard-cam-")] + ["shard-other"])
    assert sorted(recorded) == expected
    assert all(plan["total"] == len(expected) for plan in plans)
    for plan in plans:
        assert sorted(c for group in plan["processes"] for c in group) == plan["channels"]
