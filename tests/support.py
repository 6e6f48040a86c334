"""Plain helpers for the test suite, imported by name (``from support import MS``).

Not in ``conftest.py``: pytest loads a conftest as a plugin, and importing one as a module
gives a second copy whose meaning depends on which ``conftest`` comes first on ``sys.path``.
This module is importable from every test folder because pytest's default ``prepend`` import
mode puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

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
