"""Tests of the recording benchmark's harness (``benchmarks/record_cpu.py``).

A tiny run must measure both recording modes and report them, with the ratio, in the JSON;
no claim about kvs-peer's speed (that is what the benchmark prints).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from benchmarks.record_cpu import main, summarize
from benchmarks.tests.usage import assert_usage_error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "passthrough,copy"], "--modes: choose from passthrough,transcode,receive"),
        (["--seconds", "0"], "greater than 0"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(main, argv, message, capsys)


def test_summary_compares_transcode_with_passthrough() -> None:
    rows = [
        {"mode": "passthrough", "viewerCores": 0.04, "cpuMsPerStoredFrame": 1.0},
        {"mode": "transcode", "viewerCores": 0.16, "cpuMsPerStoredFrame": 8.0},
    ]
    summary = summarize(rows)
    assert summary["ratio"] == 4.0 and summary["ratioPerStoredFrame"] == 8.0
    assert summary["target"]["verdict"] == "FAIL"  # 4 x < 5 x
    assert summary["channelsPerCore"] == 25


@pytest.mark.slow
async def test_a_tiny_run_measures_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    argv = ["--size", "320x240", "--seconds", "0.5", "--settle", "0", "--bitrate", "300000"]
    # main() runs its own event loop: call it in a thread of this test's loop.
    await asyncio.to_thread(main, [*argv, "--json", str(out)])
    report = json.loads(out.read_text())
    modes = {row["mode"]: row for row in report["rows"]}
    assert set(modes) == {"passthrough", "transcode"}
    for row in modes.values():
        assert row["viewerCores"] > 0 and row["framesInFile"] > 0 and row["masterAlive"]
    assert report["summary"]["ratio"] > 0
