"""Typed keys of the signer's ``web.Application`` state, in one place."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..channel import ChannelResolver
from .auth import Authorizer
from .config import SignerConfig

__all__ = ["authorizer_key", "clock_key", "config_key", "resolver_key"]

config_key = web.AppKey("config", SignerConfig)
resolver_key = web.AppKey("resolver", ChannelResolver)
authorizer_key = web.AppKey("authorizer", Authorizer)
clock_key: web.AppKey[Callable[[], float]] = web.AppKey("clock")
"""Monotonic clock for rate limits (injectable in tests)."""
