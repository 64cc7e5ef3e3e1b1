"""What the pipeline needs from a result cache, and the recipe of its keys.

A diagnosis is computed once per (pixels, model versions, options). Key: SHA-256 over what
identifies the pixels, every model's name and version (a new archive version is a miss), and the
request options. What identifies the pixels is the decoder's digest of the integer samples and the
table that made the float pixels of them (:func:`avn.dataset.grey_table.samples_digest`, 32 bytes:
equal digests, equal pixels), or, for pixels that come without one, the float32 pixels themselves
(bytes and shape). Not the file bytes: a copy of a radiograph re-sent with a new SOP Instance UID,
or re-compressed losslessly, has the same samples and still hits. Value: the serialised result
(:func:`avn.pipeline.results.encode_diagnosis`), opaque bytes. The caches themselves (in-process
LRU, Redis) are the gateway's (:mod:`gateway.cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

KEY_SCHEME = b"avn-result-v2"  # change when the key's recipe or the value's format changes


@dataclass
class CacheStats:
    """Counters since start: lookups answered, lookups not, Redis failures (served uncached), and
    entries refused because their signature did not match (forged or tampered: computed afresh)."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    rejected: int = 0


class ResultCache(Protocol):
    """What the pipeline uses; values are opaque bytes."""

    stats: CacheStats

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


def cache_key(image: np.ndarray | bytes, model_versions: Mapping[str, str] | Iterable[Any], options: Any = None) -> str:
    """The hex SHA-256 key of one diagnosis.

    ``image``: the decoder's digest of the pixels (bytes, :attr:`avn.dataset.images.Radiograph.
    digest`), or the pixels themselves (hashed as float32: tens of milliseconds for a radiograph).
    ``model_versions``: {name: version}, or ModelInfo-like objects with ``name`` and ``version``.
    ``options``: a JSON-able mapping (canonicalised: key order does not matter), bytes, or None.
    """
    digest = hashlib.sha256(KEY_SCHEME)
    if isinstance(image, (bytes, bytearray)):
        _update(digest, b"digest", bytes(image))
    else:
        array = np.ascontiguousarray(image, dtype=np.float32)
        _update(digest, b"shape", json.dumps(array.shape).encode())
        _update(digest, b"pixels", memoryview(array).cast("B"))
    _update(digest, b"models", json.dumps(sorted(_versions(model_versions).items())).encode())
    _update(digest, b"options", _canonical_options(options))
    return digest.hexdigest()


def _update(digest: Any, label: bytes, data: bytes | memoryview) -> None:
    # Length-prefixed fields: no two different (shape, pixels, …) tuples share a byte stream.
    digest.update(label + len(data).to_bytes(8, "big"))
    digest.update(data)


def _versions(model_versions: Mapping[str, str] | Iterable[Any]) -> dict[str, str]:
    if isinstance(model_versions, Mapping):
        return {str(name): str(version) for name, version in model_versions.items()}
    return {str(info.name): str(info.version) for info in model_versions}


def _canonical_options(options: Any) -> bytes:
    if options is None:
        return b""
    if isinstance(options, (bytes, bytearray)):
        return bytes(options)
    return json.dumps(options, sort_keys=True, separators=(",", ":"), default=str).encode()
