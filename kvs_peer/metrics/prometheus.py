"""Figures as Prometheus metric families: a collector for a per-process registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .figures import Figure, Kind
from .tally import HistogramValue

__all__ = ["FigureCollector", "families"]


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def families(figures: Iterable[Figure]) -> list[Metric]:
    """One metric family per series, with a sample per label set, in first-seen order."""
    built: dict[str, Metric] = {}
    label_names: dict[str, Sequence[str]] = {}
    for fig in figures:
        series = fig.series
        names = label_names.setdefault(series.name, tuple(sorted(fig.labels)))
        family = built.get(series.name)
        if family is None:
            if series.kind is Kind.COUNTER:
                family = CounterMetricFamily(series.name, series.help, labels=names)
            elif series.kind is Kind.GAUGE:
                family = GaugeMetricFamily(series.name, series.help, labels=names)
            else:
                family = HistogramMetricFamily(series.name, series.help, labels=names)
            built[series.name] = family
        values = [fig.labels.get(name, "") for name in names]
        if isinstance(fig.value, HistogramValue):
            assert isinstance(family, HistogramMetricFamily)
            family.add_metric(
                values,
                buckets=[(_bound(le), count) for le, count in fig.value.buckets],
                sum_value=fig.value.sum,
            )
        else:
            family.add_metric(values, float(fig.value))  # type: ignore[attr-defined]
    return list(built.values())


class FigureCollector(Collector):
    """Exposes the figures of the latest sample (``figures()``) at each ``collect()``.

    Sampling is async (peer connections' ``getStats()``) while prometheus_client collects
    synchronously, so the caller samples first and then renders the registry.
    """

    def __init__(self, figures: Callable[[], Sequence[Figure]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        yield from families(self._figures())

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are only known once sampled; nothing to check at register
