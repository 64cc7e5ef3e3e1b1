"""The model code (avn.models): CAMs from the fc weights, staging initialised from the view model,
detector geometry in original pixel coordinates, checkpoints that round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from avn.models import (
    CLASSIFIER_TASKS,
    CheckpointError,
    IncompatibleWeightsError,
    UnknownTaskError,
    boxes_to_input,
    boxes_to_original,
    build_classifier,
    build_detector,
    init_from,
    load_checkpoint,
    prepare_detector_input,
    save_checkpoint,
)
from avn.models.checkpoint import rewrite_card
from avn.models.detector import DETECTOR_LABELS, LEGACY_DETECTOR_LABELS, FemoralHeadDetector
from avn.vocabulary import NOTES, STAGES

SMALL_CROP = 64  # ResNet-18 runs on any size ≥ 32; small crops keep these tests fast
METADATA = {"version": "1.2.3", "training_data_hash": "sha256:abc", "metrics": {"auc": np.float64(0.97)}}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_task_has_its_vocabulary_as_outputs() -> None:
    for task, labels in CLASSIFIER_TASKS.items():
        model = build_classifier(task)
        assert model.labels == labels
        assert model.backbone.fc.out_features == len(labels)
        assert model.backbone.conv1.in_channels == 1
    with pytest.raises(UnknownTaskError):
        build_classifier("stage")


def test_forward_features_is_one_pass_giving_the_logits_and_last_conv_maps() -> None:
    model = build_classifier("staging").eval()
    crops = torch.randn(3, 1, SMALL_CROP, SMALL_CROP)
    with torch.no_grad():
        logits, feature_maps = model.forward_features(crops)
        assert feature_maps.shape == (3, 512, SMALL_CROP // 32, SMALL_CROP // 32)
        torch.testing.assert_close(logits, model(crops))
        torch.testing.assert_close(logits, model.backbone.fc(feature_maps.mean(dim=(2, 3))))


def test_cam_is_the_fc_weighted_sum_of_feature_maps_relu_and_peak_scaled() -> None:
    model = build_classifier("staging").eval()
    feature_maps = torch.randn(2, 512, 7, 7)
    classes = [STAGES.index("III"), STAGES.index("absence")]
    with torch.no_grad():
        cams = model.class_activation_maps(feature_maps, classes)
        manual = torch.relu(torch.einsum("bk,bkhw->bhw", model.backbone.fc.weight[classes], feature_maps))
        manual = manual / manual.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(cams, manual)
    assert cams.shape == (2, 7, 7) and float(cams.min()) >= 0.0
    torch.testing.assert_close(cams.amax(dim=(1, 2)), torch.ones(2))


def test_probabilities_softmax_for_exclusive_sigmoid_for_notes() -> None:
    logits = torch.randn(4, len(STAGES))
    torch.testing.assert_close(build_classifier("staging").probabilities(logits).sum(dim=1), torch.ones(4))
    notes = build_classifier("notes")
    note_logits = torch.randn(4, len(NOTES))
    torch.testing.assert_close(notes.probabilities(note_logits), torch.sigmoid(note_logits))


def test_staging_starts_from_the_view_model_except_fc() -> None:
    view, staging = build_classifier("view"), build_classifier("staging")
    with torch.no_grad():
        for parameter in view.parameters():
            parameter.add_(1.0)  # make the view weights unmistakable
    copied = init_from(staging, view.state_dict())
    target, source = staging.state_dict(), view.state_dict()
    assert set(copied) == {key for key in target if not key.startswith("backbone.fc.")}
    for key in copied:
        torch.testing.assert_close(target[key], source[key])
    assert staging.backbone.fc.weight.shape == (len(STAGES), 512)


def test_init_from_refuses_a_source_without_the_trunk() -> None:
    partial = {key: value for key, value in build_classifier("view").state_dict().items() if "layer4" not in key}
    with pytest.raises(IncompatibleWeightsError, match="layer4"):
        init_from(build_classifier("staging"), partial)


def test_detector_input_keeps_aspect_and_boxes_map_back_to_the_original() -> None:
    image = np.zeros((2000, 2400), dtype=np.float32)
    head = np.array([600.0, 800.0, 960.0, 1160.0])  # a 360 px square "head"
    image[800:1160, 600:960] = 1.0
    tensor, geometry = prepare_detector_input(image, 320)
    assert tensor.shape == (3, 320, 320) and geometry.original_size == (2000, 2400)
    assert geometry.scale_x == pytest.approx(geometry.scale_y, rel=1e-2)  # letterbox, not squash
    rows, cols = np.nonzero(tensor[0].numpy() > 0.5)
    found = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
    np.testing.assert_allclose(found, boxes_to_input(head, geometry).numpy()[0], atol=1.0)
    np.testing.assert_allclose(boxes_to_original(boxes_to_input(head, geometry), geometry).numpy()[0], head, atol=1e-3)


class _FixedSSD(nn.Module):
    """Stands in for the torchvision SSD: one head box and one background box at input coordinates."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert all(image.shape == (3, 320, 320) for image in images)
        return [
            {
                "boxes": torch.tensor([[40.0, 80.0, 88.0, 128.0], [0.0, 0.0, 10.0, 10.0]]),
                "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([1, 0]),
            }
            for _ in images
        ]


