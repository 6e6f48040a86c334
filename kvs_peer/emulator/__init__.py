"""A local Kinesis Video Streams signaling service: control plane, ICE config and WebSockets.

::

    async with LocalKvs() as kvs:
        arn = kvs.create_channel("demo")
        kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())

Parts: :mod:`.routing` (pure routing core), :mod:`.controlplane` (pure REST operations and
channel registry), :mod:`.tls` (throw-away certificates), :mod:`.turn` (coturn as a child
process) and :mod:`.server` (the aiohttp shell, :class:`LocalKvs`).

The names below load on first use, so the pure parts (``routing``, ``controlplane``) import
without aiohttp, boto3 or the media stack (tests/test_import_light.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_ACCESS_KEY_ID": "config",
    "DEFAULT_REGION": "config",
    "DEFAULT_SECRET_ACCESS_KEY": "config",
    "EmulatorConfig": "config",
    "ice_servers_from_uris": "config",
    "IceServer": "controlplane",
    "Presence": "routing",
    "Takeover": "routing",
    "MASTER_PATH": "server",
    "VIEWER_PATH": "server",
    "LocalKvs": "server",
    "CertificateBundle": "tls",
    "generate_certificate": "tls",
    "TurnServer": "turn",
}

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_ACCESS_KEY",
    "MASTER_PATH",
    "VIEWER_PATH",
    "CertificateBundle",
    "EmulatorConfig",
    "IceServer",
    "LocalKvs",
    "Presence",
    "Takeover",
    "TurnServer",
    "generate_certificate",
    "ice_servers_from_uris",
]

if TYPE_CHECKING:
    from .config import (
        DEFAULT_ACCESS_KEY_ID,
        DEFAULT_REGION,
        DEFAULT_SECRET_ACCESS_KEY,
        EmulatorConfig,
        ice_servers_from_uris,
    )
    from .controlplane import IceServer
    from .routing import Presence, Takeover
    from .server import MASTER_PATH, VIEWER_PATH, LocalKvs
    from .tls import CertificateBundle, generate_certificate
    from .turn import TurnServer

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
