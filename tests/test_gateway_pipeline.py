"""The diagnosis pipeline with a scripted backend: prior-fusion arithmetic, head choice, the side
rule, the view, batching, outputs, study aggregation, the cache, deadlines and every typed error.

The scripted backend answers what each test tells it to, so the numbers below are hand-computed.
"""

from __future__ import annotations

import asyncio
import io
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pydicom
import pytest
from gateway_support import phantom_dicom, phantom_radiograph
from PIL import Image

from avn.phantom.writers import write_dicom
from avn.pipeline.backend import CLASSIFIER_MODELS, MODELS, Classification, Detections, ModelInfo
from avn.pipeline.confidence import (
    CONFIDENT_CLASSIFIER_PROBABILITY,
    CONFIDENT_DETECTION_SCORE,
    classifier_certainty,
    low_confidence_reasons,
)
from avn.pipeline.crop import SERVING_SCALE, crop_square
from avn.pipeline.decode import decode_payload
from avn.pipeline.detect import choose_heads, detect_heads
from avn.pipeline.fuse import fuse_note_probabilities, fused_notes, resolve_sides
from avn.pipeline.pipeline import Pipeline
from avn.pipeline.render import crop_window
from avn.pipeline.results import (
    Box,
    DiagnoseOptions,
    DiagnoseRequest,
    Diagnosis,
    FemoralHead,
    ImagePayload,
    LabelProbability,
    StepTimings,
    StudyRadiograph,
    StudyRequest,
    View,
    decode_diagnosis,
    encode_diagnosis,
)
from avn.pipeline.study import aggregate_sides
from avn.vocabulary import NOTES, SIDES, STAGES, VIEWS
from gateway.cache import LRUCache
from gateway.errors import (
    ERROR_STATUS,
    DeadlineExceeded,
    DiagnosisError,
    Internal,
    InvalidArgument,
    InvalidImage,
    ModelUnavailable,
    NoFemoralHead,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    Unauthenticated,
    as_gateway_error,
    error_metadata,
    status_of,
)

# The scripted detector answers in the coordinates of the image it gets: a detector input larger
# than every test image keeps the pipeline from shrinking them (test_detect_heads covers shrinking).
INPUT_SIZES = {"detection": 4096, "view": 32, "side": 40, "staging": 48, "notes": 32}
LABELS = {"detection": ("background", "FH"), "view": VIEWS, "side": SIDES, "staging": STAGES, "notes": NOTES}

# Two heads: stage probabilities and raw note probabilities chosen for easy arithmetic.
STAGING = np.array([[0.1, 0.6, 0.2, 0.1], [0.05, 0.05, 0.1, 0.8]])
NOTES_RAW = np.array([[0.9, 0.5, 0.2, 0.8, 0.3, 0.1, 0.7, 0.95], [0.4, 0.9, 0.1, 0.9, 0.6, 0.2, 0.7, 0.65]])
# fused = raw × P(stage of the note); notes 0-2 are stage II, 3-5 stage III, 6-7 stage IV.
FUSED = np.array(
    [
        [0.54, 0.30, 0.12, 0.16, 0.06, 0.02, 0.07, 0.095],
        [0.02, 0.045, 0.005, 0.09, 0.06, 0.02, 0.56, 0.52],
    ]
)


