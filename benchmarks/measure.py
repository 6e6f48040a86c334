"""Tools shared by the benchmarks: CPU windows, statistics, worker processes, reports.

CPU is read the way the aiortc prototype did (docs/protocol.md#aiortc-notes):
``getrusage(RUSAGE_SELF)`` for the whole process (every thread, including threads that exited
during the window, e.g. x264 workers of an encoder that aiortc re-created), plus
``/proc/self/task/*/stat`` for a per-thread split of the live threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "BenchmarkError",
    "CpuSample",
    "JsonLines",
    "Worker",
    "add_output_options",
    "cpu_window",
    "finish",
    "machine_busy",
    "pass_fail",
    "percentile",
    "summarize",
]

_TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """The benchmark harness itself failed (a child died or stopped answering)."""


@dataclass(frozen=True)
class CpuSample:
    """Process CPU at one instant.

    Attributes:
        wall: ``time.monotonic()`` (one clock for every process on the machine).
        user: user CPU seconds of the whole process so far.
        system: system CPU seconds of the whole process so far.
        threads: CPU seconds of each live thread, by thread id.
        machine: (busy, total) jiffies of all CPUs from ``/proc/stat``, or None.
        labels: name of each live Python thread by native id (the rest are native threads).
    """

    wall: float
    user: float
    system: float
    threads: Mapping[int, float]
    machine: tuple[int, int] | None
    labels: Mapping[int, str]

    @classmethod
    def now(cls) -> CpuSample:
        """Sample this process."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall=time.monotonic(),
            user=usage.ru_utime,
            system=usage.ru_stime,
            threads=_thread_times(),
            machine=_machine_jiffies(),
            labels=_thread_labels(),
        )


RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where the benchmarks write their JSON unless told otherwise (not the current folder,
which is often the repository root)."""


def add_output_options(parser: argparse.ArgumentParser, name: str, logs: str) -> None:
    """``--json`` (default ``benchmarks/results/NAME.json``) and ``--log-dir`` (``logs``)."""
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help=f"output file (default benchmarks/results/{name}.json)",
    )
    parser.add_argument("--log-dir", type=Path, help=f"{logs} (default: a new temp folder)")


def write_report(path: Path, text: str) -> None:
    """Write a benchmark's JSON report to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def finish(
    run: Coroutine[Any, Any, dict[str, Any]],
    json_path: Path | str | None,
    show: Callable[[dict[str, Any]], None],
    where: str = "",
    *,
    echo: bool = False,
    json_default: Callable[[Any], Any] | None = None,
) -> int:
    """Run a benchmark to its report: print it with ``show``, write it as JSON to ``json_path``.

    Args:
        run: the benchmark's coroutine, returning the report.
        json_path: where the JSON goes (None: nowhere).
        show: prints the report's tables.
        where: what follows the JSON path in the last line (e.g. where the logs are).
        echo: also print the JSON itself, before the tables.
        json_default: ``json.dumps``'s ``default``, for reports that carry paths.

    Returns:
        The exit code: 1 (with the reason on stderr) when the harness broke, else 0, whether
        the targets passed or not.
    """
    try:
        report = asyncio.run(run)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2, default=json_default)
    if echo:
        print(text)
    show(report)
    if json_path is not None:
        write_report(Path(json_path), text + "\n")
        print(f"\nJSON: {json_path}" + (f"; {where}" if where else ""))
    return 0


def pass_fail(value: float | None, limit: float) -> str:
    """``PASS`` when ``value`` was measured and is at most ``limit``, else ``FAIL``."""
    return "PASS" if value is not None and value <= limit else "FAIL"


