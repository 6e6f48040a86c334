"""Typed keys of the signer's ``web.Application`` state, in one place."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..channel import ChannelResolver
from .auth import Authorizer
from .cache import ChannelCache
from .config import SignerConfig

__all__ = [
    "authorizer_key",
    "cache_key",
    "clock_key",
    "config_key",
    "resolver_key",
    "sign_executor_key",
]

config_key = web.AppKey("config", SignerConfig)
resolver_key = web.AppKey("resolver", ChannelResolver)
cache_key = web.AppKey("cache", ChannelCache)
authorizer_key = web.AppKey("authorizer", Authorizer)
sign_executor_key = web.AppKey("sign_executor", ThreadPoolExecutor)
"""Threads that only presign, so signing never queues behind blocking boto3 calls."""
clock_key: web.AppKey[Callable[[], float]] = web.AppKey("clock")
"""Monotonic clock for rate limits (injectable in tests)."""
