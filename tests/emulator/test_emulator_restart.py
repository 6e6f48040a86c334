"""An emulator restarted on its port: no stale cached ARN, no temporary folder left behind.

A restarted emulator re-creates its channels under new ARNs. Clients that cache ARNs on disk
(kvs_peer.channelcache, on by default for ``kvs-peer master``) would first try the previous
run's ARN and get a 404 ("the channel does not exist any more"), so the emulator drops the
cache entries of its endpoint when it starts. Real AWS channels outlive restarts: their
deleted-and-re-created case still goes through the 404 refresh (tests/test_channelcache.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest
from support import KVS_PEER, MS, SMALL_TESTSRC, interrupt, process_env, read_until, spawn

from kvs_peer.access import AwsAccess
from kvs_peer.channelcache import CACHE_DIR_ENV, ChannelCache
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.protocol import Role
from kvs_peer.signaling import SignalingClient

CHANNEL = "cam"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _connect_once(kvs: LocalKvs, cache: ChannelCache) -> tuple[str, int, int]:
    """Connect a viewer through a resolver with ``cache``: (ARN, describes, failed attempts)."""
    async with kvs.resolver(disk_cache=cache) as resolver:
        access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="v1")
        client = SignalingClient(access, role=Role.VIEWER, client_id="v1", backoff_base=0.01)
        async with client:
            pass
        arn = (await resolver.locate(CHANNEL, Role.VIEWER)).arn
        return arn, resolver.calls.get("DescribeSignalingChannel", 0), client.stats.failed_attempts


@pytest.mark.parametrize("forget", [True, False])
async def test_a_restart_on_the_same_port_leaves_no_stale_arn(tmp_path: Path, forget: bool) -> None:
    cache = ChannelCache(tmp_path / "cache")
    config = EmulatorConfig(channel_cache=cache if forget else None)
    port = _free_port()
    async with LocalKvs(config, port=port) as first:
        first_arn = first.create_channel(CHANNEL)
        assert await _connect_once(first, cache) == (first_arn, 1, 0)
        # An entry of another endpoint (another emulator, or AWS) is not this one's to drop.
        cache.store(
            first.config.region,
            f"http://127.0.0.1:{port + 1}",
            CHANNEL,
            Role.VIEWER,
            {"arn": first_arn, "wss": "wss://other", "https": "https://other"},
            3600,
        )
    async with LocalKvs(config, port=port) as second:
        second_arn = second.create_channel(CHANNEL)
        assert second_arn != first_arn
        arn, describes, failed = await _connect_once(second, cache)
    assert arn == second_arn
    if forget:
        # Straight to the new ARN: one describe, no refused connect.
        assert (describes, failed) == (1, 0)
    else:
        # The control: the previous run's ARN is tried first and refused (then recovered).
        assert failed >= 1 and describes == 1
    others = [p for p in cache.directory.iterdir() if "other" in p.read_text()]
    assert len(others) == 1


def test_by_default_the_clients_own_cache_is_cleaned() -> None:
    cache = EmulatorConfig().channel_cache
    assert cache is not None and cache.directory == Path(os.environ[CACHE_DIR_ENV])


# -- real processes ----------------------------------------------------------------------------


async def _start_local(port: int, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Path]:
    """``kvs-peer local`` on ``port``; returns it and its storage folder (from the banner)."""
    process = await spawn(*KVS_PEER, "local", "--port", str(port), "--channel", CHANNEL, env=env)
    banner = await read_until(process, "Press Ctrl+C", timeout=30_000 * MS)
    match = re.search(r"Storage sessions record to (\S+)", banner)
    assert match, banner
    return process, Path(match.group(1))


async def _run_master(env: dict[str, str]) -> str:
    """A ``kvs-peer master`` until it is connected, then Ctrl+C: its stderr."""
    process = await spawn(
        *KVS_PEER,
        "master",
        "--channel",
        CHANNEL,
        *SMALL_TESTSRC,
        "--fps",
        "10",
        "-v",
        env=env,
    )
    assert process.stderr is not None
    err = ""
    try:
        async with asyncio.timeout(30_000 * MS):
            while "signaling connected as MASTER" not in err:
                line = await process.stderr.readline()
                if not line:
                    break
                err += line.decode(errors="replace")
    finally:
        code, _, rest = await interrupt(process)
    err += rest
    assert "signaling connected as MASTER" in err, err
    assert code == 0, err
    return err


@pytest.mark.parametrize("same_cache", [True, False])
async def test_kvs_peer_local_restarted_then_a_master_connects_quietly(
    tmp_path: Path, same_cache: bool
) -> None:
    """The first hour: ``kvs-peer local``, a master, ``kvs-peer local`` again, the master
    again (its channel cache on, the default): no 404, no warning; and each run's empty
    temporary storage folder is gone when it stops. The control (``same_cache=False``): an
    emulator that cleans another cache folder than the master's leaves the stale ARN."""
    port = _free_port()
    (tmp_path / "tmp").mkdir()
    async with LocalKvs(port=port) as probe:  # only for the environment it hands out
        env = process_env(probe, TMPDIR=str(tmp_path / "tmp"))
    env[CACHE_DIR_ENV] = str(tmp_path / "cache")
    local_env = env if same_cache else {**env, CACHE_DIR_ENV: str(tmp_path / "elsewhere")}
    folders: list[Path] = []
    errs: list[str] = []
    for _ in range(2):
        local, folder = await _start_local(port, local_env)
        try:
            assert folder.is_dir() and folder.parent == tmp_path / "tmp"
            folders.append(folder)
            errs.append(await _run_master(env))
        finally:
            code, _, local_err = await interrupt(local)
        assert code == 0, local_err
        assert list((tmp_path / "cache").glob(f"{CHANNEL}.master.*.json")), "nothing cached"
    assert "404" not in errs[0] and "WARNING" not in errs[0], errs[0]
    if same_cache:
        assert "404" not in errs[1] and "WARNING" not in errs[1], errs[1]
    else:
        assert "HTTP 404" in errs[1], errs[1]
    assert folders[0] != folders[1]
    assert list((tmp_path / "tmp").iterdir()) == []