class ScriptedBackend:
    """A ModelBackend that returns fixed answers and records every call."""

    def __init__(self, boxes, scores, answers=None, cams=None, versions=None, missing=(), detect_delay_s=0.0):
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.answers = {
            "view": np.array([[0.8, 0.2], [0.4, 0.6]]),
            "side": np.array([[0.2, 0.8], [0.9, 0.1]]),  # image-left head: right; image-right: left
            "staging": STAGING,
            "notes": NOTES_RAW,
            **(answers or {}),
        }
        self.cams = cams
        self.versions = versions or {name: "1.0" for name in MODELS}
        self.missing = set(missing)
        self.detect_delay_s = detect_delay_s
        self.calls: list[tuple[str, tuple[int, ...], str | None]] = []

    async def detect(self, image):
        self.calls.append(("detection", image.shape, None))
        await asyncio.sleep(self.detect_delay_s)
        return Detections(self.boxes, self.scores)

    async def classify(self, model, crops, cam_stage=None):
        self.calls.append((model, crops.shape, cam_stage))
        rows = len(crops)
        probabilities = self.answers[model][:rows]
        if model != "staging":
            return Classification(LABELS[model], probabilities)
        cams = self.cams if self.cams is not None else np.tile(np.linspace(0, 1, 9).reshape(3, 3), (rows, 1, 1))
        chosen = [cam_stage or STAGES[int(np.argmax(row))] for row in probabilities]
        return Classification(LABELS[model], probabilities, cams=cams[:rows], cam_labels=tuple(chosen))

    async def models(self):
        if self.missing:
            raise ModelUnavailable(f"models not loaded: {sorted(self.missing)}", retry_after_s=7)
        return [ModelInfo(name, self.versions[name], INPUT_SIZES[name], LABELS[name]) for name in MODELS]

    async def close(self):
        pass


def png_bytes(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def flat_png(width: int = 400, height: int = 300, level: int = 120) -> bytes:
    return png_bytes(np.full((height, width), level, dtype=np.uint8))


# Two heads well inside a 400×300 image: one on each half.
TWO_HEADS = [[60, 100, 120, 160], [280, 100, 340, 160]]


def diagnose(backend, data: bytes, **options) -> Diagnosis:
    pipeline = Pipeline(backend)
    return asyncio.run(pipeline.diagnose(DiagnoseRequest(ImagePayload(data), DiagnoseOptions(**options))))


# ---------------------------------------------------------------- prior fusion


def test_fused_notes_are_note_probability_times_the_staging_probability_of_their_stage() -> None:
    fused = fuse_note_probabilities(NOTES_RAW, NOTES, STAGING, STAGES)
    np.testing.assert_allclose(fused, FUSED, atol=1e-12)
    # The staging model's label order does not matter: columns are matched by name.
    reordered = fuse_note_probabilities(NOTES_RAW, NOTES, STAGING[:, ::-1], STAGES[::-1])
    np.testing.assert_allclose(reordered, FUSED, atol=1e-12)
    notes = fused_notes(NOTES_RAW[0], NOTES, STAGING[0], STAGES, threshold=0.5)
    assert [note.note for note in notes if note.passed] == ["sclerosis"]  # 0.9 × 0.6 = 0.54
    assert notes[0].stage == "II" and notes[0].raw_probability == pytest.approx(0.9)
    at_low_threshold = fused_notes(NOTES_RAW[0], NOTES, STAGING[0], STAGES, threshold=0.12)
    assert [n.note for n in at_low_threshold if n.passed] == [
        "sclerosis",
        "cystic change",
        "crescent sign without collapse",
        "subchondral flattening or collapse",
    ]


def test_the_pipeline_reports_fused_notes_derived_classes_and_the_view() -> None:
    result = diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8]), flat_png())
    assert len(result.heads) == 2 and result.note_threshold == 0.5
    for head, fused_row, stage_row in zip(result.heads, FUSED, STAGING, strict=True):
        np.testing.assert_allclose([n.probability for n in head.notes], fused_row, atol=1e-6)
        assert [n.passed for n in head.notes] == list(fused_row >= 0.5)
        assert [p.label for p in head.stage_probabilities] == list(STAGES)
        np.testing.assert_allclose([p.probability for p in head.stage_probabilities], stage_row, atol=1e-6)
    first, second = result.heads
    assert (first.stage, first.presence, first.collapse) == ("II", "presence", "pre-collapse")
    assert first.presence_probability == pytest.approx(0.9) and first.collapse_probability == pytest.approx(0.6)
    assert (second.stage, second.presence, second.collapse) == ("IV", "presence", "post-collapse")
    assert second.collapse_probability == pytest.approx(0.9)
    assert [n.note for n in second.passed_notes] == ["FH and acetabular deformation", "joint space narrowing"]
    # View = mean of the heads' view probabilities: AP (0.8 + 0.4) / 2.
    assert result.view.view == "AP" and result.view.probability == pytest.approx(0.6)
    assert (first.side, second.side) == ("right", "left") and not (first.side_corrected or second.side_corrected)


