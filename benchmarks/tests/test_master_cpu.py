"""Tests of the benchmark harness itself (run: ``.venv/bin/pytest benchmarks/tests``).

They check that the harness measures something real and reports failures clearly; they make
no claim about kvs-peer's speed (that is what the benchmark prints).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from benchmarks.master_cpu import (
    BenchmarkError,
    Settings,
    main,
    per_viewer_fit,
    start_worker,
    verdicts,
)
from benchmarks.measure import CpuSample, cpu_window, percentile, summarize
from benchmarks.tests.usage import assert_usage_error


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "viewers": (1, 10),
        "seconds": 1.0,
        "settle": 0.0,
        "windows": 1,
        "ttff_runs": 1,
        "impls": ("ours", "baseline"),
        "codec": "h264",
        "width": 640,
        "height": 480,
        "fps": 30.0,
        "loopback": False,
        "seed": 1,
        "parts": frozenset({"cpu"}),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def run_row(impl: str, viewers: int, cores: float, fps: float = 30.0) -> dict[str, object]:
    return {"impl": impl, "viewers": viewers, "masterCores": cores, "fpsMin": fps}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--viewers", "0"], "1..10"),
        (["--viewers", "1,11"], "1..10"),
        (["--viewers", "one"], "expected numbers"),
        (["--impls", "ours,gstreamer"], "choose from ours,baseline"),
        (["--parts", "cpu,gpu"], "choose from cpu,ttff,encoder"),
        (["--seconds", "0"], "greater than 0"),
        (["--ttff-runs", "-1"], "greater than 0"),
        (["--windows", "0"], "greater than 0"),
        (["--width", "641"], "even"),
        (["--settle", "-1"], "--settle"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(main, argv, message, capsys)


def test_percentile_and_summary() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile([10, 20], 0.25) == 12.5
    summary = summarize([300, 100, 200])
    assert (summary["median"], summary["min"], summary["max"], summary["n"]) == (200, 100, 300, 3)
    assert summarize([])["median"] is None


def test_cpu_window_sees_a_busy_thread() -> None:
    stop = time.monotonic() + 0.4

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    start = CpuSample.now()
    thread = threading.Thread(target=spin, name="spinner")
    thread.start()
    time.sleep(0.2)
    end = CpuSample.now()  # taken while the spinner is alive, so it is listed by name
    thread.join()
    window = cpu_window(start, end)
    assert window["cores"] > 0.2
    assert window["threads"]["spinner"] > 0.2
    assert window["wall"] == pytest.approx(0.2, abs=0.15)


def test_flat_cpu_verdict() -> None:
    s = settings()
    flat = {"cpu": [run_row("ours", 1, 0.10), run_row("ours", 10, 0.12)]}
    assert verdicts(flat, s)["flatCpu"]["verdict"] == "PASS"
    steep = {"cpu": [run_row("ours", 1, 0.10), run_row("ours", 10, 0.14)]}
    assert verdicts(steep, s)["flatCpu"]["verdict"] == "FAIL"
    dropped = {"cpu": [run_row("ours", 1, 0.10), run_row("ours", 10, 0.11, fps=20.0)]}
    result = verdicts(dropped, s)["flatCpu"]
    assert (result["verdict"], result["allViewersKeptUp"]) == ("FAIL", False)
    assert verdicts({"cpu": [run_row("ours", 1, 0.1)]}, s)["flatCpu"]["verdict"].startswith(
        "NOT MEASURED"
    )


def test_ttff_verdicts_use_the_median() -> None:
    report = {
        "ttff": {"ours": {"firstSummary": {"median": 149.0}, "joiningSummary": {"median": 251.0}}}
    }
    result = verdicts(report, settings())
    assert result["ttffFirst"]["verdict"] == "PASS"
    assert result["ttffJoining"]["verdict"] == "FAIL"


def test_per_viewer_fit_ignores_saturated_windows() -> None:
    report = {
        "cpu": [
            run_row("ours", 1, 0.11),
            run_row("ours", 4, 0.14),
            run_row("ours", 10, 0.20),
            run_row("baseline", 1, 0.20),
            run_row("baseline", 4, 0.80),
            run_row("baseline", 10, 1.10, fps=9.0),
        ]
    }
    fits = per_viewer_fit(report, settings())
    assert fits["ours"]["perViewerCores"] == pytest.approx(0.01, abs=1e-9)
    assert fits["ours"]["fixedCores"] == pytest.approx(0.10, abs=1e-9)
    assert fits["baseline"]["viewerCounts"] == [1, 4]
    assert fits["baseline"]["perViewerCores"] == pytest.approx(0.2, abs=1e-9)


def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # A channel name KVS refuses: the master fails at once (network errors would be retried).
    argv = ["--endpoint", "http://127.0.0.1:9", "--channel", "no spaces allowed"]
    with pytest.raises(BenchmarkError, match=r"master worker exited .*see .*\.log"):
        asyncio.run(start_worker("master", argv, tmp_path))
    logs = list(tmp_path.glob("master-*.log"))
    assert len(logs) == 1 and logs[0].read_text().strip()


@pytest.mark.slow
def test_end_to_end_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "--viewers",
            "1",
            "--seconds",
            "1",
            "--settle",
            "0",
            "--ttff-runs",
            "1",
            "--parts",
            "cpu,ttff",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    for row in report["cpu"]:
        assert "error" not in row, row
        assert row["masterCores"] > 0.01
        assert row["fpsMin"] > 5
        assert row["perViewer"][0]["video"]["stampedFrames"] > 0
    assert {r["impl"] for r in report["cpu"]} == {"ours", "baseline"}
    for impl in ("ours", "baseline"):
        assert report["ttff"][impl]["firstSummary"]["median"] > 0
        assert report["ttff"][impl]["joiningSummary"]["median"] > 0
    assert report["environment"]["cpuCount"] >= 1
    printed = capsys.readouterr().out
    assert "ours CPU" in printed and "Targets" in printed
