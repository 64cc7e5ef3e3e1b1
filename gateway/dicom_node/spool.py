"""The DICOM node's durable spool: what was received and what is still to be delivered survives a crash.

Layout under the spool folder (``AVN_DICOM_SPOOL``)::

    incoming/<id>.dcm                  received and acknowledged, not yet diagnosed
    outbox/<id>/1-sr.dcm               the outputs of <id> not yet delivered: a file goes once the
    outbox/<id>/2-annotated.dcm          destination answered success, the folder once it is empty
    failed/<id>.dcm, <id>.reason.json  a received file that was not diagnosed, and why
    failed/<id>.<output>.dcm, ….reason.json   an output the destination refused for good, and why
    tmp/                               files being written; emptied at start-up

Every write goes to ``tmp/``, is fsynced, renamed into place and its folder fsynced: a file is in
``incoming/`` or ``outbox/`` whole or not at all. One received file moves on in steps, each durable
before the next: received (``incoming/``) → diagnosed (``outbox/<id>/`` renamed in whole, then the
received file removed) → each output delivered (removed). A crash repeats at most the step it
interrupted: a file whose outputs are in the outbox is never diagnosed again (its outputs keep their
UIDs), and an output is sent twice only when the crash fell between the destination's success and
the removal — with the same SOP Instance UID, which a PACS stores once.

An ``<id>`` is the reception time in nanoseconds and a random suffix: the spool is worked oldest
first, and no file name carries anything from the DICOM header.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

INCOMING, OUTBOX, FAILED, TMP = "incoming", "outbox", "failed", "tmp"
DICOM_SUFFIX = ".dcm"
REASON_SUFFIX = ".reason.json"


class SpoolError(OSError):
    """The spool folder cannot be written: nothing can be acknowledged or kept."""


@dataclass(frozen=True)
class ReceivedFile:
    """A received file waiting in ``incoming/`` for its diagnosis."""

    item_id: str
    path: Path


@dataclass(frozen=True)
class PendingOutput:
    """One output (``1-sr.dcm`` or ``2-annotated.dcm``) of a received file, waiting for delivery."""

    item_id: str
    name: str
    path: Path


@dataclass(frozen=True)
class Failure:
    """Why a file went to ``failed/``: a short reason code, the error's type and its message (the
    pipeline's messages carry no patient data)."""

    reason: str
    error: str
    message: str


class Spool:
    """The spool folder: acknowledged files, outputs pending delivery, failures."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming, self.outbox = root / INCOMING, root / OUTBOX
        self.failed, self.tmp = root / FAILED, root / TMP

    def prepare(self) -> None:
        """Create the folders, drop half-written files (their sender got no success, and sends again)
        and finish what a crash interrupted: a received file already diagnosed is removed."""
        for folder in (self.incoming, self.outbox, self.failed, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        for received in self.received():
            if (self.outbox / received.item_id).is_dir():
                _remove_durably(received.path)
        for folder in self.outbox.iterdir():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    # ---------------------------------------------------------------- received files

    def receive(self, data: bytes) -> str:
        """Keep ``data`` (a Part 10 file) durably in ``incoming/``; its id. Raises :class:`SpoolError`."""
        item_id = new_item_id()
        try:
            write_durably(self.incoming / f"{item_id}{DICOM_SUFFIX}", data, self.tmp)
        except OSError as error:
            raise SpoolError(error.errno, f"cannot spool a received file: {error.strerror or error}") from error
        return item_id

    def received(self) -> list[ReceivedFile]:
        """The received files not yet diagnosed, oldest first."""
        return [ReceivedFile(path.stem, path) for path in sorted(self.incoming.glob(f"*{DICOM_SUFFIX}"))]

    def store_outputs(self, received: ReceivedFile, outputs: Mapping[str, bytes]) -> None:
        """Put the outputs of ``received`` into the outbox, in the order given, then drop the received file."""
        staging = self.tmp / received.item_id
        staging.mkdir()
        for number, (kind, data) in enumerate(outputs.items(), start=1):
            write_durably(staging / f"{number}-{kind}{DICOM_SUFFIX}", data)
        fsync_folder(staging)
        os.replace(staging, self.outbox / received.item_id)  # the outputs appear together or not at all
        fsync_folder(self.outbox)
        fsync_folder(self.tmp)
        _remove_durably(received.path)

    def fail_received(self, received: ReceivedFile, failure: Failure) -> None:
        """Move a received file that will not be diagnosed to ``failed/``, with its reason beside it."""
        self._move_to_failed(received.path, received.item_id, failure)

    # ---------------------------------------------------------------- outputs

    def pending_outputs(self) -> list[PendingOutput]:
        """The outputs not yet delivered, oldest received file first and, within one, in their order."""
        return [
            PendingOutput(path.parent.name, path.name, path) for path in sorted(self.outbox.glob(f"*/*{DICOM_SUFFIX}"))
        ]

    def delivered(self, output: PendingOutput) -> None:
        """The destination stored ``output``: it leaves the outbox (its folder too, once empty)."""
        _remove_durably(output.path)
        self._drop_if_empty(output.path.parent)

    def fail_output(self, output: PendingOutput, failure: Failure) -> None:
        """Move an output the destination refused for good to ``failed/``, with the reason beside it."""
        self._move_to_failed(output.path, f"{output.item_id}.{output.path.stem}", failure)
        self._drop_if_empty(output.path.parent)

    # ---------------------------------------------------------------- plumbing

    def _move_to_failed(self, path: Path, name: str, failure: Failure) -> None:
        reason = {**asdict(failure), "failed_at": datetime.now(UTC).isoformat(timespec="seconds")}
        write_durably(self.failed / f"{name}{REASON_SUFFIX}", json.dumps(reason, indent=2).encode(), self.tmp)
        os.replace(path, self.failed / f"{name}{DICOM_SUFFIX}")
        fsync_folder(self.failed)
        fsync_folder(path.parent)

    def _drop_if_empty(self, folder: Path) -> None:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            fsync_folder(folder.parent)


def new_item_id() -> str:
    """Sorts by reception time; the random part keeps two files of one nanosecond apart."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def write_durably(path: Path, data: bytes, tmp: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that, after a crash, ``path`` is either absent or whole: written
    beside it (or in ``tmp``, on the same file system), fsynced, renamed, and the folder fsynced."""
    staging = (tmp or path.parent) / f".{path.name}.{secrets.token_hex(4)}.part"
    with open(staging, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename, a removal) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_folder(path.parent)
