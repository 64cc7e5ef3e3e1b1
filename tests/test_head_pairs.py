"""Pelvic symmetry in the detector's post-processing (avn/models/head_pairs.py)."""

import numpy as np
import torch
from torch import nn

from avn.models.detector import FH_CLASS, PROSTHESIS_CLASS, FemoralHeadDetector, head_candidates
from avn.models.head_pairs import METAL_CORE_RANK, core_rank, covers_implants, is_mirror_pair, select_heads

WIDTH = 1000.0
RIGHT_HIP = [250.0, 450.0, 350.0, 550.0]  # on the image's left half, 100 px
LEFT_HIP = [650.0, 460.0, 748.0, 558.0]  # its mirror: same size and height, 4 heads apart


def test_two_heads_of_one_pelvis_are_a_mirror_pair() -> None:
    assert is_mirror_pair(np.array(RIGHT_HIP), np.array(LEFT_HIP))


def test_boxes_unlike_two_femoral_heads_are_no_pair() -> None:
    right = np.array(RIGHT_HIP)
    assert not is_mirror_pair(right, np.array([650.0, 450.0, 850.0, 650.0]))  # twice the size
    assert not is_mirror_pair(right, np.array([650.0, 150.0, 750.0, 250.0]))  # three heads higher
    assert not is_mirror_pair(right, np.array([400.0, 450.0, 500.0, 550.0]))  # 1.5 heads apart
    assert not is_mirror_pair(right, np.array([0.0, 0.0, 0.0, 0.0]))  # degenerate


def _select(boxes, scores, min_score=0.3, floor=0.1, top_k=4):
    return select_heads(np.array(boxes, float), np.array(scores, float), WIDTH, min_score, floor, top_k).tolist()


def test_a_weak_mirror_of_a_sure_head_is_kept() -> None:
    assert _select([RIGHT_HIP, LEFT_HIP], [0.8, 0.15]) == [0, 1]


def test_a_weak_candidate_is_dropped_without_a_sure_partner() -> None:
    assert _select([LEFT_HIP], [0.25]) == []  # nothing sure on the radiograph: nothing answered
    assert _select([RIGHT_HIP, LEFT_HIP], [0.25, 0.2]) == []  # a weak pair is not vouched for


def test_a_weak_candidate_that_is_no_mirror_is_dropped() -> None:
    misplaced = [650.0, 150.0, 750.0, 250.0]
    assert _select([RIGHT_HIP, misplaced], [0.8, 0.25]) == [0]


def test_a_metal_mirror_is_not_kept() -> None:
    boxes, scores = np.array([RIGHT_HIP, LEFT_HIP], float), np.array([0.8, 0.15])
    kept = select_heads(boxes, scores, WIDTH, 0.3, 0.1, 4, is_metal=lambda box: box[0] > WIDTH / 2)
    assert kept.tolist() == [0]


def test_the_core_rank_is_the_median_of_the_box_centre() -> None:
    ranks = np.zeros((100, 100))
    ranks[40:60, 40:60] = 0.99  # a bright core, as a metal head's
    assert core_rank(ranks, np.array([30.0, 30.0, 70.0, 70.0])) > METAL_CORE_RANK
    assert core_rank(ranks, np.array([0.0, 0.0, 40.0, 40.0])) == 0.0
    assert core_rank(ranks, np.array([500.0, 500.0, 540.0, 540.0])) == 0.0  # off the image


def test_below_the_floor_nothing_is_rescued() -> None:
    assert _select([RIGHT_HIP, LEFT_HIP], [0.8, 0.05]) == [0]


def test_two_sure_heads_need_no_rescue_and_sure_heads_keep_their_order() -> None:
    extra = [100.0, 100.0, 150.0, 150.0]
    assert _select([RIGHT_HIP, LEFT_HIP, extra], [0.5, 0.9, 0.12]) == [1, 0]


def test_pairing_off_when_the_floor_is_unset_or_not_below_the_operating_point() -> None:
    assert _select([RIGHT_HIP, LEFT_HIP], [0.8, 0.15], floor=None) == [0]
    assert _select([RIGHT_HIP, LEFT_HIP], [0.8, 0.15], min_score=0.1, floor=0.1) == [0, 1]
    assert _select([RIGHT_HIP, LEFT_HIP], [0.8, 0.15], min_score=0.1, floor=0.2) == [0, 1]


def test_top_k_caps_the_sure_heads() -> None:
    assert _select([RIGHT_HIP, LEFT_HIP, [0, 0, 50, 50]], [0.9, 0.8, 0.7], top_k=2) == [0, 1]


