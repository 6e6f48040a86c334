"""deploy/: the files parse, and every command line in them is one kvs-peer accepts.

Docker and Kubernetes cannot run here; these checks catch what can be caught without them
(YAML syntax, a renamed flag, shard count vs replicas, a unit systemd refuses).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from support import MS

from kvs_peer.cli import build_parser
from kvs_peer.masterconfig import load_master_config
from kvs_peer.record.config import parse_config
from kvs_peer.record.shard import parse_shard

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _parses(argv: list[str]) -> None:
    """kvs-peer's own parser accepts ``argv`` (argparse exits 2 on an unknown flag)."""
    build_parser().parse_args(argv)


def _kubernetes() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    documents = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and "kind" in doc, path
            documents[doc["kind"]] = doc
    return documents


def test_kubernetes_manifests_parse_and_agree() -> None:
    docs = _kubernetes()
    assert {"StatefulSet", "Service", "ServiceMonitor", "ConfigMap", "ServiceAccount"} <= set(docs)
    statefulset = docs["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert args[0] == "record"
    _parses(args)
    # The shard count is the replica count; the ordinal comes from the pod's hostname.
    shard = args[args.index("--shard") + 1]
    replicas = statefulset["spec"]["replicas"]
    assert shard == f"auto/{replicas}"
    name = statefulset["metadata"]["name"]
    assert parse_shard(shard, hostname=f"{name}-{replicas - 1}").index == replicas - 1
    # Metrics: the container port, the Service and the ServiceMonitor use the same name.
    port = int(args[args.index("--metrics-port") + 1])
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    service = docs["Service"]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    monitor = docs["ServiceMonitor"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The config the pods read is valid, and its spool is the volume.
    config = parse_config(tomllib.loads(docs["ConfigMap"]["data"]["recorder.toml"]))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config.output.dir) == mounts["spool"]
    assert args[args.index("--config") + 1].startswith(mounts["config"] + "/")


def test_dockerfile_runs_the_kvs_peer_command() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)[1])
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.MULTILINE)[1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["kvs-peer"] and "kvs-peer" in scripts
    with pytest.raises(SystemExit) as exit_info:
        _parses(cmd)  # --help
    assert exit_info.value.code == 0
    # Not root at run time.
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0"))


def _exec_start(path: Path) -> list[str]:
    line = re.search(r"^ExecStart=(.+)$", path.read_text(), re.MULTILINE)[1]
    return shlex.split(re.sub(r"\$\{(\w+)\}", "x", line))


@pytest.mark.parametrize(
    "unit", ["kvs-peer-master@.service", "kvs-peer-signer.service", "kvs-peer-cameras.service"]
)
def test_systemd_units_run_real_commands(unit: str) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    argv = _exec_start(DEPLOY / "systemd" / unit)
    assert argv[0] == "/usr/local/bin/kvs-peer"
    _parses(argv[1:])
    for setting in ("Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert setting in text


def test_multi_camera_unit_reads_the_example_config() -> None:
    argv = _exec_start(DEPLOY / "systemd" / "kvs-peer-cameras.service")
    config_path = Path(argv[argv.index("--config") + 1])
    # The unit reads the installed copy of the example next to it.
    config = load_master_config(DEPLOY / "systemd" / config_path.name)
    assert config.channels == ("front-door", "garage")
    assert config.connection.signer and config.metrics.port
    assert all(camera.preset == "ultrafast" for camera in config.cameras)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    kvs_peer = Path(shutil.which("kvs-peer") or ROOT / ".venv" / "bin" / "kvs-peer")
    units = []
    for path in (DEPLOY / "systemd").glob("*.service"):
        # A template is verified as an instance; the binary must exist where the unit says.
        target = tmp_path / path.name.replace("@.", "@garage.")
        target.write_text(path.read_text().replace("/usr/local/bin/kvs-peer", str(kvs_peer)))
        units.append(str(target))
    result = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60_000 * MS
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr
