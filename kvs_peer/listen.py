"""What to tell a user whose listening address cannot be bound."""

from __future__ import annotations

import errno
import os

__all__ = ["bind_failure"]


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
