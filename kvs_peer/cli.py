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
from .endpoints import ENDPOINT_URL_ENV
from .errors import KvsPeerError, SignerError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_VIDEO",
    "EXIT_OK",
    "EXIT_USAGE",
    "explain",
    "main",
    "usage_error",
]

logger = logging.getLogger("kvs_peer.cli")

# Exit codes (the README has the table).
EXIT_OK = 0
"""Ran as asked: until --duration, Ctrl+C / SIGTERM, or the master's source ended."""
EXIT_ERROR = 1
"""Something needs a person: one ``error:`` line on stderr says what and what to do."""
EXIT_USAGE = 2
"""Bad command line (argparse)."""
EXIT_NO_VIDEO = 3
"""``viewer --duration``: no video, or it stopped before the end; the ``error:`` line says why."""
EXIT_INTERRUPTED = 130
"""A second Ctrl+C cut the shutdown short."""

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logs: -v info, -vv debug, -vvv also the AWS SDK's and websockets' debug "
        "logs, which may show signed requests (default: warnings and errors only)",
    )


def add_connection_options(
    parser: argparse.ArgumentParser,
    *,
    signer: bool = True,
    channel_required: bool = True,
    channel_help: str = "signaling channel name (exact match)",
) -> None:
    """Options every command that reaches a channel shares."""
    group = parser.add_argument_group("connection")
    group.add_argument("--channel", required=channel_required, help=channel_help)
    group.add_argument(
        "--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config)"
    )
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        type=endpoint_url,
        default=os.environ.get(ENDPOINT_URL_ENV),
        help="control-plane endpoint, e.g. a local emulator from `kvs-peer local` "
        "(env KVS_PEER_ENDPOINT_URL)",
    )
    group.add_argument(
        "--create-channel", action="store_true", help="create the channel if it does not exist"
    )
    group.add_argument(
        "--no-channel-cache",
        dest="channel_cache",
        action="store_false",
        help="do not keep the channel's ARN and endpoints on disk between runs (by default "
        "in $KVS_PEER_CACHE_DIR, $XDG_CACHE_HOME/kvs-peer or ~/.cache/kvs-peer)",
    )
    if signer:
        group.add_argument(
            "--signer",
            metavar="URL",
            type=signer_url,
            default=os.environ.get("KVS_PEER_SIGNER_URL"),
            help="signer service base URL, e.g. http://127.0.0.1:8080: get signed URLs from "
            "it instead of using AWS credentials (env KVS_PEER_SIGNER_URL; default: none, "
            "use AWS credentials)",
        )
        group.add_argument(
            "--token",
            default=None,
            help="bearer token for the signer (default: env KVS_PEER_SIGNER_TOKEN, which is "
            "better: command lines are visible to other users)",
        )


def usage_error(args: argparse.Namespace, exc: Exception) -> int:
    """A usage error found past argparse (a bad ``--config``, options that contradict each
    other), said as argparse's own: one ``error:`` line and :data:`EXIT_USAGE`."""
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
    print(f"kvs-peer {args.command}: error: {exc}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def endpoint_url(value: str) -> str:
    """argparse type of ``--endpoint-url``: an http(s) URL with a host (botocore otherwise
    fails deep inside with ``Invalid endpoint``)."""
    return _http_url(value, "--endpoint-url or KVS_PEER_ENDPOINT_URL", "http://127.0.0.1:4577")


def signer_url(value: str) -> str:
    """argparse type of ``--signer``: an http(s) URL with a host (``localhost:8080`` would
    otherwise fail at the first request, deep in a retry loop)."""
    return _http_url(value, "--signer or KVS_PEER_SIGNER_URL", "http://localhost:8080")


def _http_url(value: str, source: str, example: str) -> str:
    from urllib.parse import urlsplit

    from .signing import redact_url

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{redact_url(value)!r} is not an http:// or https:// URL (from {source}); write "
            f"it in full with the scheme, e.g. {example}"
        )
    return value


