"""Faster forms of a head classifier for serving — int8, bf16, channels-last — and the check that
they give the answers of the fp32 model.

A form replaces only the forward pass (:attr:`HeadClassifier.runner`): input normalisation,
temperature, probabilities and CAMs stay the model's own, so every form serves exactly the same
API. The forms:

- ``fp32``: the trained model as it is (eager, NCHW); the reference.
- ``fp32-channels-last``: the same arithmetic in channels-last memory order (oneDNN's fast path).
- ``bf16``: channels-last under bf16 autocast; only on CPUs with native bf16 (AVX-512 BF16, AMX).
- ``int8``: post-training static quantisation (PyTorch FX, x86 engine), per-channel weights,
  activations observed on calibration crops. Its quantised weights and scales are stored in the
  checkpoint, so the served model is bit for bit the one that was checked.
- ``fp16``: half-precision autocast, the form served on CUDA GPUs (checked here on the CPU).

``avn build-store`` (:mod:`avn.optimisation`) times each form on the build machine, compares its
probabilities with fp32 on the validation crops and serves the fastest form that loses no more
than :data:`AUC_TOLERANCE` AUC on any label; the figures go into the model card.

``torch.ao.quantization`` is deprecated upstream in favour of torchao's PT2E flow, whose int8
needs ``torch.compile`` to be fast; the project pins torch 2.14.1, where the FX flow still ships
and runs eager int8 kernels. Its deprecation warnings are silenced here, and only here.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from avn.metrics import box_iou, detection_prf, match_boxes
from avn.models.classifier import HeadClassifier, normalised_batch
from avn.models.detector import FemoralHeadDetector

FP32 = "fp32"
CHANNELS_LAST = "fp32-channels-last"
BF16 = "bf16"
INT8 = "int8"
FP16 = "fp16"
CPU_FORMS: tuple[str, ...] = (FP32, CHANNELS_LAST, BF16, INT8)
CUDA_FORM = FP16
AUC_TOLERANCE = 0.005
INT8_ENGINE = "x86"
CALIBRATION_BATCH = 32
TIMING_BATCH = 8  # two heads per radiograph, four radiographs batched by TorchServe

# Reading or writing quantised tensors goes through a deprecated storage API inside torch itself.
warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel", category=UserWarning)

FeatureRunner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FormError(ValueError):
    """A form that cannot be built or served as asked (unknown name, missing int8 weights)."""


class ClassifierTrunk(nn.Module):
    """The ResNet-18 of a :class:`HeadClassifier` as a traceable module: normalised crops in,
    (logits, last feature maps) out — what quantisation rewrites."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.net = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        feature_maps = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return net.fc(torch.flatten(net.avgpool(feature_maps), 1)), feature_maps


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (else bf16 autocast is emulated and slow)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def int8_available() -> bool:
    return INT8_ENGINE in torch.backends.quantized.supported_engines


def forms_for_this_cpu() -> tuple[str, ...]:
    """The CPU forms this machine can run at speed."""
    return tuple(form for form in CPU_FORMS if (form != BF16 or cpu_has_bf16()) and (form != INT8 or int8_available()))


@contextmanager
def _quiet_quantisation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _prepared_int8(model: HeadClassifier) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = INT8_ENGINE
    trunk = ClassifierTrunk(copy.deepcopy(model.backbone)).cpu().eval()
    example = torch.zeros(1, 1, 32, 32)
    return prepare_fx(trunk, get_default_qconfig_mapping(INT8_ENGINE), (example,))


def quantise_int8(model: HeadClassifier, calibration: torch.Tensor) -> nn.Module:
    """The int8 trunk of ``model``, its activation ranges observed on ``calibration`` (normalised
    crops, (N, 1, S, S))."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet_quantisation():
        prepared = _prepared_int8(model)
        with torch.inference_mode():
            for start in range(0, len(calibration), CALIBRATION_BATCH):
                prepared(calibration[start : start + CALIBRATION_BATCH])
        return convert_fx(prepared)


def int8_from_state(model: HeadClassifier, stored: Mapping[str, Any]) -> nn.Module:
    """The int8 trunk rebuilt from what :func:`choose_form` stored (no calibration at load)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet_quantisation():
        quantised = convert_fx(_prepared_int8(model))
    try:
        state = OrderedDict(stored["state"])
        # without the versions a quantised Linear reads its weights under their pre-packing names
        state._metadata = OrderedDict((prefix, dict(entry)) for prefix, entry in stored["versions"].items())  # type: ignore[attr-defined]
        with _quiet_quantisation():
            quantised.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise FormError(f"the stored int8 weights do not fit this classifier: {error}") from error
    return quantised


