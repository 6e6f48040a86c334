"""Tests of the passthrough benchmark's harness (``benchmarks/passthrough.py``).

They check that a tiny run measures both sides of every comparison and reports them in the
JSON; they make no claim about kvs-peer's speed (that is what the benchmark prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from benchmarks.passthrough import (
    BenchmarkError,
    concatenate_frames,
    main,
    parse_args,
    verdicts,
)
from benchmarks.tests.usage import assert_usage_error

TINY = ["--size", "320x240", "--viewers", "1", "--seconds", "0.5", "--settle", "0"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parts", "cpu,gpu"], "--parts: choose from cpu,join,floor"),
        (["--sources", "stdin,usb"], "--sources: choose from stdin,rtsp"),
        (["--modes", ""], "--modes: choose from passthrough,transcode"),
        (["--viewers", "0"], "1..10"),
        (["--floor-viewers", "four"], "expected numbers"),
        (["--seconds", "0"], "greater than 0"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(main, argv, message, capsys)


def _row(**fields: object) -> dict[str, object]:
    return {"source": "stdin", "size": "1920x1080", **fields}


def test_verdicts_compare_the_right_rows() -> None:
    args = parse_args(["--sources", "stdin", "--floor-viewers", "1"])
    report = {
        "cpu": [
            _row(mode="passthrough", viewers=10, masterCores=0.05),
            _row(mode="transcode", viewers=1, masterCores=0.2),
            _row(mode="passthrough", viewers=1, masterCores=0.01, size="640x480"),
        ],
        "join": {"ttffP50Ms": 301},
        "floor": [
            {"master": "csdk", "viewers": 1, "masterCores": 0.02},
            {"master": "kvs-peer", "viewers": 1, "masterCores": 0.041},
        ],
    }
    result = verdicts(report, args)
    assert result["stdinPassthrough10Cores"]["verdict"] == "PASS"
    assert result["stdinPassthrough10VsTranscode1"]["verdict"] == "FAIL"  # 0.05 > 0.04
    assert result["joinP50"]["verdict"] == "FAIL"
    assert result["floor1"]["verdict"] == "FAIL"
    assert result["floor1"]["limit"] == pytest.approx(0.04)
    assert verdicts({}, args)["stdinPassthrough10Cores"]["verdict"] == "NOT MEASURED"


def test_sample_frames_are_concatenated_in_numeric_order(tmp_path: Path) -> None:
    for number in (10, 2, 1):  # 10 sorts before 2 as text
        (tmp_path / f"frame-{number:02d}.h264").write_bytes(bytes([number]))
    out = tmp_path / "all.h264"
    assert concatenate_frames(tmp_path, out) == 3
    assert out.read_bytes() == bytes([1, 2, 10])
    with pytest.raises(BenchmarkError, match=r"no frame-NNNN\.h264 files"):
        concatenate_frames(tmp_path / "nothing-here", out)


@pytest.mark.slow
def test_tiny_run_measures_rtsp_both_ways_and_a_join(tmp_path: Path) -> None:
    # stdin is the floor test's kvs-peer side: one source here keeps the suite fast.
    out = tmp_path / "out.json"
    argv = [*TINY, "--parts", "cpu,join", "--sources", "rtsp", "--joins", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    measured = {(r["source"], r["mode"]) for r in report["cpu"]}
    assert measured == {("rtsp", "passthrough"), ("rtsp", "transcode")}
    for row in report["cpu"]:
        assert row["masterCores"] > 0, row  # the master's own process was read
        assert row["viewerFpsMin"] > 0, row
    assert report["join"]["joins"] == 1 and report["join"]["ttffP50Ms"] > 0
    assert report["targets"]["joinP50"]["verdict"] in ("PASS", "FAIL")


@pytest.mark.slow
def test_tiny_floor_run_measures_the_c_sdk_and_kvs_peer(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "interop"))
    from csdk import locate_samples  # skips (or fails in CI) without the samples

    locate_samples()
    out = tmp_path / "out.json"
    # 1.5 s: kvs-peer's ~0.02 cores are 3 ticks of the 100 Hz CPU clock, not 0 or 1.
    argv = [*TINY, "--seconds", "1.5", "--parts", "floor", "--floor-viewers", "1"]
    argv += ["--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = {r["master"]: r for r in report["floor"]}
    assert set(rows) == {"csdk", "kvs-peer"}
    for row in rows.values():
        assert row["masterCores"] > 0 and row["viewerFpsMin"] > 0, row
        assert row["frames"] == 1500
    assert rows["csdk"]["audioFrames"] > 0  # the sample sends its Opus too
    assert report["targets"]["floor1"]["verdict"] in ("PASS", "FAIL")


def test_parse_args_defaults_cover_the_issue_rows() -> None:
    args = parse_args([])
    assert isinstance(args, argparse.Namespace)
    assert (args.size, args.viewers, args.floor_viewers) == ("1920x1080", [1, 10], [1, 4])
    assert args.sources == ["stdin", "rtsp"] and args.parts == ["cpu", "join", "floor"]
