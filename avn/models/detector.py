"""The femoral-head detector (SPEC §2.1): a torchvision SSD with the classes FH and background,
plus "prosthesis" (the metal head of a hip replacement) in detectors trained since that class:
metal mirrors a femoral head in shape and place, and learning it as a class of its own is what
keeps it from being answered as one (:func:`head_candidates`). Only FH boxes ever leave the detector.

:class:`FemoralHeadDetector` owns the geometry between a full radiograph (any size, typically
2000–3000 px) and the detector's small square input, so that callers only ever see boxes in the
original image's pixel coordinates. Training uses the same :func:`prepare_detector_input` and
:func:`boxes_to_input` so that the model sees identical inputs in training and serving.

Input geometry — letterbox, anchored at the top-left corner: the image is scaled by
``S / max(H, W)`` (aspect ratio kept, so a femoral head stays round whatever the
radiograph's shape), placed at (0, 0) of an S×S black canvas and replicated to 3 channels.
Mapping back divides by the scale (per axis, so the rounding of the shorter side stays exact).
The image content is normalised after the shrink by rank and local contrast
(:func:`avn.intensity.detector_contrast`, the project's input normalisation), so any tone curve,
window or bit depth reaches the network alike; the letterbox padding stays black. Scaling to
[-1, 1] happens inside the torchvision model's transform (mean 0.5, std 0.5 for both backbones:
ImageNet statistics mean nothing to weights trained from scratch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from avn.intensity import detector_contrast, equalise
from avn.letterbox import ImageShapeError, LetterboxGeometry, letterbox_geometry, shrink_to_letterbox  # noqa: F401 — re-exported
from avn.models.head_pairs import METAL_CORE_RANK, core_rank, covers_implants, select_heads

DETECTOR_BACKBONES: tuple[str, ...] = ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16")
DETECTOR_INPUT_SIZES: dict[str, int] = {"ssdlite320_mobilenet_v3_large": 320, "ssd300_vgg16": 300}
DETECTOR_LABELS: tuple[str, ...] = ("background", "FH", "prosthesis")  # SSD class 0 is background
FH_CLASS = 1
PROSTHESIS_CLASS = 2
LEGACY_DETECTOR_LABELS: tuple[str, ...] = DETECTOR_LABELS[:2]  # archives built before the prosthesis class

# Post-processing defaults: a radiograph holds at most two heads; a few extra candidates leave the
# gateway room to recover from one false positive ranked above a true head.
DEFAULT_TOP_K = 4
DEFAULT_MIN_SCORE = 0.3
DEFAULT_NMS_IOU = 0.3  # two heads never overlap, so overlapping candidates are duplicates
# Candidates from this score up may be kept as the mirror of a sure head (avn/models/head_pairs.py);
# the SSD is asked for PAIR_SEARCH_K of them so that the mirror is not cut by top_k.
DEFAULT_PAIR_FLOOR = 0.1
PAIR_SEARCH_K = 10
# A prosthesis candidate vetoes heads from this score up (the SSD's own floor when mirrors are kept):
# below it a detector's prosthesis class is noise, and with no score cut at all (untrained or
# diagnostic settings) every anchor would be a candidate.
IMPLANT_MIN_SCORE = DEFAULT_PAIR_FLOOR
MIN_BOX_SIDE = 1.0  # original pixels


class UnknownBackboneError(ValueError):
    """A backbone name that is not one of :data:`DETECTOR_BACKBONES`."""


def _as_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    return image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def _metal_test(content: np.ndarray, geometry: LetterboxGeometry) -> Callable[[np.ndarray], bool]:
    """Whether a box (original pixels) has a metal core, judged on the shrunk image's grey-level
    ranks (computed once, on first use: most radiographs never ask)."""
    ranks: list[np.ndarray] = []

    def is_metal(box: np.ndarray) -> bool:
        if not ranks:
            ranks.append(equalise(content))
        return core_rank(ranks[0], np.asarray(box, dtype=np.float64) * geometry.box_factors()) > METAL_CORE_RANK

    return is_metal


def prepare_detector_input(
    image: np.ndarray | torch.Tensor, input_size: int = DETECTOR_INPUT_SIZES[DETECTOR_BACKBONES[0]]
) -> tuple[torch.Tensor, LetterboxGeometry]:
    """A grey (H, W) radiograph in [0, 1] as the detector's (3, S, S) float tensor, plus its geometry."""
    resized, geometry = shrink_to_letterbox(_as_array(image), input_size)
    return letterbox_canvas(resized, input_size), geometry


