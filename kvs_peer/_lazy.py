"""Lazy package exports: names imported from their submodule on first use.

Keeps ``import kvs_peer`` (and the pytest plugin, loaded in every test run where kvs-peer is
installed) from importing aiortc, PyAV or aiohttp until they are needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` for ``{name: submodule}``.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``; a loaded name is cached there.
        exports: exported name -> submodule (relative, without the dot).
    """

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{submodule}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
