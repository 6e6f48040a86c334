"""A local Kinesis Video Streams signaling service: control plane, ICE config and WebSockets.

::

    async with LocalKvs() as kvs:
        arn = kvs.create_channel("demo")
        kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())

Parts: :mod:`.routing` (pure routing core), :mod:`.controlplane` (pure REST operations and
channel registry), :mod:`.tls` (throw-away certificates), :mod:`.turn` (coturn as a child
process) and :mod:`.server` (the aiohttp shell, :class:`LocalKvs`).
"""

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