def _as_float32(outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits, feature_maps = outputs
    return logits.float(), feature_maps.float().contiguous()


def runner_for(model: HeadClassifier, form: str, int8_trunk: nn.Module | None = None) -> FeatureRunner | None:
    """The forward pass of ``form`` over ``model`` (None: the model's own fp32 pass).

    Channels-last forms convert ``model`` in place (same weights, other memory order).
    """
    if form == FP32:
        return None
    if form == INT8:
        if int8_trunk is None:
            raise FormError("the int8 form needs its quantised trunk (quantise_int8 or int8_from_state)")
        trunk = int8_trunk
        return lambda batch: _as_float32(trunk(batch.cpu()))
    if form in (CHANNELS_LAST, BF16, FP16):
        model.to(memory_format=torch.channels_last)
        dtype = {CHANNELS_LAST: None, BF16: torch.bfloat16, FP16: torch.float16}[form]

        def run(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            batch = batch.contiguous(memory_format=torch.channels_last)
            if dtype is None:
                return _as_float32(model.forward_features(batch))
            with torch.autocast(batch.device.type, dtype=dtype):
                return _as_float32(model.forward_features(batch))

        return run
    raise FormError(f"unknown form {form!r}; expected one of {(*CPU_FORMS, FP16)}")


def serve_as(model: HeadClassifier, form: str, int8_trunk: nn.Module | None = None) -> HeadClassifier:
    """``model`` answering through ``form`` from now on; returns it."""
    model.runner = runner_for(model, form, int8_trunk)
    model.form = form
    return model


@dataclass
class FormFigures:
    """One form on the build machine: its speed and how far its answers are from fp32."""

    form: str
    ms_per_batch: float | None = None  # TIMING_BATCH crops at the model's input size
    auc: dict[str, float | None] = field(default_factory=dict)  # per label (and presence for staging)
    max_auc_loss: float | None = None  # fp32 AUC minus this form's, worst label; None: not checked
    max_probability_difference: float | None = None
    decisions_changed: float | None = None  # fraction of crops whose predicted label(s) differ from fp32's
    accepted: bool = True
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ms_per_batch": self.ms_per_batch,
            "auc": self.auc,
            "max_auc_loss": self.max_auc_loss,
            "max_probability_difference": self.max_probability_difference,
            "decisions_changed": self.decisions_changed,
            "accepted": self.accepted,
            "reason": self.reason,
        }


def label_aucs(model: HeadClassifier, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """One-vs-rest AUC per label (None where the validation crops hold only one class); for
    staging also the presence AUC (P(II) + P(III) + P(IV)), the paper's headline figure."""
    truth = labels if labels.ndim == 2 else np.eye(len(model.labels))[labels]
    aucs = {name: _auc(truth[:, index], probabilities[:, index]) for index, name in enumerate(model.labels)}
    if model.task == "staging":
        aucs["presence"] = _auc(1.0 - truth[:, 0], 1.0 - probabilities[:, 0])
    return aucs


def _auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    if len(np.unique(truth)) < 2:
        return None
    return float(roc_auc_score(truth, scores))


def time_runner(model: HeadClassifier, input_size: int, repeats: int = 8) -> float:
    """Milliseconds per forward pass over :data:`TIMING_BATCH` crops (median of ``repeats``)."""
    batch = torch.rand(TIMING_BATCH, 1, input_size, input_size)
    run = model.runner or model.forward_features
    times = []
    with torch.inference_mode():
        for attempt in range(repeats + 2):
            started = time.perf_counter()
            run(batch)
            if attempt >= 2:  # the first calls pick kernels and allocate
                times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 2)


def probabilities_of(model: HeadClassifier, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Served probabilities of (N, S, S) crops, through whatever form ``model`` answers with."""
    rows = [
        model.predict(crops[start : start + batch_size]).probabilities for start in range(0, len(crops), batch_size)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, len(model.labels)), dtype=np.float32)


def compare_with_fp32(
    reference: dict[str, float | None],
    reference_probabilities: np.ndarray,
    figures: FormFigures,
    aucs: dict[str, float | None],
    probabilities: np.ndarray,
    tolerance: float = AUC_TOLERANCE,
) -> FormFigures:
    """Fill ``figures`` with the AUC loss against fp32 and accept or refuse the form."""
    losses = [
        reference[name] - value for name, value in aucs.items() if value is not None and reference.get(name) is not None
    ]
    figures.auc = aucs
    figures.max_auc_loss = round(max(losses), 6) if losses else 0.0
    figures.max_probability_difference = (
        round(float(np.abs(probabilities - reference_probabilities).max()), 6) if len(probabilities) else 0.0
    )
    figures.decisions_changed = _decisions_changed(reference_probabilities, probabilities)
    if figures.max_auc_loss > tolerance:
        worst = max(
            (name for name in aucs if aucs[name] is not None and reference.get(name) is not None),
            key=lambda name: reference[name] - aucs[name],
        )
        figures.accepted = False
        figures.reason = f"loses {figures.max_auc_loss:.4f} AUC on {worst!r} (tolerance {tolerance})"
    return figures


def _decisions_changed(reference: np.ndarray, probabilities: np.ndarray) -> float:
    """Reported, not a gate: how often the form's top label (or, for the notes, a 0.5 cut) differs."""
    if not len(probabilities):
        return 0.0
    if reference.shape[1] > 1 and np.allclose(reference.sum(axis=1), 1.0, atol=1e-3):
        changed = reference.argmax(axis=1) != probabilities.argmax(axis=1)
    else:
        changed = ((reference >= 0.5) != (probabilities >= 0.5)).any(axis=1)
    return round(float(changed.mean()), 6)


@dataclass
class FormChoice:
    """What build-store decided for one classifier: the served CPU form, the CUDA form, the figures."""

    form: str
    cuda_form: str
    figures: dict[str, FormFigures]
    validation_crops: int
    calibration_crops: int
    checked: bool  # False for untrained timing-only weights: chosen by speed alone
    int8_state: dict[str, Any] | None = None  # the quantised trunk (int8 form only)
    note: str = ""

    def card_record(self) -> dict[str, Any]:
        """What the model card says about the served form (no tensors)."""
        return {
            "form": self.form,
            "cuda_form": self.cuda_form,
            "checked": self.checked,
            "tolerance_auc": AUC_TOLERANCE,
            "validation_crops": self.validation_crops,
            "calibration_crops": self.calibration_crops,
            "timing_batch": TIMING_BATCH,
            "measured_on": cpu_name(),
            "forms": {name: figures.to_dict() for name, figures in self.figures.items()},
            "note": self.note,
        }


def choose_form(
    model: HeadClassifier,
    calibration_crops: np.ndarray,
    validation_crops: np.ndarray | None,
    validation_labels: np.ndarray | None,
    input_size: int,
    forms: tuple[str, ...] | None = None,
    tolerance: float = AUC_TOLERANCE,
    builders: Mapping[str, Callable[[HeadClassifier], HeadClassifier]] | None = None,
) -> FormChoice:
    """Time every form, check each against fp32 on the validation crops, keep the fastest accepted.

    Without validation crops (untrained timing-only weights) nothing can be checked: the fastest
    form is chosen and the record says so. ``builders`` replaces how a form is built (tests give
    a deliberately wrong form to see it refused).
    """
    with _quiet_quantisation():
        return _choose_form(
            model, calibration_crops, validation_crops, validation_labels, input_size, forms, tolerance, builders
        )


def _choose_form(
    model: HeadClassifier,
    calibration_crops: np.ndarray,
    validation_crops: np.ndarray | None,
    validation_labels: np.ndarray | None,
    input_size: int,
    forms: tuple[str, ...] | None,
    tolerance: float,
    builders: Mapping[str, Callable[[HeadClassifier], HeadClassifier]] | None,
) -> FormChoice:
    forms = forms or forms_for_this_cpu()
    checked = validation_crops is not None and validation_labels is not None and len(validation_crops) > 0
    int8_trunk = quantise_int8(model, normalised_batch(calibration_crops)) if INT8 in forms else None
    figures: dict[str, FormFigures] = {}
    reference_probabilities = probabilities_of(model, validation_crops) if checked else None
    reference = label_aucs(model, reference_probabilities, validation_labels) if checked else {}
    for form in (*forms, CUDA_FORM):
        candidate = _build_form(model, form, int8_trunk, builders)
        entry = FormFigures(form)
        if form != CUDA_FORM:
            entry.ms_per_batch = time_runner(candidate, input_size)
        if checked:
            # the fp32 form is the reference itself: its probabilities are already known
            plain_fp32 = form == FP32 and not (builders and FP32 in builders)
            probabilities = reference_probabilities if plain_fp32 else probabilities_of(candidate, validation_crops)
            compare_with_fp32(
                reference,
                reference_probabilities,
                entry,
                label_aucs(candidate, probabilities, validation_labels),
                probabilities,
                tolerance,
            )
        figures[form] = entry
    timed = [figures[form] for form in forms if figures[form].accepted]
    chosen = min(timed, key=lambda entry: entry.ms_per_batch or float("inf")).form if timed else FP32
    cuda_form = CUDA_FORM if figures[CUDA_FORM].accepted else FP32
    return FormChoice(
        form=chosen,
        cuda_form=cuda_form,
        figures=figures,
        validation_crops=len(validation_crops) if checked else 0,
        calibration_crops=len(calibration_crops),
        checked=checked,
        int8_state=_int8_state(int8_trunk) if chosen == INT8 else None,
        note="" if checked else "not checked: untrained weights, chosen by speed alone",
    )


def _build_form(
    model: HeadClassifier,
    form: str,
    int8_trunk: nn.Module | None,
    builders: Mapping[str, Callable[[HeadClassifier], HeadClassifier]] | None,
) -> HeadClassifier:
    candidate = copy.deepcopy(model)
    if builders and form in builders:
        return builders[form](candidate)
    return serve_as(candidate, form, int8_trunk)


def _int8_state(trunk: nn.Module | None) -> dict[str, Any] | None:
    """The quantised trunk as plain data: its state dict (packed int8 weights come with dtype
    entries) and the per-module versions that say how to read it back."""
    if trunk is None:
        return None
    state = trunk.state_dict()
    versions = {prefix: dict(entry) for prefix, entry in getattr(state, "_metadata", {}).items()}
    return {"state": dict(state), "versions": versions}


def cpu_name() -> str:
    """The CPU's model name (what a form's timing was measured on)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# ---------------------------------------------------------------- the detector

DETECTOR_FORMS: tuple[str, ...] = (FP32, CHANNELS_LAST, BF16)
DETECTOR_CHECK_IOU = 0.5
DETECTOR_MIN_BOX_IOU = 0.95  # every head's box within this IoU of fp32's: the crops stay the same
DETECTOR_TIMING_IMAGES = 4  # TorchServe's detector batch


def serve_detector_as(detector: FemoralHeadDetector, form: str) -> FemoralHeadDetector:
    """``detector`` answering through ``form`` (fp32, channels-last, bf16 or fp16 autocast)."""
    if form not in (FP32, CHANNELS_LAST, BF16, FP16):
        raise FormError(f"no {form!r} form for the detector; expected fp32, {CHANNELS_LAST}, bf16 or fp16")
    if form != FP32:
        detector.model.to(memory_format=torch.channels_last)
    detector.autocast_dtype = {BF16: torch.bfloat16, FP16: torch.float16}.get(form)
    detector.form = form
    return detector


def detector_forms_for_this_cpu() -> tuple[str, ...]:
    return tuple(form for form in DETECTOR_FORMS if form != BF16 or cpu_has_bf16())


def choose_detector_form(
    detector: FemoralHeadDetector,
    images: list[np.ndarray],
    truths: list[np.ndarray] | None,
    forms: tuple[str, ...] | None = None,
    tolerance: float = AUC_TOLERANCE,
) -> FormChoice:
    """Time each detector form on :data:`DETECTOR_TIMING_IMAGES` radiographs and check it against
    fp32 on the validation radiographs: the served boxes' F1 at IoU 0.5 against the hand boxes may
    not fall by more than ``tolerance``, and every kept head's box must stay within
    :data:`DETECTOR_MIN_BOX_IOU` of fp32's (the classifiers' crops are cut around it: a box that
    moves changes every diagnosis downstream); the largest score change is recorded. Without truths
    (untrained weights) the fastest form with fp32 arithmetic is chosen and labelled unchecked."""
    forms = forms or detector_forms_for_this_cpu()
    checked = truths is not None and len(images) > 0
    if not checked:
        # reduced precision moved the trained detector's boxes (README "Served forms"): unchecked,
        # only the forms with fp32 arithmetic are offered
        forms = tuple(form for form in forms if form in (FP32, CHANNELS_LAST)) or (FP32,)
    reference = detector.predict(images) if checked else []
    reference_f1 = _detection_f1(reference, truths) if checked else None
    figures: dict[str, FormFigures] = {}
    for form in (*forms, CUDA_FORM):
        candidate = serve_detector_as(copy.deepcopy(detector), form)
        entry = FormFigures(form)
        if form != CUDA_FORM:
            entry.ms_per_batch = _time_detector(candidate, images or [np.random.default_rng(0).random((512, 512))])
        if checked:
            found = candidate.predict(images)
            entry.auc = {"f1_at_iou_0.5": _detection_f1(found, truths)}
            entry.max_auc_loss = round(reference_f1 - entry.auc["f1_at_iou_0.5"], 6)
            entry.max_probability_difference = _largest_score_change(reference, found)
            ious, unpaired = _paired_ious(reference, found)
            agreement = 0.0 if unpaired else round(min(ious, default=1.0), 6)  # a head kept by one form only: 0
            entry.auc["min_box_iou_with_fp32"] = agreement
            moved = sum(iou < DETECTOR_MIN_BOX_IOU for iou in ious) + unpaired
            entry.decisions_changed = round(moved / (len(ious) + unpaired), 6) if ious or unpaired else 0.0
            if entry.max_auc_loss > tolerance:
                entry.accepted = False
                entry.reason = f"loses {entry.max_auc_loss:.4f} F1 at IoU 0.5 (tolerance {tolerance})"
            elif agreement < DETECTOR_MIN_BOX_IOU:
                # the classifiers read crops cut around these boxes: a moved box is another crop
                entry.accepted = False
                entry.reason = f"moves a head's box (IoU {agreement:.3f} with fp32's, needs {DETECTOR_MIN_BOX_IOU})"
        figures[form] = entry
    timed = [figures[form] for form in forms if figures[form].accepted]
    chosen = min(timed, key=lambda entry: entry.ms_per_batch or float("inf")).form if timed else FP32
    return FormChoice(
        form=chosen,
        cuda_form=CUDA_FORM if figures[CUDA_FORM].accepted else FP32,
        figures=figures,
        validation_crops=len(images) if checked else 0,
        calibration_crops=0,
        checked=checked,
        note="detector: validation radiographs, F1 at IoU 0.5 in place of AUC"
        if checked
        else "not checked: untrained weights, chosen by speed alone",
    )


def _detection_f1(detections: list, truths: list[np.ndarray]) -> float:
    table = detection_prf([(found.boxes, found.scores) for found in detections], truths, (DETECTOR_CHECK_IOU,), 0.0)
    return round(float(table[DETECTOR_CHECK_IOU]["f1"]), 6)


def _paired_ious(reference: list, found: list) -> tuple[list[float], int]:
    """IoU of each kept head with fp32's (paired at IoU ≥ 0.5), and how many heads found no pair."""
    ious, unpaired = [], 0
    for before, after in zip(reference, found, strict=True):
        pairs = match_boxes(before.boxes, after.boxes, DETECTOR_CHECK_IOU)
        unpaired += len(before.boxes) + len(after.boxes) - 2 * len(pairs)
        ious += [float(box_iou(before.boxes[i : i + 1], after.boxes[j : j + 1])[0, 0]) for i, j in pairs]
    return ious, unpaired


def _largest_score_change(reference: list, found: list) -> float:
    """The largest change of a kept head's score, pairing heads by IoU ≥ 0.5 (a head kept by only
    one of the two counts as its whole score)."""
    largest = 0.0
    for before, after in zip(reference, found, strict=True):
        pairs = match_boxes(before.boxes, after.boxes, DETECTOR_CHECK_IOU)
        for i, j in pairs:
            largest = max(largest, abs(float(before.scores[i]) - float(after.scores[j])))
        unpaired = [float(s) for k, s in enumerate(before.scores) if k not in {i for i, _ in pairs}]
        unpaired += [float(s) for k, s in enumerate(after.scores) if k not in {j for _, j in pairs}]
        largest = max([largest, *unpaired])
    return round(largest, 6)


def _time_detector(detector: FemoralHeadDetector, images: list[np.ndarray], repeats: int = 6) -> float:
    batch = (images * DETECTOR_TIMING_IMAGES)[:DETECTOR_TIMING_IMAGES]
    times = []
    for attempt in range(repeats + 2):
        started = time.perf_counter()
        detector.predict(batch)
        if attempt >= 2:
            times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 2)
