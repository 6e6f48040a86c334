"""Time to first frame of a fresh viewer: ``kvs-peer viewer`` next to the JS SDK in Chromium.

::

    .venv/bin/python -m benchmarks.connect --rounds 5 --json connect.json

One run, one master per case: ``kvs-peer local --tls`` and ``kvs-peer master --source
testsrc`` as child processes. Then, alternating round by round:

* **kvs-peer cold**: ``kvs-peer viewer`` as a fresh process with an empty channel cache
  directory (DescribeSignalingChannel and GetSignalingChannelEndpoint are called);
* **kvs-peer warm**: the same with a channel cache written by an earlier run (a restart);
* **chromium**: a fresh headless Chromium loads the browser tests' page
  (tests/browser/kvs_page.js, the official SDK's ``SignalingClient``, trickle ICE) and starts
  a viewer with a URL and ICE servers presigned by this process just before.

Two clocks for each run. ``connectMs``: from the start of the connection (``Viewer.start()``;
the page's ``startViewer()``) to the first decoded frame (kvs-peer's first frame out of the
decoder; the page's first presented frame, ``requestVideoFrameCallback``). ``processMs``:
from spawning the process (kvs-peer; Chromium's launch) to the same frame, so it includes
Python's imports and the browser's start and page load. kvs-peer's phases come from
``viewer --json`` (``phases``, milliseconds since ``Viewer.start()``).

Cases: ``host`` (no ICE servers), ``turn`` (coturn from ``kvs-peer local --turn``, listed as
KVS lists its own), ``closed`` (one TURN server on a loopback UDP port nobody listens on) and
``silent`` (one TURN server on a UDP socket this process opens and never answers).

A measurement, not a test: the exit code is 0 whether the targets pass or not (2 for bad
arguments, 1 if the harness broke).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import BenchmarkError, add_output_options, finish, pass_fail, summarize

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT
"""Where the kvs-peer children run from (``--source-tree``: an older checkout, for a
before/after comparison)."""
KVS_PEER = [sys.executable, "-m", "kvs_peer"]
CHANNEL = "connect-bench"
CASES = ("host", "turn", "closed", "silent")
KINDS = ("cold", "warm", "chromium")
ACCESS_KEY = "AKIALOCALKVSPEER0000"
SECRET_KEY = "kvs-peer-local-secret"
REGION = "us-east-1"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _env(cache_dir: Path | None, ca: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KVS_PEER_"))}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CA_BUNDLE=str(ca),
        SSL_CERT_FILE=str(ca),  # Python's default TLS context (the wss:// socket) reads it
        PYTHONUNBUFFERED="1",
    )
    if SOURCE != ROOT:
        env["PYTHONPATH"] = str(SOURCE)
    if cache_dir is not None:
        env["KVS_PEER_CACHE_DIR"] = str(cache_dir)
    return env


def _spawn(
    args: list[str],
    log: Path,
    env: dict[str, str],
    *,
    stdout: int = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """A kvs-peer child process whose stderr goes to ``log``."""
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*KVS_PEER, *args], stdout=stdout, stderr=err, text=True, cwd=cwd or SOURCE, env=env
        )


class Emulator:
    """``kvs-peer local --tls`` as a child process, and the master streaming to it."""

    def __init__(self, case: str, workdir: Path, log_dir: Path) -> None:
        self.case = case
        self.workdir = workdir
        self.log_dir = log_dir
        self.local: subprocess.Popen[str] | None = None
        self.master: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.ca = Path()
        self.cert = Path()
        self._silent: socket.socket | None = None

    def _ice_args(self) -> list[str]:
        if self.case == "turn":
            return ["--turn", "--turn-port", "0"]
        if self.case == "closed":
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()  # nobody listens there now: ICMP port unreachable
            return ["--ice-server", f"turn:127.0.0.1:{port}?transport=udp"]
        if self.case == "silent":
            self._silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._silent.bind(("127.0.0.1", 0))  # receives, never answers: like a blocked port
            port = self._silent.getsockname()[1]
            return ["--ice-server", f"turn:127.0.0.1:{port}?transport=udp"]
        return []

    async def start(self) -> None:
        log = self.log_dir / f"local-{self.case}.log"
        self.local = await asyncio.to_thread(
            _spawn,
            ["local", "--tls", "--port", "0", "--channel", CHANNEL, *self._ice_args()],
            log,
            # The emulator always from this checkout: only the peers are compared.
            {k: v for k, v in _env(None, Path("/nonexistent")).items() if k != "PYTHONPATH"},
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.local.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(self.local.stdout.readline)
            if not line:
                raise BenchmarkError(f"kvs-peer local exited; see {log}")
            if m := re.search(r"listening on (\S+)", line):
                self.endpoint = m.group(1)
            if m := re.search(r"TLS CA certificate \(trust it in clients\): (\S+)", line):
                self.ca = Path(m.group(1))
                self.cert = self.ca.with_name("cert.pem")
            if line.startswith("Press Ctrl+C"):
                break
        if not self.endpoint or not self.ca.name:
            raise BenchmarkError(f"kvs-peer local printed no endpoint/CA; see {log}")
        path = self.log_dir / f"master-{self.case}.log"
        env = _env(self.workdir / "master-cache", self.ca)
        self.master = await asyncio.to_thread(
            _spawn,
            [
                "master",
                "--channel",
                CHANNEL,
                "--endpoint-url",
                self.endpoint,
                "-v",
                "--source",
                "testsrc",
            ],
            path,
            env,
        )
        # The master is up once its signaling connected.
        deadline = time.monotonic() + 20
        while "signaling connected" not in await asyncio.to_thread(path.read_text):
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the master did not connect; see {path}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # encoder warm, first keyframes out

    def spki_sha256(self) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    async def close(self) -> None:
        for proc in (self.master, self.local):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self._silent is not None:
            self._silent.close()


async def run_kvs_peer(
    emulator: Emulator, cache_dir: Path, duration: float, log_dir: Path, name: str
) -> dict[str, Any]:
    """One ``kvs-peer viewer`` process; its first frame from the process's own log line."""
    env = _env(cache_dir, emulator.ca)
    log_path = log_dir / f"{name}.log"
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        *KVS_PEER,
        "viewer",
        "--channel",
        CHANNEL,
        "--endpoint-url",
        emulator.endpoint,
        "--duration",
        str(duration),
        "--json",
        "-v",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=SOURCE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), duration + 60)
    log_path.write_bytes(err)
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchmarkError(f"kvs-peer viewer printed no JSON; see {log_path}") from None
    first_frame_wall = None
    for line in err.decode(errors="replace").splitlines():
        if "first frame after" in line and (m := _LOG_TIME.match(line)):
            stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            first_frame_wall = stamp + int(m.group(2)) / 1000
            break
    ttff = report.get("timeToFirstFrame")
    return {
        "ok": ttff is not None,
        "connectMs": round(ttff * 1000, 1) if ttff is not None else None,
        "processMs": (
            round((first_frame_wall - started) * 1000, 1) if first_frame_wall is not None else None
        ),
        "phases": report.get("phases"),
        "problem": report.get("problem"),
    }


