"""Connect failures said in words (kvs_peer.netfail.connect_failure), from real sockets."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import aiohttp
import pytest

from kvs_peer.errors import SignalingError
from kvs_peer.netfail import connect_failure
from kvs_peer.signaling import SignalingClient


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_refused_aiohttp_request_names_host_and_port() -> None:
    port = _closed_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"http://127.0.0.1:{port}/")
    said = connect_failure(caught.value)
    assert said == f"connection to 127.0.0.1:{port} refused (nothing listens there)"
    assert "ssl:" not in said


async def test_a_refused_socket_uses_the_place_given() -> None:
    port = _closed_port()
    with pytest.raises(OSError) as caught:
        await asyncio.open_connection("127.0.0.1", port)
    assert connect_failure(caught.value, f"127.0.0.1:{port}") == (
        f"connection to 127.0.0.1:{port} refused (nothing listens there)"
    )
    assert connect_failure(caught.value) == "connection refused (nothing listens there)"


def test_several_addresses_are_refused_only_if_every_one_was() -> None:
    # asyncio's wording when a name resolves to IPv6 and IPv4 and both fail.
    both = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 80, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 80)"
    )
    assert "refused" in connect_failure(both, "localhost:80")
    mixed = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 80, 0, 0), "
        "[Errno 113] Connect call failed ('10.0.0.1', 80)"
    )
    said = connect_failure(mixed, "host:80")
    assert "refused" not in said and said.startswith("cannot connect to host:80 (")


def test_other_errors_keep_their_reason() -> None:
    unreachable = OSError(errno.EHOSTUNREACH, "Connect call failed ('10.9.9.9', 443)")
    assert connect_failure(unreachable, "10.9.9.9:443") == (
        "cannot connect to 10.9.9.9:443 (Connect call failed ('10.9.9.9', 443))"
    )
    without_text = OSError(errno.EHOSTUNREACH, "")
    assert connect_failure(without_text, "h:1") == (
        f"cannot connect to h:1 ({os.strerror(errno.EHOSTUNREACH)})"
    )
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert connect_failure(unknown, "nowhere.invalid:443") == (
        "cannot connect to nowhere.invalid:443 (Name or service not known)"
    )
    assert connect_failure(TimeoutError(), "h:443") == "no answer from h:443 in time"
    assert connect_failure(ValueError("odd")) == "odd"


async def test_signaling_says_a_refused_connection_in_words() -> None:
    port = _closed_port()

    async def url() -> str:
        return f"ws://127.0.0.1:{port}/"

    client = SignalingClient(url, role="MASTER", first_connect_attempts=1, reconnect=False)
    with pytest.raises(SignalingError) as caught:
        async with client:
            pass
    message = str(caught.value)
    assert f"connection to 127.0.0.1:{port} refused (nothing listens there)" in message, message
    assert "Errno" not in message