def test_a_request_threshold_changes_which_notes_pass() -> None:
    result = diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8]), flat_png(), note_threshold=0.1)
    assert result.note_threshold == 0.1
    assert [n.note for n in result.heads[0].passed_notes] == [
        "sclerosis",
        "cystic change",
        "crescent sign without collapse",
        "subchondral flattening or collapse",
    ]


# ---------------------------------------------------------------- heads and sides


def test_one_head_per_image_half_the_best_scoring_ordered_left_to_right() -> None:
    detections = Detections(
        boxes=np.array(
            [
                [300, 100, 360, 160],  # right half, 0.6
                [50, 100, 110, 160],  # left half, 0.9
                [70, 110, 130, 170],  # left half, 0.95: the best there
                [10, 10, 10, 50],  # degenerate
                [320, 90, 380, 150],  # right half, 0.3: a duplicate
            ],
            dtype=np.float32,
        ),
        scores=np.array([0.6, 0.9, 0.95, 0.99, 0.3], dtype=np.float32),
    )
    heads = choose_heads(detections, image_width=400)
    assert [h.box for h in heads] == [(70, 110, 130, 170), (300, 100, 360, 160)]
    assert [h.score for h in heads] == pytest.approx([0.95, 0.6])
    same_half = Detections(
        np.array([[10, 10, 60, 60], [100, 10, 150, 60]], np.float32), np.array([0.4, 0.7], np.float32)
    )
    assert [h.score for h in choose_heads(same_half, 400)] == pytest.approx([0.7])
    assert choose_heads(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)), 400) == []


def test_more_than_two_candidates_give_two_heads_in_one_batch_per_model() -> None:
    boxes = TWO_HEADS + [[70, 90, 130, 150], [290, 110, 350, 170]]
    backend = ScriptedBackend(boxes, [0.9, 0.8, 0.5, 0.4])
    result = diagnose(backend, flat_png())
    assert [h.box.as_tuple() for h in result.heads] == [tuple(map(float, b)) for b in TWO_HEADS]
    classify_calls = [call for call in backend.calls if call[0] != "detection"]
    assert sorted(model for model, _, _ in classify_calls) == sorted(CLASSIFIER_MODELS)
    for model, shape, _ in classify_calls:  # every model once, both heads, at its own input size
        assert shape == (2, INPUT_SIZES[model], INPUT_SIZES[model])


def test_two_heads_take_their_sides_from_the_image_layout_and_disagreement_is_flagged() -> None:
    # SIDES is (left, right); heads come left to right on the image: patient's right, then left.
    agreeing = Classification(SIDES, np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert resolve_sides(agreeing) == [("right", pytest.approx(0.8), False), ("left", pytest.approx(0.6), False)]
    both_left = Classification(SIDES, np.array([[0.9, 0.1], [0.7, 0.3]]))
    assert resolve_sides(both_left) == [("right", pytest.approx(0.1), True), ("left", pytest.approx(0.7), False)]
    mirrored = Classification(SIDES, np.array([[0.95, 0.05], [0.1, 0.9]]))
    assert resolve_sides(mirrored) == [("right", pytest.approx(0.05), True), ("left", pytest.approx(0.1), True)]
    single = Classification(SIDES, np.array([[0.3, 0.7]]))
    assert resolve_sides(single) == [("right", pytest.approx(0.7), False)]  # a coned hip: the model decides
    result = diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8], {"side": both_left.probabilities}), flat_png())
    assert [(h.side, h.side_corrected) for h in result.heads] == [("right", True), ("left", False)]
    first, second = result.heads
    assert first.low_confidence and any("side model disagrees" in r for r in first.low_confidence_reasons)
    assert not any("side model" in r for r in second.low_confidence_reasons)


