"""What the TURN and relay-only tests share: finding coturn, free ports, the selected ICE pair.

Locally these tests skip when coturn's ``turnserver`` is missing; with
``KVS_PEER_REQUIRE_TURN=1`` (set by ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

import pytest

REQUIRE_TURN = os.environ.get("KVS_PEER_REQUIRE_TURN") == "1"


def require_turnserver() -> str:
    """coturn's ``turnserver`` path, or skip (fail with ``KVS_PEER_REQUIRE_TURN=1``)."""
    path = shutil.which("turnserver")
    if path is None:
        reason = "coturn's turnserver is not installed: apt-get install coturn"
        if REQUIRE_TURN:
            pytest.fail(f"{reason} (KVS_PEER_REQUIRE_TURN=1: TURN tests must run)", pytrace=False)
        pytest.skip(reason)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (never coturn's busy default 3478)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def selected_pair(pc: Any) -> tuple[str, str]:
    """``(local type, remote type)`` of the candidate pair ``pc`` sends on (host/srflx/relay).

    aiortc has no candidate-pair stats; aioice's nominated pair is read here, in a test only.
    """
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    pairs = {
        (pair.local_candidate.type, pair.remote_candidate.type)
        for dtls in transports
        for pair in dtls.transport._connection._nominated.values()
    }
    assert len(pairs) == 1, f"expected one nominated pair type over a bundled transport: {pairs}"
    return pairs.pop()


def local_candidate_types(pc: Any) -> set[str]:
    """Types of every local candidate ``pc`` gathered (public aiortc API)."""
    return {
        c.type
        for t in pc.getTransceivers()
        for c in t.receiver.transport.transport.iceGatherer.getLocalCandidates()
    }
