"""The pure core imports without the network and media stacks.

"Pure" here means: no I/O library (aiohttp, websockets), no AWS SDK (boto3, and botocore
except in :mod:`kvs_peer.signing`, which computes SigV4 with it), no media stack (aiortc, av,
cv2). These modules hold KVS's rules and the emulator's logic; the emulator's routing and
control plane are driven by plain function calls in tests and must stay usable that way.

Each check runs in a fresh interpreter: the test process itself has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import MS

HEAVY = ("aiohttp", "websockets", "boto3", "botocore", "aiortc", "av", "cv2")

PURE_CORE = (
    "kvs_peer.rules",
    "kvs_peer.protocol",
    "kvs_peer.errors",
    "kvs_peer.reconnect",
    "kvs_peer.sdp",
    "kvs_peer.ratelimit",
    "kvs_peer.channelcache",
    "kvs_peer.netfail",
    "kvs_peer.emulator.routing",
    "kvs_peer.emulator.controlplane",
    "kvs_peer.emulator.storage",
)


def _loaded_after_import(module: str) -> list[str]:
    """Import ``module`` in a fresh interpreter; return which of HEAVY it loaded."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60_000 * MS,
        check=False,
    )
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_imports_no_heavy_dependency(module: str) -> None:
    assert _loaded_after_import(module) == [], f"{module} pulls in heavy dependencies"


def test_signing_needs_botocore_only() -> None:
    # SigV4 comes from botocore (never hand-rolled); everything else stays out.
    assert _loaded_after_import("kvs_peer.signing") == ["botocore"]


def test_the_check_sees_a_heavy_import() -> None:
    # The server shell does load aiohttp: proves the subprocess check can fail.
    assert "aiohttp" in _loaded_after_import("kvs_peer.emulator.server")
