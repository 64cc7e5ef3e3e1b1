"""The result caches: a diagnosis is computed once per (pixels, model versions, options).

The key recipe and the interface the pipeline uses live in :mod:`avn.pipeline.caching`; here are
the implementations the gateway plugs in:

* :class:`RedisCache` when ``AVN_REDIS_URL`` is set: shared by every gateway replica, entries
  expire after ``AVN_CACHE_TTL_S``. Redis unreachable is never the client's problem: the request
  is served uncached, ONE warning is logged per outage, and Redis is tried again at most every
  ``AVN_REDIS_RETRY_S`` seconds (requests in between do not touch the network at all).
* :class:`LRUCache` otherwise: in-process, bounded to ``AVN_CACHE_ENTRIES`` results.
* :class:`NullCache` when ``AVN_CACHE_ENABLED=false`` (benchmarks).

All three have ``async get(key) -> bytes | None``, ``async put(key, value)``, ``stats`` (hits,
misses, errors) and ``async close()``. Redis is called through its thread-safe synchronous client
on a worker thread: the event loop never blocks on the network, and one client serves every loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from avn.pipeline.caching import CacheStats, ResultCache, cache_key  # noqa: F401 — part of this module's API
from gateway.settings import redacted_url

logger = logging.getLogger(__name__)

REDIS_PREFIX = "avn:result:"
# Redis is on the same network as the gateway: anything slower than this is an outage, and a
# request must not wait on it.
REDIS_CONNECT_TIMEOUT_S = 0.25
REDIS_SOCKET_TIMEOUT_S = 0.5


class NullCache:
    """No caching: every lookup misses."""

    def __init__(self) -> None:
        self.stats = CacheStats()

    async def get(self, key: str) -> bytes | None:
        self.stats.misses += 1
        return None

    async def put(self, key: str, value: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


class LRUCache:
    """In-process, least-recently-used first out, at most ``max_entries`` results."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()  # the gRPC and REST servers may share it from several threads

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return value

    async def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._entries[key] = bytes(value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def close(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisCache:
    """Results in Redis under ``avn:result:<key>`` with a TTL; an outage degrades to no caching."""

    def __init__(self, url: str, ttl_s: int = 24 * 3600, retry_s: float = 5.0) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.stats = CacheStats()
        # One immediate retry: a pooled connection Redis dropped (restart) reconnects at once;
        # redis-py's default back-off retries would hold requests for seconds during an outage.
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._state = threading.Lock()
        self._down = False
        self._next_try = 0.0

    @property
    def available(self) -> bool:
        """False during an outage (between the failure and the next successful call)."""
        return not self._down

    async def get(self, key: str) -> bytes | None:
        value = await self._guarded(self._client.get, REDIS_PREFIX + key)
        if value is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return bytes(value)

    async def put(self, key: str, value: bytes) -> None:
        await self._guarded(self._client.set, REDIS_PREFIX + key, bytes(value), ex=self.ttl_s)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def _guarded(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis call off the event loop; during an outage skip it (None) until the next try."""
        if not self._may_try():
            return None
        try:
            result = await asyncio.to_thread(operation, *args, **kwargs)
        except (redis.RedisError, OSError) as error:
            self._failed(error)
            return None
        self._succeeded()
        return result

    def _may_try(self) -> bool:
        with self._state:
            if not self._down:
                return True
            now = time.monotonic()
            if now < self._next_try:
                return False
            # This call probes Redis; concurrent ones keep skipping until it reports back.
            self._next_try = now + self.retry_s
            return True

    def _failed(self, error: Exception) -> None:
        with self._state:
            self.stats.errors += 1
            first = not self._down
            self._down = True
            self._next_try = time.monotonic() + self.retry_s
        if first:
            logger.warning(
                "Redis cache at %s unreachable (%s: %s); serving uncached, retrying every %g s",
                redacted_url(self.url),
                type(error).__name__,
                error,
                self.retry_s,
            )

    def _succeeded(self) -> None:
        with self._state:
            recovered = self._down
            self._down = False
        if recovered:
            logger.info("Redis cache at %s reachable again; caching resumed", redacted_url(self.url))


def build_cache(settings: Any) -> ResultCache:
    """The cache :class:`gateway.settings.Settings` asks for: Redis, in-process LRU, or none."""
    if not settings.cache_enabled:
        return NullCache()
    if settings.redis_url:
        return RedisCache(settings.redis_url, ttl_s=settings.cache_ttl_s, retry_s=settings.redis_retry_s)
    return LRUCache(settings.cache_entries)
