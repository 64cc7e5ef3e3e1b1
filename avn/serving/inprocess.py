"""The in-process backend: the same PyTorch model code as the TorchServe handlers, no servers.

Both load checkpoints with :func:`avn.models.checkpoint.load_checkpoint` (one task check) and run
the models' own ``predict`` (one inference path), so the two backends answer the same numbers.

Used by ``avn serve --embedded``, ``avn diagnose``, the tests and the benchmarks. It loads the five
checkpoints either from a model store (``<task>.mar`` archives: zip files holding the checkpoint,
see :mod:`avn.store`) or from a training run folder (``<task>/model.pt``). Every model call runs on
a thread of the backend's own bounded pool (``threads``, :mod:`avn.pipeline.threads`) under
``torch.inference_mode``: PyTorch releases the GIL while it computes, so the four classifiers of one
radiograph really run side by side and the event loop keeps serving other requests.

A model missing from the folder does not stop the backend from starting: :meth:`models` and calls
to that model raise :class:`~avn.pipeline.errors.ModelUnavailable`, so health and readiness report it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avn.models.checkpoint import ModelCard, load_checkpoint
from avn.models.classifier import HeadClassifier
from avn.models.detector import FemoralHeadDetector
from avn.pipeline.backend import (
    CLASSIFIER_MODELS,
    MODELS,
    Classification,
    Detections,
    ModelInfo,
    operating_points_of,
)
from avn.pipeline.errors import Internal, ModelUnavailable
from avn.pipeline.threads import DEFAULT_MODEL_THREADS, bounded_pool, run_in
from avn.store import CHECKPOINT_NAME

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".mar"
MANIFEST = "MAR-INF/MANIFEST.json"
# A model absent from the folder stays absent until the gateway restarts with a complete store.
MISSING_MODEL_RETRY_S = 60.0


class ModelLoadError(RuntimeError):
    """A model archive that exists but cannot be read (not a zip, no checkpoint inside).

    A readable checkpoint of the wrong task or format raises
    :class:`avn.models.checkpoint.CheckpointError` (:class:`~avn.models.checkpoint.ModelTaskMismatchError`).
    """


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    card: ModelCard

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self.card.task,
            self.card.version,
            self.card.input_size,
            tuple(self.card.labels),
            operating_points_of(self.card.operating_points),
        )


class InProcessBackend:
    """:class:`avn.pipeline.backend.ModelBackend` over models held in this process."""

    def __init__(
        self,
        models: Mapping[str, LoadedModel],
        device: str | torch.device = "cpu",
        source: str = "",
        threads: int = DEFAULT_MODEL_THREADS,
    ) -> None:
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}; expected some of {MODELS}")
        self.device = torch.device(device)
        self.source = source
        self.pool = bounded_pool(threads, "avn-model")
        self._models = {
            name: LoadedModel(model.module.to(self.device).eval(), model.card) for name, model in models.items()
        }

    # ------------------------------------------------------------ construction

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        threads: int = DEFAULT_MODEL_THREADS,
        optimised: bool = True,
    ) -> InProcessBackend:
        """A model store (``*.mar``) or a run folder (``<task>/model.pt``), whichever ``folder`` is.

        ``optimised=False`` serves a store's classifiers in fp32 instead of their chosen forms
        (the benchmark's naive baseline)."""
        folder = Path(folder)
        if any(folder.glob(f"*{ARCHIVE_SUFFIX}")):
            return cls.from_store(folder, device, threads, optimised)
        return cls.from_run(folder, device, threads)

    @classmethod
    def from_store(
        cls,
        store: str | Path,
        device: str | torch.device = "cpu",
        threads: int = DEFAULT_MODEL_THREADS,
        optimised: bool = True,
    ) -> InProcessBackend:
        """Models from ``store/<task>.mar`` (the checkpoint is read out of each archive), each
        classifier in the form its card chose (``optimised=False``: fp32)."""
        store = Path(store)
        archives = {task: store / f"{task}{ARCHIVE_SUFFIX}" for task in MODELS}
        models = {
            task: load_archive(path, task, device, optimised) for task, path in archives.items() if path.is_file()
        }
        cls._log_missing(models, store)
        return cls(models, device, source=str(store), threads=threads)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str | torch.device = "cpu", threads: int = DEFAULT_MODEL_THREADS
    ) -> InProcessBackend:
        """Models from ``run_dir/<task>/model.pt`` (what ``avn train`` writes)."""
        run_dir = Path(run_dir)
        checkpoints = {task: run_dir / task / CHECKPOINT_NAME for task in MODELS}
        models = {task: load_model(path, task, device) for task, path in checkpoints.items() if path.is_file()}
        cls._log_missing(models, run_dir)
        return cls(models, device, source=str(run_dir), threads=threads)

    @staticmethod
    def _log_missing(models: Mapping[str, LoadedModel], folder: Path) -> None:
        missing = [task for task in MODELS if task not in models]
        if missing:
            logger.warning("no %s model in %s: requests will be answered UNAVAILABLE", ", ".join(missing), folder)

    # ------------------------------------------------------------ ModelBackend

    async def detect(self, image: np.ndarray) -> Detections:
        detector = self._model("detection").module
        return await run_in(self.pool, _detect, detector, np.asarray(image, dtype=np.float32))

    async def classify(self, model: str, crops: np.ndarray, cam_stage: str | None = None) -> Classification:
        if model not in CLASSIFIER_MODELS:
            raise Internal(f"unknown classifier {model!r}; expected one of {CLASSIFIER_MODELS}")
        loaded = self._model(model)
        crops = np.asarray(crops, dtype=np.float32)
        size = loaded.card.input_size
        if crops.ndim != 3 or crops.shape[1:] != (size, size) or len(crops) == 0:
            raise Internal(f"{model} needs crops shaped (N, {size}, {size}), got {crops.shape}")
        if cam_stage is not None and model != "staging":
            raise Internal(f"cam_stage applies to the staging model only, not to {model!r}")
        return await run_in(self.pool, _classify, loaded.module, crops, cam_stage, model == "staging")

    async def models(self) -> list[ModelInfo]:
        return [self._model(name).info for name in MODELS]

    def cards(self) -> dict[str, ModelCard]:
        """The model card of every loaded model (temperature, provenance): for evaluation reports."""
        return {name: loaded.card for name, loaded in self._models.items()}

    async def close(self) -> None:
        self._models.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _model(self, name: str) -> LoadedModel:
        if name not in self._models:
            where = self.source or "the model folder"
            raise ModelUnavailable(f"model {name!r} is not loaded (none in {where})", MISSING_MODEL_RETRY_S)
        return self._models[name]


