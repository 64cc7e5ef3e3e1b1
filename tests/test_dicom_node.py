"""The DICOM node (issue #12, deliverable 3), end to end with dcmtk: ``storescu`` is the modality,
``storescp`` the PACS, ``echoscu`` the verification, all on free loopback ports.

What is checked: a CR, a DX for presentation and a DX for processing, in the common transfer
syntaxes, come back to the PACS as one SR and one annotated copy each, in the source's study and
referencing the source image, and valid (``dciodvfy``); a file that is not a pelvis, or cannot be
decoded, goes to ``failed/`` with its reason, sends nothing, and leaves no patient data in the
logs; unknown calling AEs are refused at association; with the PACS down the outputs wait and are
delivered once when it comes back; an output the PACS refuses for good goes to ``failed/``, one it
has no resources for is sent again; a node killed mid-way (``kill -9``, twice) loses nothing when it
restarts. The node runs in this process (a thread) over tiny untrained models
(tests/gateway_support.py), but in the restart test, where it is a ``python -m gateway.dicom_node``
process killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from gateway_support import phantom_dicom, write_tiny_run
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from test_dicom_outputs import SC_CLASS, SR_CLASS, dciodvfy_errors, flatten
from typer.testing import CliRunner

import gateway.cli
import gateway.dicom_node.node
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK, free_ports
from gateway.configuration import ConfigurationError, check_dicom_node_startup, load_settings
from gateway.dicom_node.delivery import Backoff
from gateway.dicom_node.node import run_node
from gateway.dicom_node.spool import Failure, Spool
from gateway.settings import ENV_PREFIX, Settings, parse_dicom_destination

ROOT = Path(__file__).resolve().parent.parent
CR_INDEX, DX_INDEX = 0, 3  # phantom radiographs written as CR and as DX (tests/test_dicom_outputs.py)
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
NODE_AE, PACS_AE, MODALITY_AE = "AVNNET", "PACS", "MODALITY"
WAIT_S = 120.0  # for diagnoses on a busy two-core machine
LISTEN_TIMEOUT_S = 120.0  # a node process imports torch and loads five models first
FAST_RETRY = {"dicom_retry_initial_s": 0.2, "dicom_retry_max_s": 1.0}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AVN_* variable of the machine leaks into the settings."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("dicom-node") / "run")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phantom radiographs as a modality sends them: CR, DX for presentation, DX for processing."""
    folder = tmp_path_factory.mktemp("sources")
    cr, dx = phantom_dicom(folder / "cr", CR_INDEX), phantom_dicom(folder / "dx", DX_INDEX)
    processing = pydicom.dcmread(dx)
    processing.SOPClassUID = processing.file_meta.MediaStorageSOPClassUID = DX_FOR_PROCESSING
    processing.SOPInstanceUID = processing.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    processing.PresentationIntentType = "FOR PROCESSING"
    processing.save_as(folder / "dx-processing.dcm", enforce_file_format=True)
    return {"CR": cr, "DX": dx, "DX for processing": folder / "dx-processing.dcm"}


# ---------------------------------------------------------------- dcmtk and the node, as fixtures


class Pacs:
    """``storescp`` as the PACS: every file it receives kept under a name of its own (``+uf``), so a
    second delivery of one instance shows as a second file."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> Pacs:
        command = ["storescp", "-aet", PACS_AE, "-od", str(self.folder), "+uf", str(self.port)]
        with open(self.folder.parent / "storescp.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until_listening(self.port, 10.0, lambda: self.process.poll() is None)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def count(self) -> int:
        """Files received or being received (storescp writes under the final name)."""
        return sum(path.is_file() for path in self.folder.iterdir())

    def received(self) -> list[pydicom.Dataset]:
        """Every file received; call it once the node's outbox is empty, when no write is under way."""
        return [pydicom.dcmread(path) for path in sorted(self.folder.iterdir()) if path.is_file()]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    """A PACS, not yet started (a test may want it down first)."""
    if shutil.which("storescp") is None:
        pytest.fail("dcmtk is not installed (make system-deps installs it)")
    pacs = Pacs(tmp_path / "pacs", free_ports(1)[0])
    try:
        yield pacs
    finally:
        pacs.stop()


