"""The result caches: a diagnosis is computed once per (pixels, model versions, options).

The key recipe and the interface the pipeline uses live in :mod:`avn.pipeline.caching`; here are
the implementations the gateway plugs in:

* :class:`RedisCache` when ``AVN_REDIS_URL`` is set: shared by every gateway replica, entries
  expire after ``AVN_CACHE_TTL_S``. Redis unreachable is never the client's problem: the request
  is served uncached, ONE warning is logged per outage, and Redis is tried again at most every
  ``AVN_REDIS_RETRY_S`` seconds (requests in between do not touch the network at all). Its
  password (``AVN_REDIS_PASSWORD``, ``AVN_REDIS_USERNAME`` for an ACL user) and TLS
  (``rediss://``, ``AVN_REDIS_CA_FILE``) come from the settings. Every value is signed
  (:class:`ValueSigner`, HMAC-SHA256 with ``AVN_CACHE_SECRET`` over the key and the value): an
  entry written by anyone without the secret, or moved to another key, or altered, is a miss —
  Redis is shared, and a forged diagnosis must never reach a client.
* :class:`LRUCache` otherwise: in-process, bounded to ``AVN_CACHE_ENTRIES`` results.
* :class:`NullCache` when ``AVN_CACHE_ENABLED=false`` (benchmarks).

All three have ``async get(key) -> bytes | None``, ``async put(key, value)``, ``stats`` (hits,
misses, errors) and ``async close()``. Redis is called through its thread-safe synchronous client
on a worker thread: the event loop never blocks on the network, and one client serves every loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
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
SIGNATURE_SCHEME = b"avn-cache-value-v1"
SIGNATURE_BYTES = hashlib.sha256().digest_size
REJECTION_LOG_EVERY_S = 60.0  # a flood of forged entries gets one warning a minute, not one each


class ValueSigner:
    """HMAC-SHA256 over (key, value): ``sign`` prefixes the value with its tag, ``verified`` gives
    the value back only when the tag is right for that key (constant-time comparison)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the cache secret must be at least 16 bytes")
        self._secret = secret

    def sign(self, key: str, value: bytes) -> bytes:
        return self._tag(key, value) + value

    def verified(self, key: str, stored: bytes) -> bytes | None:
        tag, value = stored[:SIGNATURE_BYTES], stored[SIGNATURE_BYTES:]
        if len(tag) == SIGNATURE_BYTES and hmac.compare_digest(tag, self._tag(key, value)):
            return value
        return None

    def _tag(self, key: str, value: bytes) -> bytes:
        # Length-prefixed key: no (key, value) pair shares its bytes with another.
        encoded = key.encode()
        message = SIGNATURE_SCHEME + len(encoded).to_bytes(4, "big") + encoded + value
        return hmac.new(self._secret, message, hashlib.sha256).digest()


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
    """Results in Redis under ``avn:result:<key>`` with a TTL, signed; an outage degrades to no caching.

    ``secret`` signs the values; without one a random secret is made, so that nothing this process
    did not write itself is believed (but replicas and restarts then share no entries).
    """

    def __init__(
        self,
        url: str,
        ttl_s: int = 24 * 3600,
        retry_s: float = 5.0,
        *,
        secret: bytes | None = None,
        password: str | None = None,
        username: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.stats = CacheStats()
        self.signer = ValueSigner(secret if secret is not None else secrets.token_bytes(32))
        # A password or user in the URL wins over these (redis-py's rule); TLS options apply to rediss:// only.
        tls = {"ssl_ca_certs": ca_file} if ca_file and url.startswith("rediss://") else {}
        # One immediate retry: a pooled connection Redis dropped (restart) reconnects at once;
        # redis-py's default back-off retries would hold requests for seconds during an outage.
        self._client = redis.Redis.from_url(
            url,
            password=password,
            username=username,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
            **tls,
        )
        self._state = threading.Lock()
        self._down = False
        self._next_try = 0.0
        self._rejection_logged_at = -REJECTION_LOG_EVERY_S

    @property
    def available(self) -> bool:
        """False during an outage (between the failure and the next successful call)."""
        return not self._down

    async def get(self, key: str) -> bytes | None:
        stored = await self._guarded(self._client.get, REDIS_PREFIX + key)
        if stored is None:
            self.stats.misses += 1
            return None
        value = self.signer.verified(key, bytes(stored))
        if value is None:
            self._rejected(key)
            return None
        self.stats.hits += 1
        return value

    async def put(self, key: str, value: bytes) -> None:
        signed = self.signer.sign(key, bytes(value))
        await self._guarded(self._client.set, REDIS_PREFIX + key, signed, ex=self.ttl_s)

    def _rejected(self, key: str) -> None:
        """A value whose signature does not match: forged, altered, moved from another key, or
        signed with another secret (a replica configured differently). A miss; counted and logged."""
        with self._state:
            self.stats.rejected += 1
            now = time.monotonic()
            due = now - self._rejection_logged_at >= REJECTION_LOG_EVERY_S
            if due:
                self._rejection_logged_at = now
        if due:
            logger.warning(
                "cache entry %s… has no valid signature (forged, altered, or another AVN_CACHE_SECRET): "
                "ignored and recomputed; %d so far",
                key[:12],
                self.stats.rejected,
            )

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
        secret = settings.secret(settings.cache_secret)
        if secret is None:
            logger.warning(
                "AVN_CACHE_SECRET is unset: cache values are signed with a secret of this process only, so "
                "replicas and restarts share no cached results"
            )
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            retry_s=settings.redis_retry_s,
            secret=secret.encode() if secret is not None else None,
            password=settings.secret(settings.redis_password),
            username=settings.redis_username,
            ca_file=str(settings.redis_ca_file) if settings.redis_ca_file else None,
        )
    return LRUCache(settings.cache_entries)