class Browser:
    """Playwright, the page server and what a Chromium viewer needs."""

    def __init__(self, chromium: str, sdk: Path) -> None:
        self.chromium = chromium
        self.sdk = sdk
        self._playwright: Any = None
        self._runner: Any = None
        self.page_url = ""

    async def start(self) -> None:
        from aiohttp import web
        from browser_page import PAGE_PATH, add_page_routes
        from playwright.async_api import async_playwright

        app = web.Application()
        add_page_routes(app, self.sdk)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.page_url = f"http://127.0.0.1:{port}{PAGE_PATH}"
        self._playwright = await async_playwright().start()

    async def run(self, emulator: Emulator, resolver: Any, round_no: int) -> dict[str, Any]:
        from browser_page import chromium_args

        client_id = f"chromium-{emulator.case}-{round_no}"
        resolved = await resolver.resolve(CHANNEL, "VIEWER", client_id=client_id)
        options = {
            "channelArn": resolved.arn,
            "endpoint": resolved.wss_endpoint,
            "region": REGION,
            "clientId": client_id,
            "signedUrl": resolver.sign(resolved, client_id=client_id),
            "iceServers": [s.to_json() for s in resolved.ice_servers],
        }
        launched = time.monotonic()
        browser = await self._playwright.chromium.launch(
            executable_path=self.chromium,
            headless=True,
            args=chromium_args(emulator.spki_sha256()),
        )
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(self.page_url)
            await page.wait_for_function("() => window.kvsTest !== undefined", timeout=10_000)
            loaded = time.monotonic()
            await page.evaluate("(o) => kvsTest.startViewer(o)", options)
            try:
                await page.wait_for_function(
                    "() => kvsTest.state.firstFrameMs !== null", timeout=30_000, polling=5
                )
            except Exception:
                state = await page.evaluate("() => kvsTest.state")
                return {"ok": False, "problem": json.dumps(state)[:500]}
            state = await page.evaluate("() => kvsTest.state")
            first = state["firstFrameMs"]
            events: dict[str, int] = {}
            for at, name, _ in state["events"]:
                events.setdefault(name, at)
            return {
                "ok": True,
                "connectMs": float(first),
                # The page's clock starts at startViewer(), just after `loaded`.
                "processMs": round((loaded - launched) * 1000 + first, 1),
                "launchAndLoadMs": round((loaded - launched) * 1000, 1),
                "events": events,
            }
        finally:
            await browser.close()

    async def close(self) -> None:
        if self._playwright is not None:
            await self._playwright.stop()
        if self._runner is not None:
            await self._runner.cleanup()


