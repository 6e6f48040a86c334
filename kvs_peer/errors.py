"""Every exception kvs-peer raises on purpose.

::

    KvsPeerError
    ├── InvalidArgument(ValueError)     bad endpoint, client id, channel name, payload > 10K
    ├── InvalidState(RuntimeError)      send before connect, use after close
    ├── WaitTimeout(TimeoutError)       a wait (first frame, connection, viewers) ran out of time
    ├── SignatureError                  presigned URL refused (expired, skew, mismatch, scope, ...)
    ├── ChannelError                    control plane; botocore errors are translated once
    │   ├── ChannelNotFound
    │   ├── AccessDenied
    │   └── Throttled
    ├── SignalingError
    │   ├── HandshakeRejected           HTTP 400/403/404 on the WebSocket upgrade
    │   ├── SignalingClosed             the signaling socket closed for good
    │   └── ServiceError                a STATUS_RESPONSE from the service
    ├── SessionError                    negotiation or ICE failed for one remote peer
    ├── MediaError                      a source cannot open, a recorder failed
    │   └── SourceUnavailable           a camera or stream URL cannot be reached (yet)
    ├── SignerError                     the signer service refused or failed a request
    └── TurnServerError                 the local TURN server (coturn) is missing or did not start

Messages say what to do next. Structured fields stay on the exception so callers never
parse text.
"""

from __future__ import annotations


class KvsPeerError(Exception):
    """Root of every kvs-peer exception."""


class InvalidArgument(KvsPeerError, ValueError):
    """A caller passed a value kvs-peer cannot use."""


class InvalidState(KvsPeerError, RuntimeError):
    """An operation was called at the wrong point of an object's lifecycle."""


class WaitTimeout(KvsPeerError, TimeoutError):
    """A wait for something the remote side must do (send video, connect, join) ran out of
    time. A :class:`TimeoutError` too, so ``except TimeoutError`` still catches it."""


class SignatureError(KvsPeerError):
    """A presigned URL (or signed request) does not verify.

    Attributes:
        reason: one of ``malformed``, ``unknown-key``, ``scope``, ``expired``, ``skew``,
            ``mismatch``, ``unsupported``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ChannelError(KvsPeerError):
    """A control-plane call about a signaling channel failed."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ChannelNotFound(ChannelError):
    """The channel does not exist (or is being deleted)."""

    def __init__(self, channel: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"signaling channel {channel!r} not found: check the name and region, or have it "
            "created (create=True in Python, --create-channel on the command line)",
            code="ResourceNotFoundException",
        )
        self.channel = channel


class AccessDenied(ChannelError):
    """The credentials are not allowed to do this (IAM), or are invalid."""


class Throttled(ChannelError):
    """The service throttled the call or a limit was reached (HTTP 400 ClientLimitExceeded)."""


class SignalingError(KvsPeerError):
    """The signaling WebSocket failed."""


class HandshakeRejected(SignalingError):
    """The signaling service refused the WebSocket upgrade.

    Attributes:
        status: HTTP status of the refusal (400, 403, 404, ...).
        body: response body text, if any (never contains secrets).
    """

    def __init__(self, status: int, body: str = "") -> None:
        self.status = status
        self.body = body
        super().__init__(self._explain())

    def _explain(self) -> str:
        from .rules import CLOCK_SKEW, CONNECT_RATE  # rules.py imports this module

        detail = f": {self.body.strip()[:300]}" if self.body.strip() else ""
        if self.status == 403:
            hint = (
                "the signed URL was refused (bad or expired signature, clock skew of more than "
                f"{CLOCK_SKEW / 60:g} minutes, or missing IAM permission kinesisvideo:ConnectAs*); "
                "check the machine clock and the credentials"
            )
        elif self.status == 404:
            hint = "the channel does not exist any more; re-create it or check its name"
        elif self.status == 400:
            hint = (
                "the service refused the connection (too many viewers on the channel, "
                f"more than {CONNECT_RATE} connects per second, or malformed parameters)"
            )
        else:
            hint = "unexpected HTTP status from the signaling endpoint"
        return f"signaling handshake refused with HTTP {self.status}: {hint}{detail}"


class SignalingClosed(SignalingError):
    """The signaling connection is closed and will not reconnect."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ServiceError(SignalingError):
    """The service reported a failure for a message sent with a correlation id."""

    def __init__(
        self,
        *,
        correlation_id: str,
        error_type: str | None,
        status_code: str | None,
        description: str | None,
    ) -> None:
        self.correlation_id = correlation_id
        self.error_type = error_type
        self.status_code = status_code
        self.description = description
        super().__init__(
            f"signaling service rejected message {correlation_id!r}: "
            f"{error_type or 'error'} ({status_code or '?'}) {description or ''}".rstrip()
        )


class SessionError(KvsPeerError):
    """A WebRTC session with one remote peer failed."""

    def __init__(self, client_id: str | None, message: str) -> None:
        super().__init__(message)
        self.client_id = client_id


class MediaError(KvsPeerError):
    """A media source, encoder or sink failed."""


class SourceUnavailable(MediaError):
    """A live source (camera, stream URL) cannot be reached now but may come later: refused,
    timed out, not found on a streaming server. Not a wrong path, scheme or password."""


class SignerError(KvsPeerError):
    """The signer service refused a request or could not be reached.

    Attributes:
        status: HTTP status returned by the service (0 when it could not be reached).
        code: machine-readable error code from the JSON body, when there is one.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TurnServerError(KvsPeerError):
    """The emulator's TURN server (Debian's coturn, ``turnserver``) is missing or did not start."""
