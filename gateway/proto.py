"""The avn.v1 gRPC stubs: generated from ``protos/avn/v1/diagnosis.proto`` on first import.

The stubs are never edited by hand nor committed: ``grpc_tools.protoc`` writes them into
``gateway/_generated/`` (ignored by git) the first time :func:`load` runs after the contract
changed — a stamp holds the SHA-256 of the .proto and the grpcio-tools version, so editing the
contract or upgrading the generator regenerates them. An image build can do it ahead of time::

    python -m gateway.proto

Generation takes an exclusive file lock and renames a finished folder into place, so concurrent
processes (pytest-xdist workers, several gateway processes) never import half a package.

One import line is adjusted after protoc: its service module imports the message module as
``from avn.v1 import diagnosis_pb2``, which would resolve to this project's own ``avn`` package;
it is pointed at ``gateway._generated.avn.v1`` instead. The file keeps its canonical name
``avn/v1/diagnosis.proto`` in the descriptor pool, which is what server reflection shows.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from gateway.stubgen import regenerate_if_stale, stamp_of

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILE = "avn/v1/diagnosis.proto"
OUT_DIR = Path(__file__).resolve().parent / "_generated"
PACKAGE = f"{__package__ or 'gateway'}._generated"
SERVICE_NAME = "avn.v1.Diagnosis"


class StubGenerationError(RuntimeError):
    """The contract is missing or protoc rejected it."""


@dataclass(frozen=True)
class DiagnosisStubs:
    """The generated modules: messages and the service's servicer/stub classes."""

    messages: ModuleType  # diagnosis_pb2
    services: ModuleType  # diagnosis_pb2_grpc


def load() -> DiagnosisStubs:
    """Import the stubs, generating them first when missing or made from another contract."""
    ensure_stubs()
    module = f"{PACKAGE}.{PROTO_FILE[: -len('.proto')].replace('/', '.')}"
    return DiagnosisStubs(
        messages=importlib.import_module(f"{module}_pb2"),
        services=importlib.import_module(f"{module}_pb2_grpc"),
    )


def ensure_stubs(out: Path = OUT_DIR, proto_root: Path = PROTO_ROOT) -> Path:
    """Generate the stubs into ``out`` unless they are current; returns ``out``."""
    source = proto_root / PROTO_FILE
    if not source.is_file():
        if stamp_of(out) is not None:
            return out  # an installed copy without the sources: use what was generated at build
        raise StubGenerationError(f"the contract {source} is missing")

    def build(target: Path) -> None:
        _run_protoc(proto_root, target)
        _make_package(target)

    return regenerate_if_stale(out, _source_digest(source), build)


def _run_protoc(proto_root: Path, target: Path) -> None:
    from grpc_tools import protoc  # noqa: PLC0415 — a build tool, needed only when generating

    arguments = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"--python_out={target}",
        f"--pyi_out={target}",
        f"--grpc_python_out={target}",
        str(proto_root / PROTO_FILE),
    ]
    if protoc.main(arguments) != 0:
        raise StubGenerationError(f"protoc failed on {proto_root / PROTO_FILE}")


def _make_package(target: Path) -> None:
    package_dir = target / Path(PROTO_FILE).parent
    for folder in (target, *[target / p for p in Path(PROTO_FILE).parent.parents if str(p) != "."], package_dir):
        (folder / "__init__.py").write_text(f'"""Generated from protos/{PROTO_FILE}; do not edit."""\n')
    proto_module = PROTO_FILE[: -len(".proto")].replace("/", ".")  # avn.v1.diagnosis
    parent, name = proto_module.rsplit(".", 1)
    wrong, right = f"from {parent} import {name}_pb2 ", f"from {PACKAGE}.{parent} import {name}_pb2 "
    service = package_dir / f"{name}_pb2_grpc.py"
    text = service.read_text()
    if text.count(wrong) != 1:
        raise StubGenerationError(f"unexpected import layout in the generated {service.name}; expected one {wrong!r}")
    service.write_text(text.replace(wrong, right))


def _source_digest(source: Path) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    digest = hashlib.sha256(source.read_bytes())
    digest.update(f"grpcio-tools {version('grpcio-tools')}".encode())
    return digest.hexdigest()


if __name__ == "__main__":
    print(ensure_stubs())