def _find_chromium() -> str | None:
    path = os.environ.get("KVS_PEER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


async def run_case(
    case: str, args: argparse.Namespace, browser: Browser | None, log_dir: Path
) -> dict[str, Any]:
    from kvs_peer.channel import ChannelResolver

    workdir = Path(tempfile.mkdtemp(prefix=f"kvs-connect-{case}-"))
    emulator = Emulator(case, workdir, log_dir)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    try:
        await emulator.start()
        warm = workdir / "warm-cache"
        # Fills the warm cache (and the OS page cache for every run's imports); not counted.
        await run_kvs_peer(emulator, warm, 0.5, log_dir, f"{case}-prime")
        import boto3

        session = boto3.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
        async with ChannelResolver(
            region=REGION, endpoint_url=emulator.endpoint, session=session, verify=str(emulator.ca)
        ) as resolver:
            for r in range(args.rounds):
                order = list(KINDS) if r % 2 == 0 else list(reversed(KINDS))
                for kind in order:
                    if kind == "chromium":
                        if browser is None:
                            continue
                        result = await browser.run(emulator, resolver, r)
                    else:
                        cache = warm if kind == "warm" else workdir / f"cold-{r}"
                        result = await run_kvs_peer(
                            emulator, cache, args.duration, log_dir, f"{case}-{kind}-{r}"
                        )
                    result["round"] = r
                    runs[kind].append(result)
                    shown = result.get("connectMs")
                    print(
                        f"  {case:7} round {r} {kind:8} connect {shown} ms, "
                        f"process {result.get('processMs')} ms",
                        flush=True,
                    )
                    # Chromium's processes wind down after close(): on 2 cores, a viewer
                    # started meanwhile measured 30-40 ms slower.
                    await asyncio.sleep(args.pause * (4 if kind == "chromium" else 1))
    finally:
        await emulator.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"runs": runs, "summary": summarize_case(runs)}


