"""Plain helpers for the test suite, imported by name (``from support import MS``).

Not in ``conftest.py``: pytest loads a conftest as a plugin, and importing one as a module
gives a second copy whose meaning depends on which ``conftest`` comes first on ``sys.path``.
This module is importable from every test folder because pytest's default ``prepend`` import
mode puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvs_peer.emulator import LocalKvs

# One scaled millisecond: every duration a test waits for or asserts is a multiple of it, so
# ``KVS_PEER_TEST_TIMEOUT_FACTOR=3`` stretches them all on a slow machine without editing tests.
MS = 0.001 * float(os.environ.get("KVS_PEER_TEST_TIMEOUT_FACTOR", "1"))


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10_000 * MS, what: str = "the condition"
) -> None:
    """Poll ``predicate`` on the event loop until it is true.

    Raises:
        AssertionError: naming ``what``, when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def process_env(kvs: LocalKvs, **extra: str) -> dict[str, str]:
    """Environment of a child process (CLI, recorder, benchmark peer) pointed at ``kvs``.

    Starts from this process's environment without its ``AWS_`` and ``KVS_PEER_`` settings
    (the suite's own ``KVS_PEER_TEST_`` ones stay), so nothing of the developer's AWS setup
    (profiles, config files, instance metadata) leaks in, then adds what ``kvs-peer local``
    hands out, then ``extra``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("KVS_PEER_TEST_") or not k.startswith(("AWS_", "KVS_PEER_"))
    }
    env.update(kvs.environment())
    env.update(
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    env.update(extra)
    return env
