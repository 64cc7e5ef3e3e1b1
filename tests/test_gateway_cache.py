"""The result cache: its key, the in-process LRU, and Redis — a real redis-server on a loopback port
(tests/conftest.py) — including one killed in the middle of a run and started again, one that
requires a password, one that admits only an ACL user limited to the cache's keys, one that speaks
only TLS, and entries forged or altered behind the gateway's back (signed values)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pydicom
import pytest
import redis
from conftest import RedisServer
from gateway_support import phantom_dicom, phantom_png, write_tiny_store
from tls_support import Certificates

from avn.dataset.images import read_radiograph
from avn.pipeline.backend import ModelInfo
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.results import DiagnoseRequest, ImagePayload
from avn.serving.inprocess import InProcessBackend
from gateway.cache import REDIS_PREFIX, SIGNATURE_BYTES, LRUCache, NullCache, RedisCache, build_cache, cache_key
from gateway.settings import Settings

VERSIONS = {"detection": "1.0.0", "view": "1.0.0", "side": "1.0.0", "staging": "1.0.0", "notes": "1.0.0"}
OPTIONS = {"include_overlay": False, "cam_stage": None, "note_threshold": 0.5}
RETRY_S = 0.2


def pixels(seed: int = 0, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def run(coroutine):  # noqa: ANN001, ANN201 — a thin asyncio.run for readability
    return asyncio.run(coroutine)


# ---------------------------------------------------------------- the key


def test_key_depends_on_pixels_shape_every_model_version_and_options() -> None:
    image = pixels()
    key = cache_key(image, VERSIONS, OPTIONS)
    assert key == cache_key(image.copy(), dict(reversed(VERSIONS.items())), dict(reversed(OPTIONS.items())))
    assert key == cache_key(image.astype(np.float64), VERSIONS, OPTIONS)  # the decoded float32 pixels count
    infos = [ModelInfo(name, version, 224, ()) for name, version in VERSIONS.items()]
    assert key == cache_key(image, infos, OPTIONS)  # ModelInfo objects work as well as a mapping
    changed = image.copy()
    changed[10, 10] += 1e-3
    others = {
        cache_key(changed, VERSIONS, OPTIONS),
        cache_key(image.reshape(80, 64), VERSIONS, OPTIONS),  # same bytes, other shape
        cache_key(image, {**VERSIONS, "staging": "1.0.1"}, OPTIONS),
        cache_key(image, VERSIONS, {**OPTIONS, "include_overlay": True}),
        cache_key(image, VERSIONS, None),
    }
    assert key not in others and len(others) == 5


def test_a_decoded_radiograph_is_keyed_by_its_samples_digest_not_its_file_or_float_pixels(tmp_path) -> None:  # noqa: ANN001
    path = phantom_dicom(tmp_path, 0, photometric="MONOCHROME1")
    copy = pydicom.dcmread(path)  # re-sent: new instance UID, losslessly re-compressed
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    copy.compress(pydicom.uid.RLELossless)
    copy.save_as(tmp_path / "copy.dcm")
    first, resent = (read_radiograph(source, digest=True) for source in (path, tmp_path / "copy.dcm"))
    assert len(first.digest) == 32 and first.digest == resent.digest
    key = cache_key(first.digest, VERSIONS, OPTIONS)
    assert key == cache_key(resent.digest, VERSIONS, OPTIONS)
    assert key != cache_key(first.pixels, VERSIONS, OPTIONS)  # a digest and pixels never share a key
    assert key != cache_key(bytes(32), VERSIONS, OPTIONS)
    as_mono2 = pydicom.dcmread(path)  # the same samples read the other way round: other pixels, other key
    as_mono2.PhotometricInterpretation = "MONOCHROME2"
    as_mono2.save_as(tmp_path / "mono2.dcm")
    assert cache_key(read_radiograph(tmp_path / "mono2.dcm", digest=True).digest, VERSIONS, OPTIONS) != key


# ---------------------------------------------------------------- in-process LRU


def test_lru_hits_on_repeat_misses_after_a_version_change_and_evicts_the_least_recent() -> None:
    cache = LRUCache(max_entries=2)
    first = cache_key(pixels(1), VERSIONS, OPTIONS)
    assert run(cache.get(first)) is None
    run(cache.put(first, b"result-1"))
    assert run(cache.get(first)) == b"result-1"
    assert run(cache.get(cache_key(pixels(1), {**VERSIONS, "notes": "2.0.0"}, OPTIONS))) is None
    second, third = (cache_key(pixels(seed), VERSIONS, OPTIONS) for seed in (2, 3))
    run(cache.put(second, b"result-2"))
    assert run(cache.get(first)) == b"result-1"  # first is now the most recently used
    run(cache.put(third, b"result-3"))  # evicts second
    assert len(cache) == 2
    assert run(cache.get(second)) is None
    assert run(cache.get(first)) == b"result-1" and run(cache.get(third)) == b"result-3"
    assert (cache.stats.hits, cache.stats.misses) == (4, 3)


def test_settings_choose_redis_lru_or_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AVN_REDIS_URL", "AVN_CACHE_ENABLED", "AVN_CACHE_ENTRIES"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(build_cache(Settings()), LRUCache)
    monkeypatch.setenv("AVN_CACHE_ENTRIES", "7")
    assert build_cache(Settings()).max_entries == 7
    monkeypatch.setenv("AVN_REDIS_URL", "redis://127.0.0.1:1/0")
    assert isinstance(build_cache(Settings()), RedisCache)
    monkeypatch.setenv("AVN_CACHE_ENABLED", "false")
    assert isinstance(build_cache(Settings()), NullCache)


# ---------------------------------------------------------------- a real redis-server


def test_redis_hits_on_repeat_with_the_configured_ttl(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url, ttl_s=60, retry_s=RETRY_S)
    key = cache_key(pixels(), VERSIONS, OPTIONS)
    assert run(cache.get(key)) is None
    run(cache.put(key, b"\x00serialised result\xff"))
    assert run(cache.get(key)) == b"\x00serialised result\xff"
    assert run(cache.get(cache_key(pixels(), {**VERSIONS, "view": "1.1.0"}, OPTIONS))) is None
    ttl = redis.Redis.from_url(redis_server.url).ttl(REDIS_PREFIX + key)
    assert 0 < ttl <= 60
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (1, 2, 0)
    run(cache.close())


def test_redis_killed_mid_run_serves_uncached_warns_once_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(redis_server.url, retry_s=RETRY_S)
    keys = [cache_key(pixels(seed), VERSIONS, OPTIONS) for seed in range(3)]

    async def lookups(rounds: int) -> list[bytes | None]:
        """What a run of requests does: look up, and store on a miss."""
        answers = []
        for index in range(rounds):
            key = keys[index % len(keys)]
            answers.append(await cache.get(key))
            await cache.put(key, f"result {key}".encode())
        return answers

    run(lookups(3))
    assert run(cache.get(keys[0])) == f"result {keys[0]}".encode()

    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        started = time.monotonic()
        answers = run(lookups(30))  # 60 cache calls over a dead Redis, one retry window long
        assert time.monotonic() - started < 5  # never stuck on the dead server
    assert answers == [None] * 30 and not cache.available
    warnings = [record for record in caplog.records if record.name == "gateway.cache"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()

    redis_server.start()  # same port, empty: the outage lost the entries
    time.sleep(RETRY_S * 1.5)
    assert run(cache.get(keys[0])) is None and cache.available
    run(cache.put(keys[0], b"again"))
    assert run(cache.get(keys[0])) == b"again"
    assert cache.stats.errors >= 1
    run(cache.close())


def test_redis_unreachable_from_the_start_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", retry_s=60)
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        for seed in range(5):
            key = cache_key(pixels(seed), VERSIONS, OPTIONS)
            assert run(cache.get(key)) is None
            run(cache.put(key, b"x"))
    assert len([record for record in caplog.records if record.name == "gateway.cache"]) == 1
    assert cache.stats.misses == 5 and cache.stats.errors == 1


# ---------------------------------------------------------------- a password, and signed values

PASSWORD = "redis-pass-for-tests"
SECRET = b"cache-secret-for-tests-0123456789"


def test_a_redis_with_a_password_refuses_a_gateway_without_it(tmp_path) -> None:  # noqa: ANN001
    server = RedisServer(tmp_path, password=PASSWORD).start()
    try:
        key = cache_key(pixels(), VERSIONS, OPTIONS)
        without = RedisCache(server.url, retry_s=RETRY_S, secret=SECRET)
        run(without.put(key, b"result"))
        assert run(without.get(key)) is None and without.stats.errors >= 1 and not without.available
        assert redis.Redis.from_url(server.url, password=PASSWORD).get(REDIS_PREFIX + key) is None  # nothing written
        settings = Settings(redis_url=server.url, redis_password=PASSWORD, cache_secret=SECRET.decode())
        with_password = build_cache(settings)
        run(with_password.put(key, b"result"))
        assert run(with_password.get(key)) == b"result" and with_password.stats.errors == 0
        run(with_password.close())
        run(without.close())
    finally:
        server.stop()


ACL_USER, ACL_PASSWORD = "avn-gateway", "acl-pass-for-tests"
# The gateway's user may read and write its own keys and nothing else; the default user is off.
CACHE_ACL = (
    "default off",
    f"{ACL_USER} on >{ACL_PASSWORD} ~{REDIS_PREFIX}* resetchannels -@all +get +set +ping +hello",
)


def test_an_acl_user_limited_to_the_cache_keys_is_enough_and_a_wrong_one_only_misses(tmp_path) -> None:  # noqa: ANN001
    server = RedisServer(tmp_path, acl=CACHE_ACL).start()
    try:
        key = cache_key(pixels(), VERSIONS, OPTIONS)
        settings = Settings(
            redis_url=server.url, redis_username=ACL_USER, redis_password=ACL_PASSWORD, cache_secret=SECRET.decode()
        )
        cache = build_cache(settings)
        run(cache.put(key, b"result"))
        assert run(cache.get(key)) == b"result" and cache.stats.errors == 0
        user = redis.Redis.from_url(server.url, username=ACL_USER, password=ACL_PASSWORD)
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.get("not-a-cache-key")  # the ACL holds: other keys are out of reach
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.flushall()
        wrong = RedisCache(server.url, retry_s=RETRY_S, secret=SECRET, username=ACL_USER, password="wrong")
        assert run(wrong.get(key)) is None and wrong.stats.errors >= 1  # a miss, never a failed request
        anonymous = RedisCache(server.url, retry_s=RETRY_S, secret=SECRET)  # the default user is off
        assert run(anonymous.get(key)) is None and anonymous.stats.errors >= 1
        for each in (cache, wrong, anonymous):
            run(each.close())
    finally:
        server.stop()


def test_redis_over_tls_needs_the_ca_that_signed_it(tmp_path) -> None:  # noqa: ANN001
    certificates = Certificates(tmp_path)
    server = RedisServer(tmp_path, password=PASSWORD, tls=(certificates.server_cert, certificates.server_key)).start()
    try:
        assert server.url.startswith("rediss://")
        key = cache_key(pixels(), VERSIONS, OPTIONS)
        settings = Settings(
            redis_url=server.url,
            redis_password=PASSWORD,
            redis_ca_file=certificates.ca_file,
            cache_secret=SECRET.decode(),
        )
        cache = build_cache(settings)
        run(cache.put(key, b"result"))
        assert run(cache.get(key)) == b"result" and cache.stats.errors == 0
        # the system's CAs do not know the test CA: the certificate is refused, the lookup misses
        untrusting = RedisCache(server.url, retry_s=RETRY_S, secret=SECRET, password=PASSWORD)
        assert run(untrusting.get(key)) is None and untrusting.stats.errors >= 1
        plain = RedisCache(
            server.url.replace("rediss://", "redis://"), retry_s=RETRY_S, secret=SECRET, password=PASSWORD
        )
        assert run(plain.get(key)) is None and plain.stats.errors >= 1  # no plain-text fallback
        for each in (cache, untrusting, plain):
            run(each.close())
    finally:
        server.stop()


def test_a_forged_altered_or_moved_entry_is_a_miss(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache(redis_server.url, retry_s=RETRY_S, secret=SECRET)
    raw = redis.Redis.from_url(redis_server.url)
    key, other = (cache_key(pixels(seed), VERSIONS, OPTIONS) for seed in (0, 1))
    run(cache.put(key, b"the real result"))
    stored = raw.get(REDIS_PREFIX + key)
    assert stored.endswith(b"the real result") and len(stored) == SIGNATURE_BYTES + len(b"the real result")
    assert run(cache.get(key)) == b"the real result"

    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        raw.set(REDIS_PREFIX + other, stored)  # a valid entry moved under another key
        assert run(cache.get(other)) is None
        raw.set(REDIS_PREFIX + key, stored[:-1] + b"!")  # altered
        assert run(cache.get(key)) is None
        raw.set(REDIS_PREFIX + key, b'{"heads": []}')  # forged by someone without the secret
        assert run(cache.get(key)) is None
        raw.set(REDIS_PREFIX + key, stored)
        assert run(RedisCache(redis_server.url, secret=b"another-secret-0123456789").get(key)) is None
    assert run(cache.get(key)) == b"the real result"  # the genuine entry still reads
    assert (cache.stats.hits, cache.stats.rejected) == (2, 3)
    warnings = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
    assert len(warnings) == 2 and "no valid signature" in warnings[0]  # one per cache a minute, not one per entry
    run(cache.close())


def test_a_tampered_diagnosis_in_redis_never_reaches_a_client(redis_server: RedisServer, tmp_path) -> None:  # noqa: ANN001
    cache = RedisCache(redis_server.url, retry_s=RETRY_S, secret=SECRET)
    pipeline = Pipeline(InProcessBackend.from_store(write_tiny_store(tmp_path)), cache)
    request = DiagnoseRequest(ImagePayload(phantom_png(tmp_path, 0).read_bytes()))
    first = run(pipeline.diagnose(request))
    raw = redis.Redis.from_url(redis_server.url)
    [entry] = list(raw.scan_iter(f"{REDIS_PREFIX}*"))
    stored = raw.get(entry)
    raw.set(entry, stored.replace(f'"width":{first.width}'.encode(), b'"width":1', 1))  # altered, signature kept
    again = run(pipeline.diagnose(request))
    assert not again.cache_hit and again.width == first.width and cache.stats.rejected == 1
    assert run(pipeline.diagnose(request)).cache_hit  # recomputed and stored signed again
    run(pipeline.close())
