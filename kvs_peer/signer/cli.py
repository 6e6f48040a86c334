"""``kvs-peer signer``: run the signer service, or hash a token for its config file.

::

    kvs-peer signer --config signer.toml [--host 127.0.0.1] [--port 8080]
                    [--region R] [--endpoint-url URL] [--static DIR]
    kvs-peer signer hash-token [--generate] [--name NAME] [--channel NAME]... [--role ROLE]...
                                                            # token read from stdin

Register with ``configure(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..endpoints import ENDPOINT_URL_ENV
from ..errors import InvalidArgument
from ..metrics.options import add_metrics_options, serve_metrics

if TYPE_CHECKING:
    from aiohttp import web

    from .config import SignerConfig

__all__ = ["MIN_TOKEN_LENGTH", "configure", "run"]

MIN_TOKEN_LENGTH = 16

_HASH_TOKEN_EXAMPLE = "echo -n TOKEN | kvs-peer signer hash-token --channel garage --role MASTER"
_GENERATE_EXAMPLE = "kvs-peer signer hash-token --generate --channel garage --role MASTER"
_CLIENT_TOKEN_HINT = (
    "devices pass the token with env KVS_PEER_SIGNER_TOKEN, --token, or token_file in their "
    "--config"
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the signer's options and its ``hash-token`` sub-action to ``parser``."""
    from ..tomlconfig import add_config_example_option
    from .config import CONFIG_EXAMPLE

    parser.add_argument(
        "--config", type=Path, help="signer TOML file (--config-example prints a commented one)"
    )
    add_config_example_option(parser, CONFIG_EXAMPLE)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    parser.add_argument(
        "--region", help="AWS region (default: config file, AWS_REGION, ~/.aws/config)"
    )
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="control-plane endpoint, e.g. a local emulator (default: config file, "
        "env KVS_PEER_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--static",
        type=Path,
        help="also serve this folder at / (e.g. examples/browser), so a page and the API "
        "share an origin",
    )
    add_metrics_options(parser)
    actions = parser.add_subparsers(dest="signer_action", metavar="ACTION")
    hash_parser = actions.add_parser(
        "hash-token",
        help="print the sha256 of a token (read from stdin) for the config file",
        description="Read a token from stdin (or a prompt) and print the sha256 value that goes "
        "in the signer config; with --generate, make a new random token.",
    )
    hash_parser.add_argument(
        "--generate", action="store_true", help="generate a new random token and print it too"
    )
    hash_parser.add_argument(
        "--name",
        default="NAME",
        help="token name for the printed [[tokens]] snippet (default: a NAME placeholder)",
    )
    hash_parser.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="a channel (or glob, e.g. 'cam-*') the token may use, for the snippet "
        "(repeatable; default: a CHANNEL placeholder to edit)",
    )
    hash_parser.add_argument(
        "--role",
        action="append",
        type=str.upper,
        choices=["MASTER", "VIEWER"],
        help="a role the token may take, for the snippet (repeatable; default VIEWER)",
    )


def _read_token() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("token: ")
    return sys.stdin.readline().rstrip("\r\n")


def _hash_token(args: argparse.Namespace) -> int:
    from .auth import hash_token, valid_token_syntax

    if args.generate:
        token = secrets.token_urlsafe(32)
    else:
        token = _read_token()
        if not token:
            raise InvalidArgument(
                f"no token on stdin: pipe one in, e.g. `{_HASH_TOKEN_EXAMPLE}`, or make a new "
                f"one with `{_GENERATE_EXAMPLE}`"
            )
        if not valid_token_syntax(token):
            raise InvalidArgument(
                "the token must be one line of letters, digits and - . _ ~ + / (optionally "
                "ending in =): a bearer token cannot carry anything else"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise InvalidArgument(
                f"the token is shorter than {MIN_TOKEN_LENGTH} characters: use "
                "'kvs-peer signer hash-token --generate' for a strong one"
            )
    digest = hash_token(token)
    lines = []
    if args.generate:
        lines += [
            f"token:  {token}",
            "        (give it to the device or user, e.g. as KVS_PEER_SIGNER_TOKEN; it is not "
            "stored anywhere)",
        ]
    lines += [
        f"sha256: {digest}",
        "",
        "[[tokens]]",
        f"name = {_toml_string(args.name)}",
        f'sha256 = "{digest}"',
        f"channels = {_toml_list(args.channel or ['CHANNEL'])}",
        f"roles = {_toml_list(dict.fromkeys(args.role or ['VIEWER']))}",
    ]
    print("\n".join(lines), flush=True)
    return 0


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes for quotes, backslashes and
    # control characters).
    return json.dumps(value)


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


async def run(args: argparse.Namespace) -> int:
    """Run the signer until cancelled (or hash a token); returns the exit code.

    A missing or bad config is a usage error, as for ``master --config``: one ``error:`` line
    on stderr and :data:`~kvs_peer.cli.EXIT_USAGE`.

    Raises:
        InvalidArgument: unusable --static, port in use; a refused ``hash-token`` input.
        ChannelError: no region could be determined.
    """
    if getattr(args, "signer_action", None) == "hash-token":
        return _hash_token(args)

    from ..channel import ChannelResolver
    from ..cli import usage_error
    from .app import create_app

    try:
        config = _load_config(args)
    except InvalidArgument as exc:
        return usage_error(args, exc)
    # Metrics first: a metrics port in use fails before the signer listens.
    async with serve_metrics(args, role="signer") as metrics:
        from ..metrics.signer import watch_signer

        resolver = ChannelResolver(region=config.region, endpoint_url=config.endpoint_url)
        try:
            app = create_app(config, resolver)
            watch_signer(app, metrics)
        except BaseException:
            await resolver.close()
            raise
        await _serve(app, config, args)
    return 0


def _load_config(args: argparse.Namespace) -> SignerConfig:
    """The ``--config`` file with the command line's overrides; refuses one granting nothing."""
    from .config import load_config

    if args.config is None:
        raise InvalidArgument(
            "--config is required: the signer needs a TOML file with a [[tokens]] table per "
            f"token (`{_GENERATE_EXAMPLE}` makes a token and prints its table; "
            f"`kvs-peer signer --config-example` prints a whole file); {_CLIENT_TOKEN_HINT}"
        )
    config = load_config(args.config)
    config = dataclasses.replace(
        config,
        region=args.region or config.region,
        endpoint_url=args.endpoint_url or config.endpoint_url or os.environ.get(ENDPOINT_URL_ENV),
        static_dir=args.static or config.static_dir,
    )
    if not config.tokens and not config.anonymous:
        raise InvalidArgument(
            f"{args.config} has no token: add a [[tokens]] table per token (`{_GENERATE_EXAMPLE}`"
            f" makes a token and prints its table, `{_HASH_TOKEN_EXAMPLE}` hashes one you "
            f'have), or an [[anonymous]] table with channels = ["..."] for viewers without a '
            f"token; {_CLIENT_TOKEN_HINT}"
        )
    return config


async def _serve(app: web.Application, config: SignerConfig, args: argparse.Namespace) -> None:
    from .app import serve

    async with serve(app, host=args.host, port=args.port) as url:
        print(f"kvs-peer signer listening on {url}", flush=True)
        print(f"  GET {url}/kinesis-video-url?channel=NAME&role=VIEWER", flush=True)
        if config.static_dir is not None:
            print(f"  page: {url}/ (from {config.static_dir})", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        # The CLI sets args.stop on SIGINT/SIGTERM; called from Python, cancel the task.
        await getattr(args, "stop", asyncio.Event()).wait()
