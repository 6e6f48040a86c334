"""Signaling client: one KVS signaling WebSocket, kept alive across failures.

::

    async with SignalingClient(url_provider, role=Role.VIEWER, client_id="cam-viewer") as sc:
        await sc.send_offer(sdp)
        async for event in sc:
            ...  # SdpAnswer, IceCandidate, StatusResponse, GoAway, Connected, Disconnected, ...

The URL provider is awaited for every (re)connect, so an expired URL is never reused. The
client pings every 10 s (as the C SDK does), reconnects with exponential backoff and jitter,
replaces the connection before the service's 1-hour cap and on GO_AWAY (make before break:
the old socket keeps delivering until the new one is up), paces sends under the service's
per-connection quotas, and holds ICE candidates that arrive before their sender's SDP.
Decisions come from the pure modules :mod:`kvs_peer.protocol` and :mod:`kvs_peer.reconnect`:
the first connect and every reconnect follow the same policy table, so network failures are
retried for ever (capped backoff) and only rejections that need a person end the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from ._tasks import TaskSet, cancel_and_wait, invoke
from .errors import (
    HandshakeRejected,
    InvalidArgument,
    InvalidState,
    KvsPeerError,
    SignalingClosed,
    SignalingError,
)
from .netfail import connect_failure
from .protocol import (
    Action,
    CandidateBuffer,
    Event,
    GoAway,
    IceCandidate,
    Role,
    candidate_payload,
    decode_message,
    encode_message,
    sdp_payload,
)
from .ratelimit import TokenBucket
from .reconnect import ROTATE_MARGIN, Decision, ReconnectPolicy, Refresh, rotate_at
from .rules import ICE_RATE, MAX_CONNECTION_DURATION, SDP_RATE
from .signing import normalize_endpoint, redact_url, validate_client_id

__all__ = [
    "Connected",
    "Disconnected",
    "SignalingClient",
    "SignalingEvent",
    "SignalingStats",
    "UrlProvider",
]

logger = logging.getLogger(__name__)

PROBE_MID = "kvs-peer-probe"
"""``sdpMid`` of the ICE_CANDIDATE a probe viewer sends to check who receives the channel's
messages; no real m-line has this mid, and any master buffers or drops it harmlessly."""
STABLE_AFTER = 2.0
"""Seconds a connection must stay up before its close restarts the backoff from scratch."""

UrlProvider = Callable[[], Awaitable[str]]
"""Returns a freshly signed WSS URL. May also have ``invalidate(refresh: Refresh)``, called
when the service says the endpoint or credentials are stale (404, 403, GO_AWAY)."""


@dataclass(frozen=True, slots=True)
class Connected:
    """The signaling socket is (again) open."""

    reconnect: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The signaling socket closed; ``will_reconnect`` tells whether the client tries again."""

    code: int | None
    reason: str
    will_reconnect: bool


SignalingEvent = Event | Connected | Disconnected


@dataclass
class SignalingStats:
    """Counters in the spirit of the C SDK's ``SignalingClientStats``."""

    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    ignored_frames: int = 0
    go_aways: int = 0
    connected_at: float | None = None
    connect_latency: float | None = None
    last_error: str | None = None
    retrying_since: float | None = None
    """``time.time()`` of the first failed attempt while (re)connecting, None when connected."""


@dataclass
class _Connection:
    ws: ClientConnection
    opened_at: float
    reader: asyncio.Task[None] | None = None
    go_away: asyncio.Event = field(default_factory=asyncio.Event)
    sdp_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(float(SDP_RATE)))
    ice_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(float(ICE_RATE)))


_CLOSED = object()