def node_settings(tmp_path: Path, run_dir: Path, pacs: Pacs, **overrides: object) -> Settings:
    settings = {
        "backend": "embedded",
        "model_store": run_dir,
        "case_bank": None,
        "dicom_host": LOOPBACK,
        "dicom_port": free_ports(1)[0],
        "dicom_destination": f"{PACS_AE}@{LOOPBACK}:{pacs.port}",
        "dicom_spool": tmp_path / "spool",
    }
    return Settings(**{**settings, **overrides})


class BackgroundNode:
    """:func:`run_node` on an event loop of its own thread, cancelled on exit, as SIGTERM would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        pipeline = Pipeline(InProcessBackend.from_folder(settings.model_store))
        self.task = self.loop.create_task(run_node(settings, pipeline))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)

    def __enter__(self) -> BackgroundNode:
        self.thread.start()
        wait_until_listening(self.settings.dicom_port, LISTEN_TIMEOUT_S, self.thread.is_alive)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=60)
        self.loop.close()


def wait_until_listening(port: int, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Until something answers on ``port``; fails when ``alive`` says the server died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert alive(), f"the server meant for port {port} stopped"
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on port {port} after {timeout_s} s")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s} s for {what}")
        time.sleep(0.1)


def storescu(
    port: int, *files: Path, calling_ae: str = MODALITY_AE, options: tuple[str, ...] | list[str] = ()
) -> subprocess.CompletedProcess[str]:
    command = ["storescu", *options, "-aet", calling_ae, "-aec", NODE_AE, LOOPBACK, str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def echoscu(port: int, calling_ae: str = MODALITY_AE) -> subprocess.CompletedProcess[str]:
    command = ["echoscu", "-aet", calling_ae, "-aec", NODE_AE, LOOPBACK, str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def spool_files(spool: Path, folder: str) -> list[Path]:
    return sorted(path for path in (spool / folder).rglob("*") if path.is_file())


def assert_one_sr_and_one_copy_per_source(received: list[pydicom.Dataset], source_files: list[Path]) -> None:
    """Each source has exactly one SR and one annotated copy, in its study, referencing it."""
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_files]
    srs = [item for item in received if item.SOPClassUID == SR_CLASS]
    copies = [item for item in received if item.SOPClassUID == SC_CLASS]
    assert len(received) == 2 * len(sources), [item.SOPClassUID for item in received]
    assert sorted(sr_source(sr) for sr in srs) == sorted(source.SOPInstanceUID for source in sources)
    assert sorted(copy_source(copy) for copy in copies) == sorted(source.SOPInstanceUID for source in sources)
    for source in sources:
        sr = next(sr for sr in srs if sr_source(sr) == source.SOPInstanceUID)
        copy = next(copy for copy in copies if copy_source(copy) == source.SOPInstanceUID)
        for output in (sr, copy):
            assert output.StudyInstanceUID == source.StudyInstanceUID
            assert output.SeriesInstanceUID != source.SeriesInstanceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == source.SeriesInstanceUID


def sr_source(sr: pydicom.Dataset) -> str:
    series = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    return series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def copy_source(copy: pydicom.Dataset) -> str:
    return copy.SourceImageSequence[0].ReferencedSOPInstanceUID


# ---------------------------------------------------------------- end to end


def test_a_cr_and_both_dx_kinds_come_back_as_one_sr_and_one_annotated_copy_each(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path
) -> None:
    pacs.start()
    settings = node_settings(tmp_path, run_dir, pacs, operating_point="argmax")
    files = list(sources.values())
    with BackgroundNode(settings):
        assert echoscu(settings.dicom_port).returncode == 0
        sent = storescu(settings.dicom_port, *files)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: pacs.count() >= 2 * len(files), "the outputs at the PACS")
        wait_for(lambda: not spool_files(settings.dicom_spool, "outbox"), "an empty outbox")
    received = pacs.received()
    assert_one_sr_and_one_copy_per_source(received, files)
    for sr in (item for item in received if item.SOPClassUID == SR_CLASS):  # the node's operating point
        assert "OP-ARGMAX" in {
            item.ConceptCodeSequence[0].CodeValue for item in flatten(sr) if "ConceptCodeSequence" in item
        }
    for sop_class in (SR_CLASS, SC_CLASS):  # one of each kind, as the PACS stored it
        path = next(path for path in sorted(pacs.folder.iterdir()) if pydicom.dcmread(path).SOPClassUID == sop_class)
        assert dciodvfy_errors(path.read_bytes(), tmp_path) == []
    assert spool_files(settings.dicom_spool, "incoming") == spool_files(settings.dicom_spool, "failed") == []


# Per transfer syntax: storescu's flag that proposes it (storescu proposes only uncompressed ones
# unless told), and the dcmcjpeg options that write it (None: pydicom writes it).
TRANSFER_SYNTAXES = {
    ImplicitVRLittleEndian: ("-xi", None),
    DeflatedExplicitVRLittleEndian: ("-xd", None),
    JPEGLosslessSV1: ("-xs", []),
    JPEGExtended12Bit: ("-xx", ["+ee"]),
    JPEGLSLossless: ("-xt", None),
    JPEG2000Lossless: ("-xv", None),
    RLELossless: ("-xr", None),
}


def recoded(source: Path, syntax: str, folder: Path) -> Path:
    """``source`` in another transfer syntax, under a new SOP Instance UID."""
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = folder / f"{syntax}.dcm"
    dcmcjpeg_options = TRANSFER_SYNTAXES[syntax][1]
    if dcmcjpeg_options is not None:
        dataset.save_as(folder / "uncompressed.dcm", enforce_file_format=True)
        subprocess.run(["dcmcjpeg", *dcmcjpeg_options, str(folder / "uncompressed.dcm"), str(path)], check=True)
    elif syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.compress(syntax)
        dataset.save_as(path, enforce_file_format=True)
    return path


def test_the_common_transfer_syntaxes_are_taken_and_diagnosed(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path
) -> None:
    files = {syntax: recoded(sources["CR"], syntax, tmp_path) for syntax in TRANSFER_SYNTAXES}
    assert [pydicom.dcmread(path).file_meta.TransferSyntaxUID for path in files.values()] == list(files)
    pacs.start()
    settings = node_settings(tmp_path, run_dir, pacs)
    with BackgroundNode(settings):
        for syntax, path in files.items():
            sent = storescu(settings.dicom_port, path, options=[TRANSFER_SYNTAXES[syntax][0]])
            assert sent.returncode == 0, f"{syntax.name}: {sent.stderr}"
        wait_for(lambda: pacs.count() >= 2 * len(files), "the outputs at the PACS")
        wait_for(lambda: not spool_files(settings.dicom_spool, "outbox"), "an empty outbox")
    assert_one_sr_and_one_copy_per_source(pacs.received(), list(files.values()))
    assert spool_files(settings.dicom_spool, "failed") == []


def with_header(source: Path, folder: Path, name: str, **elements: object) -> Path:
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    path = folder / name
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_non_pelvic_or_undecodable_file_goes_to_failed_with_its_reason_and_no_phi_in_the_logs(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chest = with_header(sources["CR"], tmp_path, "chest.dcm", BodyPartExamined="CHEST")
    source = pydicom.dcmread(sources["CR"])
    truncated = with_header(sources["CR"], tmp_path, "truncated.dcm", PixelData=source.PixelData[:1000])
    pacs.start()
    settings = node_settings(tmp_path, run_dir, pacs)
    caplog.set_level(logging.DEBUG)
    with BackgroundNode(settings):
        sent = storescu(settings.dicom_port, chest, truncated, sources["CR"])
        assert sent.returncode == 0, sent.stderr  # acknowledged: safe in the spool, whatever comes next
        wait_for(lambda: pacs.count() >= 2, "the outputs of the good file")
        wait_for(lambda: not spool_files(settings.dicom_spool, "outbox"), "an empty outbox")
        wait_for(lambda: len(spool_files(settings.dicom_spool, "failed")) == 4, "two failures and their reasons")
        assert echoscu(settings.dicom_port).returncode == 0  # still there
    assert_one_sr_and_one_copy_per_source(pacs.received(), [sources["CR"]])
    reasons = [json.loads(path.read_text()) for path in spool_files(settings.dicom_spool, "failed")[1::2]]
    assert sorted(reason["reason"] for reason in reasons) == ["invalid-image", "no-femoral-head"]
    assert any("CHEST" in reason["message"] for reason in reasons)
    logs = caplog.text
    assert "moved to failed/" in logs
    for secret in (str(source.PatientName), source.PatientID, str(source.PatientName).split("^")[-1]):
        assert secret not in logs
    assert source.SOPInstanceUID not in logs and source.StudyInstanceUID not in logs


def test_unknown_calling_aes_are_refused_at_association(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path
) -> None:
    settings = node_settings(tmp_path, run_dir, pacs, dicom_allowed_aes=(MODALITY_AE, "CR_ROOM"))
    with BackgroundNode(settings):
        assert echoscu(settings.dicom_port, MODALITY_AE).returncode == 0
        refused = echoscu(settings.dicom_port, "STRANGER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr
        stored = storescu(settings.dicom_port, sources["CR"], calling_ae="STRANGER")
        assert stored.returncode != 0
    assert spool_files(settings.dicom_spool, "incoming") == []


def test_with_the_pacs_down_the_outputs_wait_and_are_delivered_once_when_it_is_up(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = node_settings(tmp_path, run_dir, pacs, **FAST_RETRY)
    caplog.set_level(logging.INFO, logger="gateway.dicom_node")
    with BackgroundNode(settings):
        assert storescu(settings.dicom_port, sources["CR"]).returncode == 0
        wait_for(lambda: len(spool_files(settings.dicom_spool, "outbox")) == 2, "the outputs in the outbox")
        wait_for(lambda: caplog.text.count("next try in") >= 2, "two failed tries")
        pacs.start()
        wait_for(lambda: not spool_files(settings.dicom_spool, "outbox"), "the delivery")
        time.sleep(3 * settings.dicom_retry_max_s)  # more tries would have come by now
    assert_one_sr_and_one_copy_per_source(pacs.received(), [sources["CR"]])


class ParticularPacs:
    """A pynetdicom PACS that refuses every SR for good (0xA900, "does not match SOP class") and is
    out of resources (0xA700) for the first annotated copy it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stored: list[pydicom.Dataset] = []
        self.out_of_resources_once = True
        ae = AE(ae_title=PACS_AE)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        if event.dataset.SOPClassUID == SR_CLASS:
            return 0xA900
        if self.out_of_resources_once:
            self.out_of_resources_once = False
            return 0xA700
        self.stored.append(event.dataset)
        return 0x0000


