"""The emulator's aiohttp application: one factory that wires every concern's routes.

::

    state = EmulatorState(config, control, router, tls=False)
    app = create_app(state, storage=StorageService(state, ...), page=WebPage(kvs, control))

Routes: the control plane and ICE config (:mod:`.api`), the signaling WebSockets
(:mod:`.signaling_ws`), the storage API (:mod:`.storage_service`) and the page (:mod:`.webpage`).
"""

from __future__ import annotations

from aiohttp import web

from .api import ControlPlaneHttp
from .signaling_ws import SignalingWs
from .state import EmulatorState
from .storage_service import StorageService
from .webpage import WebPage

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (control-plane bodies are a few hundred bytes)."""


def create_app(
    state: EmulatorState,
    *,
    signaling: SignalingWs,
    storage: StorageService,
    page: WebPage,
) -> web.Application:
    """Build the emulator's application (more routes may be added before it starts).

    Args:
        state: the shared state the control-plane handlers use.
        signaling: the WebSocket handlers (``/signaling/master``, ``/signaling/viewer``).
        storage: the storage API (``/joinStorageSession[AsViewer]``).
        page: the emulator page (``GET /`` and ``/_kvs/...``).
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    ControlPlaneHttp(state).add_routes(app)
    signaling.add_routes(app)
    page.add_routes(app)
    storage.add_routes(app)
    return app
