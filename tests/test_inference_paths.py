"""One inference path per model: for the same crops of one checkpoint, the TorchServe handler's
code, the in-process backend and training validation answer the same probabilities (and the two
serving paths the same CAMs); both serving paths refuse a checkpoint of another task alike.

The handler runs without a server, through ``handle`` as TorchServe calls it (a fake context).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from avn.models.checkpoint import ModelTaskMismatchError, load_checkpoint, save_checkpoint
from avn.models.classifier import HeadClassifier, build_classifier, normalised_batch
from avn.serving.codec import CAM_DECIMALS, DECIMALS, encode_crops_json, encode_npy
from avn.serving.handler_base import AvnHandler, ClassifierHandler
from avn.serving.inprocess import InProcessBackend, load_model
from avn.training.classifier_loop import predict
from avn.vocabulary import STAGES

SIZE = 64  # ResNet-18 runs on any size ≥ 32; small crops keep the test fast
TEMPERATURE = 1.7  # a calibrated card: every path must apply it
SERVICES = Path(__file__).resolve().parent.parent / "services"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a staging and a notes checkpoint (softmax and sigmoid outputs)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run")
    for task in ("staging", "notes"):
        metadata = {"version": "1", "training_data_hash": "test", "temperature": TEMPERATURE, "input_size": SIZE}
        save_checkpoint(root / task / "model.pt", build_classifier(task), task, metadata)
    return root


def crops(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, SIZE, SIZE), dtype=np.float32)


class FakeContext:
    """What a TorchServe worker hands a handler: its archive folder, manifest and response setters."""

    def __init__(self, model_dir: Path, name: str) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.manifest = {"model": {"serializedFile": "model.pt", "modelName": name}}
        self.metrics = SimpleNamespace(add_time=lambda *args, **kwargs: None)
        self.statuses: dict[int, int] = {}

    def get_request_header(self, index: int, name: str) -> None:
        return None

    def set_response_content_type(self, index: int, content_type: str) -> None:
        pass

    def set_response_status(self, code: int, phrase: str, index: int) -> None:
        self.statuses[index] = code


def served_handler(task: str, model_dir: Path) -> AvnHandler:
    """The handler class of ``services/<task>/handler.py`` (what the archive ships), initialised."""
    spec = importlib.util.spec_from_file_location(f"{task}_service_handler", SERVICES / task / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler_class = next(
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, AvnHandler) and value.__module__ == module.__name__
    )
    handler = handler_class()
    handler.initialize(FakeContext(model_dir, task))
    return handler


def handle(handler: AvnHandler, bodies: list[bytes]) -> list[dict[str, Any]]:
    """One TorchServe batch through ``handle``; the JSON answers."""
    responses = handler.handle([{"body": body} for body in bodies], FakeContext(Path("."), handler.task))
    return [json.loads(response) for response in responses]


@pytest.mark.parametrize("task", ["staging", "notes"])
def test_handler_backend_and_training_validation_give_the_same_probabilities(run_dir: Path, task: str) -> None:
    first, second = crops(3, seed=1), crops(2, seed=2)
    handler = served_handler(task, run_dir / task)
    answers = handle(handler, [encode_npy(first), encode_npy(second)])  # one batch, one forward pass
    backend = InProcessBackend.from_run(run_dir)
    trained, _ = load_checkpoint(run_dir / task / "model.pt")
    for batch, answer in zip((first, second), answers, strict=True):
        validated = predict(trained, batch)
        in_process = asyncio.run(backend.classify(task, batch)).probabilities
        np.testing.assert_allclose(in_process, validated, rtol=0, atol=1e-6)
        # The wire rounds to DECIMALS; the batch of two requests may differ from one in the last float bits.
        np.testing.assert_allclose(answer["probabilities"], validated, rtol=0, atol=10**-DECIMALS)
        # ... and the handler's own inference hook, unrounded, gives the same numbers.
        _, prediction = handler.inference([SimpleNamespace(crops=batch, cam_stage=None)])
        np.testing.assert_allclose(prediction.probabilities, validated, rtol=0, atol=1e-6)
    # All three run at the card's temperature (test_calibration checks what a temperature does).
    assert handler.model.temperature == trained.temperature == backend.cards()[task].temperature == TEMPERATURE


def test_handler_and_backend_give_the_same_cams_for_the_predicted_and_the_requested_stage(run_dir: Path) -> None:
    predicted, requested = crops(2, seed=3), crops(2, seed=4)
    handler = served_handler("staging", run_dir / "staging")
    answers = handle(handler, [encode_npy(predicted), encode_crops_json(requested, cam_stage="IV")])
    backend = InProcessBackend.from_run(run_dir)
    for batch, cam_stage, answer in zip((predicted, requested), (None, "IV"), answers, strict=True):
        in_process = asyncio.run(backend.classify("staging", batch, cam_stage=cam_stage))
        assert answer["cam_labels"] == list(in_process.cam_labels)
        np.testing.assert_allclose(answer["cams"], in_process.cams, rtol=0, atol=10**-CAM_DECIMALS)
    assert answers[1]["cam_labels"] == ["IV", "IV"]
    expected = [STAGES[i] for i in np.argmax(answers[0]["probabilities"], axis=1)]
    assert answers[0]["cam_labels"] == expected


def test_predict_is_the_forward_pass_then_the_tasks_probabilities() -> None:
    torch.manual_seed(0)
    batch = crops(3, seed=5)
    for task, activation in (("staging", lambda x: torch.softmax(x, dim=1)), ("notes", torch.sigmoid)):
        model = build_classifier(task).eval()
        model.temperature = 2.0
        with torch.no_grad():
            expected = activation(model(normalised_batch(batch)) / 2.0).numpy()
        prediction = model.predict(batch)
        np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-6)
        assert prediction.cams is None and prediction.cam_classes is None


def test_predict_refuses_train_mode_and_unknown_cam_labels() -> None:
    model: HeadClassifier = build_classifier("staging")
    with pytest.raises(RuntimeError, match="eval"):
        model.predict(crops(2, seed=6))
    with pytest.raises(ValueError, match="labels"):
        model.eval().predict(crops(2, seed=6), cam_classes=["V", None])


def test_a_checkpoint_of_another_task_is_refused_alike_by_handler_and_backend(run_dir: Path) -> None:
    view_handler = type("ViewHandler", (ClassifierHandler,), {"task": "view"})()
    with pytest.raises(ModelTaskMismatchError, match="'staging' model, expected 'view'"):
        view_handler.initialize(FakeContext(run_dir / "staging", "view"))
    with pytest.raises(ModelTaskMismatchError, match="'staging' model, expected 'view'"):
        load_model(run_dir / "staging" / "model.pt", "view")