class SignalingClient:
    """A KVS signaling connection for one role.

    Args:
        url_provider: async callable returning a fresh signed URL; see :data:`UrlProvider`.
        role: MASTER or VIEWER.
        client_id: the viewer's client id (required for VIEWER, refused for MASTER). Used
            only for validation and logs: the id travels inside the signed URL.
        ping_interval: seconds between WebSocket pings; None disables them (the service
            then closes idle connections after :data:`~kvs_peer.rules.IDLE_TIMEOUT`).
        ping_timeout: seconds to wait for a pong before treating the socket as dead.
        open_timeout: seconds allowed for one connect (URL + TCP + TLS + upgrade).
        send_timeout: seconds a send waits for a connection while reconnecting.
        reconnect: reconnect after failures and closes; False makes any close final.
        first_connect_attempts: attempts before ``connect()`` gives up even on errors the
            policy retries (network, throttling); None (default) follows the policy alone,
            which retries those for ever, so a device started before its network waits.
        max_connection_duration: the service's cap; the connection is replaced ``rotate_margin``
            seconds before it.
        pace: wait to stay under :data:`~kvs_peer.rules.SDP_RATE` and
            :data:`~kvs_peer.rules.ICE_RATE` per connection instead of having the service drop
            messages silently.
        ssl: TLS context for ``wss://`` (e.g. one trusting the local emulator's certificate).
            None: the CA bundle in ``AWS_CA_BUNDLE`` when set (as for the control-plane
            calls, so one variable trusts a private endpoint), else the system trust store.
        rng: random source for backoff jitter (seed it in tests).
    """

    def __init__(
        self,
        url_provider: UrlProvider,
        *,
        role: Role | str,
        client_id: str | None = None,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 10.0,
        open_timeout: float = 10.0,
        send_timeout: float = 10.0,
        reconnect: bool = True,
        first_connect_attempts: int | None = None,
        max_connection_duration: float = MAX_CONNECTION_DURATION,
        rotate_margin: float = ROTATE_MARGIN,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        pace: bool = True,
        ssl: ssl_module.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.role = Role.parse(role)
        if self.role is Role.VIEWER:
            if client_id is None:
                raise InvalidArgument("a VIEWER needs a client id")
            validate_client_id(client_id)
        elif client_id is not None:
            raise InvalidArgument("a MASTER connects without a client id")
        self.client_id = client_id
        self._provider = url_provider
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._send_timeout = send_timeout
        self._reconnect = reconnect
        self._first_attempts = (
            None if first_connect_attempts is None else max(1, first_connect_attempts)
        )
        self._max_duration = max_connection_duration
        self._rotate_margin = rotate_margin
        self._pace = pace
        self._ssl = ssl
        self._rng = rng or random.Random()
        self._policy = ReconnectPolicy(base=backoff_base, cap=backoff_cap, rng=self._rng)
        self._stop = asyncio.Event()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._candidates = CandidateBuffer()
        self._current: _Connection | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._retiring = TaskSet()
        self._terminal: BaseException | None = None
        self._callbacks: list[Callable[[SignalingEvent], Any]] = []
        self.stats = SignalingStats()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a signaling socket is open."""
        return self._connected.is_set()

    async def connect(self) -> None:
        """Open the first connection, then keep it alive in the background.

        Waits as long as the policy retries (:mod:`kvs_peer.reconnect`): network failures
        back off for ever unless ``first_connect_attempts`` is set.

        Raises:
            HandshakeRejected, ChannelNotFound, AccessDenied, SignerError: a rejection that
                needs a person came back after refreshing what it pointed at.
            SignalingError, ChannelError: ``first_connect_attempts`` ran out.
            InvalidArgument: the URL provider returned something unusable.
            InvalidState: called twice, or close() was called meanwhile.
        """
        if self._started or self._closing:
            raise InvalidState("connect() may be called once, before close()")
        self._started = True
        conn = await self._connect_loop(Refresh.URL, first=True)
        if conn is None:
            raise InvalidState("the signaling client was closed while connecting")
        await self._install(conn, reconnect=False)
        self._runner = asyncio.create_task(self._run(), name=f"kvs-signaling-{self.role}")

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._stop.set()
        await cancel_and_wait(self._runner)
        conn, self._current = self._current, None
        self._connected.clear()
        if conn is not None:
            await self._retire(conn)
        await self._retiring.wait()
        self._events.put_nowait(_CLOSED)

    # -- events ------------------------------------------------------------------------------

    def on_event(self, callback: Callable[[SignalingEvent], Any]) -> None:
        """Also deliver every event to ``callback`` (sync or async), in order."""
        self._callbacks.append(callback)

    def __aiter__(self) -> AsyncIterator[SignalingEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SignalingEvent]:
        while True:
            item = await self._events.get()
            if item is _CLOSED:
                self._events.put_nowait(_CLOSED)  # every iterator sees the end
                if self._terminal is not None:
                    raise self._terminal
                return
            yield item

    async def _emit(self, event: SignalingEvent) -> None:
        self._events.put_nowait(event)
        for callback in self._callbacks:
            await invoke(callback, event, what=f"signaling event ({type(event).__name__})")

    def forget(self, sender_client_id: str | None) -> None:
        """Forget a remote peer: its next candidates wait for its next SDP again."""
        self._candidates.forget(sender_client_id)

    # -- probes ------------------------------------------------------------------------------

    def expect_probe(self) -> tuple[str, asyncio.Future[None]]:
        """Register a probe: returns its nonce and a future set when it reaches this client.

        A master checks that the service still routes the channel's messages to it (KVS
        routes them to the newest master, docs/protocol.md#takeover) by having a probe viewer
        :meth:`send_probe` this nonce. Cancel the future when giving up on it.
        """
        nonce = secrets.token_hex(8)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = future
        future.add_done_callback(lambda _: self._probes.pop(nonce, None))
        return nonce, future

    async def send_probe(self, nonce: str) -> None:
        """Send a probe (see :meth:`expect_probe`) to the channel's master; VIEWER only.

        It is an ICE_CANDIDATE with an empty candidate and a made-up mid: masters that are
        not kvs-peer hold it until an SDP from the probe's client id arrives, which never
        happens, so it never reaches their peer connections.
        """
        if self.role is not Role.VIEWER:
            raise InvalidArgument("only a VIEWER can send a probe to the master")
        payload = candidate_payload("", PROBE_MID, 0, nonce)
        await self._send(Action.ICE_CANDIDATE, payload, None, None)

    def _take_probe(self, event: Event) -> bool:
        if not isinstance(event, IceCandidate) or event.sdp_mid != PROBE_MID:
            return False
        future = self._probes.get(event.username_fragment or "")
        if future is not None and not future.done():
            future.set_result(None)
        else:
            logger.debug("< probe from %s that is not ours", event.sender_client_id)
        return True

    # -- sending -----------------------------------------------------------------------------

    async def send_offer(
        self, sdp: str, *, recipient_client_id: str | None = None, correlation_id: str | None = None
    ) -> None:
        """Send an SDP offer (a viewer to the master, or the master to ``recipient_client_id``)."""
        await self._send(
            Action.SDP_OFFER, sdp_payload("offer", sdp), recipient_client_id, correlation_id
        )

    async def send_answer(
        self, sdp: str, *, recipient_client_id: str | None = None, correlation_id: str | None = None
    ) -> None:
        """Send an SDP answer."""
        await self._send(
            Action.SDP_ANSWER, sdp_payload("answer", sdp), recipient_client_id, correlation_id
        )

    async def send_ice_candidate(
        self,
        candidate: str,
        *,
        sdp_mid: str | None,
        sdp_mline_index: int | None,
        username_fragment: str | None = None,
        recipient_client_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Send one trickled ICE candidate (``candidate:...`` line as browsers write it)."""
        payload = candidate_payload(candidate, sdp_mid, sdp_mline_index, username_fragment)
        await self._send(Action.ICE_CANDIDATE, payload, recipient_client_id, correlation_id)

    async def send_storage_answer(self, sdp: str, *, correlation_id: str) -> None:
        """Answer the storage session's offer (WebRTC ingestion); MASTER only.

        The storage session's messages carry no ``senderClientId`` and the master answers it
        with no ``recipientClientId`` (docs/protocol.md#storage-sessions), which :meth:`send_answer`
        refuses on purpose: a master's message to nobody is a bug anywhere else. The
        ``correlation_id`` makes the storage session report a rejected answer (codecs) with a
        STATUS_RESPONSE instead of dropping it silently.
        """
        if self.role is not Role.MASTER:
            raise InvalidArgument("only a MASTER answers the storage session")
        await self._send(
            Action.SDP_ANSWER, sdp_payload("answer", sdp), None, correlation_id, storage=True
        )

    async def _send(
        self,
        action: Action,
        payload: dict[str, Any],
        recipient: str | None,
        correlation_id: str | None,
        *,
        storage: bool = False,
    ) -> None:
        if self.role is Role.MASTER and recipient is None and not storage:
            raise InvalidArgument(
                "a MASTER must address every message with recipient_client_id (the viewer's id)"
            )
        if self.role is Role.VIEWER and recipient is not None:
            raise InvalidArgument("a VIEWER cannot address messages: they always go to the master")
        text = encode_message(action, payload, recipient, correlation_id)
        if self._closing:
            raise InvalidState("the signaling client is closed")
        try:
            await asyncio.wait_for(self._connected.wait(), self._send_timeout)
        except TimeoutError:
            raise SignalingError(
                f"not connected to signaling after {self._send_timeout:g} s; "
                f"last error: {self.stats.last_error or 'none'}"
            ) from None
        conn = self._current
        assert conn is not None
        if self._pace:
            bucket = conn.ice_bucket if action is Action.ICE_CANDIDATE else conn.sdp_bucket
            wait = bucket.take(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            await conn.ws.send(text)
        except websockets.ConnectionClosed as exc:
            raise SignalingError(
                f"signaling connection closed while sending {action}; it will reconnect, "
                "send again after the next Connected event"
            ) from exc
        self.stats.messages_sent += 1
        logger.debug("> %s to %s", action, recipient or "master")

    # -- connection management ---------------------------------------------------------------

    async def _open(self) -> _Connection:
        started = time.monotonic()
        url = await self._provider()
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            # Never echo the URL itself: it carries the signature and the session token.
            raise InvalidArgument(
                f"the URL provider returned {redact_url(url)!r}, which is not a ws:// or "
                "wss:// URL; check the endpoint or the signer"
            )
        try:
            # Connect to the host spelled as presign_url signs it and the Host header carries
            # it: no default port (a signer may have been handed "wss://host:443").
            url = normalize_endpoint(url)
        except InvalidArgument as exc:
            # InvalidArgument: a configuration error ends the run at once (reconnect policy).
            raise InvalidArgument(f"invalid signaling URL {redact_url(url)!r}: {exc}") from None
        kwargs: dict[str, Any] = {}
        if parts.scheme == "wss":
            if self._ssl is None:
                self._ssl = _aws_ca_bundle_context()  # once: a reconnect reuses it
            tls = self._ssl
            if tls is not None:
                kwargs["ssl"] = tls
        try:
            ws = await ws_connect(
                url,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=2,
                max_size=1 << 20,
                **kwargs,
            )
        except websockets.InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            raise HandshakeRejected(exc.response.status_code, body) from None
        except websockets.InvalidURI:
            raise InvalidArgument(
                f"invalid signaling URL {redact_url(url)!r}; check the endpoint or the signer"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise SignalingError(
                f"could not open the signaling connection: {connect_failure(exc, parts.netloc)}"
            ) from exc
        except websockets.InvalidHandshake as exc:
            raise SignalingError(
                f"could not open the signaling connection to {parts.hostname}: {exc}"
            ) from exc
        self.stats.connect_latency = time.monotonic() - started
        return _Connection(ws, time.monotonic())

    def _refresh(self, refresh: Refresh) -> None:
        invalidate = getattr(self._provider, "invalidate", None)
        if invalidate is not None and refresh is not Refresh.URL:
            invalidate(refresh)

    def _note_failure(self, exc: BaseException, decision: Decision, *, final: bool) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = str(exc)
        if self.stats.retrying_since is None:
            self.stats.retrying_since = time.time()
        attempts = self._policy.attempts
        if final:
            logger.error(
                "signaling (%s) gives up after %d attempts: %s (%s)",
                self.role,
                attempts,
                exc,
                decision.hint,
            )
        elif attempts <= 3 or attempts % 10 == 0:
            # A device waiting for its network for hours must not fill the log.
            logger.warning(
                "signaling connect failed (%s, attempt %d, %s): %s; retrying in %.1f s",
                self.role,
                attempts,
                decision.failure.value,
                exc,
                decision.delay,
            )
        else:
            logger.info("signaling connect failed (%s, attempt %d): %s", self.role, attempts, exc)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if close() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _connect_loop(self, refresh: Refresh, *, first: bool = False) -> _Connection | None:
        """Open a connection as the policy says; None when close() was called meanwhile.

        Raises:
            The exception of the failure that ends the run (policy), or of the last attempt
            when ``first_connect_attempts`` ran out on the first connect.
        """
        self._refresh(refresh)
        while not self._closing:
            try:
                conn = await self._open()
            except Exception as exc:  # every failure goes through the policy
                decision = self._policy.failed(exc)
                out_of_attempts = (
                    first
                    and self._first_attempts is not None
                    and self._policy.attempts >= self._first_attempts
                )
                final = not decision.retry or out_of_attempts
                self._note_failure(exc, decision, final=final)
                if final:
                    raise
                self._refresh(decision.refresh)
                await self._pause(decision.delay)
                continue
            self._policy.succeeded(stable=False)
            self.stats.retrying_since = None
            return conn
        return None

    async def _install(self, conn: _Connection, *, reconnect: bool) -> None:
        self._current = conn
        conn.reader = asyncio.create_task(self._read(conn), name="kvs-signaling-reader")
        self.stats.connects += 1
        if reconnect:
            self.stats.reconnects += 1
        self.stats.connected_at = time.time()
        self._connected.set()
        await self._emit(Connected(reconnect=reconnect))
        logger.info("signaling connected as %s%s", self.role, " (reconnect)" if reconnect else "")

    async def _retire(self, conn: _Connection) -> None:
        """Close an old connection after its replacement is live; let its reader drain."""
        with contextlib.suppress(Exception):
            await conn.ws.close(1000, "replaced")
        if conn.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(conn.reader, 3)

    async def _read(self, conn: _Connection) -> None:
        try:
            async for text in conn.ws:
                self.stats.messages_received += 1
                event = decode_message(text)
                if event is None:
                    self.stats.ignored_frames += 1
                    logger.debug("< ignored frame (%d bytes)", len(text))
                    continue
                logger.debug(
                    "< %s from %s",
                    type(event).__name__,
                    getattr(event, "sender_client_id", None) or "master",
                )
                if isinstance(event, GoAway):
                    self.stats.go_aways += 1
                    conn.go_away.set()
                if self._take_probe(event):
                    continue
                for ready in self._candidates.receive(event):
                    await self._emit(ready)
        except websockets.ConnectionClosed:
            pass

    async def _run(self) -> None:
        """Keep a connection open until close(); reconnect per :mod:`kvs_peer.reconnect`."""
        try:
            while not self._closing:
                conn = self._current
                assert conn is not None and conn.reader is not None
                why = await self._wait_for_end(conn)
                if why == "replace":
                    # GO_AWAY or connection cap: make before break.
                    new = await self._connect_loop(
                        Refresh.ENDPOINT if conn.go_away.is_set() else Refresh.URL
                    )
                    if new is None:
                        return
                    await self._install(new, reconnect=True)
                    self._retiring.spawn(self._retire(conn), "kvs-signaling-retire")
                    continue
                # The socket closed under us.
                self._connected.clear()
                code = conn.ws.close_code
                reason = conn.ws.close_reason or ""
                will = self._reconnect and not self._closing
                logger.info(
                    "signaling closed (code %s %s)%s",
                    code,
                    reason,
                    ", reconnecting" if will else "",
                )
                await self._emit(Disconnected(code, reason, will))
                if not will:
                    self._end(
                        SignalingClosed(
                            f"signaling connection closed (code {code} {reason})".strip(),
                            code=code,
                            reason=reason,
                        )
                    )
                    return
                if time.monotonic() - conn.opened_at >= STABLE_AFTER:
                    self._policy.succeeded()
                else:
                    # Accepted and dropped at once: back off as after a failure.
                    await self._pause(self._policy.failed(None).delay)
                new = await self._connect_loop(Refresh.URL)
                if new is None:
                    return
                await self._install(new, reconnect=True)
        except asyncio.CancelledError:
            raise
        except KvsPeerError as exc:  # the policy ended the run: a person must act
            self._end(exc)
        except Exception as exc:  # a bug: make it visible rather than hang the iterator
            logger.exception("signaling client failed")
            self._end(SignalingError(f"signaling client failed: {exc}"))

    def _end(self, error: BaseException) -> None:
        """Stop for good: iterators (and so the peer's ``wait_closed()``) raise ``error``."""
        self._terminal = error
        self._closing = True
        self._stop.set()
        self._connected.clear()
        self._events.put_nowait(_CLOSED)

    async def _wait_for_end(self, conn: _Connection) -> str:
        assert conn.reader is not None
        rotate_in = (
            rotate_at(conn.opened_at, max_duration=self._max_duration, margin=self._rotate_margin)
            - time.monotonic()
        )
        go_away = asyncio.ensure_future(conn.go_away.wait())
        try:
            done, _ = await asyncio.wait(
                {conn.reader, go_away},
                timeout=max(rotate_in, 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            go_away.cancel()
        if conn.reader in done:
            return "closed"
        if self._reconnect:
            return "replace"
        await conn.reader
        return "closed"


def _aws_ca_bundle_context() -> ssl_module.SSLContext | None:
    """A TLS context trusting ``AWS_CA_BUNDLE``, the AWS SDKs' variable for a private CA."""
    path = os.environ.get("AWS_CA_BUNDLE")
    if not path:
        return None
    try:
        return ssl_module.create_default_context(cafile=path)
    except (OSError, ssl_module.SSLError) as exc:
        raise InvalidArgument(
            f"AWS_CA_BUNDLE={path!r} is not a readable CA certificate file ({exc}); fix the "
            "path or unset it"
        ) from exc
