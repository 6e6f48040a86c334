"""Shared test configuration.

Timeouts in tests are multiples of ``MS`` scaled by ``KVS_PEER_TEST_TIMEOUT_FACTOR`` so a slow
CI machine can stretch them without editing tests.
"""

from __future__ import annotations

import os

MS = 0.001 * float(os.environ.get("KVS_PEER_TEST_TIMEOUT_FACTOR", "1"))
