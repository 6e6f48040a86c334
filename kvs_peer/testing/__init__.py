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

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SUBMODULE)
