"""Field faults of signaling (issue 10: items 1-3 and 14), with real processes where the fault
is a process fault: an emulator that restarts with its channel re-created, a channel deleted
under a connected client, a device that boots before its network, a second master.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import boto3
import pytest
from support import MS, SMALL_TESTSRC, wait_until

from kvs_peer.access import AwsAccess, SignerAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ACCESS_KEY,
    LocalKvs,
)
from kvs_peer.errors import (
    AccessDenied,
    ChannelError,
    ChannelNotFound,
    InvalidArgument,
    SignalingClosed,
)
from kvs_peer.master import Master
from kvs_peer.protocol import Role
from kvs_peer.reconnect import Refresh
from kvs_peer.signaling import SignalingClient
from kvs_peer.viewer import Viewer

KVS_PEER = [sys.executable, "-m", "kvs_peer"]
FAST = {"backoff_base": 0.02, "backoff_cap": 0.2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolver_for(port: int) -> ChannelResolver:
    """A resolver for an emulator that may not be listening yet on ``port``."""
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name=DEFAULT_REGION,
    )
    return ChannelResolver(
        region=DEFAULT_REGION, endpoint_url=f"http://127.0.0.1:{port}", session=session
    )


@dataclass
class Proc:
    """A kvs-peer subprocess whose stderr (and stdout) lines are collected as they come."""

    name: str
    proc: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, name: str, *args: str, env: dict[str, str]) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *KVS_PEER,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self = cls(name, proc)
        assert proc.stdout is not None and proc.stderr is not None
        self.readers = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]
        return self

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode(errors="replace").rstrip())

    def count(self, pattern: str, since: int = 0) -> int:
        return sum(1 for line in self.err[since:] if re.search(pattern, line))

    async def wait_line(
        self, pattern: str, *, times: int = 1, since: int = 0, timeout: float = 30
    ) -> None:
        try:
            await wait_until(lambda: self.count(pattern, since) >= times, timeout, pattern)
        except AssertionError:
            raise AssertionError(
                f"{self.name}: no {times}x {pattern!r}; stderr:\n" + "\n".join(self.err[-40:])
            ) from None

    async def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self.readers)
        return code


@asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    """Kill whatever is left running at the end, whatever happened."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
            for reader in p.readers:
                reader.cancel()


async def start_emulator(port: int, env: dict[str, str], started: list[Proc]) -> Proc:
    emulator = await Proc.start(
        "emulator", "local", "--port", str(port), "--channel", "cam", env=env
    )
    started.append(emulator)
    await wait_until(
        lambda: any("listening" in line for line in emulator.out), 30_000 * MS, "emulator"
    )
    return emulator


