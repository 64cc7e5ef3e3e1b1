"""The diagnosis pipeline (SPEC §2, §5), one radiograph top to bottom:

    decode → (cache) → detect → choose heads → crop → view ∥ side ∥ staging ∥ notes
           → prior fusion → output → Diagnosis

* decode: :func:`avn.dataset.images.read_radiograph`, the project's one decoder; any failure is an
  :class:`~gateway.errors.InvalidImage` with the reason.
* cache: key = SHA-256 of the decoded pixels + every model's version + the request options; a hit
  skips everything after decode. The cache is optional and can never fail a request.
* choose heads: at most one per image half (the best-scoring candidate in each), because a pelvic
  radiograph shows at most one head per side; extra candidates are duplicates or false positives.
  None found → :class:`~gateway.errors.NoFemoralHead`.
* crop: :func:`avn.crop.crop_square` at ``SERVING_SCALE``, at each model's own input size.
* classify: the four classifiers are called concurrently, each once with both heads as one batch.
* interpret: sides (one head per side: when both heads get the same side, the more confident keeps
  it and the other is flipped), stages and derived classes, fused notes, the radiograph's view
  (the mean of its heads' view probabilities).
* output: a CAM PNG per head and, when asked, the overlay (:mod:`gateway.output`).

:meth:`Pipeline.diagnose_study` runs this per radiograph of one subject and reports per side the
most severe stage seen (``vocabulary.most_severe``). The model calls go through
:class:`gateway.backends.ModelBackend`, so the pipeline does not know whether TorchServe or the
in-process backend answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from avn.crop import SERVING_SCALE, crop_square
from avn.dataset.images import ImageReadError, Radiograph, is_dicom_bytes, read_radiograph
from avn.letterbox import boxes_from_letterbox, letterbox_geometry, shrink_to_letterbox
from avn.vocabulary import SIDES, STAGES, VIEWS, collapse_of, flip_side, most_severe, presence_of
from gateway.backends import CLASSIFIER_MODELS, MODELS, Classification, Detections, ModelBackend, ModelInfo
from gateway.cache import ResultCache
from gateway.cache import cache_key as result_cache_key
from gateway.confidence import classifier_certainty, low_confidence_reasons
from gateway.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    InvalidImage,
    ModelUnavailable,
    NoFemoralHead,
    PayloadTooLarge,
)
from gateway.fusion import collapse_with_probability, fused_notes, presence_with_probability
from gateway.output import HeadDrawing, cam_png, crop_window, overlay_png
from gateway.results import (
    DEFAULT_NOTE_THRESHOLD,
    Box,
    DiagnoseOptions,
    DiagnoseRequest,
    Diagnosis,
    FemoralHead,
    ImagePayload,
    LabelProbability,
    ModelVersion,
    SideDiagnosis,
    SkippedRadiograph,
    StepTimings,
    StudyDiagnosis,
    StudyRadiograph,
    StudyRequest,
    View,
    decode_diagnosis,
    encode_diagnosis,
)

logger = logging.getLogger(__name__)

# Under the gRPC message limit (64 MiB) so that the gateway, not the transport, names the problem.
DEFAULT_MAX_IMAGE_BYTES = 48 * 1024 * 1024
DEFAULT_MAX_STUDY_RADIOGRAPHS = 16
STUDY_CONCURRENCY = 4  # radiographs of a study in flight at once: bounds decoded-pixel memory
MIN_IMAGE_SIDE = 32  # smaller than any radiograph; the detector needs some pixels to look at
MAX_HEADS = 2

MEDIA_TYPE_ALIASES = {
    "application/dicom": "application/dicom",
    "image/dicom": "application/dicom",
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
}
SNIFF_MEDIA_TYPES = ("", "application/octet-stream")  # "recognise it from the bytes"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class HeadCandidate:
    """A detected femoral head kept for diagnosis."""

    box: tuple[float, float, float, float]  # xyxy, image pixels
    score: float

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


@dataclass(frozen=True)
class HeadAnswers:
    """The four classifiers' answers for the same heads, rows in head order."""

    view: Classification
    side: Classification
    staging: Classification
    notes: Classification


