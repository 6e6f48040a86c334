"""Give memory the C allocator keeps after a burst of work back to the system.

Each viewer session allocates a few MiB in C (SRTP contexts, OpenSSL, codec buffers); when it
closes, glibc keeps most of the freed pages for reuse, so a master's RSS after a wave of
viewers stays well above its level before it although nothing is alive any more
(docs/reliability.md, "Master under churn"). ``malloc_trim(0)`` hands those pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

__all__ = ["release_free_memory"]

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Any:
    # glibc only: musl (Alpine) and macOS have no malloc_trim, and need none of this.
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return freed heap memory to the system (glibc's ``malloc_trim(0)``).

    Takes a few milliseconds on a large heap: call it off the event loop. Returns False where
    the C library has no such call.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
