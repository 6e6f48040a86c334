"""The channel cache on disk (kvs_peer.channelcache) and the resolver that uses it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channelcache import CACHE_DIR_ENV, ChannelCache, default_cache_dir
from kvs_peer.emulator import LocalKvs
from kvs_peer.protocol import Role
from kvs_peer.reconnect import Refresh
from kvs_peer.signaling import SignalingClient

CHANNEL = "cached"
VALUE = {
    "arn": "arn:aws:kinesisvideo:us-east-1:1:channel/c/1",
    "wss": "wss://a",
    "https": "https://a",
}


def _describes(resolver: object) -> int:
    return resolver.calls.get("DescribeSignalingChannel", 0)  # type: ignore[attr-defined]


async def test_a_restarted_resolver_skips_the_control_plane(kvs: LocalKvs, tmp_path: Path) -> None:
    kvs.create_channel(CHANNEL)
    async with kvs.resolver(disk_cache=tmp_path) as first:
        resolved = await first.resolve(CHANNEL, Role.VIEWER, client_id="v1")
        assert _describes(first) == 1
    async with kvs.resolver(disk_cache=tmp_path) as second:
        location = await second.locate(CHANNEL, Role.VIEWER)
        assert (location.arn, location.wss_endpoint) == (resolved.arn, resolved.wss_endpoint)
        assert second.calls == {}  # no call at all: straight to the WebSocket
        # The master's entry is its own (another endpoint).
        await second.locate(CHANNEL, Role.MASTER)
        assert _describes(second) == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.startswith(f"{CHANNEL}.") for f in files), files


async def test_the_file_is_private_and_holds_no_credentials(kvs: LocalKvs, tmp_path: Path) -> None:
    kvs.create_channel(CHANNEL)
    directory = tmp_path / "kvs-peer"
    async with kvs.resolver(disk_cache=directory) as resolver:
        resolved = await resolver.resolve(CHANNEL, Role.VIEWER, client_id="v1")
        url = resolver.sign(resolved, client_id="v1")
    (path,) = directory.iterdir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    signature = url.split("X-Amz-Signature=")[1][:64]
    for secret in (kvs.credentials.access_key, kvs.credentials.secret_key, signature):
        assert secret not in text
    assert "Username" not in text and "credential" not in text.lower()
    data = json.loads(text)
    assert data["arn"] == resolved.arn and data["wss"] == resolved.wss_endpoint
    # A control-plane URL with user info is stored without it (and keys by its whole).
    cache = ChannelCache(tmp_path / "other")
    cache.store(
        "us-east-1", "https://user:pa55@example.com:8443/x", CHANNEL, Role.MASTER, VALUE, 60
    )
    (other,) = (tmp_path / "other").iterdir()
    assert "pa55" not in other.read_text() and "user" not in other.read_text()
    assert "https://example.com:8443/x" in other.read_text()
    assert cache.load("us-east-1", "https://user:pa55@example.com:8443/x", CHANNEL, Role.MASTER)


@pytest.mark.parametrize(
    "damage",
    [b"", b"{", b"\x00\xff garbage", b"[]", b'{"version": 1}', b'{"version": 99}'],
    ids=["empty", "torn", "binary", "list", "fields-missing", "other-version"],
)
async def test_a_damaged_file_is_ignored_and_rewritten(
    kvs: LocalKvs, tmp_path: Path, damage: bytes
) -> None:
    kvs.create_channel(CHANNEL)
    async with kvs.resolver(disk_cache=tmp_path) as resolver:
        await resolver.locate(CHANNEL, Role.VIEWER)
    (path,) = tmp_path.iterdir()
    path.write_bytes(damage)
    async with kvs.resolver(disk_cache=tmp_path) as resolver:
        location = await resolver.locate(CHANNEL, Role.VIEWER)
        assert _describes(resolver) == 1
    assert json.loads(path.read_text())["arn"] == location.arn


def test_an_entry_for_another_key_or_expired_is_not_used(tmp_path: Path) -> None:
    now = [1000.0]
    cache = ChannelCache(tmp_path, clock=lambda: now[0])
    cache.store("us-east-1", None, CHANNEL, Role.VIEWER, VALUE, 60)
    assert cache.load("us-east-1", None, CHANNEL, Role.VIEWER) is not None
    # The same file presented for another region (a copy, or a digest collision).
    theirs = cache.path("us-east-1", None, CHANNEL, Role.VIEWER)
    ours = cache.path("eu-west-1", None, CHANNEL, Role.VIEWER)
    ours.write_bytes(theirs.read_bytes())
    assert cache.load("eu-west-1", None, CHANNEL, Role.VIEWER) is None
    now[0] += 61
    assert cache.load("us-east-1", None, CHANNEL, Role.VIEWER) is None
    assert cache.prune() == 2 and list(tmp_path.iterdir()) == []


def test_forget_endpoint_drops_that_endpoint_only(tmp_path: Path) -> None:
    cache = ChannelCache(tmp_path)
    emulator = "http://127.0.0.1:4566"
    for endpoint in (emulator, "http://127.0.0.1:4567", None):
        for role in Role:
            cache.store("us-east-1", endpoint, CHANNEL, role, VALUE, 60)
    # Another region and another spelling (a trailing slash, user info) of the same endpoint.
    cache.store("eu-west-1", "http://u:p@127.0.0.1:4566/", "other", Role.MASTER, VALUE, 60)
    (tmp_path / "damaged.json").write_bytes(b"{not json")
    assert cache.forget_endpoint(emulator + "/") == 3
    assert cache.load("us-east-1", emulator, CHANNEL, Role.VIEWER) is None
    for endpoint in ("http://127.0.0.1:4567", None):
        for role in Role:
            assert cache.load("us-east-1", endpoint, CHANNEL, role) is not None
    assert (tmp_path / "damaged.json").exists()  # not known to be this endpoint's
    assert cache.forget_endpoint(emulator) == 0
    assert ChannelCache(tmp_path / "missing").forget_endpoint(emulator) == 0


def test_the_directory_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "kvs-peer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "kvs-peer"


async def test_off_by_default_in_the_library(
    kvs: LocalKvs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    kvs.create_channel(CHANNEL)
    async with kvs.resolver() as resolver:
        assert resolver.disk_cache is None
        await resolver.locate(CHANNEL, Role.VIEWER)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_costs_nothing_but_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = ChannelCache(blocker / "sub")
    cache.store("us-east-1", None, CHANNEL, Role.VIEWER, VALUE, 60)  # no exception
    assert cache.load("us-east-1", None, CHANNEL, Role.VIEWER) is None


async def test_a_404_drops_the_stale_entry_and_the_client_recovers(
    kvs: LocalKvs, tmp_path: Path
) -> None:
    real_arn = kvs.create_channel(CHANNEL)
    cache = ChannelCache(tmp_path)
    # What a restart finds after the channel was deleted and created again: an old ARN.
    stale = real_arn.rsplit("/", 1)[0] + "/1000000000000"
    async with kvs.resolver(disk_cache=cache) as resolver:
        location = await resolver.locate(CHANNEL, Role.VIEWER)
        cache.store(
            resolver.region,
            resolver.endpoint_url,
            CHANNEL,
            Role.VIEWER,
            {"arn": stale, "wss": location.wss_endpoint, "https": location.https_endpoint},
            3600,
        )
    async with kvs.resolver(disk_cache=cache) as resolver:
        access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="v-404")
        assert (await resolver.locate(CHANNEL, Role.VIEWER)).arn == stale
        client = SignalingClient(access, role=Role.VIEWER, client_id="v-404", backoff_base=0.01)
        async with client:
            assert client.stats.failed_attempts >= 1  # the 404 on the stale ARN
        assert _describes(resolver) == 1
    entry = cache.load(resolver.region, resolver.endpoint_url, CHANNEL, Role.VIEWER)
    assert entry is not None and entry.arn == real_arn


@pytest.mark.parametrize("refresh", [Refresh.ENDPOINT, Refresh.CREDENTIALS])
async def test_404_and_403_refreshes_drop_both_roles_but_ice_keeps_them(
    kvs: LocalKvs, tmp_path: Path, refresh: Refresh
) -> None:
    kvs.create_channel(CHANNEL)
    async with kvs.resolver(disk_cache=tmp_path) as resolver:
        access = AwsAccess(resolver, CHANNEL, Role.VIEWER, client_id="v")
        await resolver.locate(CHANNEL, Role.MASTER)
        await access.resolve()
        assert len(list(tmp_path.iterdir())) == 2
        access.invalidate(Refresh.ICE)  # TURN rotation: endpoints stay
        assert len(list(tmp_path.iterdir())) == 2
        access.invalidate(refresh)
        assert list(tmp_path.iterdir()) == []


WRITER = textwrap.dedent(
    """
    import sys
    from kvs_peer.channelcache import ChannelCache
    from kvs_peer.protocol import Role
    cache = ChannelCache(sys.argv[1])
    tag = sys.argv[2]
    value = {"arn": "arn:" + tag * 400, "wss": "wss://" + tag, "https": "https://" + tag}
    for _ in range(int(sys.argv[3])):
        cache.store("us-east-1", None, "shared", Role.VIEWER, value, 3600)
    """
)


def test_processes_writing_at_once_never_leave_a_torn_entry(tmp_path: Path) -> None:
    cache = ChannelCache(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, "300"], env=env)
        for tag in ("a", "b")
    ]
    seen: set[str] = set()
    reads = 0
    while any(w.poll() is None for w in writers):
        entry = cache.load("us-east-1", None, "shared", Role.VIEWER)
        reads += 1
        if entry is not None:
            # Whole entries only: one writer's ARN with that same writer's endpoints.
            tag = entry.wss.removeprefix("wss://")
            assert entry.arn == "arn:" + tag * 400 and entry.https == "https://" + tag
            seen.add(tag)
    for writer in writers:
        assert writer.wait(timeout=60 * 1000 * MS) == 0
    assert seen, f"no entry read in {reads} reads"
    entry = cache.load("us-east-1", None, "shared", Role.VIEWER)
    assert entry is not None and entry.wss in ("wss://a", "wss://b")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
