"""Pelvic symmetry in the detector's post-processing: a weak head is kept when it mirrors a sure one.

An AP pelvis shows two femoral heads of nearly the same size, at nearly the same height, one on each
side of the midline and a few head widths apart. The detector's operating point is chosen on the
phantom's validation radiographs; on real radiographs a head can score below it (a faint, overlapped
or osteopenic head) while its partner on the other side is found surely. Such a weaker candidate is
kept when it forms an anatomically plausible pair with a head found at the operating point: the sure
head vouches for its place and size. A weak candidate never stands alone (a radiograph with no sure
head answers nothing), so a non-pelvic radiograph gains no head by this rule. A kept weak head keeps
its own score, below the operating point, and the gateway flags it ``low_confidence`` with the
reason.

A hip prosthesis mirrors the native head on the other side just as well. A detector trained with the
prosthesis class (:data:`avn.models.detector.PROSTHESIS_CLASS`) names metal heads itself: a head
candidate drawn around a prosthesis candidate is dropped (:func:`covers_implants`), and no mirror is
kept on an image half where a prosthesis is seen (a replaced hip has no native head to vouch for).
Detectors trained before that class, and metal the detector misses, are caught by density. Metal is
the densest thing on a radiograph: the core of a prosthetic head is brighter than nearly every other
pixel, the core of a native head is not (measured on the grey-level ranks of the whole radiograph:
prosthetic heads 0.97–0.995 on the phantom and on real pelves, native heads 0.72–0.92 on real
pelves). A candidate whose core ranks above :data:`METAL_CORE_RANK` is never kept as a mirror.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Measured on 143 held-out real AP pelves and 154 real headless fields (README, "Real radiographs").
PAIR_SIZE_RATIO = 1.45  # the two heads' sizes (longer box side) within this factor of each other
PAIR_HEIGHT_TOLERANCE = 0.5  # centres at most this many head sizes apart vertically
PAIR_SEPARATION = (2.5, 7.0)  # centres this many head sizes apart horizontally
METAL_CORE_RANK = 0.95  # median grey-level rank of a box's central half above this: metal, not bone
# A head candidate whose box holds this much of a prosthesis candidate's box is that metal ball seen
# by the head class too (a head box is drawn around ball and cup, so it is larger: IoU would say less).
IMPLANT_COVER = 0.6
# ...and a prosthesis candidate at least this fraction of the head box's area: a 22-mm ball in the
# ~55-mm box around ball and cup is 0.16; a speck inside a native head (a dense spot the detector
# calls metal at a low score) is far smaller and must not cost a real head its answer.
IMPLANT_MIN_AREA = 0.15


def covers_implants(head_boxes: torch.Tensor, implant_boxes: torch.Tensor) -> torch.Tensor:
    """(K,) bool: which head candidates (xyxy) hold at least IMPLANT_COVER of a prosthesis
    candidate's box, that box being at least IMPLANT_MIN_AREA of theirs. Such a candidate is the
    metal ball, whatever the two classes' scores: on a detector trained for minutes the prosthesis
    score of a ball is often the lower of the two."""
    if not len(head_boxes) or not len(implant_boxes):
        return torch.zeros(len(head_boxes), dtype=torch.bool)
    heads, implants = head_boxes.float()[:, None, :], implant_boxes.float()[None, :, :]
    top_left = torch.maximum(heads[..., :2], implants[..., :2])
    bottom_right = torch.minimum(heads[..., 2:], implants[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    implant_area = (implants[..., 2:] - implants[..., :2]).prod(dim=-1).clamp(min=1e-6)
    head_area = (heads[..., 2:] - heads[..., :2]).prod(dim=-1)
    ball_sized = implant_area >= IMPLANT_MIN_AREA * head_area
    return ((overlap / implant_area >= IMPLANT_COVER) & ball_sized).any(dim=1)


def is_mirror_pair(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether boxes a and b (xyxy) sit like the two femoral heads of one AP pelvis."""
    size_a, size_b = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    if min(size_a, size_b) <= 0 or max(size_a, size_b) / min(size_a, size_b) > PAIR_SIZE_RATIO:
        return False
    size = (size_a + size_b) / 2.0
    dx = abs((a[0] + a[2]) - (b[0] + b[2])) / 2.0
    dy = abs((a[1] + a[3]) - (b[1] + b[3])) / 2.0
    return dy <= PAIR_HEIGHT_TOLERANCE * size and PAIR_SEPARATION[0] * size <= dx <= PAIR_SEPARATION[1] * size


def core_rank(ranks: np.ndarray, box: np.ndarray) -> float:
    """Median of ``ranks`` (grey-level ranks in [0, 1], same pixels as ``box``) over the box's central half."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rx, ry = (x1 - x0) / 4.0, (y1 - y0) / 4.0
    core = ranks[max(int(cy - ry), 0) : int(cy + ry) + 1, max(int(cx - rx), 0) : int(cx + rx) + 1]
    return float(np.median(core)) if core.size else 0.0


def select_heads(
    boxes: np.ndarray,
    scores: np.ndarray,
    image_width: float,
    min_score: float,
    pair_floor: float | None,
    top_k: int,
    is_metal: Callable[[np.ndarray], bool] | None = None,
    implant_boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the candidates to answer, best first: every one at ``min_score`` or above (at most
    ``top_k``), plus at most one candidate from ``pair_floor`` up that mirrors the sure head when
    every sure head lies on one image half, and the mirror is not metal (``is_metal(box)``, when
    given) and lies on a half without a prosthesis candidate (``implant_boxes``, xyxy).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-scores, kind="stable")
    sure = [int(i) for i in order if scores[i] >= min_score][:top_k]
    if pair_floor is None or pair_floor >= min_score or not sure:
        return np.asarray(sure, dtype=np.int64)
    on_left = (boxes[:, 0] + boxes[:, 2]) / 2.0 < image_width / 2.0
    if len({bool(on_left[i]) for i in sure}) != 1:
        return np.asarray(sure, dtype=np.int64)
    anchor = sure[0]
    implants = np.asarray(implant_boxes if implant_boxes is not None else [], dtype=np.float64).reshape(-1, 4)
    implant_on_left = (implants[:, 0] + implants[:, 2]) / 2.0 < image_width / 2.0
    if bool((implant_on_left != on_left[anchor]).any()):
        return np.asarray(sure, dtype=np.int64)  # the other hip is replaced: no native head to mirror
    for i in order:
        if pair_floor <= scores[i] < min_score and on_left[i] != on_left[anchor]:
            if is_mirror_pair(boxes[anchor], boxes[i]) and not (is_metal and is_metal(boxes[i])):
                return np.asarray([*sure, int(i)], dtype=np.int64)
    return np.asarray(sure, dtype=np.int64)
