"""Messages of the Open Inference Protocol, generated from ``protos/inference/open_inference.proto``.

Like the avn.v1 stubs (:mod:`gateway.proto`), they are made by ``grpc_tools.protoc`` into
``gateway/_generated_oip/`` (ignored by git) when missing or stale, under the shared file lock of
:mod:`gateway.stubgen`. Only the message classes are generated: the backend calls the service's
methods by path (:func:`method_path`), because servers publish the same service under different
proto packages (KServe and Triton: ``inference``; TorchServe:
``org.pytorch.serve.grpc.openinference``).
"""

from __future__ import annotations

import hashlib
import importlib
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from gateway.stubgen import regenerate_if_stale, stamp_of

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILE = "inference/open_inference.proto"
OUT_DIR = Path(__file__).resolve().parent / "_generated_oip"
PACKAGE = f"{__package__ or 'gateway'}._generated_oip"
KSERVE_SERVICE = "inference.GRPCInferenceService"  # KServe model servers, Triton
TORCHSERVE_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"


class StubGenerationError(RuntimeError):
    """The .proto is missing or protoc rejected it."""


def method_path(service: str, method: str) -> str:
    """The gRPC path of ``method`` (``ModelInfer``, …) of the OIP service published as ``service``."""
    return f"/{service}/{method}"


def load_messages() -> ModuleType:
    """``open_inference_pb2``, generated first when missing or made from another .proto."""
    ensure_stubs()
    return importlib.import_module(f"{PACKAGE}.inference.open_inference_pb2")


def ensure_stubs(out: Path = OUT_DIR) -> Path:
    source = PROTO_ROOT / PROTO_FILE
    if not source.is_file():
        if stamp_of(out) is not None:
            return out  # an installed copy without the sources
        raise StubGenerationError(f"the protocol file {source} is missing")
    digest = hashlib.sha256(source.read_bytes())
    digest.update(f"grpcio-tools {version('grpcio-tools')}".encode())
    return regenerate_if_stale(out, digest.hexdigest(), _build)


def _build(target: Path) -> None:
    from grpc_tools import protoc  # noqa: PLC0415 — a build tool, needed only when generating

    arguments = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={target}", str(PROTO_ROOT / PROTO_FILE)]
    if protoc.main(arguments) != 0:
        raise StubGenerationError(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
    for folder in (target, target / "inference"):
        (folder / "__init__.py").write_text(f'"""Generated from protos/{PROTO_FILE}; do not edit."""\n')


if __name__ == "__main__":
    print(ensure_stubs())