def test_unsure_heads_are_flagged_low_confidence_with_the_reasons() -> None:
    certain = {"view": np.array([[0.99, 0.01], [0.97, 0.03]]), "side": np.array([[0.02, 0.98], [0.99, 0.01]])}
    sure = diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8], certain), flat_png())
    assert [(h.low_confidence, h.low_confidence_reasons) for h in sure.heads] == [(False, ()), (False, ())]
    # a weak detection, and a head the view/side models waver on (a crop unlike the training data)
    wavering = {"view": np.array([[0.99, 0.01], [0.6, 0.4]]), "side": np.array([[0.02, 0.98], [0.55, 0.45]])}
    unsure = diagnose(ScriptedBackend(TWO_HEADS, [CONFIDENT_DETECTION_SCORE - 0.1, 0.8], wavering), flat_png())
    first, second = unsure.heads
    assert (
        first.low_confidence
        and len(first.low_confidence_reasons) == 1
        and "detector score" in first.low_confidence_reasons[0]
    )
    assert second.low_confidence and "unlike the training data" in second.low_confidence_reasons[0]
    assert classifier_certainty(np.array([0.6, 0.4]), np.array([0.55, 0.45])) == pytest.approx(0.575)
    assert low_confidence_reasons(0.99, CONFIDENT_CLASSIFIER_PROBABILITY) == ()


def test_a_dicom_of_a_body_part_without_a_hip_is_refused_before_detection(tmp_path) -> None:
    import pydicom

    path = phantom_dicom(tmp_path)
    for body_part, refused in (
        ("CHEST", True),
        ("KNEE ", True),
        ("PELVIS", False),
        ("EXTREMITY", False),
        (None, False),
    ):
        ds = pydicom.dcmread(path)
        if body_part is None:
            del ds.BodyPartExamined
        else:
            ds.BodyPartExamined = body_part
        edited = tmp_path / "edited.dcm"
        ds.save_as(edited)
        backend = ScriptedBackend(TWO_HEADS, [0.9, 0.8])
        if refused:
            with pytest.raises(NoFemoralHead, match=f"not a pelvic radiograph.*{body_part.strip()}"):
                diagnose(backend, edited.read_bytes())
            assert backend.calls == []  # no model was asked
        else:
            assert len(diagnose(backend, edited.read_bytes()).heads) == 2


def test_no_femoral_head_is_a_typed_error() -> None:
    with pytest.raises(NoFemoralHead, match="no femoral head"):
        diagnose(ScriptedBackend(np.zeros((0, 4)), []), flat_png())


# ---------------------------------------------------------------- outputs


def test_overlay_has_the_radiograph_size_and_cams_decode_at_the_staging_input_size() -> None:
    spec, image = phantom_radiograph(0)
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (head.bbox for head in image.heads)]
    ok, encoded = cv2.imencode(".png", image.pixels)
    result = diagnose(
        ScriptedBackend(boxes, [0.9] * len(boxes)), encoded.tobytes(), include_overlay=True, cam_stage="III"
    )
    overlay = Image.open(io.BytesIO(result.overlay_png))
    assert overlay.size == (image.pixels.shape[1], image.pixels.shape[0]) == (result.width, result.height)
    assert overlay.mode == "RGB"
    overlay_pixels = np.asarray(overlay)
    grey = np.round(image.pixels.astype(np.float32) / 65535 * 255)  # the 16-bit PNG as decoded, in 8 bits
    assert not np.array_equal(overlay_pixels[:, :, 0], overlay_pixels[:, :, 1])  # colour was drawn
    assert np.abs(overlay_pixels[0:5, -5:, 0] - grey[0:5, -5:]).max() <= 1  # far from any head: the radiograph
    for head in result.heads:
        cam = np.asarray(Image.open(io.BytesIO(head.cam_png)))
        assert cam.shape == (INPUT_SIZES["staging"],) * 2 and cam.dtype == np.uint8
        assert cam.max() == 255 and cam[0, 0] == 0  # the scripted CAM rises from 0 (top-left) to 1
        assert head.cam_stage == "III" and head.cam_box == crop_window(head.box.as_tuple())
    assert result.overlay_png.startswith(b"\x89PNG")


