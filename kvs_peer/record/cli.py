"""``kvs-peer record``: record many channels into a spool and upload the segments to S3.

::

    kvs-peer record --config recorder.toml [--shard INDEX/COUNT | --shard auto/COUNT] [--plan]

Register with ``configure(parser)`` and ``run(args)``. The supervisor starts worker processes
of the same command with the hidden ``--worker CHANNELS`` option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the recorder's options to ``parser``."""
    from ..tomlconfig import add_config_example_option
    from .config import CONFIG_EXAMPLE

    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="recorder TOML file (--config-example prints a commented one)",
    )
    add_config_example_option(parser, CONFIG_EXAMPLE)
    parser.add_argument(
        "--shard",
        default=os.environ.get("KVS_PEER_SHARD"),
        help="record only this replica's share of the channels: INDEX/COUNT (0/3, 1/3, 2/3), "
        "or auto/COUNT to take INDEX from a StatefulSet pod's hostname (env KVS_PEER_SHARD)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print this replica's channels and worker processes as JSON, then exit",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="seconds to keep uploading when stopping (default 20); the rest waits in the "
        "spool for the next start",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    from ..metrics.options import add_metrics_options

    add_metrics_options(parser)


@contextlib.contextmanager
def _stop_on_eof(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when stdin, a pipe from the supervisor, reaches its end: the supervisor
    died, even by SIGKILL, and its workers must not record on unsupervised.

    The event loop watches the descriptor: a thread blocked reading ``sys.stdin`` holds the
    stream's lock, and the interpreter aborts at exit ("Fatal Python error:
    _enter_buffered_busy") when it finds that lock taken.
    """
    fd = 0
    try:
        watch = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:  # stdin closed
        watch = False
    if not watch:
        yield
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            # Whatever the supervisor writes is ignored: only the end of the pipe counts.
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


def _report_line(line: str) -> None:
    """A worker's figures to the supervisor: a line on stdout, its pipe (see service.py)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    """Run the supervisor (or, with ``--worker``, one worker process)."""
    from ..cli import usage_error
    from ..errors import InvalidArgument
    from .config import load_config, with_environment
    from .shard import parse_shard

    try:
        # Workers inherit this process's environment and read it here the same way.
        config = with_environment(load_config(args.config), os.environ)
        shard = parse_shard(args.shard, hostname=socket.gethostname()) if args.shard else None
    except InvalidArgument as exc:
        return usage_error(args, exc)
    if args.worker is not None:
        from .worker import record_channels

        channels = [c for c in args.worker.split(",") if c]
        if not channels:
            raise InvalidArgument("--worker needs channel names")
        with _stop_on_eof(args.stop):
            await record_channels(config, channels, args.stop, report=_report_line)
        return 0

    from .service import RecordService

    service = RecordService(
        config,
        args.config,
        shard=shard,
        verbose=args.verbose,
        drain_timeout=args.drain_timeout,
    )
    plan = await service.plan()
    if args.plan:
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    if not plan.channels:
        print(
            "kvs-peer record: no channel to record on this replica"
            + (f" (shard {shard})" if shard else "")
            + "; waiting until stopped",
            file=sys.stderr,
            flush=True,
        )
    s3 = config.s3
    print(
        f"kvs-peer record: {plan.describe()}; spool {config.output.dir}; uploading to "
        f"s3://{s3.bucket}/{s3.prefix + '/' if s3.prefix else ''} (Ctrl+C stops)",
        file=sys.stderr,
        flush=True,
    )
    for index, group in enumerate(plan.groups):
        print(f"  process {index + 1}: {', '.join(group)}", file=sys.stderr, flush=True)
    from ..metrics.options import serve_metrics
    from .metrics import RecordServiceSource

    async with serve_metrics(args, role="record") as metrics:
        metrics.add(RecordServiceSource(service, plan))
        await service.run(plan, args.stop)
    return 0
