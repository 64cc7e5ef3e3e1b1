"""The diagnosis pipeline (SPEC §2, §5), one radiograph top to bottom:

    decode → (cache) → detect → choose heads → crop → view ∥ side ∥ staging ∥ notes
           → prior fusion → output → Diagnosis

* decode: :func:`avn.dataset.images.read_radiograph`, the project's one decoder; any failure is an
  :class:`~avn.pipeline.errors.InvalidImage` with the reason, or a
  :class:`~avn.pipeline.errors.PayloadTooLarge` when the file or its decoded pixels are over the
  limits (a study: over its radiograph count or total bytes, checked before anything is decoded).
* cache: key = SHA-256 of the decoder's digest of the pixels (integer samples and the table that
  made the floats of them) + every model's version + the request options; a hit skips everything
  after decode. The cache is optional and can never fail a request.
* choose heads: at most one per image half (the best-scoring candidate in each), because a pelvic
  radiograph shows at most one head per side; extra candidates are duplicates or false positives.
  None found → :class:`~avn.pipeline.errors.NoFemoralHead`.
* crop: :func:`avn.pipeline.crop.crop_square` at ``SERVING_SCALE``, at each model's own input size.
* classify: the four classifiers are called concurrently, each once with both heads as one batch.
* interpret: sides (two heads: by the image layout, the head on the image's left is the patient's
  right; one head: the side model), stages and derived classes, fused notes, the radiograph's view
  (the mean of its heads' view probabilities).
* output: a CAM PNG per head and, when asked, the overlay (:mod:`avn.pipeline.render`); with
  ``include_dicom`` (DICOM input only) the TID 1500 SR and the annotated Secondary Capture
  (:mod:`avn.integration.dicom_outputs`), built after the cache for every request.

:meth:`Pipeline.diagnose_study` runs this per radiograph of one subject and reports per side the
most severe stage seen (``vocabulary.most_severe``). The model calls go through
:class:`avn.pipeline.backend.ModelBackend`, so the pipeline does not know whether TorchServe or the
in-process backend answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import numpy as np
from opentelemetry.trace import Span

from avn.dataset.images import Radiograph
from avn.integration.dicom_outputs import with_dicom_outputs
from avn.pipeline.backend import CLASSIFIER_MODELS, MODELS, Detections, ModelBackend, ModelInfo
from avn.pipeline.caching import ResultCache
from avn.pipeline.caching import cache_key as result_cache_key
from avn.pipeline.classify import classify_heads
from avn.pipeline.crop import SERVING_SCALE, crop_heads
from avn.pipeline.decode import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_IMAGE_BYTES, check_body_part, decode_payload
from avn.pipeline.detect import choose_heads, detect_heads
from avn.pipeline.errors import (
    DeadlineExceeded,
    InvalidArgument,
    InvalidImage,
    ModelUnavailable,
    NoFemoralHead,
    PayloadTooLarge,
)
from avn.pipeline.fuse import interpret_heads, radiograph_view, resolve_operating_point
from avn.pipeline.render import render_outputs
from avn.pipeline.results import (
    DEFAULT_NOTE_THRESHOLD,
    DiagnoseOptions,
    DiagnoseRequest,
    Diagnosis,
    ImagePayload,
    ModelVersion,
    StepTimings,
    StudyDiagnosis,
    StudyRequest,
    decode_diagnosis,
    encode_diagnosis,
)
from avn.pipeline.study import aggregate_sides, split_study_outcomes
from avn.pipeline.threads import DEFAULT_IMAGE_THREADS, bounded_pool, run_in
from avn.pipeline.tracing import (
    ATTRIBUTE_CACHE_HIT,
    ATTRIBUTE_CANDIDATES,
    ATTRIBUTE_HEADS,
    ATTRIBUTE_OVERLAY,
    ATTRIBUTE_STUDY_INDEX,
    ATTRIBUTE_STUDY_SIZE,
    ModelCallObserver,
    ObservedBackend,
    radiograph_attributes,
    span,
    step_span,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_STUDY_RADIOGRAPHS = 16
# Two radiographs of the largest size, or a typical subject's several uncompressed DICOMs.
DEFAULT_MAX_STUDY_BYTES = 2 * DEFAULT_MAX_IMAGE_BYTES
DEFAULT_DEADLINE_S = 30.0  # of one request, unless the client or the settings say otherwise
STUDY_CONCURRENCY = 4  # radiographs of a study in flight at once: bounds decoded-pixel memory

READINESS_PROBE_TTL_S = 10.0
MAX_REQUEST_ID_LENGTH = 128  # a client's request id (REST header, gRPC metadata) longer than this gets a new one
PROBE_IMAGE_SIDE = 64


@dataclass(frozen=True)
class Steps:
    """What :meth:`Pipeline.run_steps` found: the detector's raw answer and the diagnosis (None: no head)."""

    detections: Detections
    diagnosis: Diagnosis | None


