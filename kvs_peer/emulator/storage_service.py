"""The emulator's WebRTC storage API (``kinesis-video-webrtc-storage``) and its sessions.

``POST /joinStorageSession`` and ``POST /joinStorageSessionAsViewer`` are SigV4-verified
(service ``kinesisvideo``, as botocore's model signs them), take camelCase bodies and answer
200 with an empty body, or KVS's errors with a lower-case ``message``
(docs/protocol.md#storage-sessions). A master's join starts a
:class:`~.storage_peer.StoragePeer` for the channel (the newest join replaces a running
session: "the most recent client request takes precedence"); recordings go to
``<storage dir>/<stream name>/<start time>.mkv``.

A viewer's join (after ConnectAsViewer) starts a :class:`~.storage_viewer.StorageViewerPeer`
that offers to the viewer and relays the master's media to it, within the multi-viewer limits
of :mod:`kvs_peer.rules` (docs/protocol.md#storage-sessions): three viewers, a slot held for a
minute after a viewer leaves (the same ``clientId`` may take it back), three minutes at most
without a master.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from aiortc import MediaStreamTrack, RTCIceServer

from ..errors import InvalidArgument, SignatureError
from ..protocol import ClientMessage
from ..rules import MAX_STORAGE_VIEWERS, STORAGE_VIEWER_ALONE_LIMIT, STORAGE_VIEWER_SLOT_HOLD
from .controlplane import ApiResult, StorageJoin
from .state import EmulatorState
from .storage_peer import SessionInfo, StoragePeer, recording_name
from .storage_viewer import StorageViewerPeer, ViewerSessionInfo

__all__ = ["JOIN_PATH", "JOIN_VIEWER_PATH", "StorageService"]

logger = logging.getLogger(__name__)

JOIN_PATH = "/joinStorageSession"
JOIN_VIEWER_PATH = "/joinStorageSessionAsViewer"
_HISTORY = 200


class StorageService:
    """Storage sessions of every channel, the join API and the knobs tests use.

    Args:
        state: the emulator's shared state (clock, credentials, channels, presence,
            delivery of frames to masters and viewers).
        ice_servers: ``ice_servers(channel_arn)``: what the storage peer uses (the emulator's
            own TURN server, or nothing: never an unreachable one).
        storage_dir: where recordings go; None makes a temporary folder on first use, which
            :meth:`close` removes again unless it holds recordings.
        max_duration: seconds a session lasts at most (KVS: one hour), or None.
    """

    def __init__(
        self,
        state: EmulatorState,
        *,
        ice_servers: Callable[[str], list[RTCIceServer]],
        storage_dir: Path | None,
        max_duration: float | None,
    ) -> None:
        self._state = state
        self._ice_servers = ice_servers
        self._dir = storage_dir
        self._temporary = storage_dir is None
        self.max_duration = max_duration
        """Seconds a session lasts at most; may be changed while running (new sessions)."""
        self._sessions: dict[str, StoragePeer] = {}
        self._ending: set[StoragePeer] = set()
        self._history: list[SessionInfo] = []
        self._drop_offers: dict[str, int] = {}
        self._joins: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.viewer_slot_hold = STORAGE_VIEWER_SLOT_HOLD
        """Seconds a viewer's slot stays taken after it leaves."""
        self.viewer_alone_limit = STORAGE_VIEWER_ALONE_LIMIT
        """Seconds a viewer's session lasts while the channel has no master session."""
        self._viewers: dict[str, dict[str, StorageViewerPeer]] = {}
        self._viewer_history: list[ViewerSessionInfo] = []
        self._slots: dict[str, dict[str, float | None]] = {}
        """Per channel: client id -> None while its session runs, else when its slot frees."""
        self._alone: dict[StorageViewerPeer, asyncio.TimerHandle] = {}

    # -- configuration -------------------------------------------------------------------------

    @property
    def storage_dir(self) -> Path:
        """The folder of the recordings (``<stream name>/<start time>.mkv`` inside)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="kvs-peer-storage-"))
        return self._dir

    def add_routes(self, app: web.Application) -> None:
        """Add the join API's routes to ``app`` (before it starts)."""
        app.router.add_post(JOIN_PATH, self._handle_join)
        app.router.add_post(JOIN_VIEWER_PATH, self._handle_join_viewer)

    # -- knobs ---------------------------------------------------------------------------------

    def drop_next_offers(self, channel: str, count: int = 1) -> None:
        """Answer the next ``count`` joins of ``channel`` with 200 but never send the offer
        (the lost-offer case the SDKs retry, docs/protocol.md#storage-sessions)."""
        if count < 1:
            raise InvalidArgument("count must be at least 1")
        arn = self._state.channel_arn(channel)
        self._drop_offers[arn] = self._drop_offers.get(arn, 0) + count

    def end_session(self, channel: str, reason: str = "ended by the emulator") -> bool:
        """End the channel's running session (the storage peer drops); False if none."""
        peer = self._sessions.get(self._state.channel_arn(channel))
        if peer is None:
            return False
        peer.end(reason)
        return True

    def joins(self, channel: str) -> int:
        """How many master joins the channel has had (accepted with 200)."""
        return self._joins.get(self._state.channel_arn(channel), 0)

    def session(self, channel: str) -> SessionInfo | None:
        """The channel's running session, or None."""
        peer = self._sessions.get(self._state.channel_arn(channel))
        return None if peer is None else replace(peer.refresh_counters())

    def sessions(self, channel: str | None = None) -> list[SessionInfo]:
        """Every session (ended ones first, oldest first), of one channel or all."""
        arn = None if channel is None else self._state.channel_arn(channel)
        running = [replace(p.refresh_counters()) for p in self._sessions.values()]
        return [s for s in [*self._history, *running] if arn is None or s.channel_arn == arn]

    def viewer_sessions(self, channel: str | None = None) -> list[ViewerSessionInfo]:
        """Every viewer session (ended ones first, oldest first), of one channel or all."""
        arn = None if channel is None else self._state.channel_arn(channel)
        running = [replace(p.info) for v in self._viewers.values() for p in v.values()]
        return [s for s in [*self._viewer_history, *running] if arn is None or s.channel_arn == arn]

    def recordings(self) -> list[Path]:
        """Recording files in the storage folder, oldest first per stream."""
        if self._dir is None or not self._dir.is_dir():
            return []
        return sorted(p for p in self._dir.glob("*/*.mkv") if p.is_file())

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked on every session change and every
        0.1 s (frame counters grow without events). Wrap it in ``asyncio.timeout()``."""
        while not predicate():
            self._changed.clear()
            try:
                async with asyncio.timeout(0.1):
                    await self._changed.wait()
            except TimeoutError:
                pass

    # -- signaling -----------------------------------------------------------------------------

    def receive(self, channel_arn: str, message: ClientMessage) -> bool:
        """A master's message without a recipient: the storage session's if one runs."""
        peer = self._sessions.get(channel_arn)
        if peer is None:
            return False
        peer.receive(message)
        return True

    def receive_from_viewer(self, channel_arn: str, client_id: str, message: ClientMessage) -> bool:
        """A viewer's message: its storage session's if one runs (else it goes to the master)."""
        peer = self._viewers.get(channel_arn, {}).get(client_id)
        if peer is None:
            return False
        peer.receive(message)
        return True

    # -- HTTP ----------------------------------------------------------------------------------

    @staticmethod
    def _response(result: ApiResult) -> web.Response:
        headers = {} if result.error_type is None else {"x-amzn-ErrorType": result.error_type}
        if result.status == 200:
            return web.Response(status=200, headers=headers)  # the model's empty output
        return web.json_response(result.body, status=result.status, headers=headers)

    async def _handle_join(self, request: web.Request) -> web.Response:
        return await self._join(request, viewer=False)

    async def _handle_join_viewer(self, request: web.Request) -> web.Response:
        return await self._join(request, viewer=True)

    async def _join(self, request: web.Request, *, viewer: bool) -> web.Response:
        body = await request.read()
        try:
            self._state.verify(request, body)
        except SignatureError as exc:
            logger.info("refused %s: %s (%s)", request.path, exc.reason, exc)
            return self._response(ApiResult(403, {"message": str(exc)}, "AccessDeniedException"))
        result = self._state.control.join_storage(body, viewer=viewer)
        if isinstance(result, ApiResult):
            logger.info("%s -> %d %s", request.path, result.status, result.error_type)
            return self._response(result)
        if viewer:
            refusal = self._viewer_refusal(result)
            if refusal is not None:
                logger.info("%s -> %d %s", request.path, refusal.status, refusal.error_type)
                return self._response(refusal)
            await self._start_viewer(result)
            return self._response(ApiResult(200, {}))
        if not self._state.router.presence(result.channel_arn).master:
            # [inferred] KVS does not document a join without a connected master; refusing
            # it tells the caller what to fix (connect signaling first,
            # docs/protocol.md#storage-sessions).
            return self._response(
                ApiResult(
                    400,
                    {
                        "message": f"no master is connected to channel {result.channel_name}: "
                        "connect to signaling as master before JoinStorageSession"
                    },
                    "InvalidArgumentException",
                )
            )
        self._joins[result.channel_arn] = self._joins.get(result.channel_arn, 0) + 1
        await self._start_session(result)
        return self._response(ApiResult(200, {}))

    def _viewer_refusal(self, join: StorageJoin) -> ApiResult | None:
        assert join.client_id is not None
        presence = self._state.router.presence(join.channel_arn)
        if join.client_id not in presence.viewers:
            return ApiResult(
                400,
                {
                    "message": f"viewer {join.client_id} is not connected to channel "
                    f"{join.channel_name}: ConnectAsViewer with this clientId first"
                },
                "InvalidArgumentException",
            )
        now = time.monotonic()
        slots = self._slots.setdefault(join.channel_arn, {})
        for client_id, frees_at in list(slots.items()):
            if frees_at is not None and frees_at <= now:
                del slots[client_id]
        if join.client_id not in slots and len(slots) >= MAX_STORAGE_VIEWERS:
            # The message text the JS sample tells apart from throttling
            # (docs/protocol.md#storage-sessions).
            return ApiResult(
                400,
                {"message": "maximum number of viewers connected to the session reached"},
                "ClientLimitExceededException",
            )
        return None

    # -- sessions ------------------------------------------------------------------------------

    async def _start_viewer(self, join: StorageJoin) -> None:
        assert join.client_id is not None
        client_id, arn = join.client_id, join.channel_arn
        viewers = self._viewers.setdefault(arn, {})
        old = viewers.pop(client_id, None)
        if old is not None:
            # "If there's an existing session with the same clientId ... the new request
            # takes precedence" (docs/protocol.md#storage-sessions).
            old.end("replaced by a newer JoinStorageSessionAsViewer")
        self._slots.setdefault(arn, {})[client_id] = None

        def source(kind: str) -> MediaStreamTrack | None:
            master = self._sessions.get(arn)
            return None if master is None else master.subscribe(kind)

        peer = StorageViewerPeer(
            join,
            send=lambda text: self._state.send_to_viewer(arn, client_id, text),
            source=source,
            ice_servers=self._ice_servers(arn),
            max_duration=self.max_duration,
            on_end=self._viewer_ended,
        )
        viewers[client_id] = peer
        if arn not in self._sessions:
            self._arm_alone(peer)
        self._changed.set()
        try:
            await peer.start()
        except Exception as exc:
            logger.warning("storage viewer %s failed to start: %s", client_id, exc)
            peer.end(f"could not start: {exc}")

    def _arm_alone(self, peer: StorageViewerPeer) -> None:
        if peer not in self._alone:
            self._alone[peer] = asyncio.get_running_loop().call_later(
                self.viewer_alone_limit, peer.end, "no master joined the storage session in time"
            )

    def _disarm_alone(self, channel_arn: str) -> None:
        for peer in self._viewers.get(channel_arn, {}).values():
            handle = self._alone.pop(peer, None)
            if handle is not None:
                handle.cancel()

    def _viewer_ended(self, peer: StorageViewerPeer) -> None:
        handle = self._alone.pop(peer, None)
        if handle is not None:
            handle.cancel()
        arn, client_id = peer.join.channel_arn, peer.info.client_id
        viewers = self._viewers.get(arn, {})
        if viewers.get(client_id) is peer:
            del viewers[client_id]
            self._slots.setdefault(arn, {})[client_id] = time.monotonic() + self.viewer_slot_hold
        self._viewer_history.append(replace(peer.info))
        del self._viewer_history[:-_HISTORY]
        self._changed.set()

    async def _start_session(self, join: StorageJoin) -> None:
        old = self._sessions.pop(join.channel_arn, None)
        if old is not None:
            self._ending.add(old)
            old.end("replaced by a newer JoinStorageSession")
        started = self._state.now()
        path = self.storage_dir / join.stream_name / recording_name(started)
        while path.exists():  # two joins in one millisecond
            started += dt.timedelta(milliseconds=1)
            path = path.with_name(recording_name(started))
        peer = StoragePeer(
            join,
            send=lambda text: self._state.send_to_master(join.channel_arn, text),
            path=path,
            ice_servers=self._ice_servers(join.channel_arn),
            max_duration=self.max_duration,
            on_end=self._ended,
        )
        self._sessions[join.channel_arn] = peer
        self._disarm_alone(join.channel_arn)
        self._changed.set()
        drop = self._drop_offers.get(join.channel_arn, 0)
        if drop:
            self._drop_offers[join.channel_arn] = drop - 1
        try:
            await peer.start(drop_offer=bool(drop))
        except Exception as exc:
            logger.warning("storage session of %s failed to start: %s", join.channel_name, exc)
            peer.end(f"could not start: {exc}")

    def _ended(self, peer: StoragePeer) -> None:
        if self._sessions.get(peer.join.channel_arn) is peer:
            del self._sessions[peer.join.channel_arn]
            for viewer in self._viewers.get(peer.join.channel_arn, {}).values():
                self._arm_alone(viewer)
        self._ending.discard(peer)
        self._history.append(replace(peer.info))
        del self._history[:-_HISTORY]
        self._changed.set()

    async def close(self) -> None:
        """End every session, wait for their files to be finished, and remove the temporary
        folder when it holds no recording."""
        viewers = [p for v in self._viewers.values() for p in v.values()]
        peers = [*self._sessions.values(), *self._ending, *viewers]
        for peer in peers:
            peer.end("the emulator stopped")
        await asyncio.gather(*(p.wait_ended() for p in peers), return_exceptions=True)
        if self._temporary and self._dir is not None:
            self._remove_if_empty(self._dir)

    @staticmethod
    def _remove_if_empty(folder: Path) -> None:
        """Remove a temporary storage folder that holds no file (empty stream folders go too);
        one with recordings stays for the user. Never called on a folder the user gave."""
        for sub in folder.iterdir() if folder.is_dir() else ():
            if sub.is_dir():
                with contextlib.suppress(OSError):  # not empty: a recording is kept
                    sub.rmdir()
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            logger.info("storage session recordings kept in %s", folder)