def letterbox_canvas(content: np.ndarray, input_size: int) -> torch.Tensor:
    """Shrunk image content (h, w ≤ S), normalised, at the top-left of a black (3, S, S) input."""
    height, width = content.shape
    canvas = np.zeros((input_size, input_size), dtype=np.float32)
    canvas[:height, :width] = detector_contrast(content)
    return torch.from_numpy(canvas).unsqueeze(0).expand(3, -1, -1).contiguous()


def boxes_to_input(boxes_xyxy: np.ndarray | torch.Tensor, geometry: LetterboxGeometry) -> torch.Tensor:
    """Boxes (K, 4) in original pixel coordinates → detector-input coordinates (training targets)."""
    return torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4) * torch.from_numpy(geometry.box_factors())


def head_candidates(output: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) bool over an SSD output: the FH candidates not drawn around a prosthesis candidate."""
    labels, boxes = output["labels"], output["boxes"]
    heads, implants = labels == FH_CLASS, implant_candidates(output)
    mask = heads.clone()
    if bool(implants.any()) and bool(heads.any()):
        mask[heads] = ~covers_implants(boxes[heads].cpu(), boxes[implants].cpu()).to(mask.device)
    return mask


def implant_candidates(output: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) bool over an SSD output: the prosthesis candidates that count (IMPLANT_MIN_SCORE up)."""
    return (output["labels"] == PROSTHESIS_CLASS) & (output["scores"] >= IMPLANT_MIN_SCORE)


def boxes_to_original(boxes_xyxy: np.ndarray | torch.Tensor, geometry: LetterboxGeometry) -> torch.Tensor:
    """Boxes (K, 4) in detector-input coordinates → original pixel coordinates, clipped to the image."""
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4) / torch.from_numpy(geometry.box_factors())
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, geometry.original_width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, geometry.original_height)
    return boxes


