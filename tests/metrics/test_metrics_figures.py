"""The pure part of metrics: accumulators, naming, JSON records, Prometheus exposition."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvs_peer.errors import InvalidArgument
from kvs_peer.metrics.figures import (
    SERIES,
    Kind,
    figure,
    json_records,
    series_key,
    signaling_figures,
    signaling_problem,
)
from kvs_peer.metrics.hub import Metrics
from kvs_peer.metrics.options import metrics_port, stats_interval
from kvs_peer.metrics.prometheus import FigureCollector
from kvs_peer.metrics.stats_lines import StatsLines
from kvs_peer.metrics.tally import Buckets, Rate, Tally
from kvs_peer.signaling import SignalingStats

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"


def test_tally_keeps_what_departed_items_reached() -> None:
    tally = Tally()
    tally.update("a", 100)
    tally.update("b", 50)
    tally.retire_missing(["a", "b"])
    assert tally.total == 150
    tally.update("a", 120)
    tally.retire_missing(["a"])  # b left at 50
    assert tally.total == 170
    tally.update("a", 90)  # a counter never goes back
    assert tally.total == 170
    tally.retire_missing([])
    tally.update("a", 10)  # a new item under a reused key starts from its own zero
    assert tally.total == 180


def test_rate_spans_the_window_and_survives_a_restart() -> None:
    rate = Rate(window=5.0)
    assert rate.update(0.0, 0) is None
    assert rate.update(1.0, 30) == pytest.approx(30.0)
    for second in range(2, 11):
        last = rate.update(float(second), 30 * second)
    assert last == pytest.approx(30.0)
    # Stalled for 1 s: over the last 5 s (from t=6, 180 frames), 120 frames.
    assert rate.update(11.0, 30 * 10) == pytest.approx(24.0)
    assert rate.update(12.0, 5) is None  # the count restarted: no negative rate


def test_buckets_count_values_at_their_upper_bound() -> None:
    buckets = Buckets((0.5, 1.0))
    for value in (0.2, 0.5, 0.7, 3.0):
        buckets.observe(value)
    value = buckets.value()
    assert value.buckets == ((0.5, 2), (1.0, 3), (float("inf"), 4))
    assert (value.count, value.sum) == (4, pytest.approx(4.4))
    for bad in ((1.0, 0.5), (0.5, 0.5)):
        with pytest.raises(InvalidArgument, match=r"must increase strictly, e\.g\."):
            Buckets(bad)


def test_catalog_names_follow_prometheus_conventions() -> None:
    for name, series in SERIES.items():
        assert re.fullmatch(r"kvs_peer_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (series.kind is Kind.COUNTER), name
        if series.kind is Kind.HISTOGRAM:
            assert name.endswith("_seconds"), name


def test_figure_checks_the_labels_of_its_series() -> None:
    base = {"role": "signer"}
    assert figure("kvs_peer_signer_requests_total", 3, base, status="200").labels == {
        "role": "signer",
        "status": "200",
    }
    with pytest.raises(InvalidArgument, match=r"takes labels \('status',\), not \(\)"):
        figure("kvs_peer_signer_requests_total", 3, base)
    with pytest.raises(InvalidArgument, match="no series 'kvs_peer_no_such_series'"):
        figure("kvs_peer_no_such_series", 1, base)


def test_signaling_health_allows_a_grace_period() -> None:
    stats = SignalingStats(retrying_since=1000.0, last_error="HTTP 503")
    assert signaling_problem(stats, connected=True, now=2000.0, grace=60) is None
    assert signaling_problem(stats, connected=False, now=1059.0, grace=60) is None
    problem = signaling_problem(stats, connected=False, now=1100.0, grace=60)
    assert problem is not None and "100 s" in problem and "HTTP 503" in problem
    first = SignalingStats()  # still making its first connection, nothing failed yet
    assert signaling_problem(first, connected=False, now=1e9, grace=60) is None
    figures = {
        f.series.name: f.value
        for f in signaling_figures({"role": "viewer"}, stats, connected=False, now=1030.0)
    }
    assert figures["kvs_peer_signaling_down_seconds"] == 30.0
    assert figures["kvs_peer_signaling_connected"] == 0.0


def _sample_figures() -> list:
    cam = {"role": "viewer", "channel": "cam"}
    ttff = Buckets((1.0, 2.0))
    ttff.observe(0.8)
    return [
        figure("kvs_peer_build_info", 1, {"role": "viewer"}, version="1.2.3"),
        figure("kvs_peer_frames_received_total", 120, cam),
        figure("kvs_peer_fps", 29.97, cam),
        figure("kvs_peer_time_to_first_frame_seconds", ttff.value(), cam),
        figure("kvs_peer_frames_received_total", 7, {"role": "viewer", "channel": "door"}),
        figure(
            "kvs_peer_control_plane_calls_total",
            2,
            {"role": "viewer"},
            operation='Describe"Channel',
        ),
    ]


def test_json_records_group_by_channel_with_exposition_keys() -> None:
    records = json_records(_sample_figures(), time="2030-01-01T00:00:00.000Z")
    by_channel = {r.get("channel"): r for r in records}
    assert set(by_channel) == {None, "cam", "door"}
    cam = by_channel["cam"]
    assert cam["role"] == "viewer" and cam["time"] == "2030-01-01T00:00:00.000Z"
    assert cam["kvs_peer_frames_received_total"] == 120
    assert cam["kvs_peer_fps"] == 29.97
    assert cam["kvs_peer_time_to_first_frame_seconds_count"] == 1
    assert cam["kvs_peer_time_to_first_frame_seconds_sum"] == 0.8
    assert by_channel["door"]["kvs_peer_frames_received_total"] == 7
    process = by_channel[None]
    assert process['kvs_peer_build_info{version="1.2.3"}'] == 1
    assert process['kvs_peer_control_plane_calls_total{operation="Describe\\"Channel"}'] == 2


def test_exposition_parses_back_to_the_same_values() -> None:
    figures = _sample_figures()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FigureCollector(lambda: figures))
    parsed = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    cam = (("channel", "cam"), ("role", "viewer"))
    assert parsed[("kvs_peer_frames_received_total", cam)] == 120
    assert (
        parsed[("kvs_peer_time_to_first_frame_seconds_bucket", (*cam[:1], ("le", "1.0"), cam[1]))]
        == 1
    )
    assert parsed[("kvs_peer_time_to_first_frame_seconds_count", cam)] == 1
    key = series_key(figures[-1])
    assert key.startswith("kvs_peer_control_plane_calls_total{operation=")
    assert (
        parsed[
            (
                "kvs_peer_control_plane_calls_total",
                (("operation", 'Describe"Channel'), ("role", "viewer")),
            )
        ]
        == 2
    )


@pytest.mark.parametrize("value", ["-1", "65536", "http", ""])
def test_metrics_port_type_refuses_non_ports(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a port"):
        metrics_port(value)
    assert metrics_port("0") == 0 and metrics_port("9100") == 9100


@pytest.mark.parametrize("value", ["0", "0.05", "-1", "nan", "inf", "soon"])
def test_stats_interval_type_refuses_tiny_or_bad_values(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r">= 0\.1"):
        stats_interval(value)
    assert stats_interval("0.5") == 0.5


def _series_named_in(text: str) -> set[str]:
    return set(re.findall(r"`(kvs_peer_[a-z0-9_]+)`", text))


def test_docs_list_every_series_and_only_existing_ones() -> None:
    table = _series_named_in(METRICS_DOC.read_text())
    assert set(SERIES) <= table, f"produced, not in docs/metrics.md: {set(SERIES) - table}"
    assert table <= set(SERIES), f"in docs/metrics.md, not produced: {table - set(SERIES)}"
    readme = README.read_text()
    section = readme[readme.index("## Metrics") :].split("\n## ", 1)[0]
    named = _series_named_in(section)
    assert named, "README.md's Metrics section names no series"
    assert named <= set(SERIES), f"in README.md, not produced: {named - set(SERIES)}"


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_stats_lines_need_a_positive_interval(interval: float) -> None:
    with pytest.raises(InvalidArgument, match="must be a positive number of seconds"):
        StatsLines(Metrics(role="master"), interval)
