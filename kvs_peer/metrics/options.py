"""Command-line glue: the ``--metrics-*`` and ``--stats-interval`` options, and one context
manager that runs what they ask for.

::

    add_metrics_options(parser)
    ...
    async with serve_metrics(args, role="master") as metrics:
        async with Master(...) as master:
            metrics.add(MasterSource(master, channel=args.channel))
            ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import Metrics

__all__ = ["add_metrics_options", "metrics_port", "serve_metrics", "stats_interval"]


def metrics_port(value: str) -> int:
    """argparse type of ``--metrics-port``: 0-65535."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a port: use 1-65535, or 0 to pick a free one"
        )
    return port


def stats_interval(value: str) -> float:
    """argparse type of ``--stats-interval``: seconds, at least 0.1."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds >= 0.1 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0.1")
    return seconds


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port``, ``--metrics-host`` and ``--stats-interval`` to ``parser``."""
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics-port",
        type=metrics_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics and a probe at /healthz "
        "(0 picks a free port; the URL is printed on stderr)",
    )
    group.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 for a scraper elsewhere)",
    )
    group.add_argument(
        "--stats-interval",
        type=stats_interval,
        metavar="S",
        help="print the same figures as a JSON line on stdout every S seconds (and at exit)",
    )


@contextlib.asynccontextmanager
async def serve_metrics(args: argparse.Namespace, *, role: str) -> AsyncIterator[Metrics]:
    """A :class:`Metrics` for the command, served and printed as the options say.

    Enter it before connecting anything, so a port already in use fails at once. Always
    yields a :class:`Metrics` (adding sources costs nothing when nobody reads them).

    Raises:
        InvalidArgument: the metrics address cannot be bound.
    """
    from .hub import Metrics
    from .server import MetricsServer
    from .stats_lines import StatsLines

    metrics = Metrics(role)
    async with contextlib.AsyncExitStack() as stack:
        port = getattr(args, "metrics_port", None)
        if port is not None:
            server = MetricsServer(metrics, host=args.metrics_host, port=port)
            await stack.enter_async_context(server)
            print(f"metrics on {server.url}/metrics", file=sys.stderr, flush=True)
        interval = getattr(args, "stats_interval", None)
        if interval is not None:
            await stack.enter_async_context(StatsLines(metrics, interval))
        if port is not None or interval is not None:
            watch = asyncio.create_task(metrics.watch(), name="kvs-peer-metrics-watch")
            stack.callback(watch.cancel)
        yield metrics
