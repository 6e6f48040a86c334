"""The ``kvs-peer`` command line.

Subcommands only wire parts together and run them with ``asyncio.run``; everything they do
is available from Python too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from . import __version__
from .errors import KvsPeerError

__all__ = ["main"]

logger = logging.getLogger("kvs_peer.cli")

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logs (-v info, -vv debug)"
    )


def add_connection_options(parser: argparse.ArgumentParser, *, signer: bool = True) -> None:
    """Options every command that reaches a channel shares."""
    group = parser.add_argument_group("connection")
    group.add_argument("--channel", required=True, help="signaling channel name (exact match)")
    group.add_argument(
        "--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config)"
    )
    group.add_argument(
        "--endpoint-url",
        default=os.environ.get("KVS_PEER_ENDPOINT_URL"),
        help="control-plane endpoint, e.g. a local emulator from `kvs-peer local` "
        "(env KVS_PEER_ENDPOINT_URL)",
    )
    group.add_argument(
        "--create-channel", action="store_true", help="create the channel if it does not exist"
    )
    if signer:
        group.add_argument(
            "--signer",
            default=os.environ.get("KVS_PEER_SIGNER_URL"),
            help="signer service base URL: get signed URLs from it instead of using AWS "
            "credentials (env KVS_PEER_SIGNER_URL)",
        )
        group.add_argument(
            "--token",
            default=None,
            help="bearer token for the signer (prefer env KVS_PEER_SIGNER_TOKEN: command "
            "lines are visible to other users)",
        )


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 3:
        # botocore and aioice are very chatty at debug level (and botocore may print
        # signed requests): keep them quiet unless asked for -vvv.
        for noisy in ("botocore", "boto3", "urllib3", "aioice", "aiortc", "websockets"):
            logging.getLogger(noisy).setLevel(max(level, logging.INFO))


async def _run_until_signal(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command; the first SIGINT/SIGTERM asks it to stop, a second one cancels it.

    Commands wait on ``args.stop`` (an ``asyncio.Event``) next to their own work, so a
    signal lets them finish normally: peers closed, recording finalized, ``--json`` printed.
    """
    loop = asyncio.get_running_loop()
    args.stop = asyncio.Event()
    task = asyncio.ensure_future(handler(args))

    def on_signal() -> None:
        if args.stop.is_set():
            task.cancel()
        args.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    except asyncio.CancelledError:
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for docs and tests)."""
    from . import commands

    parser = argparse.ArgumentParser(
        prog="kvs-peer",
        description="WebRTC peer, signer and local emulator for Amazon Kinesis Video Streams.",
    )
    parser.add_argument("--version", action="version", version=f"kvs-peer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in commands.COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        _add_logging(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kvs-peer`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return asyncio.run(_run_until_signal(handler, args))
    except KvsPeerError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
        print(f"kvs-peer {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
