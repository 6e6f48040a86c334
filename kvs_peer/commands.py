"""Subcommands of the ``kvs-peer`` CLI: argument setup and a coroutine each.

``COMMANDS`` maps a name to ``(help, configure(parser), handler(args) -> exit code)``.
Heavy modules (aiortc, PyAV) are imported inside handlers so ``kvs-peer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .cli import add_connection_options

Configure = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# -- url -------------------------------------------------------------------------------------


def _configure_url(p: argparse.ArgumentParser) -> None:
    add_connection_options(p, signer=False)
    p.add_argument("--role", default="VIEWER", help="MASTER or VIEWER (default VIEWER)")
    p.add_argument("--client-id", help="viewer client id (required for VIEWER)")
    p.add_argument(
        "--expires", type=int, default=299, help="validity in seconds (default 299, as the JS SDK)"
    )
    p.add_argument("--json", action="store_true", help="print JSON with the ICE servers too")


async def _url(args: argparse.Namespace) -> int:
    from .channel import ChannelResolver
    from .errors import InvalidArgument
    from .protocol import Role

    role = Role.parse(args.role)
    if role is Role.VIEWER and not args.client_id:
        raise InvalidArgument("--client-id is required with --role VIEWER")
    if role is Role.MASTER and args.client_id:
        raise InvalidArgument("a MASTER has no client id: drop --client-id")
    async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as resolver:
        resolved = await resolver.resolve(
            args.channel, role, client_id=args.client_id, create=args.create_channel
        )
        url = resolver.sign(resolved, client_id=args.client_id, expires=args.expires)
    if args.json:
        print(
            json.dumps(
                {
                    "url": url,
                    "role": role.value,
                    "channelARN": resolved.arn,
                    "clientId": args.client_id,
                    "region": resolved.region,
                    "iceServers": [s.to_json() for s in resolved.ice_servers],
                },
                indent=2,
            )
        )
    else:
        print(url)
    return 0


# -- local -----------------------------------------------------------------------------------


def _configure_local(p: argparse.ArgumentParser) -> None:
    from .emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_REGION, DEFAULT_SECRET_ACCESS_KEY

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4577, help="port (default 4577; 0 picks one)")
    p.add_argument("--region", default=DEFAULT_REGION, help=f"region (default {DEFAULT_REGION})")
    p.add_argument("--access-key-id", default=DEFAULT_ACCESS_KEY_ID, help="accepted access key id")
    p.add_argument(
        "--secret-access-key", default=DEFAULT_SECRET_ACCESS_KEY, help="its secret access key"
    )
    p.add_argument(
        "--tls", action="store_true", help="serve https:// and wss:// with a self-signed cert"
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        help="create this channel at start (repeatable)",
    )
    p.add_argument("--max-viewers", type=int, default=10, help="viewers per channel (default 10)")


async def _local(args: argparse.Namespace) -> int:
    import asyncio

    from .emulator import EmulatorConfig, LocalKvs

    config = EmulatorConfig(
        region=args.region,
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        max_viewers=args.max_viewers,
    )
    async with LocalKvs(config, host=args.host, port=args.port, tls=args.tls) as kvs:
        for name in args.channel:
            kvs.create_channel(name)
        lines = [
            f"kvs-peer local emulator listening on {kvs.endpoint_url}",
            "Point kvs-peer, boto3 or the AWS CLI at it with:",
            f"  export AWS_ACCESS_KEY_ID={config.access_key_id}",
            f"  export AWS_SECRET_ACCESS_KEY={config.secret_access_key}",
            f"  export AWS_REGION={config.region}",
            f"  export KVS_PEER_ENDPOINT_URL={kvs.endpoint_url}",
        ]
        cert = getattr(kvs, "tls_cert_path", None)
        if cert:
            lines.append(f"TLS certificate (trust it in clients): {cert}")
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)
        await asyncio.Event().wait()
    return 0


COMMANDS: dict[str, tuple[str, Configure, Handler]] = {
    "url": ("print a presigned signaling URL for a channel", _configure_url, _url),
    "local": ("run a local KVS emulator (no AWS account needed)", _configure_local, _local),
}


def _env_token() -> str | None:
    return os.environ.get("KVS_PEER_SIGNER_TOKEN")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