def test_no_overlay_unless_asked_and_the_cam_stage_reaches_the_staging_model() -> None:
    backend = ScriptedBackend(TWO_HEADS, [0.9, 0.8])
    result = diagnose(backend, flat_png(), cam_stage="II")
    assert result.overlay_png is None
    assert ("staging", (2, 48, 48), "II") in backend.calls
    assert [h.cam_stage for h in result.heads] == ["II", "II"]


def test_the_cam_window_is_the_square_crop_square_cuts() -> None:
    ramp_x = np.tile(np.arange(500, dtype=np.float32), (400, 1))
    ramp_y = ramp_x.T.copy()[:400, :400]
    for box in ([100.0, 120.0, 161.0, 170.0], [3.2, 5.7, 40.1, 33.3]):
        window = crop_window(box, SERVING_SCALE)
        extent = int(window.x1 - window.x0)
        assert window.y1 - window.y0 == extent
        crop_x = crop_square(ramp_x, box, SERVING_SCALE, size=extent)
        crop_y = crop_square(ramp_y, box, SERVING_SCALE, size=extent)
        inside_x = crop_x[crop_x > 0]
        assert inside_x.max() == min(window.x1 - 1, 499) and crop_x[extent // 2, -1] == window.x1 - 1
        assert crop_y[-1, extent // 2] == window.y1 - 1


# ---------------------------------------------------------------- study


def head(side: str, stage: str, probability: float) -> FemoralHead:
    return FemoralHead(
        box=Box(0, 0, 1, 1),
        score=1.0,
        side=side,
        side_probability=1.0,
        side_corrected=False,
        stage_probabilities=tuple(LabelProbability(s, probability if s == stage else 0.0) for s in STAGES),
        stage=stage,
        stage_probability=probability,
        presence="",
        presence_probability=0.0,
        collapse="",
        collapse_probability=0.0,
        notes=(),
        cam_png=b"",
        cam_stage=stage,
        cam_box=Box(0, 0, 1, 1),
        view_probabilities=(),
    )


def radiograph(index: int, *heads: FemoralHead) -> StudyRadiograph:
    view = View("AP", 1.0, ())
    return StudyRadiograph(index, Diagnosis(str(index), 10, 10, view, heads, None, (), False, StepTimings(), 0.5))


def test_a_study_reports_per_side_the_most_severe_stage_across_radiographs() -> None:
    sides = aggregate_sides(
        [
            radiograph(0, head("right", "II", 0.7), head("left", "absence", 0.9)),
            radiograph(1, head("right", "IV", 0.6), head("left", "absence", 0.8)),
            radiograph(3, head("right", "IV", 0.8)),  # a single head on this one
            radiograph(4, head("left", "III", 0.55)),
        ]
    )
    by_side = {s.side: s for s in sides}
    right, left = by_side["right"], by_side["left"]
    assert (right.stage, right.presence, right.collapse) == ("IV", "presence", "post-collapse")
    assert right.radiograph_index == 3 and right.probability == pytest.approx(0.8)  # the most confident IV
    assert right.radiograph_indices == (0, 1, 3)
    assert (left.stage, left.radiograph_index, left.radiograph_indices) == ("III", 4, (0, 1, 4))
    assert [s.side for s in aggregate_sides([radiograph(0, head("left", "II", 0.5))])] == ["left"]


def test_a_study_skips_radiographs_without_a_head_and_names_unreadable_ones() -> None:
    class HeadlessOnNarrowImages(ScriptedBackend):
        async def detect(self, image):
            found = await super().detect(image)
            return found if image.shape[1] >= 400 else Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    pipeline = Pipeline(HeadlessOnNarrowImages(TWO_HEADS, [0.9, 0.8]))
    study = StudyRequest(
        (ImagePayload(flat_png()), ImagePayload(flat_png(width=200)), ImagePayload(flat_png(level=90)))
    )
    result = asyncio.run(pipeline.diagnose_study(study, request_id="study-1"))
    assert [r.index for r in result.radiographs] == [0, 2] and [s.index for s in result.skipped] == [1]
    assert "no femoral head" in result.skipped[0].reason
    assert [r.result.request_id for r in result.radiographs] == ["study-1/0", "study-1/2"]
    assert {(s.side, s.stage) for s in result.sides} == {("right", "II"), ("left", "IV")}
    with pytest.raises(NoFemoralHead, match="any of the 1"):
        asyncio.run(pipeline.diagnose_study(StudyRequest((ImagePayload(flat_png(width=200)),))))
    with pytest.raises(InvalidImage, match="radiograph 1: empty"):
        asyncio.run(pipeline.diagnose_study(StudyRequest((ImagePayload(flat_png()), ImagePayload(b"")))))
    with pytest.raises(InvalidArgument, match="at least one"):
        asyncio.run(pipeline.diagnose_study(StudyRequest(())))
    with pytest.raises(PayloadTooLarge, match="at most 16"):
        asyncio.run(pipeline.diagnose_study(StudyRequest((ImagePayload(flat_png()),) * 17)))


# ---------------------------------------------------------------- cache, deadline, models


def test_a_repeat_is_a_cache_hit_and_a_new_model_version_is_a_miss() -> None:
    backend = ScriptedBackend(TWO_HEADS, [0.9, 0.8])
    pipeline = Pipeline(backend, LRUCache(8))
    request = DiagnoseRequest(ImagePayload(flat_png()))

    async def run_three():
        first = await pipeline.diagnose(request)
        second = await pipeline.diagnose(request)
        backend.versions = {**backend.versions, "staging": "2.0"}
        third = await pipeline.diagnose(request)
        return first, second, third

    first, second, third = asyncio.run(run_three())
    assert (first.cache_hit, second.cache_hit, third.cache_hit) == (False, True, False)
    assert second.heads == first.heads and second.request_id != first.request_id
    assert second.timings.detect_ms == 0 and second.timings.decode_ms > 0
    assert sum(1 for call in backend.calls if call[0] == "detection") == 2
    assert ("staging", "2.0") in {(m.name, m.version) for m in third.models}


def test_the_result_survives_its_json_serialisation() -> None:
    result = diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8]), flat_png(), include_overlay=True)
    assert decode_diagnosis(encode_diagnosis(result)) == result