def bitrate(value: str) -> int:
    """argparse type of bit rates: ``800000``, ``800k`` or ``1.5M`` (decimal, as in the help)."""
    from .media.presets import parse_bitrate

    try:
        return parse_bitrate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(value: str) -> float:
    """argparse type of durations and intervals: a number of seconds above zero."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: give a number of seconds above 0, e.g. 5 or 0.5"
        )
    return seconds


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose >= 3:
        # What kvs-peer logs is redacted; what botocore and websockets log at debug level is
        # not theirs to know about: signed requests and URLs with their signatures.
        print(
            "warning: -vvv shows the debug logs of botocore and websockets, which may include "
            "signed requests and credentials: do not share this output as it is",
            file=sys.stderr,
            flush=True,
        )
    else:
        # botocore and aioice are very chatty at debug level (and botocore may print
        # signed requests): keep them quiet unless asked for -vvv.
        for noisy in ("botocore", "boto3", "urllib3", "aioice", "aiortc", "websockets"):
            logging.getLogger(noisy).setLevel(max(level, logging.INFO))
    if verbose < 2:
        # aioice logs every candidate pair and check at INFO: noise next to kvs-peer's -v logs.
        logging.getLogger("aioice").setLevel(logging.WARNING)
        # OpenCV prints "[ WARN ]" lines of its own (a camera probe, a FFmpeg backend) on
        # stderr, past Python's logging; it reads this once, when cv2 loads, which the CLI
        # has not done yet. A value the user set wins.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


async def _run_until_signal(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command; the first SIGINT/SIGTERM asks it to stop, a second one (more than
    :data:`SAME_SIGNAL_WITHIN` seconds later) cancels it.

    Commands wait on ``args.stop`` (an ``asyncio.Event``) next to their own work, so a
    signal lets them finish normally: peers closed, recording finalized, ``--json`` printed.
    A command still starting (``args.starting`` true: opening a camera, reading the AWS
    setup) is cancelled by the first signal, with exit code 0: it would only see
    ``args.stop`` once started.

    The handlers stay installed until ``asyncio.run`` closes the loop (which removes them):
    removed here, a Ctrl+C during asyncio's own shutdown (cancelling the tasks aiortc left,
    joining threads) would raise KeyboardInterrupt there, exit 130 and leave "Task was
    destroyed but it is pending!" lines on stderr.
    """
    loop = asyncio.get_running_loop()
    args.stop = asyncio.Event()
    task = asyncio.ensure_future(handler(args))
    stopped_while_starting = False
    first_signal: float | None = None

    def on_signal() -> None:
        nonlocal stopped_while_starting, first_signal
        if task.done():
            return  # the command ended: asyncio is shutting down, nothing left to stop
        now = loop.time()
        if first_signal is not None and now - first_signal < SAME_SIGNAL_WITHIN:
            # One Ctrl+C delivered twice: by the terminal to the whole process group and
            # again by a wrapper that forwards it (uv run, a shell script, a supervisor).
            return
        first_signal = first_signal if first_signal is not None else now
        if args.stop.is_set() or getattr(args, "starting", False):
            stopped_while_starting = not args.stop.is_set()
            task.cancel()
        args.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    except asyncio.CancelledError:
        return EXIT_OK if stopped_while_starting else EXIT_INTERRUPTED


SAME_SIGNAL_WITHIN = 0.5
"""Seconds after a first SIGINT/SIGTERM during which another one counts as the same: no
person presses Ctrl+C twice that fast, a wrapper forwarding the terminal's signal does."""


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
    try:
        code = _main(argv)
    except BrokenPipeError:
        # The reader of stdout left (`kvs-peer ... | head -1`): stop quietly, as the Python
        # docs' "Note on SIGPIPE" says, and point stdout at /dev/null so the interpreter's
        # final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_ERROR
    if argv is None:  # this process is the command (not a caller passing its own argv)
        # The command is done; what is left is the interpreter's exit, finalizing aiortc's
        # and PyAV's objects, during which Python puts SIGINT back to the system default: a
        # Ctrl+C landing there (such as the copy of the first one that a wrapper forwards)
        # would kill the process by SIGINT, whatever the command's exit code. An ignored
        # signal stays ignored through finalization.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return asyncio.run(_run_until_signal(handler, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:
        message = explain(exc)
        if message is None:
            # A bug, or a failure nobody foresaw: still one line; -v shows the traceback.
            logger.info("unexpected failure", exc_info=exc)
            message = (
                f"unexpected {type(exc).__name__}: {exc} (rerun with -v for the "
                "traceback, and please report it)"
            )
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": type(exc).__name__, "message": message}))
        print(f"kvs-peer {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def explain(exc: BaseException) -> str | None:
    """One line saying what went wrong and what to do, for errors users cause; else None.

    kvs-peer's own errors already say it. Those of the AWS SDK (botocore) about the
    local setup (a profile, credentials, a certificate) arrive untranslated and are
    explained here.
    """
    if isinstance(exc, SignerError) and exc.status in (401, 403):
        # The reconnect policy files these under "denied" with AWS's advice (IAM, clock), but
        # the signer checks a bearer token: that is what to fix.
        hint = (
            "kvs-peer sends the token of KVS_PEER_SIGNER_TOKEN or --token"
            if exc.status == 401
            else "the signer's config grants this token (KVS_PEER_SIGNER_TOKEN or --token) "
            "other channels or roles"
        )
        return f"{exc} ({hint})"
    if isinstance(exc, KvsPeerError):
        return str(exc)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(exc, botocore.ProfileNotFound):
            profile = exc.kwargs.get("profile", "?")
            return (
                f"AWS profile {profile!r} not found (AWS_PROFILE): define it in ~/.aws/config "
                "or ~/.aws/credentials, or unset AWS_PROFILE"
            )
        if isinstance(exc, botocore.PartialCredentialsError):
            return (
                f"incomplete AWS credentials in {_credential_source(exc.kwargs.get('provider'))}:"
                f" {exc.kwargs.get('cred_var', '?')} is missing; add it, or remove the "
                "incomplete entry"
            )
        if isinstance(exc, botocore.SSLError):
            from urllib.parse import urlsplit

            url = urlsplit(str(exc.kwargs.get("endpoint_url", "")))
            reason = str(exc.kwargs.get("error", "")).split("] ")[-1].split(" (_ssl")[0]
            return (
                f"the TLS certificate of {url.scheme}://{url.netloc} is not trusted ({reason}): "
                "set AWS_CA_BUNDLE to the CA certificate that signed it (`kvs-peer local "
                "--tls` prints the path of its ca.pem)"
            )
        if isinstance(exc, botocore.BotoCoreError):
            return f"AWS SDK: {exc}; check the AWS configuration (~/.aws, AWS_* variables)"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}; check the path and its permissions"
    return None


def _credential_source(provider: object) -> str:
    if provider == "env":
        return "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if provider == "shared-credentials-file":
        path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        return f"{path} (profile {os.environ.get('AWS_PROFILE', 'default')})"
    if provider == "config-file":
        path = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
        return f"{path} (profile {os.environ.get('AWS_PROFILE', 'default')})"
    return str(provider or "the AWS configuration")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
