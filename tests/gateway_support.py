"""Shared by the gateway tests: tiny untrained models, a model store built from them, phantom files,
and an API key with the ways to send it (HTTP headers, a gRPC channel that adds its metadata).

CI has no trained model store, so the gateway is exercised with randomly initialised models: the
classifiers take small crops (fast on CPU) and the detector keeps every candidate (no score cut,
a wide top-k), so an untrained SSD still proposes boxes all over the radiograph.

Authentication stays on in the tests, as in production: the servers get the key's file, the
clients the key (``tests/conftest.py``'s ``api_key`` fixture).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from avn.models import TASKS, build_classifier, build_detector, save_checkpoint
from avn.models.detector import PROSTHESIS_CLASS, FemoralHeadDetector
from avn.phantom.cohort import plan_cohort
from avn.phantom.render import render_radiograph
from avn.phantom.specs import RadiographSpec, RenderedRadiograph
from avn.phantom.writers import write_dicom, write_png
from avn.store import build_store
from gateway.auth import KeyAuthenticator, KeysFile

TINY_INPUT = 64  # classifier crop side: ResNet-18 on 64 px crops gives 2×2 activation maps
VERSION = "0.0.1-test"
PHANTOM_SCALE = 0.2  # ~470×420 px radiographs


def untrained_detector() -> FemoralHeadDetector:
    """A random-init detector that keeps every candidate (no score cut, wide top-k: untrained scores
    sit near chance) and whose prosthesis class never fires: an untrained prosthesis class is noise
    that would veto random head boxes, and these stores are for plumbing. The archive is still the
    three-class one the service serves; the prosthesis rules have their own tests (test_head_pairs)."""
    detector = build_detector(min_score=0.0, top_k=100)
    classes = len(detector.labels)
    with torch.no_grad():
        for layer in detector.model.head.classification_head.module_list:
            layer[-1].bias[PROSTHESIS_CLASS::classes] = -30.0  # channels are anchor-major: a * K + k
    return detector


def write_tiny_run(run_dir: Path, seed: int = 0, version: str = VERSION) -> Path:
    """``run_dir/<task>/model.pt`` for all five tasks, random weights."""
    torch.manual_seed(seed)
    for task in TASKS:
        if task == "detection":
            model = untrained_detector()
            metadata = {"version": version, "training_data_hash": "test"}
        else:
            model = build_classifier(task)
            metadata = {"version": version, "training_data_hash": "test", "input_size": TINY_INPUT}
        save_checkpoint(run_dir / task / "model.pt", model, task, metadata)
    return run_dir


def write_tiny_store(root: Path, seed: int = 0) -> Path:
    """A model store of TorchServe archives (``<task>.mar``) built from :func:`write_tiny_run`."""
    run_dir = write_tiny_run(root / "run", seed)
    build_store(run_dir, root / "model_store")
    return root / "model_store"


def phantom_specs(seed: int = 0, subjects: int = 2) -> list[RadiographSpec]:
    """The radiograph specs of a small phantom cohort (several per subject, AP and frog-leg)."""
    return plan_cohort(subjects, seed)[1]


def first_index_of_view(view: str, seed: int = 0) -> int:
    return next(index for index, spec in enumerate(phantom_specs(seed)) if spec.view == view)


def phantom_radiograph(index: int = 0, seed: int = 0) -> tuple[RadiographSpec, RenderedRadiograph]:
    """(spec, rendered) of radiograph ``index`` of :func:`phantom_specs`."""
    spec = phantom_specs(seed)[index]
    return spec, render_radiograph(spec, scale=PHANTOM_SCALE)


def phantom_png(folder: Path, index: int = 0, seed: int = 0) -> Path:
    """A 16-bit PNG of phantom radiograph ``index``."""
    _, image = phantom_radiograph(index, seed)
    path = folder / f"phantom-{index}.png"
    write_png(path, image)
    return path


def phantom_dicom(folder: Path, index: int = 0, seed: int = 0, photometric: str | None = None) -> Path:
    """A DICOM file (CR or DX, ``photometric`` or the detector's usual one) of radiograph ``index``."""
    spec, image = phantom_radiograph(index, seed)
    path = folder / f"phantom-{index}.dcm"
    write_dicom(path, spec, image, dataset_seed=seed, photometric=photometric)
    return path


# ---------------------------------------------------------------- API keys


@dataclass(frozen=True)
class ApiKey:
    """A keys file holding one key, and the key."""

    file: Path
    key: str

    @property
    def id(self) -> str:
        return self.key.partition(".")[0]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    def authenticator(self) -> KeyAuthenticator:
        return KeyAuthenticator(self.file)


def write_api_key(folder: Path, key_id: str = "test") -> ApiKey:
    file = folder / "api_keys.json"
    return ApiKey(file, KeysFile(file).add(key_id))


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class WithKey(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <key>`` to every call of a channel."""

    def __init__(self, key: str) -> None:
        self.pair = ("authorization", f"Bearer {key}")

    def _keyed(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = (*(details.metadata or ()), self.pair)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._keyed(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._keyed(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._keyed(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._keyed(details), request_iterator)


@contextmanager
def keyed_channel(target: str, key: str, options: list | None = None) -> Iterator[grpc.Channel]:
    """A plain-text channel to ``target`` whose every call carries ``key``."""
    with grpc.insecure_channel(target, options=options or []) as channel:
        yield grpc.intercept_channel(channel, WithKey(key))