class Pipeline:
    """Decode, detect, crop, classify, fuse and draw: one radiograph or one subject's study."""

    def __init__(
        self,
        backend: ModelBackend,
        cache: ResultCache | None = None,
        *,
        crop_scale: float = SERVING_SCALE,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
        max_study_radiographs: int = DEFAULT_MAX_STUDY_RADIOGRAPHS,
        max_study_bytes: int = DEFAULT_MAX_STUDY_BYTES,
        note_threshold: float = DEFAULT_NOTE_THRESHOLD,
        operating_point: str | None = None,
        image_threads: int = DEFAULT_IMAGE_THREADS,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.crop_scale = crop_scale
        self.max_image_bytes = max_image_bytes
        self.max_decode_bytes = max_decode_bytes
        self.max_study_radiographs = max_study_radiographs
        self.max_study_bytes = max_study_bytes
        self.note_threshold = note_threshold  # for requests that do not set their own
        self.operating_point = operating_point  # likewise; None: the staging card's default
        # Decoding, hashing and drawing: a bounded pool of its own (avn/pipeline/threads.py).
        self.image_pool = bounded_pool(image_threads, "avn-image")
        # Told every model call's duration (the gateway's per-model latency metric).
        self.model_call_observers: list[ModelCallObserver] = []
        self._ready_until = 0.0  # monotonic time until which the last passing probe is trusted
        self.model_readiness: dict[str, bool] = {}  # per model, the last probe's verdict (none yet: empty)

    # ------------------------------------------------------------ public operations

    async def diagnose(
        self, request: DiagnoseRequest, *, request_id: str | None = None, timeout_s: float | None = None
    ) -> Diagnosis:
        """The diagnosis of one radiograph; raises :mod:`avn.pipeline.errors` types only."""
        request_id = request_id or new_request_id()
        options = self._checked(request.options)
        async with deadline(timeout_s):
            return await self._diagnose(request.payload, options, request_id)

    async def diagnose_study(
        self, request: StudyRequest, *, request_id: str | None = None, timeout_s: float | None = None
    ) -> StudyDiagnosis:
        """Every radiograph of one subject, and per side the most severe stage across them.

        A radiograph without a femoral head is listed in ``skipped``; an unreadable one fails the
        whole study, naming its index (the client sent something wrong).
        """
        request_id = request_id or new_request_id()
        options = self._checked(request.options)
        self._check_study_size(request.payloads)
        count = len(request.payloads)
        started = time.perf_counter()
        with span("study", **{ATTRIBUTE_STUDY_SIZE: count}):
            async with deadline(timeout_s):
                outcomes = await self._diagnose_each(request.payloads, options, request_id)
        radiographs, skipped = split_study_outcomes(outcomes)
        if not radiographs:
            raise NoFemoralHead(f"no femoral head found on any of the {count} radiographs of the study")
        return StudyDiagnosis(
            request_id=request_id,
            sides=aggregate_sides(radiographs),
            radiographs=tuple(radiographs),
            skipped=tuple(skipped),
            models=radiographs[0].result.models,
            total_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def _check_study_size(self, payloads: Sequence[ImagePayload]) -> None:
        """Refuse an empty study, or one over the radiograph count or total bytes, before decoding any."""
        count = len(payloads)
        if count == 0:
            raise InvalidArgument("a study needs at least one radiograph")
        if count > self.max_study_radiographs:
            raise PayloadTooLarge(f"a study holds at most {self.max_study_radiographs} radiographs, got {count}")
        total = sum(len(payload.data) for payload in payloads)
        if total > self.max_study_bytes:
            raise PayloadTooLarge(f"a study of {total} bytes is over the limit of {self.max_study_bytes} bytes")

    async def models(self) -> list[ModelInfo]:
        """Every model the pipeline needs, in :data:`avn.pipeline.backend.MODELS` order."""
        by_name = await self._model_infos()
        return [by_name[name] for name in MODELS]

    async def ready(self) -> bool:
        """True when every model is loaded and answers a tiny inference (health and readiness);
        ``model_readiness`` keeps the verdict per model (the gateway's ``avn_model_ready`` gauge).

        Loaded is not enough: a wedged worker still reports READY. A passing probe is trusted for
        READINESS_PROBE_TTL_S so frequent health checks do not become a load of their own.
        """
        if time.monotonic() < self._ready_until:
            return True
        self.model_readiness = await self._probe_models()
        if not all(self.model_readiness.values()):
            return False
        self._ready_until = time.monotonic() + READINESS_PROBE_TTL_S
        return True

    async def _probe_models(self) -> dict[str, bool]:
        """Per model: loaded, and answers one blank image (detector) or one blank crop (classifiers).
        The probes run concurrently; a readiness probe reports, it never raises."""
        readiness = dict.fromkeys(MODELS, False)
        try:
            loaded = {info.name: info for info in await self.backend.models()}
        except Exception as error:  # the model server's catalogue is unreadable: no model is ready
            logger.info("not ready: %s", error)
            return readiness
        names = [name for name in MODELS if name in loaded]
        outcomes = await asyncio.gather(*(self._probe(loaded[name]) for name in names), return_exceptions=True)
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.info("not ready: model %s: %s", name, outcome)
            else:
                readiness[name] = True
        for name in set(MODELS) - set(loaded):
            logger.info("not ready: model %s is not loaded", name)
        return readiness

    async def _probe(self, model: ModelInfo) -> None:
        if model.name == "detection":
            await self.backend.detect(np.zeros((PROBE_IMAGE_SIDE, PROBE_IMAGE_SIDE), np.float32))
        else:
            await self.backend.classify(model.name, np.zeros((1, model.input_size, model.input_size), np.float32))

    async def close(self) -> None:
        await self.backend.close()
        self.image_pool.shutdown(wait=False, cancel_futures=True)

    async def run_image_work(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the image pool: decoding, hashing, drawing (also the web app's renditions)."""
        return await run_in(self.image_pool, function, *args)

    def _checked(self, options: DiagnoseOptions) -> DiagnoseOptions:
        """``options`` with the service's note threshold where the client set none; invalid → error."""
        if options.note_threshold is None:
            options = replace(options, note_threshold=self.note_threshold)
        if options.operating_point is None and self.operating_point is not None:
            options = replace(options, operating_point=self.operating_point)
        check_options(options)
        return options

    # ------------------------------------------------------------ one radiograph

    async def _diagnose(
        self, payload: ImagePayload, options: DiagnoseOptions, request_id: str, study_index: int | None = None
    ) -> Diagnosis:
        with span("diagnose", **({} if study_index is None else {ATTRIBUTE_STUDY_INDEX: study_index})):
            clock = StepClock()
            with clock.step("decode") as decoding:
                radiograph = await self.run_image_work(
                    decode_payload, payload, self.max_image_bytes, self.max_decode_bytes, self.cache is not None
                )
                decoding.set_attributes(
                    radiograph_attributes(
                        len(payload.data), radiograph.source_format, radiograph.width, radiograph.height
                    )
                )
            if options.include_dicom and radiograph.dicom is None:
                raise InvalidArgument(
                    f"DICOM outputs (include_dicom) need a DICOM radiograph; this one is {radiograph.source_format}"
                )
            models = await self._model_infos()
            key, cached = await self._looked_up(radiograph, models, options)
            if cached is not None:
                # The key is the pixels: another file with the same pixels has UIDs of its own.
                diagnosis = replace(cached, request_id=request_id, cache_hit=True, source=radiograph.dicom)
            else:
                steps = await self.run_steps(radiograph, options, models=models, clock=clock, request_id=request_id)
                if steps.diagnosis is None:
                    raise NoFemoralHead("no femoral head found on the radiograph (is it a pelvic radiograph?)")
                if key is not None:
                    with span("cache store"):
                        await self._store(key, steps.diagnosis)
                diagnosis = steps.diagnosis
            if options.include_dicom:
                # Never cached: new instances with UIDs of their own, filed under this file's header.
                with clock.step("output"):
                    diagnosis = await asyncio.to_thread(with_dicom_outputs, diagnosis, payload.data)
            return replace(
                diagnosis,
                timings=clock.timings(),
                # Rendered for the annotated copy even when the client did not ask for it.
                overlay_png=diagnosis.overlay_png if options.include_overlay else None,
            )

    async def _looked_up(
        self, radiograph: Radiograph, models: Mapping[str, ModelInfo], options: DiagnoseOptions
    ) -> tuple[str | None, Diagnosis | None]:
        """The cache key and the cached diagnosis, if any (no cache: neither)."""
        if self.cache is None:
            return None, None
        with span("cache lookup") as lookup:
            key = await self._cache_key(radiograph, models, options)
            cached = await self._cached(key)
            lookup.set_attribute(ATTRIBUTE_CACHE_HIT, cached is not None)
        return key, cached

    async def run_steps(
        self,
        radiograph: Radiograph,
        options: DiagnoseOptions,
        *,
        render: bool = True,
        models: Mapping[str, ModelInfo] | None = None,
        clock: StepClock | None = None,
        request_id: str = "",
    ) -> Steps:
        """detect → choose heads → crop → classify → fuse → render, on a decoded radiograph.

        The one sequence of steps, for the gateway (which adds decoding, the cache and the
        transports around it) and for the evaluation (``render=False``: CAM PNGs and the overlay
        change no number). A DICOM header naming a body part without a hip raises
        :class:`NoFemoralHead`; no head found gives ``Steps.diagnosis`` None.
        """
        clock = clock or StepClock()
        options = self._checked(options)  # the evaluation calls here directly, without a threshold of its own
        models = models or await self._model_infos()
        check_body_part(radiograph.body_part)
        operating_point = resolve_operating_point(models["staging"], options.operating_point)  # before any model runs
        backend = ObservedBackend(self.backend, models, self.model_call_observers)
        with clock.step("detect") as detecting:
            detections = await detect_heads(backend, radiograph.pixels, models["detection"].input_size)
            candidates = choose_heads(detections, radiograph.width)
            detecting.set_attributes({ATTRIBUTE_CANDIDATES: len(detections.scores), ATTRIBUTE_HEADS: len(candidates)})
        if not candidates:
            return Steps(detections, None)
        with clock.step("crop"):
            input_sizes = {name: models[name].input_size for name in CLASSIFIER_MODELS}
            crops = crop_heads(radiograph.pixels, candidates, input_sizes, self.crop_scale)
        with clock.step("classify"):
            answers = await classify_heads(backend, crops, options.cam_stage)
        with clock.step("fuse"):
            heads = interpret_heads(candidates, answers, options, self.crop_scale, operating_point)
            view = radiograph_view(answers.view)
        overlay = None
        if render:
            with clock.step("output") as rendering:
                rendering.set_attribute(ATTRIBUTE_OVERLAY, options.include_overlay)
                heads, overlay = await self.run_image_work(
                    render_outputs,
                    radiograph.pixels,
                    heads,
                    answers.staging.cams,
                    view,
                    options.include_overlay or options.include_dicom,  # the annotated copy is the overlay
                    models["staging"].input_size,
                )
        diagnosis = Diagnosis(
            request_id=request_id,
            width=radiograph.width,
            height=radiograph.height,
            view=view,
            heads=heads,
            overlay_png=overlay,
            models=tuple(ModelVersion(info.name, info.version) for info in models.values()),
            cache_hit=False,
            timings=clock.timings(),
            note_threshold=options.note_threshold,
            source=radiograph.dicom,
            operating_point=operating_point,
        )
        return Steps(detections, diagnosis)

    async def _diagnose_each(
        self, payloads: Sequence[ImagePayload], options: DiagnoseOptions, request_id: str
    ) -> list[Diagnosis | BaseException]:
        gate = asyncio.Semaphore(STUDY_CONCURRENCY)

        async def one(index: int, payload: ImagePayload) -> Diagnosis:
            async with gate:
                try:
                    return await self._diagnose(payload, options, f"{request_id}/{index}", study_index=index)
                except (InvalidImage, InvalidArgument, PayloadTooLarge) as error:
                    raise type(error)(f"radiograph {index}: {error}") from error

        outcomes = await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)), return_exceptions=True)
        # Anything but "no head here" fails the study: the first such error is the answer.
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, NoFemoralHead):
                raise outcome
        return outcomes

    async def _model_infos(self) -> dict[str, ModelInfo]:
        infos = {info.name: info for info in await self.backend.models()}
        missing = [name for name in MODELS if name not in infos]
        if missing:
            raise ModelUnavailable(f"models not loaded: {', '.join(missing)}")
        return {name: infos[name] for name in MODELS}

    async def _cache_key(
        self, radiograph: Radiograph, models: Mapping[str, ModelInfo], options: DiagnoseOptions
    ) -> str | None:
        if self.cache is None:
            return None
        if radiograph.digest is not None:  # 32 bytes to hash: no need to leave the event loop
            return diagnosis_cache_key(radiograph.digest, models.values(), options, self.crop_scale)
        # Hashing tens of megabytes of pixels takes a while: off the event loop.
        return await self.run_image_work(
            diagnosis_cache_key, radiograph.pixels, models.values(), options, self.crop_scale
        )

    async def _cached(self, key: str | None) -> Diagnosis | None:
        if self.cache is None or key is None:
            return None
        try:
            value = await self.cache.get(key)
            return None if value is None else decode_diagnosis(value)
        except Exception as error:  # the cache is an optimisation: a broken one means a miss
            logger.warning("cache read failed, serving uncached: %s", error)
            return None

    async def _store(self, key: str | None, diagnosis: Diagnosis) -> None:
        if self.cache is None or key is None:
            return
        try:
            await self.cache.put(key, encode_diagnosis(diagnosis))
        except Exception as error:
            logger.warning("cache write failed: %s", error)