def test_a_slow_model_exceeds_the_deadline() -> None:
    pipeline = Pipeline(ScriptedBackend(TWO_HEADS, [0.9, 0.8], detect_delay_s=2.0))
    with pytest.raises(DeadlineExceeded, match="deadline of 0.2 s"):
        asyncio.run(pipeline.diagnose(DiagnoseRequest(ImagePayload(flat_png())), timeout_s=0.2))


def test_a_missing_model_is_unavailable_with_a_retry_hint() -> None:
    with pytest.raises(ModelUnavailable) as raised:
        diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8], missing={"notes"}), flat_png())
    assert raised.value.retry_after_s == 7 and dict(error_metadata(raised.value))["retry-after"] == "7"
    without_notes = Pipeline(ScriptedBackend([], [], missing={"notes"}))
    assert asyncio.run(without_notes.ready()) is False
    # The backend's catalogue itself fails (as TorchServe's does with a model missing): none is ready.
    assert without_notes.model_readiness == dict.fromkeys(MODELS, False)
    assert asyncio.run(Pipeline(ScriptedBackend([], [])).ready()) is True


def test_readiness_sends_one_tiny_inference_per_model_and_fails_when_one_does_not_answer() -> None:
    class WedgedStaging(ScriptedBackend):
        async def classify(self, model, crops, cam_stage=None):
            if model == "staging":
                raise ModelUnavailable("staging worker does not answer", retry_after_s=5)
            return await super().classify(model, crops, cam_stage)

    wedged = Pipeline(WedgedStaging([], []))
    assert asyncio.run(wedged.ready()) is False
    # Per model, for the avn_model_ready gauge: only the wedged one is down.
    assert wedged.model_readiness == {name: name != "staging" for name in MODELS}
    backend = ScriptedBackend([], [])
    pipeline = Pipeline(backend)

    async def probe_twice() -> tuple[bool, bool]:
        return await pipeline.ready(), await pipeline.ready()

    assert asyncio.run(probe_twice()) == (True, True)
    # The first probe called every model once; the second trusted it (no new calls).
    assert sorted(name for name, _, _ in backend.calls) == sorted(MODELS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cam_stage": "V"}, "cam_stage 'V' is not a stage"),
        ({"note_threshold": 1.5}, r"note_threshold must lie in \[0, 1\]"),
    ],
)
def test_invalid_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        diagnose(ScriptedBackend(TWO_HEADS, [0.9, 0.8]), flat_png(), **options)