def test_detector_returns_heads_in_original_pixel_coordinates() -> None:
    detector = FemoralHeadDetector("ssdlite320_mobilenet_v3_large", _FixedSSD()).eval()
    detection = detector.detect(np.zeros((2000, 2400), dtype=np.float32))
    scale_x, scale_y = 320 / 2400, 267 / 2000  # 2000 × 320/2400 = 266.7 rows hold the image
    expected = [[40 / scale_x, 80 / scale_y, 88 / scale_x, 128 / scale_y]]
    np.testing.assert_allclose(detection.boxes, expected, rtol=1e-5)
    np.testing.assert_allclose(detection.scores, [0.9])


def test_untrained_ssd_runs_end_to_end_on_a_full_size_radiograph() -> None:
    detector = build_detector("ssdlite320_mobilenet_v3_large", top_k=3).eval()
    image = np.random.default_rng(0).random((2000, 2400), dtype=np.float32)
    with torch.no_grad():
        detection = detector.detect(image)
    assert detection.boxes.shape[1:] == (4,) and len(detection.boxes) == len(detection.scores) <= 3
    assert (detection.boxes[:, [0, 2]] <= 2400).all() and (detection.boxes[:, [1, 3]] <= 2000).all()
    assert (detection.boxes >= 0).all()


def test_ssd_train_mode_returns_the_two_losses() -> None:
    detector = build_detector()
    images, targets = [], []
    for _ in range(2):  # BatchNorm on the 1×1 extra layers needs more than one image
        tensor, geometry = prepare_detector_input(np.random.default_rng(1).random((600, 500), dtype=np.float32))
        images.append(tensor)
        targets.append({"boxes": boxes_to_input([[100, 120, 220, 240]], geometry), "labels": torch.tensor([1])})
    losses = detector.model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}


def test_rewriting_a_card_changes_only_what_it_is_told(tmp_path) -> None:
    """Calibration after operating points (or the reverse) keeps what the earlier step wrote."""
    path = tmp_path / "staging.pt"
    points = {"default": {"threshold": 0.4, "sensitivity": 0.9, "specificity": 0.95}}
    save_checkpoint(path, build_classifier("staging"), "staging", {**METADATA, "operating_points": points})
    model, card = load_checkpoint(path)
    rewrite_card(path, model, card, version="1.2.3-t1.5000", temperature=1.5)
    _, rewritten = load_checkpoint(path)
    assert (rewritten.version, rewritten.temperature) == ("1.2.3-t1.5000", 1.5)
    assert rewritten.operating_points == points and rewritten.metrics == card.metrics
    assert rewritten.created == card.created and rewritten.training_data_hash == card.training_data_hash


def test_classifier_checkpoint_round_trip(tmp_path) -> None:
    model = build_classifier("notes")
    path = tmp_path / "notes" / "model.pt"
    written = save_checkpoint(path, model, "notes", {**METADATA, "temperature": 1.5})
    # A plain dict: loadable without unpickling code.
    assert set(torch.load(path, weights_only=True)) == {"format", "card", "config", "state_dict"}
    loaded, card = load_checkpoint(path)
    assert card == written and card.labels == NOTES and card.input_size == 224 and card.temperature == 1.5
    assert card.metrics == {"auc": 0.97} and card.version == "1.2.3" and card.created
    assert not loaded.training and loaded.temperature == 1.5
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_detector_checkpoint_keeps_backbone_and_postprocessing(tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_detector(top_k=2, min_score=0.4), "detection", METADATA)
    loaded, card = load_checkpoint(path)
    assert card.task == "detection" and card.architecture == "ssdlite320_mobilenet_v3_large" and card.input_size == 320
    assert (loaded.top_k, loaded.min_score) == (2, 0.4)


def test_detector_archived_before_the_prosthesis_class_still_loads(tmp_path) -> None:
    path = tmp_path / "legacy.pt"
    save_checkpoint(path, build_detector(labels=LEGACY_DETECTOR_LABELS), "detection", METADATA)
    loaded, card = load_checkpoint(path)
    assert card.labels == ("background", "FH") and loaded.labels == card.labels and not loaded.knows_implants
    assert build_detector().knows_implants and build_detector().labels == DETECTOR_LABELS
    with pytest.raises(ValueError, match="unknown detector labels"):
        build_detector(labels=("background", "FH", "screw"))
    payload = torch.load(path, weights_only=True)
    payload["card"]["labels"] = ["background", "FH", "screw"]  # a card from a vocabulary this code lacks
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="unknown detector labels"):
        load_checkpoint(path)


def test_checkpoint_refuses_wrong_task_or_missing_metadata(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="labels"):
        save_checkpoint(tmp_path / "a.pt", build_classifier("view"), "side", METADATA)
    with pytest.raises(CheckpointError, match="training_data_hash"):
        save_checkpoint(tmp_path / "b.pt", build_classifier("view"), "view", {"version": "1"})
    with pytest.raises(CheckpointError, match="extra"):
        save_checkpoint(tmp_path / "c.pt", build_classifier("view"), "view", {**METADATA, "epochs": 3})


def test_a_training_image_without_a_head_still_teaches_the_detector():
    """torchvision's SSD mines negatives per matched anchor: our loss adds them on headless images."""
    torch.manual_seed(0)
    detector = build_detector()
    detector.model.train()
    for module in detector.modules():  # batch statistics of a batch of one are undefined
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    head = {"boxes": torch.tensor([[100.0, 100.0, 150.0, 150.0]]), "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    image = torch.rand(3, 320, 320)
    alone = detector.model([image], [head])["classification"]
    with_headless = detector.model([image, torch.rand(3, 320, 320)], [head, empty])["classification"]
    assert with_headless > alone * 1.05
    with_headless.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector.model.head.parameters())