def _thread_times() -> dict[int, float]:
    times: dict[int, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return times
    for tid in tids:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread exited while we looked
        # The name field may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK
    return times


def _machine_jiffies() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy(start: CpuSample, end: CpuSample) -> float | None:
    """Cores busy on the whole machine between two samples (any process), or None."""
    if start.machine is None or end.machine is None:
        return None
    busy = end.machine[0] - start.machine[0]
    total = end.machine[1] - start.machine[1]
    if total <= 0:
        return None
    return busy / total * (os.cpu_count() or 1)


def _thread_labels() -> dict[int, str]:
    # Threads started by Python carry their Python name; everything else (x264's own
    # workers, libsrtp, ...) is native.
    labels: dict[int, str] = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        if thread is threading.main_thread():
            labels[thread.native_id] = "event loop (main thread)"
        else:
            labels[thread.native_id] = thread.name.rstrip("0123456789").rstrip("_-")
    return labels


def cpu_window(start: CpuSample, end: CpuSample) -> dict[str, Any]:
    """CPU used between two samples of this process, as cores (CPU-seconds per second).

    Returns:
        ``wall`` seconds, ``cores`` (user + system over wall), ``user``/``system`` seconds,
        ``machineCores`` (whole machine, all processes) and ``threads``: cores by thread
        label, with ``exited or unlisted`` for CPU of threads no longer alive at the end.
    """
    wall = end.wall - start.wall
    user = end.user - start.user
    system = end.system - start.system
    by_label: dict[str, float] = {}
    listed = 0.0
    for tid, seconds in end.threads.items():
        used = seconds - start.threads.get(tid, 0.0)
        listed += used
        label = end.labels.get(tid, "native (x264 workers, ...)")
        by_label[label] = by_label.get(label, 0.0) + used
    by_label["exited or unlisted"] = max(0.0, user + system - listed)
    busy = machine_busy(start, end)
    return {
        "wall": round(wall, 3),
        "user": round(user, 3),
        "system": round(system, 3),
        "cores": round((user + system) / wall, 4) if wall > 0 else None,
        "machineCores": round(busy, 3) if busy is not None else None,
        "threads": {k: round(v / wall, 4) for k, v in sorted(by_label.items()) if wall > 0},
    }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation, or None for no values."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summarize(values: Iterable[float], digits: int = 1) -> dict[str, Any]:
    """Median, quartiles, min and max of ``values`` (all None when there are none)."""
    data = list(values)

    def r(x: float | None) -> float | None:
        return round(x, digits) if x is not None else None

    return {
        "n": len(data),
        "median": r(statistics.median(data)) if data else None,
        "p25": r(percentile(data, 0.25)),
        "p75": r(percentile(data, 0.75)),
        "min": r(min(data)) if data else None,
        "max": r(max(data)) if data else None,
    }


class JsonLines:
    """The worker side of the control channel: commands on stdin, replies on stdout.

    The real stdout is kept for replies and fd 1 is pointed at stderr, so a stray print from
    any library cannot corrupt the protocol.
    """

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._reader: asyncio.StreamReader | None = None

    async def open(self) -> None:
        """Attach stdin to the running loop."""
        loop = asyncio.get_running_loop()
        self._reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), os.fdopen(0, "rb")
        )

    async def commands(self) -> Any:
        """Yield each command (a dict) until stdin closes."""
        assert self._reader is not None, "call open() first"
        while True:
            line = await self._reader.readline()
            if not line:
                return
            if line.strip():
                yield json.loads(line)

    def send(self, **message: Any) -> None:
        """Write one reply line."""
        self._out.write(json.dumps(message) + "\n")


@dataclass
class Worker:
    """The driver's side of a worker process and its JSON-lines control channel."""

    role: str
    """Names the worker in errors (``"master"`` gives "master worker exited ...")."""
    proc: asyncio.subprocess.Process
    log: Path
    """The worker's stderr."""

    @classmethod
    async def start(
        cls, role: str, module: list[str], log: Path, *, ready_timeout: float | None = 60.0
    ) -> Worker:
        """Start ``python -m MODULE...`` from this checkout, stderr to ``log``.

        With ``ready_timeout``, wait that long for its ``{"event": "ready"}`` line.

        Raises:
            BenchmarkError: the worker did not get ready.
        """
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *module,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        worker = cls(role, proc, log)
        if ready_timeout is not None:
            reply = await worker.read(ready_timeout)
            if reply.get("event") != "ready":
                await worker.kill()
                raise BenchmarkError(f"{role} worker did not start: {reply}; see {log}")
        return worker

    async def read(self, timeout: float) -> dict[str, Any]:
        """The worker's next JSON line.

        Raises:
            BenchmarkError: no line within ``timeout`` seconds, or the worker exited.
        """
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchmarkError(
                f"{self.role} worker gave no answer within {timeout:g} s; see {self.log}"
            ) from None
        if not line:
            await self.proc.wait()
            raise BenchmarkError(
                f"{self.role} worker exited (code {self.proc.returncode}); see {self.log}"
            )
        result: dict[str, Any] = json.loads(line)
        return result

    async def call(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send one command and return the worker's answer.

        Raises:
            BenchmarkError: no answer, the worker exited, or it answered with an error.
        """
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await self.read(timeout)
        if "error" in reply:
            raise BenchmarkError(f"{self.role} worker: {reply['error']}")
        return reply

    async def stop(self, grace: float = 20.0) -> None:
        """Ask the worker to quit; kill it if it has not exited after ``grace`` seconds."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        """Kill the worker process (only this worker's own process)."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