READINESS_PROBE_TTL_S = 10.0
PROBE_IMAGE_SIDE = 64


class Pipeline:
    """Decode, detect, crop, classify, fuse and draw: one radiograph or one subject's study."""

    def __init__(
        self,
        backend: ModelBackend,
        cache: ResultCache | None = None,
        *,
        crop_scale: float = SERVING_SCALE,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_study_radiographs: int = DEFAULT_MAX_STUDY_RADIOGRAPHS,
        note_threshold: float = DEFAULT_NOTE_THRESHOLD,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.crop_scale = crop_scale
        self.max_image_bytes = max_image_bytes
        self.max_study_radiographs = max_study_radiographs
        self.note_threshold = note_threshold  # for requests that do not set their own
        self._ready_until = 0.0  # monotonic time until which the last passing probe is trusted

    # ------------------------------------------------------------ public operations

    async def diagnose(
        self, request: DiagnoseRequest, *, request_id: str | None = None, timeout_s: float | None = None
    ) -> Diagnosis:
        """The diagnosis of one radiograph; raises :mod:`gateway.errors` types only."""
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
        count = len(request.payloads)
        if count == 0:
            raise InvalidArgument("a study needs at least one radiograph")
        if count > self.max_study_radiographs:
            raise PayloadTooLarge(f"a study holds at most {self.max_study_radiographs} radiographs, got {count}")
        started = time.perf_counter()
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

    async def models(self) -> list[ModelInfo]:
        """Every model the pipeline needs, in :data:`gateway.backends.MODELS` order."""
        by_name = await self._model_infos()
        return [by_name[name] for name in MODELS]

    async def ready(self) -> bool:
        """True when every model is loaded and answers a tiny inference (health and readiness).

        Loaded is not enough: a wedged worker still reports READY. A passing probe is trusted for
        READINESS_PROBE_TTL_S so frequent health checks do not become a load of their own.
        """
        if time.monotonic() < self._ready_until:
            return True
        try:
            await self._probe_models(await self._model_infos())
        except Exception as error:  # a readiness probe reports, it never raises
            logger.info("not ready: %s", error)
            return False
        self._ready_until = time.monotonic() + READINESS_PROBE_TTL_S
        return True

    async def _probe_models(self, models: Mapping[str, ModelInfo]) -> None:
        """One blank image to the detector and one blank crop to each classifier, concurrently."""
        blank = np.zeros((PROBE_IMAGE_SIDE, PROBE_IMAGE_SIDE), np.float32)
        crops = {
            name: np.zeros((1, models[name].input_size, models[name].input_size), np.float32)
            for name in CLASSIFIER_MODELS
        }
        await asyncio.gather(
            self.backend.detect(blank),
            *(self.backend.classify(name, crop) for name, crop in crops.items()),
        )

    async def close(self) -> None:
        await self.backend.close()

    def _checked(self, options: DiagnoseOptions) -> DiagnoseOptions:
        """``options`` with the service's note threshold where the client set none; invalid → error."""
        if options.note_threshold is None:
            options = replace(options, note_threshold=self.note_threshold)
        check_options(options)
        return options

    # ------------------------------------------------------------ one radiograph

    async def _diagnose(self, payload: ImagePayload, options: DiagnoseOptions, request_id: str) -> Diagnosis:
        clock = StepClock()
        with clock.step("decode"):
            radiograph = await asyncio.to_thread(decode_payload, payload, self.max_image_bytes)
        models = await self._model_infos()
        key = await self._cache_key(radiograph, models, options)
        cached = await self._cached(key)
        if cached is not None:
            return replace(cached, request_id=request_id, cache_hit=True, timings=clock.timings())

        check_body_part(radiograph.body_part)
        with clock.step("detect"):
            detections = await detect_heads(self.backend, radiograph.pixels, models["detection"].input_size)
        candidates = choose_heads(detections, radiograph.width)
        if not candidates:
            raise NoFemoralHead("no femoral head found on the radiograph (is it a pelvic radiograph?)")
        with clock.step("crop"):
            input_sizes = {name: models[name].input_size for name in CLASSIFIER_MODELS}
            crops = crop_heads(radiograph.pixels, candidates, input_sizes, self.crop_scale)
        with clock.step("classify"):
            answers = await classify_heads(self.backend, crops, options.cam_stage)
        with clock.step("fuse"):
            heads = interpret_heads(candidates, answers, options, self.crop_scale)
            view = radiograph_view(answers.view)
        with clock.step("output"):
            heads, overlay = await asyncio.to_thread(
                render_outputs,
                radiograph.pixels,
                heads,
                answers.staging.cams,
                view,
                options.include_overlay,
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
        )
        await self._store(key, diagnosis)
        return diagnosis

    async def _diagnose_each(
        self, payloads: Sequence[ImagePayload], options: DiagnoseOptions, request_id: str
    ) -> list[Diagnosis | BaseException]:
        gate = asyncio.Semaphore(STUDY_CONCURRENCY)

        async def one(index: int, payload: ImagePayload) -> Diagnosis:
            async with gate:
                try:
                    return await self._diagnose(payload, options, f"{request_id}/{index}")
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
        # Hashing tens of megabytes of pixels takes a while: off the event loop.
        return await asyncio.to_thread(
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


# ---------------------------------------------------------------- decode


def decode_payload(payload: ImagePayload, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Radiograph:
    """The radiograph in a payload, or an :class:`InvalidImage` / :class:`PayloadTooLarge` saying why not."""
    data = payload.data
    if not data:
        raise InvalidImage("empty image: the request carried no bytes")
    if len(data) > max_image_bytes:
        raise PayloadTooLarge(f"image of {len(data)} bytes is over the limit of {max_image_bytes} bytes")
    declared = declared_media_type(payload.media_type)
    found = sniff_media_type(data)
    if found is None:
        raise InvalidImage(
            f"not a PNG, JPEG or DICOM file (starts with {data[:8]!r}, {len(data)} bytes); "
            "DICOM must be a Part 10 file (128-byte preamble, then 'DICM')"
        )
    if declared is not None and declared != found:
        raise InvalidImage(f"media type {declared} was declared but the bytes are {found}")
    try:
        radiograph = read_radiograph(data)
    except ImageReadError as error:
        raise InvalidImage(str(error).removeprefix("<payload>: ")) from error
    if min(radiograph.width, radiograph.height) < MIN_IMAGE_SIDE:
        raise InvalidImage(
            f"image of {radiograph.width}x{radiograph.height} pixels is too small for a radiograph "
            f"(at least {MIN_IMAGE_SIDE} pixels per side)"
        )
    return radiograph


def declared_media_type(media_type: str) -> str | None:
    """The canonical media type a client declared, None for "recognise it"; unknown types rejected."""
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence in SNIFF_MEDIA_TYPES:
        return None
    if essence not in MEDIA_TYPE_ALIASES:
        raise InvalidArgument(
            f"unsupported media type {media_type!r};"
            " send application/dicom, image/png or image/jpeg (or leave it empty)"
        )
    return MEDIA_TYPE_ALIASES[essence]


def sniff_media_type(data: bytes) -> str | None:
    """The media type the bytes start like, or None."""
    if is_dicom_bytes(data):
        return "application/dicom"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    return None


# DICOM BodyPartExamined values (PS3.16 CID 4031) of radiographs that cannot show a femoral head.
# Ambiguous ones (EXTREMITY, LEG, ABDOMEN, WHOLEBODY, ...) go to the detector like any other.
NON_HIP_BODY_PARTS = frozenset(
    {
        "CHEST",
        "THORAX",
        "LUNG",
        "HEART",
        "BREAST",
        "SKULL",
        "HEAD",
        "BRAIN",
        "FACE",
        "JAW",
        "TMJ",
        "NECK",
        "CSPINE",
        "TSPINE",
        "SHOULDER",
        "CLAVICLE",
        "ARM",
        "HUMERUS",
        "ELBOW",
        "FOREARM",
        "WRIST",
        "HAND",
        "FINGER",
        "KNEE",
        "PATELLA",
        "TIBIA",
        "FIBULA",
        "ANKLE",
        "FOOT",
        "TOE",
        "HEEL",
    }
)


def check_body_part(body_part: str | None) -> None:
    """A DICOM file whose header names a body part without a hip gets a clear refusal, not a stage."""
    if body_part in NON_HIP_BODY_PARTS:
        raise NoFemoralHead(f"not a pelvic radiograph: the DICOM header says the body part examined is {body_part}")


def check_options(options: DiagnoseOptions) -> None:
    problems = options.problems()
    if problems:
        raise InvalidArgument("; ".join(problems))


# ---------------------------------------------------------------- detect → crop → classify


async def detect_heads(backend: ModelBackend, pixels: np.ndarray, detector_input_size: int) -> Detections:
    """Head candidates in the radiograph's pixels, from the radiograph shrunk to what the detector
    reads: the detector letterboxes every image to its small input anyway, so sending the full
    image only moves megabytes to a model server (a float32 3000×2500 radiograph is 30 MB) for it
    to average away. The shrink is the detector's own (:mod:`avn.letterbox`), so the answer is the
    same. An image no larger than the input, or so elongated that its shrunk short side would fall
    below what the model services accept, is sent whole."""
    height, width = pixels.shape
    scaled_height, scaled_width = letterbox_geometry(height, width, detector_input_size).scaled_size
    if max(height, width) <= detector_input_size or min(scaled_height, scaled_width) < MIN_IMAGE_SIDE:
        return await backend.detect(pixels)
    shrunk, geometry = shrink_to_letterbox(pixels, detector_input_size)
    detections = await backend.detect(shrunk)
    return Detections(boxes=boxes_from_letterbox(detections.boxes, geometry), scores=detections.scores)


def choose_heads(detections: Detections, image_width: int) -> list[HeadCandidate]:
    """At most one head per image half — the best-scoring candidate there — ordered left to right.

    A pelvic radiograph shows each femoral head on its own half, so a second candidate in the same
    half is a duplicate or a false positive. Degenerate or non-finite boxes are ignored.
    """
    best: dict[bool, HeadCandidate] = {}
    for box, score in zip(
        np.asarray(detections.boxes).reshape(-1, 4), np.asarray(detections.scores).reshape(-1), strict=False
    ):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (np.isfinite([x0, y0, x1, y1, score]).all() and x1 > x0 and y1 > y0):
            continue
        candidate = HeadCandidate((x0, y0, x1, y1), float(score))
        on_left_half = candidate.centre_x < image_width / 2.0
        if on_left_half not in best or candidate.score > best[on_left_half].score:
            best[on_left_half] = candidate
    return sorted(best.values(), key=lambda candidate: candidate.centre_x)[:MAX_HEADS]


def crop_heads(
    pixels: np.ndarray, candidates: Sequence[HeadCandidate], input_sizes: Mapping[str, int], scale: float
) -> dict[str, np.ndarray]:
    """Per model, the (N, S, S) crops of every head at that model's input size (shared by size)."""
    by_size = {
        size: np.stack([crop_square(pixels, candidate.box, scale, size) for candidate in candidates])
        for size in set(input_sizes.values())
    }
    return {model: by_size[size] for model, size in input_sizes.items()}


async def classify_heads(backend: ModelBackend, crops: Mapping[str, np.ndarray], cam_stage: str | None) -> HeadAnswers:
    """The four classifiers, concurrently, each on all heads in one call."""
    view, side, staging, notes = await asyncio.gather(
        backend.classify("view", crops["view"]),
        backend.classify("side", crops["side"]),
        backend.classify("staging", crops["staging"], cam_stage=cam_stage),
        backend.classify("notes", crops["notes"]),
    )
    answers = HeadAnswers(view=view, side=side, staging=staging, notes=notes)
    count = len(crops["staging"])
    for name in CLASSIFIER_MODELS:
        check_answer(name, getattr(answers, name), count)
    return answers


def check_answer(model: str, answer: Classification, count: int) -> None:
    """A backend answer the pipeline can read: one row per head, one column per label."""
    shape = np.shape(answer.probabilities)
    if shape != (count, len(answer.labels)):
        raise Internal(
            f"the {model} model answered {shape} probabilities for {count} heads and {len(answer.labels)} labels"
        )
    if answer.cams is not None and len(answer.cams) != count:
        raise Internal(f"the {model} model answered {len(answer.cams)} activation maps for {count} heads")


# ---------------------------------------------------------------- interpret (fusion)


def resolve_sides(side: Classification) -> list[tuple[str, float, bool]]:
    """(side, probability of that side, corrected) per head.

    Two heads cannot be the same side: when the model says so, the more confident head keeps its
    side and the other is flipped (its reported probability is then the model's, below 0.5).
    """
    probabilities = np.asarray(side.probabilities, dtype=np.float64)
    column = {label: index for index, label in enumerate(side.labels)}
    sides = [side.labels[int(np.argmax(row))] for row in probabilities]
    corrected = [False] * len(sides)
    if len(sides) == 2 and sides[0] == sides[1]:
        confidence = probabilities.max(axis=1)
        loser = 1 if confidence[0] >= confidence[1] else 0
        sides[loser] = flip_side(sides[loser])
        corrected[loser] = True
    return [(s, float(row[column[s]]), c) for s, row, c in zip(sides, probabilities, corrected, strict=True)]


def radiograph_view(view: Classification) -> View:
    """The radiograph's view: the mean of its heads' view probabilities."""
    mean = np.asarray(view.probabilities, dtype=np.float64).mean(axis=0)
    probabilities = _in_order(view.labels, mean, VIEWS)
    best = max(probabilities, key=lambda item: item.probability)
    return View(view=best.label, probability=best.probability, probabilities=probabilities)


def interpret_heads(
    candidates: Sequence[HeadCandidate], answers: HeadAnswers, options: DiagnoseOptions, crop_scale: float
) -> tuple[FemoralHead, ...]:
    """Every head's result except its CAM PNG (the output step adds it)."""
    sides = resolve_sides(answers.side)
    staging, notes = answers.staging, answers.notes
    heads = []
    for index, candidate in enumerate(candidates):
        stage_probabilities = _in_order(staging.labels, staging.probabilities[index], STAGES)
        by_stage = {item.label: item.probability for item in stage_probabilities}
        stage = max(by_stage, key=by_stage.get)
        presence, presence_probability = presence_with_probability(stage, by_stage)
        collapse, collapse_probability = collapse_with_probability(stage, by_stage)
        side, side_probability, side_corrected = sides[index]
        certainty = classifier_certainty(answers.view.probabilities[index], answers.side.probabilities[index])
        reasons = low_confidence_reasons(candidate.score, certainty)
        heads.append(
            FemoralHead(
                box=Box(*candidate.box),
                score=candidate.score,
                side=side,
                side_probability=side_probability,
                side_corrected=side_corrected,
                stage_probabilities=stage_probabilities,
                stage=stage,
                stage_probability=by_stage[stage],
                presence=presence,
                presence_probability=presence_probability,
                collapse=collapse,
                collapse_probability=collapse_probability,
                notes=fused_notes(
                    notes.probabilities[index],
                    notes.labels,
                    staging.probabilities[index],
                    staging.labels,
                    options.note_threshold,
                ),
                cam_png=b"",
                cam_stage=staging.cam_labels[index] if staging.cam_labels else (options.cam_stage or stage),
                cam_box=crop_window(candidate.box, crop_scale),
                view_probabilities=_in_order(answers.view.labels, answers.view.probabilities[index], VIEWS),
                low_confidence=bool(reasons),
                low_confidence_reasons=reasons,
            )
        )
    return tuple(heads)


def _in_order(labels: Sequence[str], row: np.ndarray, vocabulary: Sequence[str]) -> tuple[LabelProbability, ...]:
    """A model's row as (label, probability) in vocabulary order, whatever order the model used."""
    by_label = dict(zip(labels, (float(p) for p in row), strict=False))
    if set(by_label) != set(vocabulary):
        raise Internal(f"a model answered labels {tuple(labels)}, expected {tuple(vocabulary)}")
    return tuple(LabelProbability(label, by_label[label]) for label in vocabulary)


# ---------------------------------------------------------------- output


def render_outputs(
    pixels: np.ndarray,
    heads: Sequence[FemoralHead],
    cams: np.ndarray | None,
    view: View,
    include_overlay: bool,
    cam_size: int,
) -> tuple[tuple[FemoralHead, ...], bytes | None]:
    """Heads with their CAM PNGs, and the overlay PNG when asked for."""
    head_cams = [None if cams is None else np.asarray(cams[index]) for index in range(len(heads))]
    heads = tuple(
        replace(head, cam_png=b"" if cam is None else cam_png(cam, cam_size))
        for head, cam in zip(heads, head_cams, strict=True)
    )
    overlay = None
    if include_overlay:
        overlay = overlay_png(
            pixels, [HeadDrawing(head, cam) for head, cam in zip(heads, head_cams, strict=True)], view
        )
    return heads, overlay


# ---------------------------------------------------------------- study


def split_study_outcomes(
    outcomes: Sequence[Diagnosis | BaseException],
) -> tuple[list[StudyRadiograph], list[SkippedRadiograph]]:
    """Diagnosed radiographs and the ones skipped for having no femoral head, by request index."""
    radiographs, skipped = [], []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Diagnosis):
            radiographs.append(StudyRadiograph(index, outcome))
        else:
            skipped.append(SkippedRadiograph(index, str(outcome)))
    return radiographs, skipped


def aggregate_sides(radiographs: Sequence[StudyRadiograph]) -> tuple[SideDiagnosis, ...]:
    """Per side: the most severe stage on any radiograph; where it was seen most confidently."""
    sides = []
    for side in SIDES:
        seen = [(item.index, head) for item in radiographs for head in item.result.heads if head.side == side]
        if not seen:
            continue
        stage = most_severe([head.stage for _, head in seen])
        # The radiograph that shows that stage most confidently; the first one on ties.
        index, head = max(
            ((index, head) for index, head in seen if head.stage == stage),
            key=lambda item: (item[1].stage_probability, -item[0]),
        )
        sides.append(
            SideDiagnosis(
                side=side,
                stage=stage,
                presence=presence_of(stage),
                collapse=collapse_of(stage),
                probability=head.stage_probability,
                radiograph_index=index,
                radiograph_indices=tuple(sorted({index for index, _ in seen})),
            )
        )
    return tuple(sides)


# ---------------------------------------------------------------- plumbing


def diagnosis_cache_key(
    pixels: np.ndarray, models: Iterable[ModelInfo], options: DiagnoseOptions, crop_scale: float
) -> str:
    """The cache key (:func:`gateway.cache.cache_key`): decoded pixels, model versions, options.

    Hashing decoded pixels (not the file) makes a DICOM and a PNG of the same image share results;
    the crop scale is part of the options because it changes every classifier input.
    """
    return result_cache_key(pixels, list(models), {**asdict(options), "crop_scale": crop_scale})


class StepClock:
    """Wall time per pipeline step, in milliseconds."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._spent: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
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
