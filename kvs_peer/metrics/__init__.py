"""Metrics and health of kvs-peer processes: Prometheus ``/metrics``, ``/healthz`` and JSON
stats lines, all from the stats the live objects already keep.

- :mod:`.figures`: the series catalog and how stats become figures (pure);
- :mod:`.tally`: monotonic totals, rates and histogram buckets (pure);
- :mod:`.sources`: read a master, viewer, recorder, resolver or emulator at sampling time;
- :mod:`.rtcp`: NACK and PLI/FIR counts of a peer connection;
- :mod:`.signer`: request counts and latencies of the signer service;
- :mod:`.hub`: one process's sources, registry and health;
- :mod:`.server`: ``/metrics`` and ``/healthz`` over HTTP;
- :mod:`.stats_lines`: ``--stats-interval`` JSON lines;
- :mod:`.options`: the command-line options and :func:`serve_metrics`.

See docs/metrics.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .figures import SERIES, Figure, Series
    from .hub import HEALTH_GRACE, Health, Metrics
    from .options import add_metrics_options, serve_metrics
    from .server import MetricsServer
    from .sources import (
        ControlPlaneSource,
        EmulatorSource,
        MasterSource,
        RecorderSource,
        Source,
        ViewerSource,
    )
    from .stats_lines import StatsLines

# Loaded on first use: the command-line options must not import prometheus_client or
# aiohttp for ``kvs-peer --help``.
_EXPORTS = {
    "HEALTH_GRACE": "hub",
    "SERIES": "figures",
    "ControlPlaneSource": "sources",
    "EmulatorSource": "sources",
    "Figure": "figures",
    "Health": "hub",
    "MasterSource": "sources",
    "Metrics": "hub",
    "MetricsServer": "server",
    "RecorderSource": "sources",
    "Series": "figures",
    "Source": "sources",
    "StatsLines": "stats_lines",
    "ViewerSource": "sources",
    "add_metrics_options": "options",
    "serve_metrics": "options",
}

__all__ = [
    "HEALTH_GRACE",
    "SERIES",
    "ControlPlaneSource",
    "EmulatorSource",
    "Figure",
    "Health",
    "MasterSource",
    "Metrics",
    "MetricsServer",
    "RecorderSource",
    "Series",
    "Source",
    "StatsLines",
    "ViewerSource",
    "add_metrics_options",
    "serve_metrics",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
