"""Pure routing core of the local KVS emulator: who is connected and where messages go.

The :class:`Router` owns every signaling connection of every channel. The server shell feeds it
inputs (:meth:`~Router.connect`, :meth:`~Router.receive`, :meth:`~Router.disconnect`,
:meth:`~Router.tick`, injections) with an explicit ``now`` (monotonic seconds) and carries out
the actions it returns (:class:`Deliver` a text frame, :class:`Close` a socket). No asyncio, no
sockets, no clock: every rule is testable with plain function calls.

Rules (docs/protocol.md sections #routing, #limits, #connection-lifetime; ``#x`` below
means a section of that page):

- one master per channel, the newest connection wins; up to ``max_viewers`` viewers, and a
  viewer reconnecting with a client id already in use replaces the older connection;
- a viewer's message goes to the master with ``senderClientId`` stamped; the master's message
  goes to ``recipientClientId`` (required) without ``senderClientId``;
- output frames are compact sorted-key JSON (:func:`kvs_peer.protocol.encode_event`);
- a failure is reported (STATUS_RESPONSE) only when the client sent a ``correlationId``;
- a message for a recipient that is not connected waits in a per-recipient queue for the
  channel's MessageTtlSeconds; a newer undelivered offer (answer) replaces an older one.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..protocol import ClientMessage, MessageType, Role, decode_client_message
from ..protocol import encode_event as _encode_event
from ..rules import (
    CONNECT_RATE,
    GO_AWAY_GRACE,
    GOING_AWAY,
    ICE_RATE,
    ID_RE,
    IDLE_TIMEOUT,
    MAX_CONNECTION_DURATION,
    MAX_PAYLOAD_CHARS,
    MAX_STATUS_DESCRIPTION,
    MAX_VIEWERS,
    MESSAGE_TTL,
    SDP_RATE,
)

__all__ = [
    "Accepted",
    "Action",
    "Close",
    "Deliver",
    "Presence",
    "Rejected",
    "Role",
    "Router",
    "RouterConfig",
    "Takeover",
]

logger = logging.getLogger(__name__)

_MASTER_KEY = None  # queue key of the master; viewers are keyed by client id


class Takeover(enum.StrEnum):
    """What happens to a connection replaced by a newer one with the same identity.

    The docs only say the newer connection "takes precedence" and the metadata is overwritten
    (docs/protocol.md#takeover); they do not say the old socket is closed. ``SILENT`` (the default)
    models that: the old socket stays open but receives nothing and its messages are dropped.
    Public reports agree as far as they go: a second C SDK master gets no error (webrtc-sdk-c
    #1151), and masters that stay connected yet receive no offers until restarted are
    reported (webrtc-sdk-c #1304, #493, webrtc-sdk-js #195). [inferred] That the old
    socket's own sends are dropped too is our reading of "metadata overwritten": nothing
    public says either way. kvs-peer masters notice a silent takeover with a probe viewer
    (:mod:`kvs_peer.takeover`), which works against both the emulator and KVS.
    """

    SILENT = "silent"
    CLOSE_NORMAL = "close-1000"
    CLOSE_GOING_AWAY = "close-1001"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``text`` as one WebSocket text frame on connection ``conn_id``."""

    conn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection ``conn_id`` with a WebSocket close code, after what was queued before."""

    conn_id: int
    code: int
    reason: str


Action = Deliver | Close


@dataclass(frozen=True, slots=True)
class Accepted:
    """A connect was accepted: upgrade the socket, then run ``actions`` (queued messages...)."""

    conn_id: int
    role: Role
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A connect was refused: answer the upgrade with this HTTP status (no 101)."""

    status: int
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is connected to a channel right now."""

    master: bool
    viewers: tuple[str, ...]
    """Client ids of the connected viewers, oldest connection first."""


@dataclass(frozen=True)
class RouterConfig:
    """Limits and policies of the router. Times are in seconds; ``None`` disables a limit."""

    max_viewers: int = MAX_VIEWERS
    payload_limit: int = MAX_PAYLOAD_CHARS
    """Maximum ``messagePayload`` length in base64 characters."""
    idle_timeout: float | None = IDLE_TIMEOUT
    """Close (1001) a connection that sent nothing (not even a ping) for this long."""
    max_connection_duration: float | None = MAX_CONNECTION_DURATION
    """Close (1001 "Going away") every connection this long after it connected."""
    go_away_grace: float | None = GO_AWAY_GRACE
    """Close (1001) a connection this long after it was sent GO_AWAY."""
    rate_limits: bool = False
    """Enforce the real quotas (SDP_RATE, ICE_RATE per connection, CONNECT_RATE per channel)."""
    takeover: Takeover = Takeover.SILENT
    max_queued: int = 100
    """Per-recipient cap of undelivered messages (oldest dropped) so a sender cannot grow memory
    without limit."""
    default_message_ttl: float = MESSAGE_TTL


@dataclass
class _Conn:
    conn_id: int
    channel: str
    role: Role
    client_id: str | None
    connected_at: float
    last_active: float
    current: bool = True  # False once replaced by a newer connection (Takeover.SILENT)
    closing: bool = False  # a Close was issued; the shell will report the disconnect
    go_away_deadline: float | None = None
    sdp_times: deque[float] = field(default_factory=deque)
    ice_times: deque[float] = field(default_factory=deque)

    @property
    def label(self) -> str:
        return "master" if self.role is Role.MASTER else f"viewer {self.client_id}"


@dataclass
class _Queued:
    expires_at: float
    message_type: MessageType
    sender: str | None
    text: str


@dataclass
class _Channel:
    master: int | None = None
    viewers: dict[str, int] = field(default_factory=dict)
    queues: dict[str | None, list[_Queued]] = field(default_factory=dict)
    connect_times: deque[float] = field(default_factory=deque)
    forced: deque[int] = field(default_factory=deque)


_FORCED_ERRORS = {
    400: ("ClientLimitExceededException", "forced handshake failure (emulator test hook)"),
    403: ("AccessDeniedException", "forced handshake failure (emulator test hook)"),
    404: ("ResourceNotFoundException", "The requested channel is not found or not active."),
}


def _within_rate(times: deque[float], limit: int, now: float) -> bool:
    while times and times[0] <= now - 1.0:
        times.popleft()
    if len(times) >= limit:
        return False
    times.append(now)
    return True


def _correlation_id(data: str | bytes) -> str | None:
    """The correlation id of a frame that failed, if one can be read from it."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == "correlationid":
            if isinstance(value, str) and ID_RE.fullmatch(value):
                return value
    return None


class Router:
    """Connections, queues and routing decisions for every signaling channel.

    Args:
        config: limits and policies.
        message_ttl: returns a channel's MessageTtlSeconds, or None when the channel does not
            exist (the control-plane registry answers this).

    Every method that takes ``now`` expects the same monotonic clock. Methods never raise on
    network input; they return actions for the shell to carry out in order.
    """

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        message_ttl: Callable[[str], float | None],
    ) -> None:
        self.config = config or RouterConfig()
        self._message_ttl = message_ttl
        self._ids = itertools.count(1)
        self._conns: dict[int, _Conn] = {}
        self._channels: dict[str, _Channel] = {}
        self.storage_sink: Callable[[str, ClientMessage], bool] | None = None
        """``sink(channel, message)`` takes a master's message sent without a recipient when
        the channel's storage session is running (WebRTC ingestion: the master answers the
        storage session with no ``recipientClientId``, docs/protocol.md#storage-sessions) and
        returns True; False leaves the message to the usual rule (recipient required)."""
        self.storage_viewer_sink: Callable[[str, str, ClientMessage], bool] | None = None
        """``sink(channel, client_id, message)`` takes a viewer's message when the viewer
        has joined the channel's storage session (JoinStorageSessionAsViewer) and returns
        True; False sends it to the master as usual."""

    # -- connections ---------------------------------------------------------------------------

    def connect(self, channel: str, client_id: str | None, *, now: float) -> Accepted | Rejected:
        """Admit a new connection (a viewer when ``client_id`` is given, else the master).

        The caller has already verified the signature. Returns :class:`Rejected` for an
        unknown channel (404), a forced failure, throttling or a full channel (400).
        """
        ttl = self._message_ttl(channel)
        state = self._channels.get(channel)
        if state is not None and state.forced:
            status = state.forced.popleft()
            error_type, message = _FORCED_ERRORS.get(
                status, ("InternalFailure", "forced handshake failure (emulator test hook)")
            )
            return Rejected(status, error_type, message)
        if ttl is None:
            return Rejected(404, *_FORCED_ERRORS[404])
        if state is None:
            state = self._channels[channel] = _Channel()
        if self.config.rate_limits and not _within_rate(state.connect_times, CONNECT_RATE, now):
            return Rejected(
                400,
                "ClientLimitExceededException",
                f"more than {CONNECT_RATE} connects per second on this channel; retry with backoff",
            )
        role = Role.VIEWER if client_id is not None else Role.MASTER
        if (
            role is Role.VIEWER
            and client_id not in state.viewers
            and len(state.viewers) >= self.config.max_viewers
        ):
            return Rejected(
                400,
                "ClientLimitExceededException",
                f"the channel already has {self.config.max_viewers} viewers connected",
            )
        conn = _Conn(next(self._ids), channel, role, client_id, now, now)
        self._conns[conn.conn_id] = conn
        actions: list[Action] = []
        old_id = state.master if role is Role.MASTER else state.viewers.get(client_id or "")
        if old_id is not None:
            actions.extend(self._supersede(old_id))
        if role is Role.MASTER:
            state.master = conn.conn_id
        else:
            state.viewers.pop(client_id or "", None)  # keep viewers in connection order
            state.viewers[client_id or ""] = conn.conn_id
        key = _MASTER_KEY if role is Role.MASTER else client_id
        for queued in state.queues.pop(key, []):
            if queued.expires_at > now:
                actions.append(Deliver(conn.conn_id, queued.text))
        logger.debug("connect %s on %s -> conn %d", conn.label, channel, conn.conn_id)
        return Accepted(conn.conn_id, role, tuple(actions))

    def _supersede(self, old_id: int) -> list[Action]:
        old = self._conns.get(old_id)
        if old is None:
            return []
        old.current = False
        logger.debug("conn %d (%s) replaced by a newer connection", old_id, old.label)
        if self.config.takeover is Takeover.SILENT:
            return []
        code = 1000 if self.config.takeover is Takeover.CLOSE_NORMAL else GOING_AWAY
        return self._close(old, code, "replaced by a newer connection")

    def _detach(self, conn: _Conn) -> None:
        state = self._channels.get(conn.channel)
        if state is None:
            return
        if state.master == conn.conn_id:
            state.master = None
        elif conn.client_id is not None and state.viewers.get(conn.client_id) == conn.conn_id:
            del state.viewers[conn.client_id]

    def _close(self, conn: _Conn, code: int, reason: str) -> list[Action]:
        if conn.closing:
            return []
        conn.closing = True
        conn.current = False
        self._detach(conn)
        return [Close(conn.conn_id, code, reason)]

    def disconnect(self, conn_id: int, *, now: float) -> list[Action]:
        """The socket of ``conn_id`` is gone (closed by either side). Frees its slot."""
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            self._detach(conn)
            logger.debug("disconnect conn %d (%s)", conn_id, conn.label)
        return []

    def activity(self, conn_id: int, *, now: float) -> None:
        """The client showed life without a message (a WebSocket ping): resets the idle timer.

        Pings evidently count as activity: C SDK masters stay connected
        (docs/protocol.md#connection-lifetime).
        """
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.last_active = now

    # -- messages ------------------------------------------------------------------------------

    def receive(self, conn_id: int, data: str | bytes, *, now: float) -> list[Action]:
        """Route one frame a client sent. Never raises, whatever ``data`` contains."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.closing:
            return []
        conn.last_active = now
        if not conn.current:
            # [inferred] the service routes by the newest connection's metadata; a replaced
            # socket's messages have nowhere to go.
            logger.debug("conn %d was replaced: frame dropped", conn_id)
            return []
        if isinstance(data, bytes):
            return self._fail(
                conn, data, "InvalidArgumentException", "binary frames are not supported"
            )
        message = decode_client_message(data)
        if isinstance(message, str):
            return self._fail(conn, data, "InvalidArgumentException", message)
        return self._route(conn, message, data, now)

    def _route(self, conn: _Conn, message: ClientMessage, data: str, now: float) -> list[Action]:
        message_type = MessageType(message.action.value)
        if self.config.rate_limits:
            is_ice = message_type is MessageType.ICE_CANDIDATE
            times, limit = (conn.ice_times, ICE_RATE) if is_ice else (conn.sdp_times, SDP_RATE)
            if not _within_rate(times, limit, now):
                return self._fail(
                    conn,
                    data,
                    "ClientLimitExceededException",
                    f"more than {limit} {message_type} messages per second on this connection",
                )
        if len(message.message_payload) > self.config.payload_limit:
            return self._fail(
                conn,
                data,
                "InvalidArgumentException",
                f"messagePayload is {len(message.message_payload)} characters, over the "
                f"limit of {self.config.payload_limit}",
            )
        if conn.role is Role.MASTER:
            if message.recipient_client_id is None:
                if self.storage_sink is not None and self.storage_sink(conn.channel, message):
                    return []
                return self._fail(
                    conn,
                    data,
                    "InvalidArgumentException",
                    "recipientClientId is required when sending as master",
                )
            key: str | None = message.recipient_client_id
            sender = None
        else:
            # [inferred] a viewer in the storage session answers it, not the master: with
            # storage enabled "peers connect directly to the storage session"
            # (docs/protocol.md#storage-sessions); how KVS tells the two apart is not documented.
            if (
                self.storage_viewer_sink is not None
                and conn.client_id is not None
                and self.storage_viewer_sink(conn.channel, conn.client_id, message)
            ):
                return []
            # A viewer can only reach the master; its recipientClientId is ignored (#routing).
            key, sender = _MASTER_KEY, conn.client_id
        text = _encode_event(
            message_type, message_payload=message.message_payload, sender_client_id=sender
        )
        state = self._channels[conn.channel]
        target = state.master if key is _MASTER_KEY else state.viewers.get(key or "")
        logger.debug(
            "< %s from %s to %s%s",
            message_type,
            conn.label,
            "master" if key is _MASTER_KEY else f"viewer {key}",
            "" if target is not None else " (queued)",
        )
        if target is not None:
            return [Deliver(target, text)]
        ttl = self._message_ttl(conn.channel)
        expires_at = now + (ttl if ttl is not None else self.config.default_message_ttl)
        self._enqueue(state, key, _Queued(expires_at, message_type, sender, text))
        return []

    def _enqueue(self, state: _Channel, key: str | None, item: _Queued) -> None:
        queue = state.queues.setdefault(key, [])
        if item.message_type is not MessageType.ICE_CANDIDATE:
            # "an outstanding offer (answer) for the same client which is not yet delivered is
            # overwritten" (#routing). [inferred] "same client" = same sender and recipient, or two
            # viewers' queued offers to an absent master would erase each other.
            queue[:] = [
                q
                for q in queue
                if not (q.message_type is item.message_type and q.sender == item.sender)
            ]
        queue.append(item)
        del queue[: -self.config.max_queued]

    def _fail(
        self, conn: _Conn, data: str | bytes, error_type: str, description: str
    ) -> list[Action]:
        correlation = _correlation_id(data)
        logger.debug("conn %d (%s): %s: %s", conn.conn_id, conn.label, error_type, description)
        if correlation is None:
            return []  # failures are silent without a correlationId (#status_response)
        status = {
            "correlationId": correlation,
            "description": description[:MAX_STATUS_DESCRIPTION],
            "errorType": error_type,
            "statusCode": "400",
            "success": False,
        }
        return [Deliver(conn.conn_id, _encode_event("STATUS_RESPONSE", status_response=status))]

    # -- time ----------------------------------------------------------------------------------

    def tick(self, *, now: float) -> list[Action]:
        """Enforce deadlines: max duration, GO_AWAY grace, idle timeout; expire queues."""
        cfg = self.config
        actions: list[Action] = []
        for conn in list(self._conns.values()):
            if conn.closing:
                continue
            expired = (
                cfg.max_connection_duration is not None
                and now >= conn.connected_at + cfg.max_connection_duration
            )
            expired = expired or (
                conn.go_away_deadline is not None and now >= conn.go_away_deadline
            )
            idle = cfg.idle_timeout is not None and now >= conn.last_active + cfg.idle_timeout
            if expired or idle:
                # [obs] the service closes with 1001 "Going away" (c#1242); assumed for idle too.
                actions.extend(self._close(conn, GOING_AWAY, "Going away"))
        for state in self._channels.values():
            for key, queue in list(state.queues.items()):
                queue[:] = [q for q in queue if q.expires_at > now]
                if not queue:
                    del state.queues[key]
        return actions

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has something to do, or None."""
        cfg = self.config
        deadlines: list[float] = []
        for conn in self._conns.values():
            if conn.closing:
                continue
            if cfg.max_connection_duration is not None:
                deadlines.append(conn.connected_at + cfg.max_connection_duration)
            if conn.go_away_deadline is not None:
                deadlines.append(conn.go_away_deadline)
            if cfg.idle_timeout is not None:
                deadlines.append(conn.last_active + cfg.idle_timeout)
        for state in self._channels.values():
            deadlines.extend(q.expires_at for queue in state.queues.values() for q in queue)
        return min(deadlines, default=None)

    # -- test hooks ----------------------------------------------------------------------------

    def _targets(self, channel: str, client_id: str | None, master: bool) -> Iterable[int]:
        state = self._channels.get(channel)
        if state is None:
            return []
        if client_id is None and not master:
            everyone = [state.master, *state.viewers.values()]
            return [c for c in everyone if c is not None]
        targets = []
        if master and state.master is not None:
            targets.append(state.master)
        if client_id is not None and client_id in state.viewers:
            targets.append(state.viewers[client_id])
        return targets

    def inject(
        self,
        channel: str,
        text: str,
        *,
        client_id: str | None = None,
        master: bool = False,
    ) -> list[Action]:
        """Send ``text`` verbatim to the viewer ``client_id`` and/or the master, or to every
        connection on the channel when neither is given."""
        return [Deliver(c, text) for c in self._targets(channel, client_id, master)]

    def go_away(
        self,
        channel: str,
        *,
        client_id: str | None = None,
        master: bool = False,
        now: float,
    ) -> list[Action]:
        """Send GO_AWAY and close the connection(s) after ``go_away_grace`` (4.1: 1 minute)."""
        actions = self.inject(
            channel, _encode_event(MessageType.GO_AWAY), client_id=client_id, master=master
        )
        if self.config.go_away_grace is not None:
            for action in actions:
                conn = self._conns[action.conn_id]
                if conn.go_away_deadline is None:
                    conn.go_away_deadline = now + self.config.go_away_grace
        return actions

    def fail_next_connects(self, channel: str, status: int, count: int = 1) -> None:
        """Make the next ``count`` connects to ``channel`` fail with HTTP ``status``."""
        state = self._channels.setdefault(channel, _Channel())
        state.forced.extend([status] * count)

    def drop_channel(self, channel: str) -> list[Action]:
        """The channel was deleted: close its connections and forget its queues.

        [inferred] the docs say nothing about live connections of a deleted channel; closing
        them (1001) makes clients reconnect and see the 404.
        """
        state = self._channels.pop(channel, None)
        actions: list[Action] = []
        for conn in list(self._conns.values()):
            if conn.channel == channel:
                actions.extend(self._close(conn, GOING_AWAY, "Going away"))
        if state is not None:
            state.queues.clear()
        return actions

    def presence(self, channel: str) -> Presence:
        """Who is connected to ``channel`` (replaced or closing connections do not count)."""
        state = self._channels.get(channel)
        if state is None:
            return Presence(False, ())
        return Presence(state.master is not None, tuple(state.viewers))

    def describe(self, conn_id: int) -> str:
        """A short label for logs: ``master`` or ``viewer <id>``."""
        conn = self._conns.get(conn_id)
        return conn.label if conn is not None else "gone"
