"""kvs-peer: a Python-native WebRTC peer for Amazon Kinesis Video Streams.

The main names are importable from the package root::

    from kvs_peer import AwsAccess, ChannelResolver, Master, Role, Viewer

They are loaded on first use, so ``import kvs_peer`` (and the pytest plugin, which loads in
every test run where kvs-peer is installed) stays cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "AwsAccess": "access",
    "SignerAccess": "access",
    "ChannelResolver": "channel",
    "ResolvedChannel": "channel",
    "KvsPeerError": "errors",
    "LocalKvs": "emulator",
    "EmulatorConfig": "emulator",
    "Master": "master",
    "Role": "protocol",
    "SignalingClient": "signaling",
    "presign_url": "signing",
    "master_url": "signing",
    "viewer_url": "signing",
    "verify_presigned_url": "signing",
    "Viewer": "viewer",
    "new_client_id": "rules",
}

__all__ = [
    "AwsAccess",
    "ChannelResolver",
    "EmulatorConfig",
    "KvsPeerError",
    "LocalKvs",
    "Master",
    "ResolvedChannel",
    "Role",
    "SignalingClient",
    "SignerAccess",
    "Viewer",
    "__version__",
    "master_url",
    "new_client_id",
    "presign_url",
    "verify_presigned_url",
    "viewer_url",
]

if TYPE_CHECKING:
    from .access import AwsAccess, SignerAccess
    from .channel import ChannelResolver, ResolvedChannel
    from .emulator import EmulatorConfig, LocalKvs
    from .errors import KvsPeerError
    from .master import Master
    from .protocol import Role
    from .rules import new_client_id
    from .signaling import SignalingClient
    from .signing import master_url, presign_url, verify_presigned_url, viewer_url
    from .viewer import Viewer


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