# ---------------------------------------------------------------- loading


def load_model(
    checkpoint: str | Path, task: str, device: str | torch.device = "cpu", optimised: bool = True
) -> LoadedModel:
    """A checkpoint for ``task``; a checkpoint of another task is refused (ModelTaskMismatchError)."""
    module, card = load_checkpoint(checkpoint, map_location=device, task=task, optimised=optimised)
    form = getattr(module, "form", "fp32")
    logger.info("loaded %s %s version %s (%s) from %s", task, card.architecture, card.version, form, checkpoint)
    return LoadedModel(module, card)


def load_archive(
    archive: str | Path, task: str, device: str | torch.device = "cpu", optimised: bool = True
) -> LoadedModel:
    """The checkpoint inside a TorchServe archive (its manifest names the serialized file)."""
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as bundle:
            member = _serialized_file(bundle)
            data = bundle.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise ModelLoadError(f"{archive} is not a readable model archive: {error}") from error
    # load_checkpoint reads a path; the temporary copy lives only while the weights are read.
    with tempfile.TemporaryDirectory(prefix="avn-mar-") as scratch:
        checkpoint = Path(scratch) / CHECKPOINT_NAME
        checkpoint.write_bytes(data)
        return load_model(checkpoint, task, device, optimised)


def _serialized_file(bundle: zipfile.ZipFile) -> str:
    try:
        manifest = json.loads(bundle.read(MANIFEST))
        return str(manifest["model"]["serializedFile"])
    except (KeyError, ValueError):
        return CHECKPOINT_NAME  # an archive without a manifest: the name avn.store always uses


# ---------------------------------------------------------------- inference (worker threads)


def _detect(detector: FemoralHeadDetector, image: np.ndarray) -> Detections:
    found = detector.predict([image])[0]
    return Detections(boxes=found.boxes.reshape(-1, 4), scores=found.scores.reshape(-1))


def _classify(model: HeadClassifier, crops: np.ndarray, cam_stage: str | None, with_cams: bool) -> Classification:
    cam_classes = [cam_stage] * len(crops) if with_cams else None
    prediction = model.predict(crops, cam_classes)
    if prediction.cam_classes is None:
        return Classification(labels=model.labels, probabilities=prediction.probabilities)
    return Classification(
        labels=model.labels,
        probabilities=prediction.probabilities,
        cams=prediction.cams,
        cam_labels=tuple(model.labels[index] for index in prediction.cam_classes),
    )
