"""Figures across a process boundary: one JSON line per sample, from a worker process to the
process that serves ``/metrics`` (``kvs-peer record``'s supervisor and its workers).

::

    line = dump_figures(figures)                 # in the worker: write it to its stdout
    figures = load_figures(line, catalog)        # in the parent: what the worker sampled

A line carries each figure's series name, labels and value (a histogram's buckets, count and
sum); the parent maps names back to its catalog, so both ends must run the same kvs-peer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .figures import Figure, Series
from .tally import HistogramValue

__all__ = ["MARKER", "dump_figures", "load_figures"]

logger = logging.getLogger(__name__)

MARKER = "kvs_peer_figures"
"""The key of a figures line: any other output of the worker is not mistaken for one."""


def _value(value: float | HistogramValue) -> Any:
    if isinstance(value, HistogramValue):
        return {"buckets": value.buckets, "count": value.count, "sum": value.sum}
    return float(value)


def dump_figures(figures: Iterable[Figure]) -> str:
    """``figures`` as one JSON line (no newline)."""
    return json.dumps(
        {
            MARKER: [
                {"name": f.series.name, "labels": dict(f.labels), "value": _value(f.value)}
                for f in figures
            ]
        },
        separators=(",", ":"),
    )


def load_figures(line: str | bytes, catalog: Mapping[str, Series]) -> list[Figure] | None:
    """The figures of a line made by :func:`dump_figures`, or None if it is not one.

    Series missing from ``catalog`` are skipped (logged at debug level).
    """
    try:
        data = json.loads(line)
        entries = data[MARKER]
    except (ValueError, TypeError, KeyError):
        return None
    figures: list[Figure] = []
    try:
        for entry in entries:
            series = catalog.get(entry["name"])
            if series is None:
                logger.debug("figures: unknown series %r skipped", entry["name"])
                continue
            raw = entry["value"]
            value: float | HistogramValue
            if isinstance(raw, dict):
                buckets = tuple((float(le), int(count)) for le, count in raw["buckets"])
                value = HistogramValue(buckets, int(raw["count"]), float(raw["sum"]))
            else:
                value = float(raw)
            labels = {str(k): str(v) for k, v in entry["labels"].items()}
            figures.append(Figure(series, value, labels))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    return figures