def check_options(options: DiagnoseOptions) -> None:
    problems = options.problems()
    if problems:
        raise InvalidArgument("; ".join(problems))


# ---------------------------------------------------------------- plumbing


def diagnosis_cache_key(
    image: np.ndarray | bytes, models: Iterable[ModelInfo], options: DiagnoseOptions, crop_scale: float
) -> str:
    """The cache key (:func:`gateway.cache.cache_key`): the pixels' digest (or the pixels), model
    versions, options.

    The digest covers the decoded samples, not the file: a copy re-sent with new UIDs, or
    re-compressed losslessly, shares results; the crop scale is part of the options because it
    changes every classifier input.
    """
    return result_cache_key(image, list(models), {**asdict(options), "crop_scale": crop_scale})


class StepClock:
    """Wall time per pipeline step, in milliseconds; each step is a trace span too."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._spent: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Span]:
        """Time the step, inside its trace span (which the caller may add attributes to)."""
        started = time.perf_counter()
        try:
            with step_span(name) as current:
                yield current
        finally:
            self._spent[name] = self._spent.get(name, 0.0) + (time.perf_counter() - started) * 1000

    def timings(self) -> StepTimings:
        total = (time.perf_counter() - self._started) * 1000
        return StepTimings(**{f"{name}_ms": round(ms, 3) for name, ms in self._spent.items()}, total_ms=round(total, 3))


@contextlib.asynccontextmanager
async def deadline(timeout_s: float | None) -> AsyncIterator[None]:
    """Run the body within ``timeout_s`` seconds, else raise :class:`DeadlineExceeded`."""
    if timeout_s is None:
        yield
        return
    if timeout_s <= 0:
        raise DeadlineExceeded("the request's deadline had passed before the diagnosis started")
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            yield
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"the diagnosis did not finish within the deadline of {timeout_s:.3g} s") from None
        raise


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(given: object) -> str:
    """The client's request id when it is a sensible one (printable, 1..MAX_REQUEST_ID_LENGTH
    characters), else a new one: it goes into logs and answers, so it must not carry anything else."""
    if isinstance(given, str) and 0 < len(given) <= MAX_REQUEST_ID_LENGTH and given.isprintable():
        return given
    return new_request_id()