def test_an_output_refused_for_good_goes_to_failed_and_out_of_resources_is_tried_again(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path
) -> None:
    particular = ParticularPacs(pacs.port)
    settings = node_settings(tmp_path, run_dir, pacs, **FAST_RETRY)
    try:
        with BackgroundNode(settings):
            assert storescu(settings.dicom_port, sources["DX"]).returncode == 0
            wait_for(lambda: particular.stored, "the annotated copy, at the second try")
            wait_for(lambda: not spool_files(settings.dicom_spool, "outbox"), "an empty outbox")
    finally:
        particular.server.shutdown()
    assert [item.SOPClassUID for item in particular.stored] == [SC_CLASS]
    failed = spool_files(settings.dicom_spool, "failed")
    assert [path.name.split(".", 1)[1] for path in failed] == ["1-sr.dcm", "1-sr.reason.json"]
    reason = json.loads(failed[1].read_text())
    assert reason["reason"] == "refused-by-destination" and "0xA900" in reason["message"]


def node_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway.dicom_node`` with ``settings`` as AVN_* variables."""
    environment = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    for name in ("backend", "model_store", "dicom_host", "dicom_port", "dicom_destination", "dicom_spool"):
        environment[f"{ENV_PREFIX}{name.upper()}"] = str(getattr(settings, name))
    environment.update(AVN_CASE_BANK="", AVN_DICOM_RETRY_INITIAL_S="0.2", AVN_DICOM_RETRY_MAX_S="1")
    environment["PYTHONPATH"] = str(ROOT)
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.dicom_node"], cwd=ROOT, env=environment, stdout=output, stderr=output
        )


def started(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    process = node_process(settings, log)
    wait_until_listening(settings.dicom_port, LISTEN_TIMEOUT_S, lambda: process.poll() is None)
    return process


def killed(process: subprocess.Popen[bytes]) -> None:
    process.kill()  # SIGKILL: no clean-up of any kind, as a power cut would leave it
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_node_killed_mid_way_loses_nothing_and_sends_nothing_twice(
    run_dir: Path, sources: dict[str, Path], pacs: Pacs, tmp_path: Path
) -> None:
    settings = node_settings(tmp_path, run_dir, pacs)
    spool, log = settings.dicom_spool, tmp_path / "node.log"
    files = [sources["CR"], sources["DX"]]
    # 1. killed right after acknowledging: the files are in the spool, not yet (all) diagnosed
    node = started(settings, log)
    assert storescu(settings.dicom_port, *files).returncode == 0
    killed(node)
    kept = {path.stem for path in spool_files(spool, "incoming")} | {
        path.parent.name for path in spool_files(spool, "outbox")
    }
    assert len(kept) == 2  # each file received, or diagnosed into the outbox (a kill between the two: both)
    # 2. killed with the outputs made but not delivered (the PACS is still down)
    node = started(settings, log)
    wait_for(lambda: len(spool_files(spool, "outbox")) == 4, "both files diagnosed into the outbox")
    killed(node)
    assert spool_files(spool, "incoming") == []
    # 3. the PACS is up: everything goes out, once
    pacs.start()
    node = started(settings, log)
    try:
        wait_for(lambda: pacs.count() >= 4, "the outputs at the PACS")
        wait_for(lambda: not spool_files(spool, "outbox"), "an empty outbox")
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0, log.read_text()
    assert_one_sr_and_one_copy_per_source(pacs.received(), files)
    assert spool_files(spool, "failed") == []


# ---------------------------------------------------------------- the spool, on its own


def test_the_spool_keeps_its_state_on_disk_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    first, second = spool.receive(b"first"), spool.receive(b"second")
    received = spool.received()
    assert [item.item_id for item in received] == [first, second]  # oldest first
    spool.store_outputs(received[0], {"sr": b"sr", "annotated": b"copy"})
    pending = spool.pending_outputs()
    assert [output.name for output in pending] == ["1-sr.dcm", "2-annotated.dcm"]
    spool.delivered(pending[0])
    (spool.tmp / "half-written.part").write_bytes(b"half")  # a write a crash interrupted

    again = Spool(tmp_path / "spool")  # the next start
    again.prepare()
    assert [item.item_id for item in again.received()] == [second]
    assert [(output.item_id, output.name) for output in again.pending_outputs()] == [(first, "2-annotated.dcm")]
    assert list(again.tmp.iterdir()) == []
    again.delivered(again.pending_outputs()[0])
    assert list(again.outbox.iterdir()) == []  # the file's folder went with its last output


def test_a_file_diagnosed_before_a_crash_is_not_diagnosed_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool.receive(b"radiograph")
    received = spool.received()[0]
    # The crash fell between the outbox's rename and the received file's removal.
    (spool.outbox / received.item_id).mkdir()
    (spool.outbox / received.item_id / "1-sr.dcm").write_bytes(b"sr")
    spool.prepare()
    assert spool.received() == []
    assert len(spool.pending_outputs()) == 1


def test_a_failed_file_keeps_its_reason_beside_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool.receive(b"not a radiograph")
    received = spool.received()[0]
    spool.fail_received(received, Failure("invalid-image", "InvalidImage", "not a readable DICOM file"))
    reason = json.loads((spool.failed / f"{received.item_id}.reason.json").read_text())
    assert reason["reason"] == "invalid-image" and reason["message"] == "not a readable DICOM file"
    assert (spool.failed / f"{received.item_id}.dcm").read_bytes() == b"not a radiograph"
    assert spool.received() == []


def test_the_wait_between_tries_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial_s=1.0, max_s=5.0)
    assert [backoff.next_wait_s() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_wait_s() == 1.0


# ---------------------------------------------------------------- settings and the command


def test_the_node_settings_follow_the_one_precedence_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('dicom_allowed_aes = ["FROM_FILE"]\ndicom_port = 11113\ndicom_ae_title = "FILE_AE"\n')
    monkeypatch.setenv("AVN_CONFIG", str(config))
    monkeypatch.setenv("AVN_DICOM_ALLOWED_AES", "CR_ROOM, DX_ROOM")
    monkeypatch.setenv("AVN_DICOM_DESTINATION", "PACS@pacs.example:104")
    loaded = load_settings({"dicom_ae_title": "FLAG_AE"})
    settings = loaded.settings
    assert settings.dicom_allowed_aes == ("CR_ROOM", "DX_ROOM")  # environment over file
    assert (settings.dicom_port, settings.dicom_ae_title) == (11113, "FLAG_AE")  # file; flag over file
    assert parse_dicom_destination(settings.dicom_destination) == parse_dicom_destination(" PACS@pacs.example:104")
    assert (loaded.origin("dicom_allowed_aes"), loaded.origin("dicom_port")) == ("environment", "file")


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("AVN_DICOM_DESTINATION", "pacs.example:104", "AE_TITLE@host:port"),
        ("AVN_DICOM_DESTINATION", "PACS@pacs.example:70000", "65535"),
        ("AVN_DICOM_AE_TITLE", "A_TITLE_LONGER_THAN_16", "1 to 16"),
        ("AVN_DICOM_ALLOWED_AES", "GOOD,BAD\\ONE", "backslash"),
    ],
)
def test_an_invalid_node_setting_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as raised:
        load_settings()
    assert words in str(raised.value)


def test_the_node_needs_a_destination_and_a_writable_spool(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no destination AE"):
        check_dicom_node_startup(load_settings({"dicom_spool": tmp_path / "spool"}))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    flags = {"dicom_destination": "PACS@127.0.0.1:104", "dicom_spool": blocker / "spool"}
    with pytest.raises(ConfigurationError, match="--dicom-spool"):
        check_dicom_node_startup(load_settings(flags))


def test_avn_dicom_node_takes_its_flags_and_stops_on_a_bad_setting(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Settings] = []
    monkeypatch.setattr(gateway.dicom_node.node, "serve_until_stopped", ran.append)
    monkeypatch.setenv("AVN_DICOM_PORT", "11999")
    arguments = ["dicom-node", "--destination", "PACS@127.0.0.1:104", "--spool", str(tmp_path / "spool")]
    arguments += ["--store", str(run_dir), "--embedded", "--allow", "CR_ROOM", "--allow", "DX_ROOM", "--port", "11998"]
    result = CliRunner().invoke(gateway.cli.app, [*arguments, "--operating-point", "sensitive"])
    assert result.exit_code == 0, result.output
    (settings,) = ran
    assert settings.dicom_port == 11998 and settings.dicom_allowed_aes == ("CR_ROOM", "DX_ROOM")
    assert settings.backend == "embedded" and settings.operating_point == "sensitive"
    missing = CliRunner().invoke(gateway.cli.app, ["dicom-node", "--spool", str(tmp_path / "spool")])
    assert missing.exit_code == 2
    assert "avn dicom-node: dicom_destination (default): no destination AE" in missing.output
