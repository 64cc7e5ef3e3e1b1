"""The model store: one TorchServe archive (``<task>.mar``) per trained model (SPEC §5).

``build_store`` packs ``RUN_DIR/<task>/model.pt`` (the checkpoint training writes) with the thin
handler ``services/<task>/handler.py`` and a model-config YAML (batching, workers, timeout) via
``torch-model-archiver``. The archive's version is the checkpoint card's version.

Code is NOT copied into the archives: the ``avn`` package is installed in the Python environment
TorchServe runs its workers with (``pip install -e .`` here, ``pip install .`` in the image). That
keeps each archive to weights + a few lines of handler, gives one copy of the model code to patch
and review, and keeps the handler and the gateway on the same code version. A checkpoint that does
not fit the installed code fails loudly at load (strict state dict, label check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from avn.models.checkpoint import TASKS, read_card
from avn.optimisation import Optimisation, OptimisationError, optimised_checkpoint

CHECKPOINT_NAME = "model.pt"
MANIFEST_MEMBER = "MAR-INF/MANIFEST.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_DIR = REPO_ROOT / "services"


class StoreError(RuntimeError):
    """A model store that cannot be built: missing checkpoints or handlers, or a failed archiver."""


@dataclass(frozen=True)
class ServingConfig:
    """TorchServe's per-model settings, written as the archive's model-config YAML."""

    batch_size: int = 8
    max_batch_delay_ms: int = 5  # how long TorchServe waits to fill a batch
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120

    def as_model_config(self) -> dict[str, int]:
        """The settings under TorchServe's key names."""
        return {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "responseTimeout": self.response_timeout_s,
        }


# Chosen with scripts/tune_serving.py on 2 cores (README "TorchServe batching and threads"): a short
# window serves as many radiographs/s as a long one and adds less to every request's latency; the
# detector (whole radiographs) gets smaller batches and a little longer to fill them.
DEFAULT_SERVING: dict[str, ServingConfig] = {
    "detection": ServingConfig(batch_size=4, max_batch_delay_ms=10),
    "view": ServingConfig(),
    "side": ServingConfig(),
    "staging": ServingConfig(),
    "notes": ServingConfig(),
}


def build_store(
    run_dir: Path,
    out: Path,
    tasks: Iterable[str] = TASKS,
    serving: Mapping[str, ServingConfig] | None = None,
    services_dir: Path = SERVICES_DIR,
    archiver: Path | None = None,
    optimisation: Optimisation | None = None,
) -> dict[str, Path]:
    """Archive each task's checkpoint from ``run_dir`` into ``out/<task>.mar``; returns the paths.

    ``serving`` overrides :data:`DEFAULT_SERVING` per task. Existing archives are replaced.
    With ``optimisation`` each classifier is archived in the fastest form that gives fp32's
    answers (avn/optimisation.py); without it, as trained (fp32, the card says nothing).
    """
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise StoreError(f"unknown tasks {unknown}; expected some of {TASKS}")
    settings = {**DEFAULT_SERVING, **(serving or {})}
    missing = [str(_checkpoint_of(run_dir, task)) for task in tasks if not _checkpoint_of(run_dir, task).is_file()]
    if missing:
        raise StoreError(f"missing checkpoints: {missing}")
    out.mkdir(parents=True, exist_ok=True)
    # The archiver stages files in $TMPDIR/<model name>: a private TMPDIR keeps concurrent builds apart.
    with tempfile.TemporaryDirectory(prefix="avn-store-") as scratch:
        crops_cache: dict = {}
        archives = {}
        for task in tasks:
            checkpoint = _checkpoint_of(run_dir, task)
            if optimisation is not None:
                served = Path(scratch) / "served" / task / CHECKPOINT_NAME
                served.parent.mkdir(parents=True)
                try:
                    optimised_checkpoint(checkpoint, served, optimisation, crops_cache)
                except OptimisationError as error:
                    raise StoreError(str(error)) from error
                checkpoint = served
            archives[task] = archive_model(task, checkpoint, out, settings[task], Path(scratch), services_dir, archiver)
        return archives


def archive_model(
    task: str,
    checkpoint: Path,
    out: Path,
    serving: ServingConfig,
    scratch: Path,
    services_dir: Path = SERVICES_DIR,
    archiver: Path | None = None,
) -> Path:
    """Write ``out/<task>.mar`` from one checkpoint; the card must be for ``task``."""
    card = read_card(checkpoint)
    if card.task != task:
        raise StoreError(f"{checkpoint} holds a {card.task!r} model, expected {task!r}")
    handler = services_dir / task / "handler.py"
    if not handler.is_file():
        raise StoreError(f"no handler at {handler}")
    config_file = scratch / f"{task}-config.yaml"
    config_file.write_text(yaml.safe_dump(serving.as_model_config(), sort_keys=False))
    command = [
        str(archiver or _archiver_executable()),
        "--model-name", task,
        "--version", card.version,
        "--serialized-file", str(checkpoint),
        "--handler", str(handler),
        "--config-file", str(config_file),
        "--export-path", str(out),
        # Weights barely compress; storing them makes building and loading faster.
        "--archive-format", "zip-store",
        "--force",
    ]  # fmt: skip
    result = subprocess.run(command, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True)
    archive = out / f"{task}.mar"
    if result.returncode != 0 or not archive.is_file():
        raise StoreError(
            f"torch-model-archiver failed for {task} ({result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return archive


def retune_store(store: Path, out: Path, serving: Mapping[str, ServingConfig]) -> dict[str, Path]:
    """Copy ``store``'s archives to ``out`` with new TorchServe settings for the tasks in
    ``serving`` (the archives' model-config YAML rewritten, weights and handler untouched): what
    ``scripts/tune_serving.py`` measures, without rebuilding a model."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for archive in sorted(Path(store).glob("*.mar")):
        target = out / archive.name
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
            config_member = json.loads(source.read(MANIFEST_MEMBER))["model"].get("configFile")
            task = archive.stem
            for item in source.infolist():
                data = source.read(item)
                if item.filename == config_member and task in serving:
                    data = yaml.safe_dump(serving[task].as_model_config(), sort_keys=False).encode()
                copy.writestr(item, data)
        written[task] = target
    return written


def serving_of(archive: Path) -> ServingConfig:
    """The TorchServe settings an archive carries."""
    with zipfile.ZipFile(archive) as bundle:
        config_member = json.loads(bundle.read(MANIFEST_MEMBER))["model"]["configFile"]
        config = yaml.safe_load(bundle.read(config_member))
    return ServingConfig(
        batch_size=config["batchSize"],
        max_batch_delay_ms=config["maxBatchDelay"],
        min_workers=config["minWorkers"],
        max_workers=config["maxWorkers"],
        response_timeout_s=config["responseTimeout"],
    )


def _checkpoint_of(run_dir: Path, task: str) -> Path:
    return Path(run_dir) / task / CHECKPOINT_NAME


def _archiver_executable() -> Path:
    """``torch-model-archiver`` next to the running Python (the project's venv)."""
    candidate = Path(sys.executable).parent / "torch-model-archiver"
    if candidate.is_file():
        return candidate
    raise StoreError(f"torch-model-archiver not found next to {sys.executable}; install torch-model-archiver")
