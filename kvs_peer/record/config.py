"""``kvs-peer record`` settings: the TOML file format, parsed and validated. Pure.

:data:`CONFIG_EXAMPLE` is a complete file (``kvs-peer record --config-example`` prints it);
``channels``, ``[output] dir`` and ``[s3] bucket`` are required.

Unknown keys are errors, so a typo never silently changes where recordings go.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..endpoints import ENDPOINT_URL_ENV
from ..errors import InvalidArgument
from ..rules import validate_channel_name
from ..tomlconfig import (
    check_keys,
    config_bool,
    config_channel_glob,
    config_error,
    config_url,
    load_toml_config,
)

__all__ = [
    "CONFIG_EXAMPLE",
    "STORAGE_CLASSES",
    "OutputConfig",
    "RecordConfig",
    "S3Config",
    "is_glob",
    "load_config",
    "parse_config",
    "parse_size",
    "with_environment",
]

CONFIG_EXAMPLE = """\
region = "eu-west-1"                 # else AWS_REGION / ~/.aws/config
# endpoint_url = "http://127.0.0.1:4577"   # control plane (a local emulator;
                                     # else env KVS_PEER_ENDPOINT_URL)
# profile = "recorder"                 # AWS profile (else the default credential chain)
# signer_url = "https://signer.example.com"  # signed URLs from a signer instead
# token_file = "/run/secrets/kvs-token"      # its bearer token (or KVS_PEER_SIGNER_TOKEN)
channels = ["garage", "cam-*"]       # exact names, or globs (ListSignalingChannels)
processes = 2                        # worker processes (default: one per core)
loopback_candidates = false          # also offer 127.0.0.1 (hosts with only lo)

[output]
dir = "/var/spool/kvs-peer"          # the spool (relative paths: to this file)
segment_seconds = 60                 # one file per this many seconds of video
max_bytes = "20GiB"                  # spool limit: oldest segments go first past it
max_age = 0                          # seconds an uploaded segment stays; 0: removed at once
audio = false                        # also record audio (Opus)

[s3]
bucket = "my-recordings"
prefix = "kvs"                       # keys: <prefix>/<channel>/<UTC start>.mkv
region = "eu-west-1"                 # default: the top-level region
# endpoint_url = "http://127.0.0.1:9000"   # S3-compatible storage, a test server
storage_class = "STANDARD_IA"        # default: the bucket's (STANDARD)
upload_threads = 4                   # parallel uploads
max_retry_interval = 30              # seconds between retries while S3 fails, at most
"""
"""A commented example of the file: every key, with what it does."""

STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "GLACIER_IR",
        "OUTPOSTS",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)
"""S3 ``StorageClass`` values (PutObject)."""

MIN_SEGMENT_SECONDS = 1.0
MAX_SEGMENT_SECONDS = 3600.0
DEFAULT_MAX_BYTES = 10 * 1024**3

_GLOB_CHARS = frozenset("*?[")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?", re.IGNORECASE)
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")

_TOP_KEYS = {
    "region",
    "endpoint_url",
    "profile",
    "signer_url",
    "token_file",
    "token",
    "channels",
    "processes",
    "loopback_candidates",
    "output",
    "s3",
}
_OUTPUT_KEYS = {"dir", "segment_seconds", "max_bytes", "max_age", "audio"}
_S3_KEYS = {
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "storage_class",
    "upload_threads",
    "max_retry_interval",
}


def is_glob(pattern: str) -> bool:
    """Whether a ``channels`` entry is a glob (resolved with ListSignalingChannels)."""
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """The local spool: where segments are written until S3 has them."""

    dir: Path
    segment_seconds: float = 60.0
    max_bytes: int = DEFAULT_MAX_BYTES
    """Spool size limit. Past it, segments are deleted oldest first (uploaded ones before
    those S3 does not have yet, which is logged as an error): the spool never fills the disk."""
    max_age: float = 0.0
    """Seconds an uploaded segment stays in the spool (a local copy); 0 deletes it as soon as
    S3 confirmed it. Segments not uploaded yet never expire by age."""
    audio: bool = False


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where finished segments go: ``s3://bucket/prefix/<channel>/<UTC start>.mkv``."""

    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    storage_class: str | None = None
    upload_threads: int = 4
    max_retry_interval: float = 30.0
    """Longest wait between upload attempts while S3 keeps failing (backoff from 0.5 s)."""

    def key(self, channel: str, name: str) -> str:
        """The object key of segment file ``name`` of ``channel``."""
        return "/".join(part for part in (self.prefix, channel, name) if part)


