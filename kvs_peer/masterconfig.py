"""``kvs-peer master --config``: the master's options in a TOML file, for one or many cameras.

Pure: parses and validates, opens nothing. :data:`CONFIG_EXAMPLE` is a file for two cameras
(``kvs-peer master --config-example`` prints it).

Camera options are named as the ``master`` flags (``--max-viewers`` is ``max_viewers``;
``--no-reopen`` is ``reopen = false``). Unknown keys are errors. A value comes from, last
wins: the built-in default, ``[defaults]``, the camera's table, then the command line (see
:func:`apply_command_line`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InvalidArgument
from .media.presets import X264_PRESETS, parse_bitrate
from .rules import MAX_VIEWERS
from .signing import validate_channel_name
from .tomlconfig import check_keys, config_bool, config_error, config_url, load_toml_config

__all__ = [
    "CAMERA_DEFAULTS",
    "CONFIG_EXAMPLE",
    "CameraConfig",
    "ConnectionConfig",
    "GivenAction",
    "MasterConfig",
    "MetricsConfig",
    "apply_command_line",
    "config_from_command_line",
    "connection_from_args",
    "given_options",
    "load_master_config",
    "parse_master_config",
]

CONFIG_EXAMPLE = """\
[connection]                  # shared by every camera (all keys optional)
region = "eu-west-1"          # else AWS_REGION / ~/.aws/config
# endpoint_url = "http://127.0.0.1:4577"   # control-plane override (a local emulator)
create_channel = false
channel_cache = true
# signer = "https://signer.example.com"  # signed URLs from a signer instead of AWS keys
# token_file = "/etc/kvs-peer/token"     # its bearer token (or KVS_PEER_SIGNER_TOKEN)
loopback_candidates = false
relay_only = false

[metrics]                     # optional: as --metrics-port, --metrics-host, --stats-interval
port = 9101
host = "127.0.0.1"            # "0.0.0.0" exposes /metrics to every network this host is on
stats_interval = 60

[defaults]                    # any camera option, for every camera
preset = "ultrafast"
bitrate = "800k"              # bit/s: 800000, "800k" or "1.5M"

[[camera]]                    # one table per camera: channel, then its options
channel = "front-door"
source = "rtsp://192.168.1.20/stream1"

[[camera]]
channel = "garage"
source = "/dev/video0"
width = 1280
height = 720
fps = 15
"""
"""A commented example of the file: every key, with what it does."""

VIDEO_MODES = ("auto", "passthrough", "transcode")
SOURCE_FORMATS = ("h264",)


@dataclass(frozen=True)
class CameraConfig:
    """One camera: what the ``master`` flags of that name set (see ``kvs-peer master -h``)."""

    channel: str = ""
    source: str = "testsrc"
    source_format: str | None = None
    video_mode: str = "auto"
    encoder: str = "libx264"
    audio: str = "none"
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False
    reopen: bool = True
    bitrate: int = 1_000_000
    gop: int = 60
    preset: str = "veryfast"
    max_viewers: int = MAX_VIEWERS
    storage: bool = False


CAMERA_DEFAULTS = CameraConfig()
"""The built-in defaults of camera options (the ``master`` flags use them too)."""


@dataclass(frozen=True)
class ConnectionConfig:
    """How every camera reaches its channel (the shared ``connection`` flags)."""

    region: str | None = None
    endpoint_url: str | None = None
    create_channel: bool = False
    channel_cache: bool = True
    signer: str | None = None
    token: str | None = field(default=None, repr=False)
    """The signer's bearer token (read from ``token_file``, or ``--token``)."""
    loopback_candidates: bool = False
    relay_only: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    """``--metrics-port``, ``--metrics-host`` and ``--stats-interval``."""

    port: int | None = None
    host: str = "127.0.0.1"
    stats_interval: float | None = None


@dataclass(frozen=True)
class MasterConfig:
    """A parsed ``master`` config: cameras in file order, channels unique."""

    cameras: tuple[CameraConfig, ...]
    connection: ConnectionConfig = ConnectionConfig()
    metrics: MetricsConfig = MetricsConfig()
    connection_set: frozenset[str] = frozenset()
    """The connection options the file set: the others come from the command line's
    defaults, which may come from the environment (``KVS_PEER_ENDPOINT_URL``)."""

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.channel for c in self.cameras)


# -- values --------------------------------------------------------------------------------


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise config_error(where, "must be a non-empty string")
    return value


