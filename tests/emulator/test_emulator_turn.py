"""The emulator's TURN server: coturn as a child process, with credentials it really accepts.

``EmulatorConfig(turn=True)`` / ``kvs-peer local --turn`` run Debian's coturn; these tests
allocate relays through it with the credentials GetIceServerConfig hands out, check it starts
and stops with the emulator (and dies with a killed one), and check the clear errors when
coturn is missing or its port is taken. Every test picks free ports, never coturn's 3478.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from support import KVS_PEER, MS, finish, interrupt, kill, read_until, spawn
from turn_support import free_port, process_alive, require_turnserver

from kvs_peer.emulator import EmulatorConfig, LocalKvs, TurnServer, ice_servers_from_uris
from kvs_peer.emulator.controlplane import IceServer
from kvs_peer.errors import InvalidArgument, TurnServerError

TURN_SECRET = "test-turn-secret"


class Collector(asyncio.DatagramProtocol):
    """Queues every datagram it receives with its source address."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))


@pytest.fixture
async def turn_kvs() -> AsyncIterator[LocalKvs]:
    require_turnserver()
    config = EmulatorConfig(turn=True, turn_port=free_port(), turn_secret=TURN_SECRET)
    async with LocalKvs(config) as kvs:
        yield kvs


async def ice_server_list(kvs: LocalKvs, arn: str) -> list[dict[str, Any]]:
    """GetIceServerConfig through unmodified boto3 (it blocks: run in a thread)."""

    def call() -> list[dict[str, Any]]:
        client = boto3.client("kinesis-video-signaling", **kvs.boto3_kwargs())
        return client.get_ice_server_config(ChannelARN=arn, ClientId="viewer-1")["IceServerList"]

    return await asyncio.to_thread(call)


async def relay_round_trip(server: tuple[str, int], username: str, password: str, transport: str):
    """Allocate on ``server``, send a datagram to a local peer through the relay and back."""
    loop = asyncio.get_running_loop()
    turn, client = await create_turn_endpoint(
        Collector, server, username, password, transport=transport
    )
    peer_transport, peer = await loop.create_datagram_endpoint(
        Collector, local_addr=("127.0.0.1", 0)
    )
    try:
        relayed = turn.get_extra_info("sockname")
        turn.sendto(b"through the relay", peer_transport.get_extra_info("sockname"))
        async with asyncio.timeout(2000 * MS):
            data, source = await peer.received.get()
        assert data == b"through the relay"
        assert tuple(source) == tuple(relayed), "the peer must see the relayed address"
        peer_transport.sendto(b"and back", relayed)
        async with asyncio.timeout(2000 * MS):
            back, _ = await client.received.get()
        assert back == b"and back"
        return relayed
    finally:
        turn.close()
        peer_transport.close()


async def test_ice_config_lists_coturn_and_its_credentials_relay(turn_kvs: LocalKvs) -> None:
    turn = turn_kvs.turn
    assert turn is not None
    arn = turn_kvs.create_channel("turn")
    servers = await ice_server_list(turn_kvs, arn)

    assert len(servers) == 1
    (entry,) = servers
    port = turn.port
    assert entry["Uris"] == [
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
    ]
    assert entry["Ttl"] == 300
    expiry = int(entry["Username"].split(":", 1)[0])
    assert abs(expiry - (time.time() + 300)) < 30

    for transport in ("udp", "tcp"):
        relayed = await relay_round_trip(
            ("127.0.0.1", port), entry["Username"], entry["Password"], transport
        )
        assert relayed[0] == "127.0.0.1", relayed  # relayed on the emulator's host only

    # coturn runs TURN REST with the emulator's secret: credentials minted independently
    # here are accepted while unexpired; a wrong password or an expired name is refused.
    await relay_round_trip(("127.0.0.1", port), *turn_rest(int(time.time()) + 60), "udp")
    with pytest.raises(TransactionFailed, match="401"):
        await create_turn_endpoint(Collector, ("127.0.0.1", port), entry["Username"], "nope")
    with pytest.raises(TransactionFailed, match="401"):
        await create_turn_endpoint(
            Collector, ("127.0.0.1", port), *turn_rest(int(time.time()) - 60)
        )


def turn_password(username: str) -> str:
    """TURN REST (draft-uberti-behave-turn-rest) password, written out independently."""
    digest = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def turn_rest(expiry: int) -> tuple[str, str]:
    username = f"{expiry}:test"
    return username, turn_password(username)


async def test_turn_server_stops_with_the_emulator_and_can_restart() -> None:
    require_turnserver()
    port = free_port()
    kvs = LocalKvs(EmulatorConfig(turn=True, turn_port=port))
    for _ in range(2):  # close() then start() again brings a fresh coturn on the same port
        await kvs.start()
        assert kvs.turn is not None
        pid = kvs.turn.pid
        assert process_alive(pid)
        assert kvs.turn.startup_seconds is not None and kvs.turn.startup_seconds < 5
        await kvs.close()
        assert not process_alive(pid)


