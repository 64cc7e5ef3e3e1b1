"""Which requests the gateway takes on: at most ``max_in_flight`` at once, none once it is draining.

One :class:`Admission` per process, shared by the REST app and the gRPC server, so the limit holds
for both protocols together. A request over the limit is refused at once with
:class:`~gateway.errors.Overloaded` (429 / ``RESOURCE_EXHAUSTED``, Retry-After): queueing it would
only hold its upload in memory and make its client's deadline pass here instead of being retried
elsewhere. Once :meth:`Admission.start_draining` has been called (SIGTERM), new requests get
:class:`~gateway.errors.ShuttingDown` (503 / ``UNAVAILABLE``) and :meth:`Admission.drained` waits
for the ones in flight. Health checks never pass through here: they must answer under load and
while draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from gateway.errors import Overloaded, ShuttingDown

DEFAULT_MAX_IN_FLIGHT = 32
RETRY_AFTER_S = 1.0
DRAIN_POLL_S = 0.05


class Admission:
    """The in-flight count and its limit; thread-safe (the servers may run on different threads)."""

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, retry_after_s: float = RETRY_AFTER_S) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._draining = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def draining(self) -> bool:
        return self._draining

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one slot for the block; raise Overloaded or ShuttingDown when none may be taken."""
        with self._lock:
            if self._draining:
                raise ShuttingDown("the gateway is shutting down; retry (another replica answers)", self.retry_after_s)
            if self._in_flight >= self.max_in_flight:
                raise Overloaded(
                    f"the gateway has {self.max_in_flight} requests in flight, its limit; retry shortly",
                    self.retry_after_s,
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def start_draining(self) -> None:
        """From now on every new request is refused with ShuttingDown."""
        with self._lock:
            self._draining = True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight, at most ``timeout_s``; whether that happened."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True
