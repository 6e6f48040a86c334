"""Reading the TOML config files of kvs-peer's services (master, signer, recorder), with one
error style, and the ``--config-example`` option that prints a commented example of each.

Every error names the file and the key, so a typo in a config is found from the message alone.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import InvalidArgument
from .rules import ID_CHARS, ID_RULE, MAX_ID_LENGTH

T = TypeVar("T")


def config_error(where: str, message: str) -> InvalidArgument:
    """An error about the config key ``where``."""
    return InvalidArgument(f"{where}: {message}")


def check_keys(where: str, table: Any, allowed: set[str]) -> Mapping[str, Any]:
    """``table`` as a mapping, refusing any key outside ``allowed`` (unknown keys are errors)."""
    if not isinstance(table, Mapping):
        raise config_error(where, "must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise config_error(
            where,
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    return table


def load_toml_config(
    path: str | Path,
    parse: Callable[..., T],
    *,
    what: str,
    command: str,
) -> T:
    """Read the TOML file at ``path`` and hand it to ``parse(data, base_dir=...)``.

    Args:
        path: the file.
        parse: validates the decoded data; its errors get the file's name in front.
        what: the file's kind in messages, e.g. ``"signer config"``.
        command: the ``kvs-peer`` subcommand that reads the file, whose ``--config-example``
            the not-found hint names.

    Raises:
        InvalidArgument: the file is missing, unreadable, not TOML, or refused by ``parse``.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(
            f"{what} {str(path)!r} not found: pass --config with the path of a TOML file "
            f"(`kvs-peer {command} --config-example` prints a commented example)"
        ) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{what} {str(path)!r} is not valid TOML: {exc}") from None
    try:
        return parse(data, base_dir=path.parent)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what} {str(path)!r}: {exc}") from None


def config_bool(where: str, value: Any) -> bool:
    """``value`` if it is a TOML boolean, else an error naming ``where``."""
    if not isinstance(value, bool):
        raise config_error(where, f"must be true or false, got {value!r}")
    return value


def config_url(where: str, value: Any) -> str:
    """``value`` if it is an http(s) URL with a host, else an error naming ``where``."""
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise config_error(where, f"must be an http:// or https:// URL with a host, got {value!r}")


# Wildcards first: ID_CHARS ends with a literal '-', which would become a range before them.
_CHANNEL_GLOB_RE = re.compile(rf"[*?\[\]!{ID_CHARS}]{{1,{MAX_ID_LENGTH}}}")


def config_channel_glob(where: str, value: str) -> str:
    """``value`` if it is an fnmatch glob over channel names, else an error naming ``where``.

    Only channel-name characters (:data:`~kvs_peer.rules.ID_CHARS`) and the wildcards
    ``* ? [...]`` are allowed, so a pattern such as ``cam/*`` is refused rather than
    matching nothing.
    """
    if not _CHANNEL_GLOB_RE.fullmatch(value):
        raise config_error(
            where, f"{value!r} is not a channel glob: use {ID_RULE} and the wildcards * ? [...]"
        )
    return value


class _PrintExample(argparse.Action):
    """``--config-example``: print the example and exit, as ``--version`` does (so it works
    without the options a command otherwise requires)."""

    def __init__(self, option_strings: Sequence[str], dest: str, example: str, **kw: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.example = example

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        sys.stdout.write(self.example)
        parser.exit()


def add_config_example_option(parser: argparse.ArgumentParser, example: str) -> None:
    """Add ``--config-example`` to ``parser``: it prints ``example`` (a commented TOML file)."""
    parser.add_argument(
        "--config-example",
        action=_PrintExample,
        example=example,
        help="print a commented example of the --config file and exit",
    )