# ---------------------------------------------------------------- decoding


def dicom_bytes(tmp_path: Path, *, pixels: bool = True, frames: int = 1, photometric: str = "MONOCHROME2") -> bytes:
    spec, image = phantom_radiograph(0)
    path = tmp_path / "x.dcm"
    write_dicom(path, spec, image, dataset_seed=0, photometric="MONOCHROME2")
    ds = pydicom.dcmread(path)
    if not pixels:
        del ds.PixelData
    if frames > 1:
        ds.NumberOfFrames = frames
    if photometric != "MONOCHROME2":
        ds.PhotometricInterpretation = photometric
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming a huge image, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def jpeg_bytes() -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    return encoded.tobytes()


@pytest.mark.parametrize(
    ("make", "media_type", "error", "message"),
    [
        (lambda tmp: b"", "", InvalidImage, "empty image"),
        (lambda tmp: b"hello, this is not an image at all", "", InvalidImage, "not a PNG, JPEG or DICOM"),
        (lambda tmp: flat_png()[:200], "", InvalidImage, "not a readable PNG or JPEG image .image file is truncated"),
        (lambda tmp: jpeg_bytes()[:300], "", InvalidImage, "not a readable PNG or JPEG"),
        (lambda tmp: dicom_bytes(tmp)[:5000], "", InvalidImage, "DICOM pixel data cannot be decoded"),
        (lambda tmp: dicom_bytes(tmp, pixels=False), "", InvalidImage, "DICOM file has no pixel data"),
        (lambda tmp: dicom_bytes(tmp, frames=3), "", InvalidImage, "multi-frame"),
        (lambda tmp: dicom_bytes(tmp, photometric="RGB"), "", InvalidImage, "colour DICOM"),
        (lambda tmp: bomb_png(), "", PayloadTooLarge, "too large to decode"),
        (lambda tmp: png_bytes(np.zeros((8, 8), np.uint8)), "", InvalidImage, "too small"),
        (lambda tmp: flat_png(), "application/dicom", InvalidImage, "application/dicom was declared but the bytes are"),
        (lambda tmp: flat_png(), "image/gif", InvalidArgument, "unsupported media type"),
        (lambda tmp: b"\x89PNG" + b"\0" * 600, "", PayloadTooLarge, "over the limit of 512 bytes"),
    ],
    ids=[
        "empty",
        "garbage",
        "truncated-png",
        "truncated-jpeg",
        "truncated-dicom",
        "dicom-no-pixels",
        "multi-frame",
        "colour-dicom",
        "decompression-bomb",
        "tiny",
        "type-mismatch",
        "unsupported-type",
        "too-large",
    ],
)
def test_every_decode_failure_is_typed_with_a_specific_message(tmp_path, make, media_type, error, message) -> None:
    limit = 512 if error is PayloadTooLarge else 64 * 1024 * 1024
    with pytest.raises(error, match=message):
        decode_payload(ImagePayload(make(tmp_path), media_type), max_image_bytes=limit)


