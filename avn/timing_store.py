"""A "timing store": the five TorchServe archives with untrained (random) weights, for timing only.

``avn bench`` measures the serving stack, and the time of a model call depends on the model's
shapes, not on what its weights learnt. A timing store has the shapes of a training profile (the
``paper`` profile's classifiers read 224-px crops, the ``quick`` profile's 96 px) with randomly
initialised weights, so the paper's shapes can be timed without training the paper's models (GPU
days). Its detector keeps every candidate (no score cut, a wide top-k), so an untrained SSD still
proposes a head on each image half and every radiograph goes through all the steps, as a trained
store does on a pelvic radiograph.

The archives are built by :func:`avn.store.build_store` (the same archiver, handlers and serving
settings as a trained store). Every model card says ``untrained weights: timing only`` (its version,
training-data hash and ``extra``), so a timing store cannot pass for a trained one: whatever shows a
card (``/v1/models``, TorchServe's description, ``avn bench``) shows the label.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from avn.models import TASKS, build_classifier, build_detector, read_card, save_checkpoint
from avn.models.acceleration import cpu_name
from avn.models.checkpoint import DETECTION_TASK, ModelCard
from avn.optimisation import Optimisation
from avn.store import CHECKPOINT_NAME, build_store
from avn.training.profiles import get_profile

TIMING_ONLY = "untrained weights: timing only"
TIMING_VERSION = "0.0.0+untrained-timing-only"
MAX_DETECTOR_CANDIDATES = 100


def timing_metadata(profile: str, input_size: int | None) -> dict:
    """The card metadata of every timing-store model: the label in version, data hash and extra."""
    metadata = {
        "version": TIMING_VERSION,
        "training_data_hash": f"none ({TIMING_ONLY})",
        "extra": {"timing_only": True, "note": TIMING_ONLY, "profile": profile},
    }
    return metadata if input_size is None else {**metadata, "input_size": input_size}


def write_timing_run(run_dir: Path, profile: str = "paper", seed: int = 0) -> Path:
    """``run_dir/<task>/model.pt`` for the five tasks: random weights in ``profile``'s shapes."""
    input_size = get_profile(profile).input_size
    torch.manual_seed(seed)
    for task in TASKS:
        if task == DETECTION_TASK:
            model = build_detector(min_score=0.0, top_k=MAX_DETECTOR_CANDIDATES)
            metadata = timing_metadata(profile, None)
        else:
            model = build_classifier(task)
            metadata = timing_metadata(profile, input_size)
        save_checkpoint(run_dir / task / CHECKPOINT_NAME, model, task, metadata)
    return run_dir


def build_timing_store(
    out: Path, profile: str = "paper", seed: int = 0, optimisation: Optimisation | None = None
) -> dict[str, Path]:
    """Write the five ``out/<task>.mar`` archives of a timing store; returns their paths.

    With ``optimisation`` the classifiers are served in the form that is fastest here; untrained
    weights cannot be checked against fp32, and their cards say so.
    """
    with tempfile.TemporaryDirectory(prefix="avn-timing-run-") as scratch:
        return build_store(write_timing_run(Path(scratch), profile, seed), Path(out), optimisation=optimisation)


def archive_card(archive: Path) -> ModelCard:
    """The model card inside one ``.mar`` archive (the checkpoint is read, no model is built)."""
    with zipfile.ZipFile(archive) as bundle, tempfile.TemporaryDirectory(prefix="avn-card-") as scratch:
        try:  # the manifest names the checkpoint; avn.store always calls it model.pt
            member = json.loads(bundle.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        except (KeyError, ValueError):
            member = CHECKPOINT_NAME
        checkpoint = Path(scratch) / CHECKPOINT_NAME
        checkpoint.write_bytes(bundle.read(member))
        return read_card(checkpoint)


def store_cards(store: Path) -> dict[str, ModelCard]:
    """The card of every ``<task>.mar`` in ``store``, by task."""
    return {task: archive_card(store / f"{task}.mar") for task in TASKS if (store / f"{task}.mar").is_file()}


def is_timing_only(cards: Mapping[str, ModelCard]) -> bool:
    """Whether any of the cards is a timing-only (untrained) model's."""
    return any(card.extra.get("timing_only") for card in cards.values())


def is_complete_timing_store(store: Path, profile: str = "paper") -> bool:
    """All five archives are there, timing-only, in ``profile``'s crop size, each model in the
    form chosen for this machine's CPU: nothing to build."""
    cards = store_cards(store) if Path(store).is_dir() else {}
    input_size = get_profile(profile).input_size
    return len(cards) == len(TASKS) and all(
        card.extra.get("timing_only")
        and card.optimisation.get("measured_on") == cpu_name()
        and (card.task == DETECTION_TASK or card.input_size == input_size)
        for card in cards.values()
    )
