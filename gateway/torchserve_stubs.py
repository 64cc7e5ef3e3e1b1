"""Python stubs for TorchServe's own gRPC APIs, generated from the .proto files its frontend jar ships.

TorchServe does not publish Python stubs, but ``ts/frontend/model-server.jar`` carries
``inference.proto``, ``management.proto`` and the ``google/rpc/status.proto`` they import. The
stubs are generated from exactly the installed server's protos (so client and server never drift)
with ``grpc_tools.protoc`` into ``gateway/_generated_ts/`` — ignored by git, never edited or
committed — at first use, or ahead of time (an image build) with::

    python -m gateway.torchserve_stubs

A stamp holds the jar's SHA-256: upgrading TorchServe regenerates them. Generation takes an
exclusive file lock and renames a finished folder into place, so concurrent processes (pytest-xdist
workers, several gateway processes) never import a half-written package.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from gateway.stubgen import regenerate_if_stale

PACKAGE = f"{__package__ or 'gateway'}._generated_ts"
STUBS_DIR = Path(__file__).resolve().parent / "_generated_ts"
# The jar holds each proto twice (top level and under proto/); the proto/ copies are the sources.
JAR_PROTOS = {
    "proto/inference.proto": "inference.proto",
    "proto/management.proto": "management.proto",
    "google/rpc/status.proto": "google/rpc/status.proto",
}


class StubGenerationError(RuntimeError):
    """TorchServe's jar or its protos are missing, or protoc failed."""


@dataclass(frozen=True)
class TorchServeStubs:
    """The generated modules the backend uses."""

    inference: ModuleType  # inference_pb2: PredictionsRequest, PredictionResponse
    inference_grpc: ModuleType  # inference_pb2_grpc: InferenceAPIsServiceStub
    management: ModuleType  # management_pb2: DescribeModelRequest, ManagementResponse
    management_grpc: ModuleType  # management_pb2_grpc: ManagementAPIsServiceStub


def load_stubs() -> TorchServeStubs:
    """Import the stubs, generating them first when missing or made from another jar."""
    ensure_stubs()
    return TorchServeStubs(
        inference=importlib.import_module(f"{PACKAGE}.inference_pb2"),
        inference_grpc=importlib.import_module(f"{PACKAGE}.inference_pb2_grpc"),
        management=importlib.import_module(f"{PACKAGE}.management_pb2"),
        management_grpc=importlib.import_module(f"{PACKAGE}.management_pb2_grpc"),
    )


def ensure_stubs(out: Path = STUBS_DIR, jar: Path | None = None) -> Path:
    """Generate the stubs into ``out`` unless they are already there for this jar; returns ``out``."""
    jar = jar or torchserve_jar()

    def build(target: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="avn-ts-protos-") as sources:
            _extract_protos(jar, Path(sources))
            _run_protoc(Path(sources), target)
        _make_package(target)

    return regenerate_if_stale(out, _sha256(jar), build)


def torchserve_jar() -> Path:
    """The frontend jar of the installed ``torchserve`` package."""
    try:
        import ts  # noqa: PLC0415 — only needed to locate the package
    except ImportError as error:
        raise StubGenerationError("torchserve is not installed: its jar holds the protos") from error
    jar = Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise StubGenerationError(f"no TorchServe frontend jar at {jar}")
    return jar


def _extract_protos(jar: Path, sources: Path) -> None:
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
        missing = sorted(set(JAR_PROTOS) - names)
        if missing:
            raise StubGenerationError(f"{jar} lacks {missing}")
        for member, relative in JAR_PROTOS.items():
            path = sources / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(member))


def _run_protoc(sources: Path, target: Path) -> None:
    from grpc_tools import protoc  # noqa: PLC0415 — a build tool, needed only when generating

    well_known = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/empty.proto
    arguments = [
        "grpc_tools.protoc",
        f"-I{sources}",
        f"-I{well_known}",
        f"--python_out={target}",
        f"--grpc_python_out={target}",
        *[str(sources / relative) for relative in JAR_PROTOS.values()],
    ]
    if protoc.main(arguments) != 0:
        raise StubGenerationError(f"protoc failed on the protos of the TorchServe jar: {arguments}")


def _make_package(target: Path) -> None:
    """Turn protoc's top-level modules into one package: relative imports, so nothing lands in the
    global ``google`` namespace (googleapis-common-protos may own ``google.rpc`` there)."""
    for folder in (target, target / "google", target / "google" / "rpc"):
        (folder / "__init__.py").write_text('"""Generated from the TorchServe jar; do not edit."""\n')
    for module in target.glob("*.py"):
        text = module.read_text()
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", text, flags=re.MULTILINE)
        text = re.sub(r"^from google\.rpc import ", "from .google.rpc import ", text, flags=re.MULTILINE)
        module.write_text(text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    print(ensure_stubs())