def test_declared_and_sniffed_types_agree_for_png_jpeg_and_dicom(tmp_path) -> None:
    assert decode_payload(ImagePayload(flat_png(), "image/png; charset=binary")).source_format == "png"
    assert decode_payload(ImagePayload(jpeg_bytes(), "image/jpeg")).source_format == "jpeg"
    dicom = decode_payload(ImagePayload(dicom_bytes(tmp_path), "application/dicom"))
    assert dicom.source_format == "dicom" and dicom.pixels.dtype == np.float32


# ---------------------------------------------------------------- the error table


def test_every_error_maps_to_one_grpc_code_and_one_http_status() -> None:
    expected = {
        InvalidImage: (grpc.StatusCode.INVALID_ARGUMENT, 400),
        InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
        PayloadTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        NoFemoralHead: (grpc.StatusCode.FAILED_PRECONDITION, 422),
        ModelUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
        DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        Internal: (grpc.StatusCode.INTERNAL, 500),
        Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
        Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        ShuttingDown: (grpc.StatusCode.UNAVAILABLE, 503),
        RequestTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, 408),
    }
    assert set(ERROR_STATUS) == set(expected) == set(DiagnosisError.__subclasses__())
    for cls, (code, http) in expected.items():
        status = status_of(cls("x"))
        assert (status.grpc_code, status.http_status) == (code, http)
    hidden = as_gateway_error(KeyError("secret internals"))
    assert isinstance(hidden, Internal) and "secret" not in str(hidden)
    assert dict(error_metadata(InvalidImage("x"))) == {"avn-error-type": "InvalidImage"}
    assert dict(error_metadata(Overloaded("x", retry_after_s=2.4))) == {
        "avn-error-type": "Overloaded",
        "retry-after": "2",
    }


class ShapeAwareDetector(ScriptedBackend):
    """Answers each box as a fraction of the image it receives, like a real detector would."""

    def __init__(self, fractions) -> None:
        super().__init__(np.zeros((0, 4)), [0.9, 0.8][: len(fractions)])
        self.fractions = np.asarray(fractions, dtype=np.float32).reshape(-1, 4)

    async def detect(self, image):
        self.calls.append(("detection", image.shape, None))
        height, width = image.shape
        return Detections(self.fractions * np.array([width, height, width, height], np.float32), self.scores)


@pytest.mark.parametrize(
    ("shape", "sent"),
    [((3000, 2400), (320, 256)), ((200, 300), (200, 300)), ((40, 2000), (40, 2000))],
    ids=["shrunk", "small-sent-whole", "elongated-sent-whole"],
)
def test_detect_heads_sends_the_detector_what_it_reads_and_maps_boxes_back(shape, sent) -> None:
    backend = ShapeAwareDetector([[0.1, 0.2, 0.3, 0.4], [0.6, 0.2, 0.8, 0.4]])
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    detections = asyncio.run(detect_heads(backend, pixels, 320))
    assert backend.calls == [("detection", sent, None)]
    height, width = shape
    expected = backend.fractions * np.array([width, height, width, height], np.float32)
    np.testing.assert_allclose(detections.boxes, expected, rtol=1e-5)
    np.testing.assert_array_equal(detections.scores, backend.scores)


def test_a_client_request_id_is_kept_only_when_sensible() -> None:
    from avn.pipeline.pipeline import MAX_REQUEST_ID_LENGTH, accepted_request_id

    assert accepted_request_id("ris-4711") == "ris-4711"
    for bad in ("", "x" * (MAX_REQUEST_ID_LENGTH + 1), "line\nbreak", None, b"bytes"):
        replaced = accepted_request_id(bad)
        assert replaced != bad and len(replaced) == 32 and replaced.isalnum()