def summarize_case(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, items in runs.items():
        ok = [x for x in items if x.get("ok")]
        entry = {
            "connectMs": summarize(x["connectMs"] for x in ok),
            "processMs": summarize(x["processMs"] for x in ok if x.get("processMs") is not None),
            "failed": len(items) - len(ok),
        }
        if kind != "chromium" and ok:
            names = ok[0]["phases"].keys() if ok[0].get("phases") else ()
            entry["phasesMedianMs"] = {
                name: summarize(x["phases"][name] for x in ok if x["phases"].get(name) is not None)[
                    "median"
                ]
                for name in names
            }
        out[kind] = entry
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    cases = report["cases"]
    out: dict[str, Any] = {}
    host = cases.get("host", {}).get("summary")
    if host and "chromium" in host:
        chromium = host["chromium"]["connectMs"]["median"]
        for kind, target in (("warm", 0.7), ("cold", 1.0)):
            ours = host[kind]["connectMs"]["median"]
            ratio = _ratio(ours, chromium)
            out[f"{kind}VsChromium"] = {
                "oursMedianMs": ours,
                "chromiumMedianMs": chromium,
                "ratio": ratio,
                "target": target,
                "verdict": pass_fail(ratio, target),
                "processRatio": _ratio(
                    host[kind]["processMs"]["median"], host["chromium"]["processMs"]["median"]
                ),
            }
    if host:
        base = host["warm"]["connectMs"]["median"]
        for case in ("turn", "closed", "silent"):
            summary = cases.get(case, {}).get("summary")
            if not summary or base is None:
                continue
            ours = summary["warm"]["connectMs"]["median"]
            added = round(ours - base, 1) if ours is not None else None
            target = 50.0 if case == "turn" else 1000.0
            out[f"{case}AddedMs"] = {
                "hostMedianMs": base,
                "caseMedianMs": ours,
                "addedMs": added,
                "target": target,
                "verdict": pass_fail(added, target),
                "chromiumAddedMs": (
                    round(
                        summary["chromium"]["connectMs"]["median"]
                        - host["chromium"]["connectMs"]["median"],
                        1,
                    )
                    if "chromium" in summary
                    and summary["chromium"]["connectMs"]["median"] is not None
                    and host.get("chromium", {}).get("connectMs", {}).get("median") is not None
                    else None
                ),
            }
    return out


def print_report(report: dict[str, Any]) -> None:
    print("\nTime to first frame, ms (median [p25-p75]); connect = from start of connection,")
    print("process = from spawning the process (Python imports; Chromium launch + page load)")
    print(f"{'case':7} | {'kind':8} | {'connect':>20} | {'process':>20} | phases (median ms)")
    print("-" * 110)
    for case, data in report["cases"].items():
        for kind, s in data["summary"].items():
            c, p = s["connectMs"], s["processMs"]
            phases = s.get("phasesMedianMs") or {}
            text = ", ".join(f"{k} {v}" for k, v in phases.items())
            fail = f" ({s['failed']} failed)" if s["failed"] else ""
            print(
                f"{case:7} | {kind:8} | {c['median']!s:>6} [{c['p25']}-{c['p75']}]".ljust(42)
                + f" | {p['median']!s:>6} [{p['p25']}-{p['p75']}]".ljust(24)
                + f"| {text}{fail}"
            )
    print()
    for name, v in report["verdicts"].items():
        print(f"{name}: {json.dumps(v)}")


def environment() -> dict[str, Any]:
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return {
        "cpuCount": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gitCommit": commit or None,
        "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()],
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    log_dir: Path = args.log_dir
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    browser = None
    if args.chromium:
        sys.path.insert(0, str(ROOT / "tests"))
        sys.path.insert(0, str(ROOT / "tests" / "browser"))
        from js_sdk import ensure_sdk

        chromium = _find_chromium()
        if chromium is None:
            raise BenchmarkError("Chromium not found (apt-get install chromium, KVS_PEER_CHROMIUM)")
        browser = Browser(chromium, ensure_sdk())
        await browser.start()
    report: dict[str, Any] = {"environment": environment(), "settings": vars(args).copy()}
    report["settings"]["source_tree"] = str(SOURCE)
    report["cases"] = {}
    try:
        for case in args.cases:
            print(f"case {case}", flush=True)
            report["cases"][case] = await run_case(case, args, browser, log_dir)
    finally:
        if browser is not None:
            await browser.close()
    report["verdicts"] = verdicts(report)
    report["environment"]["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    report["logDir"] = str(log_dir)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.connect", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="rounds per case (default 5)")
    p.add_argument(
        "--cases",
        type=lambda s: [c for c in s.split(",") if c],
        default=list(CASES),
        help=f"comma-separated, from {','.join(CASES)} (default all)",
    )
    p.add_argument("--duration", type=float, default=1.0, help="seconds each viewer runs")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    p.add_argument("--no-chromium", dest="chromium", action="store_false")
    add_output_options(p, "connect", "child logs")
    p.add_argument(
        "--source-tree",
        type=Path,
        help="run the kvs-peer processes from this source tree (e.g. `git archive` of an older "
        "commit) to measure a 'before'; default: this checkout",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    global SOURCE
    args = parser().parse_args(argv)
    if args.source_tree is not None:
        SOURCE = args.source_tree.resolve()
    bad = [c for c in args.cases if c not in CASES]
    if bad or args.rounds < 1:
        parser().error(f"unknown case {bad}" if bad else "--rounds must be at least 1")
    args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="kvs-connect-logs-"))
    # default=str: the report echoes paths (log folder, source tree).
    return finish(amain(args), args.json, print_report, f"logs: {args.log_dir}", json_default=str)


if __name__ == "__main__":
    sys.exit(main())
