"""The metrics core (SPEC §3): hand-computed cases, scikit-learn cross-checks and edge cases."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from avn.metrics import (
    MATCH_IOU,
    binary_metrics,
    box_iou,
    collapse_probabilities,
    detection_prf,
    diagnosis_metrics,
    group_stage_probabilities,
    match_boxes,
    match_greedily,
    multiclass_metrics,
    multilabel_metrics,
    to_jsonable,
)
from avn.vocabulary import (
    COLLAPSE_CLASSES,
    NOTES,
    PRESENCE_CLASSES,
    STAGE_TO_COLLAPSE,
    STAGE_TO_PRESENCE,
    STAGES,
    class_probability,
)

ABSENCE, STAGE_II, STAGE_III, STAGE_IV = STAGES
NO_COLLAPSE, PRE_COLLAPSE, POST_COLLAPSE = COLLAPSE_CLASSES
TRUTH_BOX = [0.0, 0.0, 10.0, 10.0]


def _strict_json(obj) -> str:
    return json.dumps(obj, allow_nan=False)


# ------------------------------------------------------------------------------------- detection


def test_duplicate_predictions_on_one_truth_give_one_tp_one_fp():
    # Both boxes equal the truth; the 0.9 one takes it, the 0.8 one finds it taken.
    # P = 1/2, R = 1/1, F1 = 2·0.5·1/1.5 = 2/3.
    result = detection_prf([([TRUTH_BOX, TRUTH_BOX], [0.9, 0.8])], [[TRUTH_BOX]])
    assert set(result) == {0.5, 0.6, 0.7}
    for counts in result.values():
        assert (counts["tp"], counts["fp"], counts["fn"]) == (1, 1, 0)
        assert counts["precision"] == pytest.approx(0.5)
        assert counts["recall"] == pytest.approx(1.0)
        assert counts["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("height, threshold", [(5.0, 0.5), (6.0, 0.6), (7.0, 0.7)])
def test_iou_exactly_at_the_threshold_is_not_a_tp(height, threshold):
    # Box [0,0,10,h] lies inside the 10×10 truth: IoU = 10h / 100 = h/10, exactly the threshold.
    # The strict ">" rule makes it a miss there, and a hit at every lower threshold.
    result = detection_prf([([[0.0, 0.0, 10.0, height]], [0.9])], [[TRUTH_BOX]])
    at = result[threshold]
    assert (at["tp"], at["fp"], at["fn"]) == (0, 1, 1)
    assert at["precision"] == at["recall"] == at["f1"] == 0.0
    for lower in (t for t in result if t < threshold):
        assert result[lower]["tp"] == 1


def test_low_score_predictions_are_ignored_and_the_cut_is_inclusive():
    # Score 0.3 < 0.5: dropped, so nothing is predicted → P = 0 (undefined), R = 0/1.
    dropped = detection_prf([([TRUTH_BOX], [0.3])], [[TRUTH_BOX]])[0.5]
    assert (dropped["tp"], dropped["fp"], dropped["fn"]) == (0, 0, 1)
    assert dropped["precision"] == dropped["recall"] == dropped["f1"] == 0.0
    # Score exactly 0.5 is kept.
    kept = detection_prf([([TRUTH_BOX], [0.5])], [[TRUTH_BOX]], score_threshold=0.5)[0.5]
    assert kept["tp"] == 1


def test_empty_images_are_counted_across_the_set():
    second_head = [20.0, 0.0, 30.0, 10.0]
    predictions = [
        ((np.array([TRUTH_BOX, second_head]), np.array([0.9, 0.8]))),  # two heads found: TP 2
        (np.zeros((0, 4)), np.zeros(0)),  # one head missed: FN 1
        (torch.tensor([TRUTH_BOX]), torch.tensor([0.95])),  # a head where there is none: FP 1
        ([], []),  # nothing to find, nothing found
    ]
    truths = [[TRUTH_BOX, second_head], [TRUTH_BOX], torch.empty(0, 4), []]
    # TP 2, FP 1, FN 1 → P = 2/3, R = 2/3, F1 = 2/3.
    result = detection_prf(predictions, truths)[0.7]
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)


def test_no_predictions_and_no_truths_anywhere_gives_zeros():
    result = detection_prf([([], [])], [[]], iou_thresholds=(0.5,))
    assert result == {0.5: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}}


def test_predictions_are_matched_in_score_order_not_list_order():
    # Two overlapping truths T1 = [0,0,10,10] and T2 = [0,0,10,8]. The higher-scored box A =
    # [0,0,10,9] has IoU 0.9 with T1 and 80/90 ≈ 0.889 with T2; the lower-scored box B equals T1
    # (IoU 1.0 with T1, 0.8 with T2) and comes first in the list. At 0.85, A goes first and takes T1;
    # B is left with T2 at 0.8 → FP: TP 1, FP 1, FN 1. Matching in list order would give TP 2.
    box_a, box_b = [0.0, 0.0, 10.0, 9.0], TRUTH_BOX
    truths = [[TRUTH_BOX, [0.0, 0.0, 10.0, 8.0]]]
    result = detection_prf([([box_b, box_a], [0.6, 0.9])], truths, iou_thresholds=(0.85,))[0.85]
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)


def test_greedy_matching_takes_the_best_unmatched_truth():
    # Rows are predictions best score first. Row 0 takes truth 0 (0.9); row 1 would like truth 0
    # (0.8) but it is taken, and truth 1 (0.0) is not > 0.7 → FP; truth 1 stays unfound.
    iou = np.array([[0.9, 0.75], [0.8, 0.0]])
    assert match_greedily(iou, 0.7) == (1, 1, 1)
    # Row 1 falls back to the still-free truth when that one overlaps enough.
    iou = np.array([[0.9, 0.1], [0.8, 0.72]])
    assert match_greedily(iou, 0.7) == (2, 0, 0)
    assert match_greedily(np.zeros((0, 2)), 0.5) == (0, 0, 2)
    assert match_greedily(np.zeros((3, 0)), 0.5) == (0, 3, 0)


def test_heads_match_one_to_one_largest_overlap_first_strictly_above_one_half():
    # The pair (truth 0, prediction 1) overlaps most (IoU 0.9) and is taken first, although
    # prediction 0 comes first; prediction 0 then has only truth 0 (taken) and is left out.
    truth = [[0, 0, 10, 10], [20, 0, 30, 10]]
    predicted = [[1, 0, 11, 10], [0, 0, 10, 9], [20, 0, 30, 10]]
    assert match_boxes(truth, predicted) == [(0, 1), (1, 2)]
    # Exactly 0.5 is not a match (as the detection counts): IoU 50/100.
    half = [[0, 0, 10, 5]]
    assert box_iou(truth[:1], half)[0, 0] == MATCH_IOU and match_boxes(truth, half) == []
    assert match_boxes(np.zeros((0, 4)), predicted) == [] and match_boxes(truth, []) == []


def test_both_priorities_find_as_many_heads_when_truths_do_not_overlap():
    # Femoral heads never overlap; then the score-ordered detection count and the IoU-ordered head
    # matching agree on the number of matches at every IoU threshold of the reports.
    rng = np.random.default_rng(0)
    truth = np.array([[10, 10, 40, 40], [60, 10, 90, 40]], dtype=np.float64)
    for _ in range(300):
        predicted = np.repeat(truth, 3, axis=0)[rng.permutation(6)[: rng.integers(0, 7)]]
        predicted = predicted + rng.normal(0, 4, predicted.shape)
        for threshold in (0.5, 0.6, 0.7):
            tp, _, _ = match_greedily(box_iou(predicted, truth), threshold)
            assert tp == len(match_boxes(truth, predicted, threshold))


def test_grouped_probabilities_are_the_served_class_masses_bit_for_bit():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(STAGES)), size=50)
    grouped = collapse_probabilities(probs)
    for row, expected in zip(probs, grouped, strict=True):
        by_stage = dict(zip(STAGES, row.tolist(), strict=True))
        assert [class_probability(c, STAGE_TO_COLLAPSE, by_stage) for c in COLLAPSE_CLASSES] == expected.tolist()


def test_detection_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        detection_prf([([TRUTH_BOX], [0.9])], [])
    with pytest.raises(ValueError):
        detection_prf([([TRUTH_BOX], [0.9, 0.8])], [[TRUTH_BOX]])


# ------------------------------------------------------------------------------------- binary

Y_BINARY = [1, 1, 1, 0, 0, 0]
S_BINARY = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1]


def test_binary_metrics_by_hand():
    # Predictions at 0.5: [1,1,0,1,0,0] → TP 2, FN 1, FP 1, TN 2.
    # Sensitivity 2/3, specificity 2/3, precision 2/3, F1 2/3, accuracy 4/6.
    # AUC: 9 positive–negative pairs; 0.9 wins 3, 0.6 wins 2 (loses to 0.7), 0.4 wins 2 → 7/9.
    m = binary_metrics(Y_BINARY, S_BINARY)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 2)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["auc"] == pytest.approx(roc_auc_score(Y_BINARY, S_BINARY))
    assert (m["support"], m["positives"], m["negatives"]) == (6, 3, 3)
    _strict_json(m)


def test_binary_threshold_is_inclusive():
    # At 0.6 the score 0.6 still counts as positive (TP 2, FP 1 from 0.7); at 0.61 it does not.
    m = binary_metrics(Y_BINARY, S_BINARY, threshold=0.6)
    assert (m["tp"], m["fp"]) == (2, 1)
    m = binary_metrics(Y_BINARY, S_BINARY, threshold=0.61)
    assert (m["tp"], m["fp"]) == (1, 1)


def test_one_class_auc_is_none():
    m = binary_metrics([1, 1, 1], [0.9, 0.4, 0.7])
    assert m["auc"] is None
    assert m["specificity"] is None  # no negatives to be specific about
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert "NaN" not in _strict_json(m)


def test_classification_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        binary_metrics([], [])
    with pytest.raises(ValueError):
        binary_metrics([1, 0], [0.5])


# ------------------------------------------------------------------------------------- multiclass

Y_MULTI = [0, 0, 1, 1, 2, 2]
P_MULTI = np.array(
    [
        [0.7, 0.2, 0.1],  # → 0 ✓
        [0.3, 0.6, 0.1],  # → 1 ✗
        [0.2, 0.5, 0.3],  # → 1 ✓
        [0.1, 0.4, 0.5],  # → 2 ✗
        [0.1, 0.1, 0.8],  # → 2 ✓
        [0.5, 0.2, 0.3],  # → 0 ✗
    ]
)


def test_multiclass_metrics_by_hand():
    m = multiclass_metrics(Y_MULTI, P_MULTI, COLLAPSE_CLASSES)
    # Confusion (rows truth): [[1,1,0],[0,1,1],[1,0,1]]; accuracy 3/6.
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(0.5)
    # Each class: TP 1, FN 1, FP 1, TN 3 → sensitivity 1/2, specificity 3/4, F1 1/2.
    for per in m["per_class"].values():
        assert (per["tp"], per["fn"], per["fp"], per["tn"]) == (1, 1, 1, 3)
        assert per["sensitivity"] == pytest.approx(0.5)
        assert per["specificity"] == pytest.approx(0.75)
        assert per["f1"] == pytest.approx(0.5)
        assert per["support"] == 2
    # One-vs-rest AUC (8 pairs each):
    #   class 0: pos 0.7 wins 4, pos 0.3 wins 3 (loses to 0.5) → 7/8
    #   class 1: pos 0.5 and 0.4 each win 3 (lose to 0.6) → 6/8
    #   class 2: pos 0.8 wins 4, pos 0.3 wins 2, ties 1 (½), loses 1 → 6.5/8
    aucs = [m["per_class"][label]["auc"] for label in COLLAPSE_CLASSES]
    assert aucs == pytest.approx([7 / 8, 6 / 8, 6.5 / 8])
    assert m["macro_auc"] == pytest.approx((7 / 8 + 6 / 8 + 6.5 / 8) / 3)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["weighted_f1"] == pytest.approx(0.5)
    assert m["labels"] == list(COLLAPSE_CLASSES)
    _strict_json(m)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(4), size=60)
    truth = rng.integers(0, 4, size=60)
    m = multiclass_metrics(truth, probs, STAGES)
    predicted = probs.argmax(axis=1)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(truth, probs, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(truth, predicted, average="weighted"))
    for k, stage in enumerate(STAGES):
        assert m["per_class"][stage]["auc"] == pytest.approx(roc_auc_score(truth == k, probs[:, k]))


def test_multiclass_absent_class_has_no_auc_or_sensitivity():
    m = multiclass_metrics([0, 0, 1], P_MULTI[[0, 1, 2]], COLLAPSE_CLASSES)
    absent = m["per_class"][POST_COLLAPSE]
    assert absent["auc"] is None and absent["sensitivity"] is None
    assert absent["specificity"] == pytest.approx(1.0)  # nothing predicted as class 2
    assert len(m["confusion_matrix"]) == 3  # the absent class keeps its row and column
    with pytest.raises(ValueError):
        multiclass_metrics([0, 3], P_MULTI[:2], COLLAPSE_CLASSES)


# ------------------------------------------------------------------------------------- multilabel

Y_LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])
P_LABELS = np.array([[0.8, 0.2, 0.1], [0.3, 0.9, 0.6], [0.4, 0.7, 0.2], [0.6, 0.1, 0.3]])


def test_multilabel_metrics_by_hand():
    labels = NOTES[:3]
    m = multilabel_metrics(Y_LABELS, P_LABELS, labels)
    first, second, never = (m["per_label"][label] for label in labels)
    # Label 0: predictions [1,0,0,1] vs [1,0,1,0] → TP1 FN1 FP1 TN1: sens ½, spec ½, F1 ½.
    #   AUC: pos {0.8, 0.4} vs neg {0.3, 0.6}: 0.8 wins 2, 0.4 wins 1 → 3/4.
    assert (first["sensitivity"], first["specificity"], first["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert first["auc"] == pytest.approx(0.75)
    # Label 1: predictions [0,1,1,0] vs [0,1,1,1] → TP2 FN1 FP0 TN1: sens 2/3, spec 1, F1 0.8.
    #   AUC: neg {0.2} vs pos {0.9, 0.7, 0.1} → 2/3.
    assert (second["sensitivity"], second["specificity"], second["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert second["auc"] == pytest.approx(2 / 3)
    # Label 2 never occurs: no AUC, no sensitivity; one FP (0.6) of 4 negatives → spec 3/4; F1 0.
    assert never["auc"] is None and never["sensitivity"] is None
    assert never["specificity"] == pytest.approx(0.75)
    assert never["f1"] == 0.0
    # Macro AUC skips label 2: (3/4 + 2/3) / 2.
    assert m["macro_auc"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(Y_LABELS[:, :2], P_LABELS[:, :2], average="macro"))
    # Micro AUC pools 5 positives against 7 negatives: 0.9, 0.8, 0.7 win 7 each, 0.4 wins 5,
    # 0.1 ties one 0.1 (½) → 26.5/35.
    assert m["micro_auc"] == pytest.approx(26.5 / 35)
    assert m["micro_auc"] == pytest.approx(roc_auc_score(Y_LABELS, P_LABELS, average="micro"))
    # Micro F1: TP 3, FP 2, FN 2 → 0.6. Macro F1: (0.5 + 0.8 + 0) / 3.
    assert m["micro_f1"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx(1.3 / 3)
    _strict_json(m)


def test_multilabel_rejects_bad_truth():
    with pytest.raises(ValueError):
        multilabel_metrics(Y_LABELS * 2, P_LABELS, NOTES[:3])
    with pytest.raises(ValueError):
        multilabel_metrics(Y_LABELS, P_LABELS, NOTES[:2])


# ------------------------------------------------------------------------------------- diagnosis

STAGE_TRUE = [ABSENCE, STAGE_II, STAGE_IV]
STAGE_PROBS = np.array(
    [
        # absence, II, III, IV
        [0.6, 0.2, 0.1, 0.1],
        [0.3, 0.25, 0.35, 0.1],
        [0.1, 0.2, 0.3, 0.4],
    ]
)


def test_grouping_arithmetic():
    # Presence = II + III + IV = 1 − P(absence): 0.4, 0.7, 0.9.
    presence = group_stage_probabilities(STAGE_PROBS, STAGE_TO_PRESENCE, PRESENCE_CLASSES)
    assert presence[:, 1] == pytest.approx([0.4, 0.7, 0.9])
    assert presence[:, 1] == pytest.approx(1 - STAGE_PROBS[:, 0])
    # Collapse = (absence, II, III + IV): [0.6, 0.2, 0.2], [0.3, 0.25, 0.45], [0.1, 0.2, 0.7].
    collapse = group_stage_probabilities(STAGE_PROBS, STAGE_TO_COLLAPSE, COLLAPSE_CLASSES)
    assert collapse == pytest.approx(np.array([[0.6, 0.2, 0.2], [0.3, 0.25, 0.45], [0.1, 0.2, 0.7]]))


def test_diagnosis_sub_tasks():
    d = diagnosis_metrics(STAGE_TRUE, STAGE_PROBS)
    assert set(d) == {"presence", "collapse", "staging"}
    # Presence: truth [0,1,1], P(presence) [0.4,0.7,0.9] → all right, AUC 1.
    presence = d["presence"]
    assert presence["positive_label"] == PRESENCE_CLASSES[1]
    assert (presence["tp"], presence["tn"], presence["fp"], presence["fn"]) == (2, 1, 0, 0)
    assert presence["auc"] == pytest.approx(1.0)
    assert presence == {**binary_metrics([0, 1, 1], [0.4, 0.7, 0.9]), "positive_label": PRESENCE_CLASSES[1]}
    # Collapse: for the II head post-collapse sums III + IV = 0.45 > absence 0.3 > pre-collapse
    # 0.25, so it is called post-collapse: truth [0,1,2], pred [0,2,2].
    collapse = d["collapse"]
    assert collapse["labels"] == list(COLLAPSE_CLASSES)
    assert collapse["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert collapse["accuracy"] == pytest.approx(2 / 3)
    assert collapse["per_class"][PRE_COLLAPSE]["sensitivity"] == 0.0
    assert collapse["per_class"][NO_COLLAPSE]["sensitivity"] == 1.0
    # Staging: truth [absence, II, IV], pred [absence, III, IV]; stage III never occurs.
    staging = d["staging"]
    assert staging["confusion_matrix"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert staging["per_class"][STAGE_III]["auc"] is None
    assert staging["per_class"][STAGE_III]["sensitivity"] is None
    assert staging["per_class"][STAGE_III]["fp"] == 1
    _strict_json(d)


def test_diagnosis_rejects_unknown_stage_and_bad_shape():
    with pytest.raises(ValueError):
        diagnosis_metrics([ABSENCE, "V"], STAGE_PROBS[:2])
    with pytest.raises(ValueError):
        diagnosis_metrics(STAGE_TRUE, STAGE_PROBS[:, :3])


# ------------------------------------------------------------------------------------- JSON


def test_to_jsonable_makes_plain_python():
    raw = {
        np.float32(0.5): {"auc": np.float64(0.75), "n": np.int64(3), "flag": np.bool_(True)},
        "cm": np.array([[1, 2], [3, 4]]),
        "missing": float("nan"),
        "tensor": torch.tensor([0.5, 1.0]),
        "pair": (1, None),
    }
    clean = to_jsonable(raw)
    assert clean == {
        0.5: {"auc": 0.75, "n": 3, "flag": True},
        "cm": [[1, 2], [3, 4]],
        "missing": None,
        "tensor": [0.5, 1.0],
        "pair": [1, None],
    }
    assert json.loads(_strict_json(clean))["0.5"]["n"] == 3
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_detection_output_is_json_ready():
    result = detection_prf([([TRUTH_BOX], [0.9])], [[TRUTH_BOX]])
    assert json.loads(_strict_json(result))["0.5"]["tp"] == 1
    assert to_jsonable(result) == result
