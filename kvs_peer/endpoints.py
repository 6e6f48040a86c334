"""Where KVS lives in each AWS partition: control-plane and STUN URLs for a region.

A region alone does not name the host: China regions end in ``amazonaws.com.cn``, the
sovereign and isolated partitions have their own suffixes, dual-stack (IPv4 and IPv6)
endpoints use ``api.aws`` and FIPS endpoints a ``-fips`` service name. botocore already
carries all of that (its ``partitions`` data and the ``kinesisvideo`` endpoint rule set), so
the URLs come from botocore's :class:`~botocore.endpoint_provider.EndpointProvider`, as a
boto3 client would resolve them, without building a client (40-90 ms of CPU).

The switches are the standard ones, read through botocore so they mean what they mean for
every AWS SDK: ``AWS_USE_DUALSTACK_ENDPOINT`` / ``use_dualstack_endpoint`` and
``AWS_USE_FIPS_ENDPOINT`` / ``use_fips_endpoint`` (environment or ``~/.aws/config``).

The STUN host is ``stun.`` in front of the control-plane host, ``stuns:`` when FIPS is on.
That is what the JS SDK's examples do since 2.7 for the ``aws`` partition (``stun:`` on
``amazonaws.com`` or ``api.aws``, ``stuns:stun.kinesisvideo-fips...``); for the other
partitions it is our inference from the same rule, not documented by AWS (docs/protocol.md).
aiortc does not speak ``stuns:`` and skips such a server; browsers given the URL by the signer
can use it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgument

__all__ = ["ENDPOINT_URL_ENV", "EndpointMode", "control_plane_url", "stun_url"]

ENDPOINT_URL_ENV = "KVS_PEER_ENDPOINT_URL"
"""The environment variable every kvs-peer command reads for the control-plane endpoint when
nothing else sets one: how ``kvs-peer local`` points clients at itself."""

SERVICE = "kinesisvideo"
STUN_PORT = 443  # KVS's STUN servers listen on 443 (JS SDK README, "Get ICE server configuration")


@dataclass(frozen=True, slots=True)
class EndpointMode:
    """Which endpoint variant to use: FIPS, dual-stack, both or neither."""

    fips: bool = False
    dualstack: bool = False

    @classmethod
    def from_session(cls, session: Any) -> EndpointMode:
        """The variant a boto3/botocore session is configured for (environment or config file).

        Args:
            session: a ``boto3.Session`` or ``botocore.session.Session``.
        """
        core = getattr(session, "_session", session)  # boto3 keeps its botocore session there
        return cls(
            fips=_flag(core.get_config_variable("use_fips_endpoint")),
            dualstack=_flag(core.get_config_variable("use_dualstack_endpoint")),
        )


def _flag(value: object) -> bool:
    # botocore returns a bool from the environment but the raw string from a config file.
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


@functools.cache
def _provider() -> Any:
    import botocore.loaders
    from botocore.endpoint_provider import EndpointProvider

    loader = botocore.loaders.create_loader()
    return EndpointProvider(
        ruleset_data=loader.load_service_model(SERVICE, "endpoint-rule-set-1"),
        partition_data=loader.load_data("partitions"),
    )


@functools.cache
def control_plane_url(region: str, mode: EndpointMode = EndpointMode()) -> str:
    """The KVS control-plane URL of ``region`` (``https://kinesisvideo.<region>.<suffix>``).

    Raises:
        InvalidArgument: the region is malformed or its partition lacks the variant.
    """
    from botocore.exceptions import EndpointResolutionError, InvalidRegionError
    from botocore.utils import validate_region_name

    try:
        # The rule set would build a host from any string; boto3 clients check it first
        # (and let an empty one through).
        if not region:
            raise InvalidRegionError(region_name=region)
        validate_region_name(region)
    except InvalidRegionError as exc:
        raise InvalidArgument(
            f"{region!r} is not an AWS region name (like eu-west-1); check --region or AWS_REGION"
        ) from exc
    try:
        endpoint = _provider().resolve_endpoint(
            Region=region, UseFIPS=mode.fips, UseDualStack=mode.dualstack
        )
    except EndpointResolutionError as exc:
        raise InvalidArgument(
            f"no KVS endpoint for region {region!r} with {_describe(mode)}: {exc}; check the "
            "region, or turn off AWS_USE_FIPS_ENDPOINT / AWS_USE_DUALSTACK_ENDPOINT"
        ) from exc
    return str(endpoint.url)


def stun_url(region: str, mode: EndpointMode = EndpointMode()) -> str:
    """The KVS STUN server of ``region``; GetIceServerConfig does not return it."""
    host = urlsplit(control_plane_url(region, mode)).hostname
    return f"{'stuns' if mode.fips else 'stun'}:stun.{host}:{STUN_PORT}"


def _describe(mode: EndpointMode) -> str:
    variants = [name for name, on in (("FIPS", mode.fips), ("dual-stack", mode.dualstack)) if on]
    return " and ".join(variants) + " endpoints" if variants else "standard endpoints"
