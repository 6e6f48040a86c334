"""What to tell a user whose socket cannot listen or connect: in words, with what to change."""

from __future__ import annotations

import errno
import os
import re

__all__ = ["bind_failure", "connect_failure"]


def bind_failure(
    exc: OSError,
    host: str,
    port: int,
    *,
    host_option: str = "--host",
    port_option: str = "--port",
) -> str:
    """One line saying why ``host:port`` could not be bound and what to change.

    Args:
        exc: the error of ``bind`` (asyncio rewords its text, so only ``errno`` is trusted).
        host: the address asked for.
        port: the port asked for.
        host_option: the option that sets ``host``, named in the advice.
        port_option: the option that sets ``port``.
    """
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; give {host_option} one of "
            "its addresses, 127.0.0.1, or 0.0.0.0 for all of them"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use; pick another {port_option} (0 picks a free one)"
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need privileges); pick another "
            f"{port_option} (0 picks a free one)"
        )
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{where}: {reason}; check {host_option} and {port_option}"


def connect_failure(exc: BaseException, where: str | None = None) -> str:
    """Why a connection (an HTTP request, a WebSocket) failed, in words a person can act on.

    aiohttp's connect errors read ``Cannot connect to host H:P ssl:<ssl.SSLContext object at
    0x...> [Connect call failed ('H', P)]``: the repr of their ``ssl`` argument and asyncio's
    wording, which says "Connect call failed" whatever the cause. The error number says it
    plainly, and aiohttp's ``host`` and ``port`` where.

    Args:
        exc: what the connect raised: aiohttp's error (with ``os_error``), an ``OSError``
            (websockets raises asyncio's own), or a timeout.
        where: ``host:port`` when ``exc`` does not carry it.
    """
    host = getattr(exc, "host", None)
    if host is not None:
        where = f"{host}:{getattr(exc, 'port', None)}"
    error = getattr(exc, "os_error", exc)
    if isinstance(error, TimeoutError):
        return f"no answer from {where} in time" if where else "no answer in time"
    if isinstance(error, OSError):
        # One address: its errno; several (IPv6 and IPv4): asyncio's "Multiple exceptions"
        # text, refused only if every one was.
        numbers = [error.errno] if error.errno else _ERRNOS.findall(str(error))
        if numbers and all(int(n) == errno.ECONNREFUSED for n in numbers):
            target = f" to {where}" if where else ""
            return f"connection{target} refused (nothing listens there)"
        reason = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
        return f"cannot connect to {where} ({reason})" if where else f"cannot connect ({reason})"
    return str(exc) or type(exc).__name__


_ERRNOS = re.compile(r"\[Errno (\d+)\]")
