"""Bounded thread pools for the pipeline's blocking work, one per kind, kept apart.

* image work — decoding, hashing the pixels for the cache key, drawing CAMs and overlays, display
  renditions: the pipeline's pool (:class:`avn.pipeline.pipeline.Pipeline`, ``image_threads``). Its
  size bounds how many radiographs are decoded at once, so the decoded-pixel memory (about the
  decode budget plus 4 bytes a pixel each, docs/security.md) is bounded by it, not by the clients.
* model calls — the in-process backend's forward passes (:class:`avn.serving.inprocess.
  InProcessBackend`, ``threads``). Apart from the image pool, so a burst of uploads waiting to be
  decoded never starves the models of threads, nor the other way round.

asyncio's default executor (``asyncio.to_thread``) is shared by everything in the process and sized
by the CPU count; the pools here are sized by settings. Work runs with the caller's context
variables (trace spans continue inside it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_IMAGE_THREADS = 2
DEFAULT_MODEL_THREADS = 4  # the four classifiers of one radiograph side by side


def bounded_pool(threads: int, name: str) -> ThreadPoolExecutor:
    if threads < 1:
        raise ValueError(f"a pool needs at least one thread, got {threads}")
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)


async def run_in(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on ``pool``, awaited; with this task's context variables, as asyncio.to_thread."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(context.run, function, *args))