@dataclass(frozen=True)
class Detection:
    """Femoral-head candidates of one radiograph, best first, in its own pixel coordinates."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32


class FemoralHeadDetector(nn.Module):
    """Any-size grey radiograph in, femoral-head boxes in original coordinates out.

    ``model`` is the torchvision SSD: in train mode it takes (images, targets) built with
    :func:`prepare_detector_input` / :func:`boxes_to_input` and returns its loss dict
    (``bbox_regression``: smooth-L1 over matched boxes, ``classification``: confidence loss with
    hard-negative mining, both divided by the number of matched boxes).
    """

    def __init__(
        self,
        backbone: str,
        model: nn.Module,
        top_k: int = DEFAULT_TOP_K,
        min_score: float = DEFAULT_MIN_SCORE,
        nms_iou: float = DEFAULT_NMS_IOU,
        pair_floor: float | None = DEFAULT_PAIR_FLOOR,
        labels: Sequence[str] = DETECTOR_LABELS,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.input_size = DETECTOR_INPUT_SIZES[backbone]
        self.labels = tuple(labels)
        self.model = model
        self.pair_floor = pair_floor
        self.configure_postprocessing(top_k=top_k, min_score=min_score, nms_iou=nms_iou)
        # The served form (avn.models.acceleration.serve_detector_as): "fp32", "fp32-channels-last"
        # or "bf16" (the SSD under bf16 autocast); post-processing always reads float32.
        self.form = "fp32"
        self.autocast_dtype: torch.dtype | None = None

    @property
    def knows_implants(self) -> bool:
        """Whether this detector was trained with the prosthesis class."""
        return len(self.labels) > PROSTHESIS_CLASS

    @property
    def pairs_kept(self) -> bool:
        """Whether a weaker mirror of a sure head is kept (a floor below the operating point)."""
        return self.pair_floor is not None and self.pair_floor < self.min_score

    def configure_postprocessing(self, top_k: int, min_score: float, nms_iou: float) -> None:
        """Thresholds of the SSD's own post-processing (score filter, NMS, top-k).

        The SSD itself filters at the pair floor when mirrors are kept; :meth:`predict` then keeps
        what :func:`avn.models.head_pairs.select_heads` selects. Training code that reads
        ``self.model`` directly filters by score itself.
        """
        if top_k < 1 or not 0.0 <= min_score < 1.0 or not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"invalid post-processing top_k={top_k}, min_score={min_score}, nms_iou={nms_iou}")
        if self.pair_floor is not None and not 0.0 <= self.pair_floor < 1.0:
            raise ValueError(f"invalid pair_floor={self.pair_floor}")
        self.top_k, self.min_score, self.nms_iou = top_k, min_score, nms_iou
        pairing = self.pairs_kept
        self.model.score_thresh = self.pair_floor if pairing else min_score
        self.model.nms_thresh = nms_iou
        # prosthesis candidates take places in the SSD's top-k too, so the search is widened
        self.model.detections_per_img = max(top_k, PAIR_SEARCH_K) if pairing or self.knows_implants else top_k

    @property
    def config(self) -> dict[str, object]:
        """The arguments that rebuild this detector with :func:`build_detector`."""
        return {
            "backbone": self.backbone_name,
            "top_k": self.top_k,
            "min_score": self.min_score,
            "nms_iou": self.nms_iou,
            "pair_floor": self.pair_floor,
        }

    def prepare(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, LetterboxGeometry]:
        return prepare_detector_input(image, self.input_size)

    def forward(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[Detection]:
        """Detect heads on each (H, W) [0, 1] radiograph in one batched pass (call in eval mode)."""
        if self.model.training:
            raise RuntimeError("FemoralHeadDetector.forward is inference; train through detector.model")
        if not len(images):
            return []
        shrunk = [shrink_to_letterbox(_as_array(image), self.input_size) for image in images]
        device = next(self.model.parameters()).device
        canvases = [letterbox_canvas(content, self.input_size).to(device) for content, _ in shrunk]
        if self.autocast_dtype is None:
            outputs = self.model(canvases)
        else:
            with torch.autocast(device.type, dtype=self.autocast_dtype):
                outputs = self.model(canvases)
            outputs = [
                {key: value.float() if value.is_floating_point() else value for key, value in output.items()}
                for output in outputs
            ]
        return [
            self._to_detection(output, geometry, content)
            for output, (content, geometry) in zip(outputs, shrunk, strict=True)
        ]

    def _to_detection(
        self, output: dict[str, torch.Tensor], geometry: LetterboxGeometry, content: np.ndarray | None = None
    ) -> Detection:
        is_head = head_candidates(output)
        implants = boxes_to_original(output["boxes"][implant_candidates(output)].detach().cpu(), geometry)
        boxes = boxes_to_original(output["boxes"][is_head].detach().cpu(), geometry)
        scores = output["scores"][is_head].detach().cpu()
        # A box on the black letterbox padding clips to nothing inside the image: no head there.
        inside = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        boxes, scores = boxes[inside], scores[inside]
        keep = select_heads(
            boxes.numpy(),
            scores.numpy(),
            geometry.original_width,
            self.min_score,
            self.pair_floor,
            self.top_k,
            is_metal=None if content is None else _metal_test(content, geometry),
            implant_boxes=implants.numpy(),
        )
        boxes, scores = boxes[torch.from_numpy(keep)], scores[torch.from_numpy(keep)]
        return Detection(boxes=boxes.numpy().astype(np.float32), scores=scores.numpy().astype(np.float32))

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[Detection]:
        """:meth:`forward` without autograd: what the TorchServe handler and the in-process backend call."""
        return self(images)

    def detect(self, image: np.ndarray | torch.Tensor) -> Detection:
        """Convenience for one radiograph."""
        return self.predict([image])[0]


def build_detector(
    backbone: str = DETECTOR_BACKBONES[0],
    top_k: int = DEFAULT_TOP_K,
    min_score: float = DEFAULT_MIN_SCORE,
    nms_iou: float = DEFAULT_NMS_IOU,
    pair_floor: float | None = DEFAULT_PAIR_FLOOR,
    labels: Sequence[str] = DETECTOR_LABELS,
) -> FemoralHeadDetector:
    """A randomly initialised SSD over ``labels`` (nothing can be downloaded here, so no pretrained
    weights); :data:`LEGACY_DETECTOR_LABELS` rebuilds a detector archived before the prosthesis class."""
    if tuple(labels) not in (DETECTOR_LABELS, LEGACY_DETECTOR_LABELS):
        raise ValueError(f"unknown detector labels {tuple(labels)}; expected {DETECTOR_LABELS}")
    if backbone not in DETECTOR_BACKBONES:
        raise UnknownBackboneError(f"unknown detector backbone {backbone!r}; expected one of {DETECTOR_BACKBONES}")
    factory = getattr(detection, backbone)
    model = factory(
        weights=None,
        weights_backbone=None,
        num_classes=len(labels),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    if backbone == "ssdlite320_mobilenet_v3_large":
        # torchvision's SSDLite anchors start at 0.2 of the input (64 px), but a femoral head is
        # about 0.13 of a letterboxed pelvis (~40 px): a 64-px anchor overlaps it with IoU ~0.4,
        # below the matcher's 0.5, leaving each head a single forced match. Same aspect ratios, so
        # the head's anchor count is unchanged.
        model.anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.08, max_ratio=0.5)
    model.compute_loss = _with_negatives_on_headless_images(model.compute_loss)
    return FemoralHeadDetector(
        backbone, model, top_k=top_k, min_score=min_score, nms_iou=nms_iou, pair_floor=pair_floor, labels=labels
    )


# Hard negatives mined on a training image without any femoral head (a field of view over the
# iliac wings, the spine or the femoral shafts): about what three matched heads would bring.
HEADLESS_NEGATIVES = 24


def _with_negatives_on_headless_images(compute_loss):
    """SSD's loss, plus hard negatives on images without a head.

    torchvision's SSD mines negatives at 3 per matched anchor of the same image, so an image with
    no head contributes no loss at all and the detector never learns that a field without a
    femoral head has none — which is what a chest or a knee radiograph must get.
    """

    def loss_with_headless_negatives(targets, head_outputs, anchors, matched_idxs):
        losses = compute_loss(targets, head_outputs, anchors, matched_idxs)
        headless = [index for index, matched in enumerate(matched_idxs) if not bool((matched >= 0).any())]
        if headless:
            logits = head_outputs["cls_logits"][headless]
            background = torch.zeros(logits.shape[:2], dtype=torch.int64, device=logits.device)
            per_anchor = torch.nn.functional.cross_entropy(logits.flatten(0, 1), background.flatten(), reduction="none")
            hardest = per_anchor.view(logits.shape[:2]).topk(min(HEADLESS_NEGATIVES, logits.shape[1]), dim=1).values
            matched_total = sum(int((matched >= 0).sum()) for matched in matched_idxs)
            losses["classification"] = losses["classification"] + hardest.sum() / max(1, matched_total)
        return losses

    return loss_with_headless_negatives