class _PelvisSSD(nn.Module):
    """Stands in for the SSD: a sure head, its weak mirror and a weak box elsewhere (input pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor([[80.0, 140.0, 112.0, 172.0], [208.0, 142.0, 240.0, 174.0], [150.0, 20.0, 182.0, 52.0]])
        return [
            {"boxes": boxes, "scores": torch.tensor([0.9, 0.2, 0.25]), "labels": torch.tensor([1, 1, 1])}
            for _ in images
        ]


def test_the_served_detector_answers_the_sure_head_and_its_mirror() -> None:
    detector = FemoralHeadDetector("ssdlite320_mobilenet_v3_large", _PelvisSSD(), min_score=0.3, pair_floor=0.1)
    assert detector.model.score_thresh == 0.1  # the SSD is asked for candidates down to the floor
    found = detector.eval().detect(np.zeros((320, 320), dtype=np.float32))
    np.testing.assert_allclose(found.scores, [0.9, 0.2])
    without = FemoralHeadDetector("ssdlite320_mobilenet_v3_large", _PelvisSSD(), min_score=0.3, pair_floor=None)
    assert without.model.score_thresh == 0.3
    np.testing.assert_allclose(without.eval().detect(np.zeros((320, 320), dtype=np.float32)).scores, [0.9])


def _pelvis(mirror_level: float) -> np.ndarray:
    """A 320×320 grey radiograph with the sure head's core mid-grey and the mirror's at ``mirror_level``."""
    image = np.random.default_rng(0).uniform(0.2, 0.9, (320, 320)).astype(np.float32)
    image[148:164, 88:104] = 0.7
    image[150:166, 216:232] = mirror_level
    return image


def test_the_served_detector_keeps_a_bony_mirror_and_drops_a_metal_one() -> None:
    detector = FemoralHeadDetector("ssdlite320_mobilenet_v3_large", _PelvisSSD(), min_score=0.3, pair_floor=0.1).eval()
    np.testing.assert_allclose(detector.detect(_pelvis(0.65)).scores, [0.9, 0.2])  # bone: kept
    np.testing.assert_allclose(detector.detect(_pelvis(1.0)).scores, [0.9])  # the brightest core: metal


def test_a_head_candidate_drawn_around_a_prosthesis_is_dropped() -> None:
    heads = torch.tensor([RIGHT_HIP, [630.0, 440.0, 770.0, 580.0]])  # a native head; a box around ball and cup
    ball = torch.tensor([[665.0, 475.0, 735.0, 545.0]])
    assert covers_implants(heads, ball).tolist() == [False, True]
    half_inside = torch.tensor([[735.0, 475.0, 805.0, 545.0]])  # half of it inside: another object
    assert covers_implants(heads, half_inside).tolist() == [False, False]
    assert covers_implants(heads, torch.zeros((0, 4))).tolist() == [False, False]
    speck = torch.tensor([[690.0, 500.0, 710.0, 520.0]])  # a dense spot called metal inside a head
    assert covers_implants(heads, speck).tolist() == [False, False]


def test_head_candidates_are_fh_boxes_not_drawn_around_metal() -> None:
    output = {
        "boxes": torch.tensor([RIGHT_HIP, LEFT_HIP, [665.0, 475.0, 735.0, 545.0], [100.0, 100.0, 150.0, 150.0]]),
        "scores": torch.tensor([0.9, 0.5, 0.2, 0.6]),  # the prosthesis call may be the weaker one
        "labels": torch.tensor([FH_CLASS, FH_CLASS, PROSTHESIS_CLASS, PROSTHESIS_CLASS]),
    }
    assert head_candidates(output).tolist() == [True, False, False, False]
    output["scores"] = torch.tensor([0.9, 0.5, 0.05, 0.6])  # a prosthesis call below IMPLANT_MIN_SCORE: noise
    assert head_candidates(output).tolist() == [True, True, False, False]


def test_no_mirror_is_kept_on_the_half_of_a_prosthesis() -> None:
    boxes, scores = np.array([RIGHT_HIP, LEFT_HIP], float), np.array([0.8, 0.15])
    stem = np.array([[760.0, 520.0, 820.0, 900.0]])  # a prosthesis seen on the mirror's half
    assert select_heads(boxes, scores, WIDTH, 0.3, 0.1, 4, implant_boxes=stem).tolist() == [0]
    same_half = np.array([[100.0, 520.0, 160.0, 900.0]])  # on the sure head's own half: no bearing
    assert select_heads(boxes, scores, WIDTH, 0.3, 0.1, 4, implant_boxes=same_half).tolist() == [0, 1]


class _HipReplacementSSD(_PelvisSSD):
    """A sure native head and, at its mirror, a metal ball called both head (weakly) and prosthesis."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor([[80.0, 140.0, 112.0, 172.0], [208.0, 142.0, 240.0, 174.0], [207.0, 141.0, 241.0, 175.0]])
        return [
            {
                "boxes": boxes,
                "scores": torch.tensor([0.9, 0.45, 0.85]),
                "labels": torch.tensor([FH_CLASS, FH_CLASS, PROSTHESIS_CLASS]),
            }
            for _ in images
        ]


def test_the_served_detector_never_answers_a_prosthesis_as_a_head() -> None:
    detector = FemoralHeadDetector("ssdlite320_mobilenet_v3_large", _HipReplacementSSD(), min_score=0.3).eval()
    assert detector.knows_implants and detector.model.detections_per_img >= 10
    np.testing.assert_allclose(detector.detect(_pelvis(0.65)).scores, [0.9])  # even a bony-looking ball
