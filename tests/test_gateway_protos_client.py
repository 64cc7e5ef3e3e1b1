"""The contract as a hospital system uses it: a gRPC client generated from ``protos/`` alone.

``grpc_tools.protoc`` compiles a copy of ``protos/avn/v1/diagnosis.proto`` into a temporary folder
and the test imports the generated modules from there (importlib, with this project's own ``avn``
package out of ``sys.modules`` meanwhile), so the client holds no project code. It calls a real
gRPC server (the in-process backend over a tiny random-init model store) with phantom DICOMs:
uncompressed, with compressed transfer syntaxes (JPEG 2000 lossless through pylibjpeg-openjpeg,
RLE lossless through pydicom's own encoder), and a MONOCHROME1 / MONOCHROME2 pair.

Last, ``avn serve`` runs as a subprocess, embedded and with TorchServe: ready, one REST diagnosis,
SIGTERM → exit 0 with nothing left running.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest
from gateway_support import TINY_INPUT, VERSION, ApiKey, keyed_channel, phantom_dicom, phantom_png, write_tiny_store
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from avn.pipeline.backend import MODELS
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK, free_ports
from avn.vocabulary import NOTES, SIDES, STAGES, VIEWS
from gateway.grpc_server import BackgroundGrpcServer
from gateway.proto import PROTO_FILE, PROTO_ROOT

RPC_TIMEOUT_S = 60
MAX_MESSAGE = 64 * 1024 * 1024


def generate_client(folder: Path) -> tuple[ModuleType, ModuleType]:
    """(diagnosis_pb2, diagnosis_pb2_grpc) compiled from a copy of ``protos/`` into ``folder``."""
    shutil.copytree(PROTO_ROOT, folder / "protos")
    out = folder / "client"
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{folder / 'protos'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO_FILE,
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    for package in (out / "avn", out / "avn" / "v1"):
        (package / "__init__.py").touch()
    # The generated package is `avn.v1`, like the client's own; this project's `avn` steps aside.
    ours = {name: module for name, module in sys.modules.items() if name == "avn" or name.startswith("avn.")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("avn.v1.diagnosis_pb2")
        services = importlib.import_module("avn.v1.diagnosis_pb2_grpc")
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == "avn" or n.startswith("avn.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    assert Path(messages.__file__).is_relative_to(out) and Path(services.__file__).is_relative_to(out)
    return messages, services


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return generate_client(tmp_path_factory.mktemp("protos-client"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_store(tmp_path_factory.mktemp("protos-store"))


@pytest.fixture(scope="module")
def server(client, store: Path, api_key: ApiKey) -> BackgroundGrpcServer:  # the client first: it swaps `avn` briefly
    pipeline = Pipeline(InProcessBackend.from_store(store))  # no cache
    with BackgroundGrpcServer(pipeline, authenticator=api_key.authenticator()) as running:
        yield running


@pytest.fixture(scope="module")
def call(client, server: BackgroundGrpcServer, api_key: ApiKey):
    messages, services = client
    options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    with keyed_channel(server.target, api_key.key, options) as channel:
        stub = services.DiagnosisStub(channel)

        def diagnose(data: bytes, **fields):
            return stub.Diagnose(messages.DiagnoseRequest(image=data, **fields), timeout=RPC_TIMEOUT_S)

        yield diagnose


def dicom_variant(tmp_path: Path, name: str, photometric: str, transfer_syntax=None) -> Path:
    """Phantom radiograph 1 as a DICOM with ``photometric``, compressed to ``transfer_syntax`` if given."""
    folder = tmp_path / name
    folder.mkdir()
    path = phantom_dicom(folder, 1, photometric=photometric)
    if transfer_syntax is not None:
        ds = pydicom.dcmread(path)
        ds.compress(transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
    return path


def check_full_result(response, width: int, height: int) -> None:
    assert response.request_id and not response.cache_hit
    assert (response.width, response.height) == (width, height)
    assert [(m.name, m.version) for m in response.models] == [(name, VERSION) for name in MODELS]
    timings = response.timings
    assert min(timings.decode_ms, timings.detect_ms, timings.classify_ms, timings.total_ms) > 0
    assert response.view.view in VIEWS and [p.label for p in response.view.probabilities] == list(VIEWS)
    assert 1 <= len(response.heads) <= 2
    for head in response.heads:
        assert 0 <= head.box.x0 < head.box.x1 <= width and 0 <= head.box.y0 < head.box.y1 <= height
        assert head.side in SIDES and 0 <= head.side_probability <= 1
        stage_p = {p.label: p.probability for p in head.stage_probabilities}
        assert list(stage_p) == list(STAGES) and sum(stage_p.values()) == pytest.approx(1, abs=1e-5)
        assert head.stage == max(stage_p, key=stage_p.get)
        assert head.presence and head.collapse
        assert [n.note for n in head.notes] == list(NOTES)
        assert all(0 <= n.probability <= n.raw_probability <= 1 for n in head.notes)
        cam = Image.open(io.BytesIO(head.cam_png))
        assert cam.format == "PNG" and cam.size == (TINY_INPUT, TINY_INPUT)


def heads_of(response) -> list[tuple]:
    return [
        (
            head.side,
            head.stage,
            (head.box.x0, head.box.y0, head.box.x1, head.box.y1),
            [p.probability for p in head.stage_probabilities],
        )
        for head in response.heads
    ]


def assert_same_heads(a, b) -> None:
    assert len(a.heads) == len(b.heads)
    for (side_a, stage_a, box_a, p_a), (side_b, stage_b, box_b, p_b) in zip(heads_of(a), heads_of(b), strict=True):
        assert (side_a, stage_a) == (side_b, stage_b)
        np.testing.assert_allclose(box_a, box_b, atol=1e-3)
        np.testing.assert_allclose(p_a, p_b, atol=1e-5)


# ------------------------------------------------------------------------------------- gRPC


def test_the_generated_client_holds_no_project_code(client) -> None:
    messages, services = client
    for module in (messages, services):
        source = Path(module.__file__).read_text()
        assert "gateway" not in source and "avn.serving" not in source


def test_a_protos_only_client_gets_a_full_result_for_a_phantom_dicom(call, tmp_path) -> None:
    path = dicom_variant(tmp_path, "plain", "MONOCHROME2")
    ds = pydicom.dcmread(path)
    response = call(path.read_bytes(), media_type="application/dicom", include_overlay=True)
    check_full_result(response, int(ds.Columns), int(ds.Rows))
    overlay = Image.open(io.BytesIO(response.overlay_png))
    assert overlay.size == (int(ds.Columns), int(ds.Rows))


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000-lossless", "rle-lossless"])
def test_a_compressed_dicom_gives_the_uncompressed_ones_heads(call, tmp_path, transfer_syntax) -> None:
    plain = dicom_variant(tmp_path, "plain", "MONOCHROME2")
    compressed = dicom_variant(tmp_path, "compressed", "MONOCHROME2", transfer_syntax)
    ds = pydicom.dcmread(compressed)
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax and ds.file_meta.TransferSyntaxUID.is_compressed
    assert ds.PixelData != pydicom.dcmread(plain).PixelData  # encapsulated fragments, not raw pixels
    response = call(compressed.read_bytes())
    check_full_result(response, int(ds.Columns), int(ds.Rows))
    assert_same_heads(response, call(plain.read_bytes()))


def test_monochrome1_and_monochrome2_give_the_same_heads(call, tmp_path) -> None:
    mono1 = dicom_variant(tmp_path, "mono1", "MONOCHROME1")
    mono2 = dicom_variant(tmp_path, "mono2", "MONOCHROME2")
    stored1, stored2 = pydicom.dcmread(mono1), pydicom.dcmread(mono2)
    assert (stored1.PhotometricInterpretation, stored2.PhotometricInterpretation) == ("MONOCHROME1", "MONOCHROME2")
    assert not np.array_equal(stored1.pixel_array, stored2.pixel_array)  # the stored pixels are inverted
    first, second = call(mono1.read_bytes()), call(mono2.read_bytes())
    check_full_result(first, int(stored1.Columns), int(stored1.Rows))
    assert_same_heads(first, second)


# ---------------------------------------------------------------------------- avn serve


def _avn_command() -> list[str]:
    script = Path(sys.executable).parent / "avn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "avn.cli"]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # the process ended while we looked
    return found


@pytest.mark.parametrize("mode", ["embedded", "torchserve"])
def test_avn_serve_answers_rest_and_stops_cleanly_on_sigterm(store, tmp_path, mode: str, api_key: ApiKey) -> None:
    """`avn serve` as an operator runs it: ready, one REST diagnosis, SIGTERM → exit 0, and in
    TorchServe mode the TorchServe it started is gone too. Embedded, the ports come from the
    environment, over a settings file naming others (issue #16: flags not given never override)."""
    grpc_port, rest_port, unused_port = free_ports(3)
    log = tmp_path / "serve.log"
    served = tmp_path / "store"  # a private copy: its path identifies this test's TorchServe processes
    shutil.copytree(store, served)
    command = [*_avn_command(), "serve", "--store", str(served), "--host", LOOPBACK]
    environment = {**os.environ, "AVN_LOG_LEVEL": "INFO", "AVN_API_KEYS_FILE": str(api_key.file)}
    if mode == "embedded":
        settings_file = tmp_path / "avn.toml"
        settings_file.write_text(f'grpc_port = {unused_port}\nrest_port = {unused_port}\nbackend = "embedded"\n')
        environment |= {
            "AVN_GRPC_PORT": str(grpc_port),
            "AVN_REST_PORT": str(rest_port),
            "AVN_CONFIG": str(settings_file),
        }
    else:
        command += ["--grpc-port", str(grpc_port), "--rest-port", str(rest_port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
    base = f"http://{LOOPBACK}:{rest_port}"
    ready_within_s = 120 if mode == "embedded" else 300
    try:
        deadline = time.monotonic() + ready_within_s
        while _get(f"{base}/readyz") != 200:
            assert process.poll() is None, f"avn serve exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready after {ready_within_s} s:\n{log.read_text()}"
            time.sleep(0.5)
        if mode == "torchserve":
            assert "TorchServe ready" in log.read_text() and _processes_mentioning(str(served))
        with socket.create_connection((LOOPBACK, grpc_port), timeout=5):
            pass  # gRPC listens where the flag or the environment said
        image = phantom_png(tmp_path, 0)
        request = urllib.request.Request(
            f"{base}/v1/diagnose",
            data=image.read_bytes(),
            headers={"Content-Type": "image/png", **api_key.headers},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            assert response.status == 200
            assert b'"heads"' in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert _get(f"{base}/healthz") == 0  # nothing listens any more
        assert not _processes_mentioning(str(served)), "TorchServe outlived avn serve"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