def _choice(choices: Sequence[str]) -> Any:
    def check(where: str, value: Any) -> str:
        if value not in choices:
            raise config_error(where, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _whole(low: int) -> Any:
    def check(where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_error(where, f"must be a whole number of at least {low}, got {value!r}")
        return value

    return check


def _bitrate(where: str, value: Any) -> int:
    if not isinstance(value, int | str):
        raise config_error(where, f'must be bits per second (800000 or "800k"), got {value!r}')
    try:
        return parse_bitrate(value)
    except ValueError as exc:
        raise config_error(where, str(exc)) from None


def _positive(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise config_error(where, f"must be a number, got {value!r}")
    if value <= 0:
        raise config_error(where, f"must be more than 0, got {value}")
    return float(value)


def _port(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise config_error(where, f"must be a port from 0 to 65535, got {value!r}")
    return value


def _interval(where: str, value: Any) -> float:
    seconds = _positive(where, value)
    if seconds < 0.1:
        raise config_error(where, f"must be at least 0.1 seconds, got {value}")
    return seconds


_CAMERA_KEYS: dict[str, Any] = {
    "source": _text,
    "source_format": _choice(SOURCE_FORMATS),
    "video_mode": _choice(VIDEO_MODES),
    "encoder": _text,
    "audio": _text,
    "width": _whole(16),
    "height": _whole(16),
    "fps": _positive,
    "loop": config_bool,
    "reopen": config_bool,
    "bitrate": _bitrate,
    "gop": _whole(1),
    "preset": _choice(X264_PRESETS),
    "max_viewers": _whole(1),
    "storage": config_bool,
}
_CONNECTION_KEYS: dict[str, Any] = {
    "region": _text,
    "endpoint_url": config_url,
    "create_channel": config_bool,
    "channel_cache": config_bool,
    "signer": config_url,
    "token_file": _text,
    "loopback_candidates": config_bool,
    "relay_only": config_bool,
}
_METRICS_KEYS: dict[str, Any] = {"port": _port, "host": _text, "stats_interval": _interval}
_TOP_KEYS = {"connection", "metrics", "defaults", "camera"}

CAMERA_OPTIONS = frozenset(_CAMERA_KEYS)
"""Camera option names: the ``argparse`` dests of the per-camera ``master`` flags."""
CONNECTION_OPTIONS = frozenset(
    {"region", "endpoint_url", "create_channel", "channel_cache", "signer", "token"}
    | {"loopback_candidates", "relay_only"}
)
"""``argparse`` dests of the shared flags (they override the file for every camera)."""
METRICS_OPTIONS = {
    "metrics_port": "port",
    "metrics_host": "host",
    "stats_interval": "stats_interval",
}
"""``argparse`` dest of each metrics flag, and its key in the ``[metrics]`` table."""


def _values(
    where: str, table: Any, checks: Mapping[str, Any], extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    table = check_keys(where, table, set(checks) | extra)
    return {
        key: checks[key](f"{where}.{key}", value) for key, value in table.items() if key in checks
    }


# -- the file --------------------------------------------------------------------------------


def parse_master_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> MasterConfig:
    """Validate decoded TOML (see the module docstring for the format).

    Args:
        data: the decoded file.
        base_dir: the file's folder: a relative ``token_file`` is read from there.

    Raises:
        InvalidArgument: an unknown key, a value of the wrong type, a camera without a
            channel, two cameras on one channel, no camera, an unreadable ``token_file``.
    """
    data = check_keys("config", data, _TOP_KEYS)
    connection = _values("connection", data.get("connection", {}), _CONNECTION_KEYS)
    token_file = connection.pop("token_file", None)
    if token_file is not None:
        connection["token"] = _read_token(Path(base_dir or ".") / token_file)
    metrics = _values("metrics", data.get("metrics", {}), _METRICS_KEYS)
    defaults = _values("defaults", data.get("defaults", {}), _CAMERA_KEYS)
    tables = data.get("camera")
    if tables is None:
        raise config_error(
            "config", "no [[camera]] table: add one per camera, each with its channel"
        )
    if not isinstance(tables, list) or not tables:
        raise config_error("camera", "must be [[camera]] tables, one per camera")
    cameras: list[CameraConfig] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"camera[{index}]"
        values = _values(where, table, _CAMERA_KEYS, frozenset({"channel"}))
        if "channel" not in table:
            raise config_error(where, "missing channel (the signaling channel it streams to)")
        try:
            channel = validate_channel_name(table["channel"])
        except InvalidArgument as exc:
            raise config_error(f"{where}.channel", str(exc)) from None
        if channel in seen:
            raise config_error(
                f"{where}.channel",
                f"{channel!r} is already camera[{seen[channel]}]'s: a channel has one master, "
                "so each camera needs its own channel",
            )
        seen[channel] = index
        cameras.append(CameraConfig(channel=channel, **{**defaults, **values}))
    _check_stdin(cameras)
    return MasterConfig(
        cameras=tuple(cameras),
        connection=ConnectionConfig(**connection),
        metrics=MetricsConfig(**metrics),
        connection_set=frozenset(connection),
    )


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise config_error("connection.token_file", f"{str(path)!r}: {exc.strerror}") from None
    if not token:
        raise config_error("connection.token_file", f"{str(path)!r} is empty")
    return token


def _check_stdin(cameras: Sequence[CameraConfig]) -> None:
    readers = [c.channel for c in cameras if c.source == "-"]
    if len(cameras) > 1 and readers:
        raise InvalidArgument(
            f"camera {readers[0]!r}: source '-' (stdin) works for one camera only: give each "
            "camera a FIFO or a device instead"
        )


def load_master_config(path: str | Path) -> MasterConfig:
    """Read and validate the ``master`` config at ``path``.

    Raises:
        InvalidArgument: the file is missing, not TOML, or wrong; the message names the
            file and the key.
    """
    return load_toml_config(path, parse_master_config, what="master config", command="master")


# -- the command line --------------------------------------------------------------------------


class GivenAction(argparse.Action):
    """Stores an option's value (or ``const`` with ``nargs=0``) and adds its dest to
    ``namespace.given_options``, so that only options the command line gave override the
    config file (a default can not tell ``--preset veryfast`` from no ``--preset``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given_options = {*getattr(namespace, "given_options", ()), self.dest}


def given_options(args: argparse.Namespace, defaults: Mapping[str, Any]) -> set[str]:
    """The options the command line gave: those :class:`GivenAction` saw, and those of
    ``defaults`` (dest to default) whose value differs from the default."""
    given = set(getattr(args, "given_options", ()))
    given |= {dest for dest, default in defaults.items() if getattr(args, dest, default) != default}
    return given


def _flag(dest: str) -> str:
    return {"reopen": "--no-reopen", "channel_cache": "--no-channel-cache"}.get(
        dest, "--" + dest.replace("_", "-")
    )


def apply_command_line(
    config: MasterConfig, args: argparse.Namespace, given: Iterable[str]
) -> MasterConfig:
    """``config`` with the options the command line gave (``given``: their dests) on top.

    Shared options (connection, metrics) override the file for every camera. ``--channel``
    picks one camera of the file. Camera options override the file for a single camera
    only: with several, which one they mean is ambiguous, and that is an error.

    Raises:
        InvalidArgument: ``--channel`` names no camera of the file, or camera options were
            given for several cameras.
    """
    given = set(given)
    cameras = config.cameras
    channel = getattr(args, "channel", None)
    if channel:
        cameras = tuple(c for c in cameras if c.channel == channel)
        if not cameras:
            raise InvalidArgument(
                f"--channel {channel!r} is not a camera of the config (it has "
                f"{', '.join(config.channels)}): --channel picks one of them"
            )
    overrides = {dest: getattr(args, dest) for dest in sorted(given & CAMERA_OPTIONS)}
    if overrides and len(cameras) > 1:
        flags = ", ".join(_flag(dest) for dest in overrides)
        raise InvalidArgument(
            f"{flags} would apply to {len(cameras)} cameras ({', '.join(config.channels)}): "
            "set it in the config's [defaults] or a [[camera]] table, or pick one camera "
            "with --channel"
        )
    cameras = tuple(replace(c, **overrides) for c in cameras)
    _check_stdin(cameras)
    # Precedence: the command line, the file, then the flags' defaults (and environment).
    from_args = connection_from_args(args)
    connection = replace(
        config.connection,
        **{
            dest: getattr(from_args, dest)
            for dest in sorted(CONNECTION_OPTIONS)
            if dest in given or dest not in config.connection_set
        },
    )
    metrics = replace(
        config.metrics,
        **{key: getattr(args, dest) for dest, key in METRICS_OPTIONS.items() if dest in given},
    )
    return replace(config, cameras=cameras, connection=connection, metrics=metrics)


def connection_from_args(args: argparse.Namespace) -> ConnectionConfig:
    """The connection flags of a command (``master``, ``viewer``) as a :class:`ConnectionConfig`."""
    return ConnectionConfig(
        **{dest: getattr(args, dest) for dest in CONNECTION_OPTIONS if hasattr(args, dest)}
    )


def config_from_command_line(args: argparse.Namespace) -> MasterConfig:
    """The one camera of a ``master`` run without ``--config``, from its flags."""
    camera = CameraConfig(**{f.name: getattr(args, f.name) for f in fields(CameraConfig)})
    metrics = MetricsConfig(
        **{key: getattr(args, dest) for dest, key in METRICS_OPTIONS.items() if hasattr(args, dest)}
    )
    return MasterConfig(cameras=(camera,), connection=connection_from_args(args), metrics=metrics)
