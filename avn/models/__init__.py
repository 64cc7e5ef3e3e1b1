"""The five models in plain PyTorch: the femoral-head detector and the four head classifiers.

Training, the TorchServe handlers, the gateway and the evaluation all build and load models here;
nothing in this package depends on TorchServe, so the same code runs in-process or elsewhere.
"""

from avn.models.checkpoint import (
    TASKS,
    CheckpointError,
    ModelCard,
    ModelTaskMismatchError,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from avn.models.classifier import (
    CLASSIFIER_TASKS,
    MULTI_LABEL_TASKS,
    HeadClassifier,
    HeadPrediction,
    IncompatibleWeightsError,
    UnknownTaskError,
    build_classifier,
    init_from,
    normalised_batch,
)
from avn.models.detector import (
    DETECTOR_BACKBONES,
    DETECTOR_INPUT_SIZES,
    Detection,
    FemoralHeadDetector,
    ImageShapeError,
    LetterboxGeometry,
    UnknownBackboneError,
    boxes_to_input,
    boxes_to_original,
    build_detector,
    prepare_detector_input,
)

__all__ = [
    "CLASSIFIER_TASKS",
    "DETECTOR_BACKBONES",
    "DETECTOR_INPUT_SIZES",
    "MULTI_LABEL_TASKS",
    "TASKS",
    "CheckpointError",
    "Detection",
    "FemoralHeadDetector",
    "HeadClassifier",
    "HeadPrediction",
    "ImageShapeError",
    "IncompatibleWeightsError",
    "LetterboxGeometry",
    "ModelCard",
    "ModelTaskMismatchError",
    "UnknownBackboneError",
    "UnknownTaskError",
    "boxes_to_input",
    "boxes_to_original",
    "build_classifier",
    "build_detector",
    "init_from",
    "load_checkpoint",
    "normalised_batch",
    "prepare_detector_input",
    "read_card",
    "save_checkpoint",
]
