"""The client address of a request, believing X-Forwarded-For only from trusted proxies. Pure.

Behind a reverse proxy every request comes from the proxy, so per-address limits need the
address the proxy saw. ``X-Forwarded-For`` is written by the client too, so it is read only
when the direct peer is a configured proxy, and then from the right: each trusted hop is
skipped and the first address not in ``trusted`` is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from .config import IpNetwork

__all__ = ["client_address"]


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[v6]:port"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[IpNetwork]
) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in nets)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[IpNetwork]
) -> str:
    """The address to rate-limit and log a request under.

    Args:
        peer: the TCP peer address (``request.remote``).
        forwarded_for: every ``X-Forwarded-For`` header value, in order.
        trusted: proxy networks whose ``X-Forwarded-For`` is believed; empty ignores it.

    Returns:
        The client's address as text (``"unknown"`` when the peer address is unknown).
    """
    if not peer:
        return "unknown"
    current = _parse(peer)
    if current is None or not trusted or not _trusted(current, trusted):
        return peer
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            # A garbled entry: nothing left of it can be believed, so stop at the last good hop.
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)