async def test_ice_servers_from_uris_are_returned_with_minted_or_given_credentials() -> None:
    servers = ice_servers_from_uris(
        [
            "turn:turn.example.com:3478?transport=udp",
            "turn:turn.example.com:3478?transport=tcp",
            "turns:alice:p%40ss:word@turn.example.com:443?transport=tcp",
        ]
    )
    assert servers == (
        IceServer(
            ("turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp")
        ),
        IceServer(("turns:turn.example.com:443?transport=tcp",), "alice", "p@ss:word"),
    )
    async with LocalKvs(EmulatorConfig(ice_servers=servers, turn_secret=TURN_SECRET)) as kvs:
        arn = kvs.create_channel("external")
        minted, fixed = await ice_server_list(kvs, arn)
    assert minted["Uris"] == list(servers[0].urls)
    assert int(minted["Username"].split(":", 1)[0]) > time.time()
    assert minted["Password"] == turn_password(minted["Username"])
    assert (fixed["Username"], fixed["Password"]) == ("alice", "p@ss:word")


@pytest.mark.parametrize(
    "uri",
    [
        "stun:stun.example.com:3478",
        "turn:",
        "turn:host:70000",
        "turn:host:3478?transport=sctp",
        "turn:alice@host:3478",
        "https://host/turn",
    ],
)
def test_bad_ice_server_uris_are_refused_without_echoing_credentials(uri: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        ice_servers_from_uris([uri])
    message = str(info.value)
    assert "turn:host:3478?transport=udp" in message or "USER:PASSWORD@" in message
    assert "alice" not in message


def test_config_refuses_more_ice_servers_than_the_c_sdk_accepts() -> None:
    five = [{"Uris": [f"turn:h{i}:3478"]} for i in range(5)]
    assert len(EmulatorConfig(ice_servers=five).ice_servers) == 5
    with pytest.raises(InvalidArgument, match="at most 5"):
        EmulatorConfig(ice_servers=five, turn=True)
    with pytest.raises(InvalidArgument, match="turn_port"):
        EmulatorConfig(turn=True, turn_port=70000)


def test_missing_turnserver_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no turnserver on PATH
    with pytest.raises(TurnServerError, match="apt-get install coturn"):
        LocalKvs(EmulatorConfig(turn=True))
    with pytest.raises(TurnServerError, match="apt-get install coturn"):
        TurnServer("secret", executable="turnserver")


async def test_taken_turn_port_is_a_clear_error_and_releases_the_emulator() -> None:
    require_turnserver()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        kvs = LocalKvs(EmulatorConfig(turn=True, turn_port=port))
        with pytest.raises(InvalidArgument, match=rf"127\.0\.0\.1:{port} \(UDP\).*--turn-port"):
            await kvs.start()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as http:
        http.bind(("127.0.0.1", kvs.port))  # the failed start released the emulator's port


# -- kvs-peer local --turn as a process -------------------------------------------------------


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(extra)
    return env


async def _start_local(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await spawn(*KVS_PEER, "local", "--port", "0", *args, env=env or _cli_env())


def _turn_pid(banner: str, port: int) -> int:
    match = re.search(r"TURN server \(coturn, pid (\d+)\): (\S+), (\S+)", banner)
    assert match, banner
    assert match[2] == f"turn:127.0.0.1:{port}?transport=udp", banner
    assert match[3].startswith(f"turn:127.0.0.1:{port}?transport=tcp"), banner
    pid = int(match[1])
    assert Path(f"/proc/{pid}/exe").resolve().name == "turnserver"
    return pid


async def test_cli_local_turn_starts_and_stops_coturn() -> None:
    require_turnserver()
    port = free_port()
    process = await _start_local("--turn", "--turn-port", str(port))
    try:
        pid = _turn_pid(await read_until(process, "Press Ctrl+C"), port)
        assert process_alive(pid)
        process.send_signal(signal.SIGINT)  # Ctrl+C
        async with asyncio.timeout(10_000 * MS):
            assert await process.wait() == 0
    finally:
        await kill(process)
    assert not process_alive(pid), "coturn outlived kvs-peer local"


async def test_cli_local_killed_takes_coturn_with_it() -> None:
    require_turnserver()
    port = free_port()
    process = await _start_local("--turn", "--turn-port", str(port))
    try:
        pid = _turn_pid(await read_until(process, "Press Ctrl+C"), port)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        folder = Path(args[args.index(b"--pidfile") + 1].decode()).parent
        assert not (folder / "turnserver.conf").exists(), "the TURN secret stayed on disk"
        process.kill()  # no chance to clean up: the parent-death signal must do it
        await process.wait()
        deadline = time.monotonic() + 5000 * MS
        while process_alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not process_alive(pid), "coturn was orphaned by a killed kvs-peer local"
        shutil.rmtree(folder)  # what a killed process leaves behind
    finally:
        await kill(process)


async def test_cli_local_turn_without_coturn_fails_clearly(tmp_path: Path) -> None:
    process = await _start_local("--turn", env=_cli_env(PATH=str(tmp_path)))
    code, out, err = await finish(process, 20_000 * MS)
    assert code == 1
    assert "apt-get install coturn" in err, err
    assert "listening on" not in out


async def test_cli_local_ice_server_is_listed_and_bad_one_refused() -> None:
    process = await _start_local("--ice-server", "turn:turn.example.com:3478?transport=udp")
    try:
        banner = await read_until(process, "Press Ctrl+C")
        assert "ICE server: turn:turn.example.com:3478?transport=udp" in banner
    finally:
        await interrupt(process, 10_000 * MS)
    code, _, err = await finish(
        await _start_local("--ice-server", "stun:stun.example.com:3478"), 20_000 * MS
    )
    assert code == 1 and "is not a TURN URI" in err, err