@dataclass(frozen=True)
class RecordConfig:
    """Everything ``kvs-peer record`` needs besides credentials.

    Build it with :func:`load_config` (TOML file) or :func:`parse_config` (a mapping).
    """

    channels: tuple[str, ...]
    """Exact channel names and globs, as written."""
    output: OutputConfig
    s3: S3Config
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    signer_url: str | None = None
    token_file: Path | None = None
    processes: int | None = None
    """Worker processes; None: one per core (never more than channels)."""
    loopback_candidates: bool = False

    @property
    def exact_channels(self) -> tuple[str, ...]:
        """The entries of ``channels`` that are names (recorded as written, never matched
        as prefixes)."""
        return tuple(c for c in self.channels if not is_glob(c))

    @property
    def globs(self) -> tuple[str, ...]:
        """The entries of ``channels`` that are globs."""
        return tuple(c for c in self.channels if is_glob(c))


# -- parsing -----------------------------------------------------------------------------------


def _number(where: str, value: Any, low: float, high: float, unit: str = "seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise config_error(where, f"must be a number of {unit}")
    if not low <= value <= high:
        raise config_error(where, f"must be from {low:g} to {high:g} {unit}, got {value}")
    return float(value)


def _whole(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise config_error(where, f"must be a whole number from {low} to {high}")
    return value


def _text(where: str, value: Any, hint: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise config_error(where, hint)
    return value


def parse_size(value: Any, *, where: str = "max_bytes") -> int:
    """A size in bytes from an integer or a string such as ``"500MB"`` or ``"20GiB"``.

    ``K``, ``M``, ``G``, ``T`` are powers of 1000; with ``i`` (``GiB``) powers of 1024.

    Raises:
        InvalidArgument: not a positive size.
    """
    if isinstance(value, bool):
        raise config_error(where, 'must be a size in bytes (e.g. 20000000000 or "20GB")')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value.strip())):
        number, unit, binary = match.groups()
        base = 1024 if binary else 1000
        size = int(float(number) * base ** " KMGT".index(unit.upper() or " "))
    else:
        raise config_error(where, f'{value!r} is not a size: write bytes or e.g. "500MB", "20GiB"')
    if size < 1024 * 1024:
        raise config_error(where, f"must be at least 1 MiB (1048576 bytes), got {size}")
    return size


def _channels(value: Any) -> tuple[str, ...]:
    where = "channels"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise config_error(where, "must be a non-empty list of channel names or globs")
    seen: list[str] = []
    for entry in value:
        if is_glob(entry):
            config_channel_glob(where, entry)
        else:
            try:
                validate_channel_name(entry)
            except InvalidArgument as exc:
                raise config_error(where, str(exc)) from None
            if entry in (".", ".."):
                # Each channel gets a folder in the spool named after it.
                raise config_error(where, f"{entry!r} cannot be recorded: it is not a folder name")
        if entry not in seen:
            seen.append(entry)
    return tuple(seen)


def _output(data: Any, base_dir: Path | None) -> OutputConfig:
    table = check_keys("output", data, _OUTPUT_KEYS)
    if "dir" not in table:
        raise config_error(
            "output", "missing 'dir' (the spool folder, e.g. dir = \"/var/spool/kvs\")"
        )
    directory = Path(_text("output.dir", table["dir"], "must be a folder path"))
    if base_dir is not None and not directory.is_absolute():
        directory = base_dir / directory
    return OutputConfig(
        dir=directory,
        segment_seconds=_number(
            "output.segment_seconds",
            table.get("segment_seconds", 60),
            MIN_SEGMENT_SECONDS,
            MAX_SEGMENT_SECONDS,
        ),
        max_bytes=parse_size(table.get("max_bytes", DEFAULT_MAX_BYTES), where="output.max_bytes"),
        max_age=_number("output.max_age", table.get("max_age", 0), 0, 365 * 86400),
        audio=config_bool("output.audio", table.get("audio", False)),
    )


def _s3(data: Any, region: str | None) -> S3Config:
    table = check_keys("s3", data, _S3_KEYS)
    if "bucket" not in table:
        raise config_error("s3", "missing 'bucket' (where segments are uploaded)")
    bucket = table["bucket"]
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
        raise config_error(
            "s3.bucket",
            f"{bucket!r} is not a bucket name: 3-63 of a-z, 0-9, '.', '-' (no s3:// and no "
            "path: put the path in prefix)",
        )
    prefix = table.get("prefix", "")
    if not isinstance(prefix, str) or ".." in prefix.split("/"):
        raise config_error("s3.prefix", 'must be a string such as "recordings/site-1"')
    storage_class = table.get("storage_class")
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise config_error(
            "s3.storage_class",
            f"{storage_class!r} is not an S3 storage class (one of "
            f"{', '.join(sorted(STORAGE_CLASSES))})",
        )
    s3_region = table.get("region")
    if s3_region is not None:
        _text("s3.region", s3_region, "must be a region name such as 'us-west-2'")
    endpoint = table.get("endpoint_url")
    return S3Config(
        bucket=bucket,
        prefix=prefix.strip("/"),
        region=s3_region or region,
        endpoint_url=None if endpoint is None else config_url("s3.endpoint_url", endpoint),
        storage_class=storage_class,
        upload_threads=_whole("s3.upload_threads", table.get("upload_threads", 4), 1, 64),
        max_retry_interval=_number(
            "s3.max_retry_interval", table.get("max_retry_interval", 30), 0.1, 3600
        ),
    )


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> RecordConfig:
    """Validate a parsed TOML document (or any mapping) into a :class:`RecordConfig`.

    Args:
        data: the document.
        base_dir: directory a relative ``output.dir`` or ``token_file`` starts from (the
            config file's).

    Raises:
        InvalidArgument: naming the key that is wrong and how to fix it.
    """
    data = check_keys("config", data, _TOP_KEYS)
    if "token" in data:
        raise config_error(
            "token",
            "keep the signer token out of the config: put it in a file and set token_file, "
            "or set KVS_PEER_SIGNER_TOKEN",
        )
    if "channels" not in data:
        raise config_error(
            "config", "missing 'channels' (names or globs of the channels to record)"
        )
    for table in ("output", "s3"):
        if table not in data:
            raise config_error("config", f"missing the [{table}] table")
    region = data.get("region")
    if region is not None:
        _text("region", region, "must be a region name such as 'us-west-2'")
    endpoint = data.get("endpoint_url")
    profile = data.get("profile")
    if profile is not None:
        _text("profile", profile, "must be the name of an AWS profile")
    signer_url = data.get("signer_url")
    if signer_url is not None:
        config_url("signer_url", signer_url)
        if endpoint is not None or profile is not None:
            raise config_error(
                "signer_url",
                "a signer replaces AWS credentials for signaling: drop endpoint_url and "
                "profile, or drop signer_url",
            )
    token_file = data.get("token_file")
    token_path = None
    if token_file is not None:
        if signer_url is None:
            raise config_error("token_file", "only makes sense with signer_url")
        token_path = Path(_text("token_file", token_file, "must be a file path"))
        if base_dir is not None and not token_path.is_absolute():
            token_path = base_dir / token_path
    channels = _channels(data["channels"])
    if signer_url is not None and any(is_glob(c) for c in channels):
        raise config_error(
            "channels",
            "globs need ListSignalingChannels, which a signer does not offer: list the "
            "channel names, or use AWS credentials instead of signer_url",
        )
    processes = data.get("processes")
    return RecordConfig(
        channels=channels,
        output=_output(data["output"], base_dir),
        s3=_s3(data["s3"], region),
        region=region,
        endpoint_url=None if endpoint is None else config_url("endpoint_url", endpoint),
        profile=profile,
        signer_url=signer_url,
        token_file=token_path,
        processes=None if processes is None else _whole("processes", processes, 1, 1024),
        loopback_candidates=config_bool(
            "loopback_candidates", data.get("loopback_candidates", False)
        ),
    )


def load_config(path: str | Path) -> RecordConfig:
    """Read and validate a recorder TOML file.

    Raises:
        InvalidArgument: the file is missing, not TOML, or has a wrong key (the message names
            the file and the key).
    """
    return load_toml_config(path, parse_config, what="recorder config", command="record")


def with_environment(config: RecordConfig, environ: Mapping[str, str]) -> RecordConfig:
    """``config`` with what the environment sets where the file sets nothing.

    That is the control-plane endpoint from :data:`ENDPOINT_URL_ENV`, as the other
    commands read it; the file's ``endpoint_url`` wins, and a ``signer_url`` needs none.
    The supervisor and its worker processes both call this with the environment the
    workers inherit, so they reach the same endpoint. (Region, credentials and
    ``AWS_CA_BUNDLE`` reach the workers the same way and are read by boto3 and kvs-peer's
    clients themselves.)

    Raises:
        InvalidArgument: the variable is set but not an http(s) URL.
    """
    endpoint = environ.get(ENDPOINT_URL_ENV)
    if not endpoint or config.endpoint_url is not None or config.signer_url is not None:
        return config
    return replace(config, endpoint_url=config_url(ENDPOINT_URL_ENV, endpoint))
