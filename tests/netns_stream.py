"""Run emulator + master + viewer in this process and print what the viewer got (JSON).

Started by test_loopback_only.py inside a network namespace that has only ``lo``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from kvs_peer.access import AwsAccess
from kvs_peer.emulator import LocalKvs
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer


async def main(loopback: bool, wait: float) -> dict[str, object]:
    async with LocalKvs() as kvs:
        kvs.create_channel("lo")
        async with kvs.resolver() as resolver:
            master = Master(
                AwsAccess(resolver, "lo", Role.MASTER),
                video=TestPatternTrack(320, 240, 15),
                loopback_candidates=loopback,
            )
            viewer = Viewer(
                AwsAccess(resolver, "lo", Role.VIEWER, client_id="lo-viewer"),
                loopback_candidates=loopback,
                reconnect=False,
            )
            async with master, viewer:
                try:
                    ttff = await viewer.wait_first_frame(timeout=wait)
                except TimeoutError:
                    ttff = None
                return {"timeToFirstFrame": ttff, "frames": viewer.stats.frames_received}


if __name__ == "__main__":
    result = asyncio.run(main("--loopback" in sys.argv, float(sys.argv[-1])))
    print(json.dumps(result))
