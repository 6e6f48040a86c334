"""A host whose only interface is loopback (network namespace): the loopback option works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import MS

SCRIPT = Path(__file__).with_name("netns_stream.py")


def run_in_loopback_namespace(*args: str) -> dict[str, object]:
    command = f"ip link set lo up && exec {sys.executable} {SCRIPT} {' '.join(args)}"
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=90_000 * MS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def namespaces_available() -> None:
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root or user namespaces)")


def test_streams_with_loopback_candidates() -> None:
    result = run_in_loopback_namespace("--loopback", "20")
    assert result["frames"] > 0 and result["timeToFirstFrame"] is not None


def test_without_the_option_nothing_connects() -> None:
    # aioice leaves 127.0.0.1 out: both peers gather no candidate at all
    result = run_in_loopback_namespace("3")
    assert result == {"timeToFirstFrame": None, "frames": 0}
