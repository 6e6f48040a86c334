"""Test helpers for applications built on kvs-peer: pytest fixtures and video assertions.

The pytest plugin (:mod:`kvs_peer.testing.plugin`) is registered through the ``pytest11``
entry point: installing kvs-peer makes ``kvs_emulator``, ``kvs_channel``, ``kvs_master`` and
``kvs_viewer`` available. Annotate them with the types exported here::

    from kvs_peer.testing import KvsMasterFactory, KvsViewerFactory

    async def test_stream(
        kvs_channel: str, kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory
    ) -> None: ...

Names load on first use, so ``kvs_peer.testing.video`` can be used without pytest installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin import CheckedViewer, KvsMasterFactory, KvsViewerFactory
    from .video import VideoCheck

_SUBMODULE = {
    "CheckedViewer": "plugin",
    "KvsMasterFactory": "plugin",
    "KvsViewerFactory": "plugin",
    "VideoCheck": "video",
}

__all__ = ["CheckedViewer", "KvsMasterFactory", "KvsViewerFactory", "VideoCheck"]


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{submodule}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULE])