@pytest.mark.slow
async def test_emulator_restart_with_new_arn_and_late_boot_keep_streaming(
    device_env_for_port: tuple[int, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10.3 then 10.1, through real processes: the master boots 3.5 s before the
    emulator, then the emulator is killed, clients fail >= 4 times, and it comes back with the
    channel re-created (new ARN). Master and viewers reconnect, media never stops, exit 0."""
    caplog.set_level(logging.INFO, logger="kvs_peer.signaling")
    port, env = device_env_for_port
    times: list[float] = []
    async with processes() as started, resolver_for(port) as resolver:
        master = await Proc.start(
            "master",
            "master",
            "--channel",
            "cam",
            *SMALL_TESTSRC,
            "--fps",
            "15",
            "--loopback-candidates",
            "--json",
            "-v",
            env=env,
        )
        started.append(master)
        # Nothing listens yet: the master keeps trying instead of giving up after ~1.3 s.
        await asyncio.sleep(3.5)
        assert master.proc.returncode is None, "\n".join(master.err)
        await master.wait_line(r"signaling connect failed \(MASTER", times=3, timeout=10_000 * MS)
        emulator = await start_emulator(port, env, started)
        await master.wait_line(r"signaling connected as MASTER", timeout=20_000 * MS)
        first_arn = await describe_arn(port)

        meter = Viewer(
            AwsAccess(resolver, "cam", Role.VIEWER, client_id="meter"),
            on_frame=lambda _: times.append(time.monotonic()),
            loopback_candidates=True,
            signaling=FAST,
        )
        async with meter:
            await meter.wait_first_frame(timeout=30_000 * MS)
            cli_viewer = await Proc.start(
                "viewer",
                "viewer",
                "--channel",
                "cam",
                "--client-id",
                "cli",
                "--loopback-candidates",
                "--json",
                "-v",
                env=env,
            )
            started.append(cli_viewer)
            await cli_viewer.wait_line(r"first frame after", timeout=30_000 * MS)
            await asyncio.sleep(0.5)

            # The fault: the emulator dies (SIGKILL: no close frames), clients fail >= 4 times.
            marks = {p.name: len(p.err) for p in (master, cli_viewer)}
            failed_before = meter.signaling.stats.failed_attempts
            killed_at = time.monotonic()
            emulator.proc.kill()
            await emulator.proc.wait()
            await wait_until(
                lambda: meter.signaling.stats.failed_attempts - failed_before >= 4,
                20_000 * MS,
                "failures",
            )
            for p in (master, cli_viewer):
                await p.wait_line(
                    r"signaling connect failed", times=4, since=marks[p.name], timeout=30_000 * MS
                )

            # Back, with the channel re-created: the cached ARN now gets a 404.
            await start_emulator(port, env, started)
            restarted_at = time.monotonic()
            assert await describe_arn(port) != first_arn
            reconnects = meter.signaling.stats.reconnects
            await wait_until(
                lambda: meter.signaling.stats.reconnects > reconnects,
                30_000 * MS,
                "meter reconnect",
            )
            for p in (master, cli_viewer):
                await p.wait_line(
                    r"signaling connected as \w+ \(reconnect\)",
                    since=marks[p.name],
                    timeout=30_000 * MS,
                )
            back_at = time.monotonic()
            assert any("HTTP 404" in r.getMessage() for r in caplog.records)

            # Media never stopped: frames kept arriving while signaling was down.
            during = [t for t in times if killed_at <= t <= back_at]
            window = [t for t in times if killed_at - 0.5 <= t <= back_at + 0.5]
            gap = max(b - a for a, b in itertools.pairwise(window))
            outage = back_at - killed_at
            print(
                f"\nsignaling outage {outage:.2f} s: {len(during)} frames received during it, "
                f"largest inter-frame gap {gap * 1000:.0f} ms; every client reconnected "
                f"{back_at - restarted_at:.2f} s after the emulator was back"
            )
            assert len(during) >= 0.5 * 15 * outage
            assert gap < 1000 * MS
            assert meter.pc is not None and meter.pc.connectionState == "connected"
            assert meter.stats.peer_reconnects == 0

            # The master is reachable under the new ARN: a new viewer gets video.
            late = Viewer(
                AwsAccess(resolver, "cam", Role.VIEWER, client_id="late"), loopback_candidates=True
            )
            async with late:
                await late.wait_first_frame(timeout=30_000 * MS)

        assert await cli_viewer.stop() == 0, "\n".join(cli_viewer.err[-30:])
        assert json.loads(cli_viewer.out[-1])["framesReceived"] > 0
        assert await master.stop() == 0, "\n".join(master.err[-30:])
        summary = json.loads(master.out[-1])
        assert summary["ok"] and summary["signalingReconnects"] >= 1


async def describe_arn(port: int) -> str:
    def call() -> str:
        client = boto3.client(
            "kinesisvideo",
            region_name=DEFAULT_REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
            aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        )
        return client.describe_signaling_channel(ChannelName="cam")["ChannelInfo"]["ChannelARN"]

    return await asyncio.to_thread(call)


@pytest.fixture
def device_env_for_port(device_env: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A free port and the environment of devices using an emulator on it (not started)."""
    port = free_port()
    env = {**device_env, "KVS_PEER_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    env["AWS_ACCESS_KEY_ID"] = DEFAULT_ACCESS_KEY_ID
    env["AWS_SECRET_ACCESS_KEY"] = DEFAULT_SECRET_ACCESS_KEY
    env["AWS_REGION"] = DEFAULT_REGION
    return port, env


async def test_first_connect_waits_for_the_network(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10.3: nothing listens for 3.5 s; the first connect backs off (capped) and
    connects once the emulator appears."""
    port = free_port()
    async with resolver_for(port) as resolver:
        client = SignalingClient(
            AwsAccess(resolver, "boot", Role.MASTER), role=Role.MASTER, backoff_cap=0.5
        )
        connecting = asyncio.create_task(client.connect())
        await asyncio.sleep(3.5)
        assert not connecting.done()
        assert client.stats.failed_attempts >= 3
        assert client.stats.retrying_since is not None
        async with LocalKvs(port=port) as kvs:
            kvs.create_channel("boot")
            appeared = time.monotonic()
            await asyncio.wait_for(connecting, 15000 * MS)
            took = time.monotonic() - appeared
            assert client.connected and client.stats.retrying_since is None
            await client.close()
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"retrying in ([\d.]+) s", r.getMessage()))
    ]
    assert delays and max(delays) <= 0.5
    print(f"\nconnected {took:.2f} s after the emulator appeared")


async def test_a_bounded_first_connect_still_gives_up() -> None:
    async with resolver_for(free_port()) as resolver:
        client = SignalingClient(
            AwsAccess(resolver, "boot", Role.MASTER),
            role=Role.MASTER,
            first_connect_attempts=2,
            **FAST,
        )
        with pytest.raises(ChannelError, match="could not reach"):
            await client.connect()
    assert client.stats.failed_attempts == 2


@pytest.mark.parametrize("role", [Role.MASTER, Role.VIEWER])
async def test_channel_deleted_under_a_connected_client_ends_the_run(
    kvs: LocalKvs, resolver: ChannelResolver, role: Role
) -> None:
    """Issue 10.2: the run ends with a clear error and wait_closed() returns, quickly."""
    arn = kvs.create_channel("doomed")
    if role is Role.MASTER:
        peer: Master | Viewer = Master(
            AwsAccess(resolver, "doomed", role), takeover_check=None, signaling=FAST
        )
    else:
        peer = Viewer(AwsAccess(resolver, "doomed", role, client_id="v"), signaling=FAST)
    async with peer:
        client = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
        await asyncio.to_thread(client.delete_signaling_channel, ChannelARN=arn)
        deleted = time.monotonic()
        with pytest.raises(ChannelNotFound) as info:
            await asyncio.wait_for(peer.wait_closed(), 10000 * MS)
        took = time.monotonic() - deleted
    assert "'doomed' not found" in str(info.value)
    assert "create" in str(info.value) and "region" in str(info.value)
    assert not peer.signaling.connected
    print(f"\n{role}: run ended {took:.2f} s after the channel was deleted")


async def test_a_channel_that_never_existed_fails_the_start_clearly(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    master = Master(AwsAccess(resolver, "nope", Role.MASTER), takeover_check=None, signaling=FAST)
    with pytest.raises(ChannelNotFound, match="'nope' not found"):
        await asyncio.wait_for(master.start(), 10000 * MS)
    await master.close()


async def test_second_master_strands_the_first_which_says_so(
    kvs: LocalKvs, resolver: ChannelResolver, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10.14: KVS routes to the newest master and leaves the old socket silent; the
    stranded master notices with a probe viewer, says so and stops."""
    kvs.create_channel("shared")
    first = Master(AwsAccess(resolver, "shared", Role.MASTER), takeover_check=0.3, signaling=FAST)
    async with first:
        watch = first._takeover
        assert watch is not None
        # Alone on the channel: probes come back and nothing happens.
        await wait_until(lambda: watch.probes >= 2, 10_000 * MS, "two probes")
        assert watch.unanswered == 0 and first.end_reason is None
        async with SignalingClient(
            AwsAccess(resolver, "shared", Role.MASTER), role=Role.MASTER, **FAST
        ):
            taken = time.monotonic()
            with pytest.raises(SignalingClosed) as info:
                await asyncio.wait_for(first.wait_closed(), 15000 * MS)
            took = time.monotonic() - taken
            # The first master's socket is still open: the service said nothing to it.
            assert first.signaling.connected
            assert kvs.connected("shared").master
    assert "another master took channel 'shared' over" in str(info.value)
    assert "stop the other master" in str(info.value)
    assert first.end_reason == "another master took the channel over"
    assert not kvs.connected("shared").viewers  # no probe viewer left behind
    print(f"\nstranded master noticed the takeover after {took:.2f} s")


async def test_probes_need_viewer_access_or_stay_quiet(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    """A probe that cannot connect (here: the viewer slots are full) proves nothing: the
    master keeps running."""
    from kvs_peer.takeover import probe_master

    kvs.create_channel("full")
    access = AwsAccess(resolver, "full", Role.MASTER)
    async with SignalingClient(access, role=Role.MASTER, **FAST) as master:
        assert await probe_master(master, access, client_id="probe", timeout=2) is True
        kvs.fail_next_connects("full", 400)
        assert await probe_master(master, access, client_id="probe", timeout=2) is None
        async with SignalingClient(access, role=Role.MASTER, **FAST):
            assert await probe_master(master, access, client_id="probe", timeout=1) is False


async def test_a_403_reads_credentials_again(
    kvs: LocalKvs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refresh.CREDENTIALS makes a resolver that found its own credentials read them again
    (here: rotated in the environment), and re-describes the channel."""
    kvs.create_channel("rotated")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", kvs.credentials.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stale-secret")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    async with ChannelResolver(region=kvs.region, endpoint_url=kvs.endpoint_url) as resolver:
        access = AwsAccess(resolver, "rotated", Role.MASTER)
        with pytest.raises(AccessDenied):
            await access()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", kvs.credentials.secret_key)
        with pytest.raises(AccessDenied):
            await access()  # the session keeps what it read first
        access.invalidate(Refresh.CREDENTIALS)
        url = await access()
        assert url.startswith("ws://")
        client = SignalingClient(access, role=Role.MASTER, **FAST)
        await client.connect()
        await client.close()


def test_probe_access_is_the_same_channel_as_a_viewer(resolver: ChannelResolver) -> None:
    signer = SignerAccess("http://127.0.0.1:9", "cam", Role.MASTER, token="t", timeout=3)
    probe = signer.for_viewer("probe-1")
    assert (probe.role, probe.channel, probe.client_id) == (Role.VIEWER, "cam", "probe-1")
    assert probe.signer_url == signer.signer_url and probe._token == "t"
    aws = AwsAccess(resolver, "cam", Role.MASTER).for_viewer("probe-2")
    assert (aws.role, aws.channel, aws.client_id, aws.resolver) == (
        Role.VIEWER,
        "cam",
        "probe-2",
        resolver,
    )
    with pytest.raises(InvalidArgument):
        AwsAccess(resolver, "cam", Role.MASTER).for_viewer("bad id!")
