"""The DICOM node's way out: C-STORE of the outputs to the destination AE, and the waits between
tries while it cannot be reached.

One association carries every output pending at the time, each proposed in both uncompressed
little-endian syntaxes (pynetdicom converts between them). What the destination answers decides an
output's fate:

* success or a warning (stored, perhaps with coercion): delivered;
* "out of resources" (0xA7xx), a refused or dropped association, no answer: the destination is
  unavailable (:class:`DestinationUnavailable`): everything stays pending and is tried again later;
* any other failure status, or no presentation context for the output's SOP class: refused for good
  (``on_refused``): the same file would be refused again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom.status import code_to_category

from gateway.dicom_node.spool import Failure, PendingOutput
from gateway.settings import DicomDestination

logger = logging.getLogger(__name__)

OUTPUT_STORAGE = (ComprehensiveSRStorage, SecondaryCaptureImageStorage)  # avn.integration's SR and annotated copy
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
STORED_CATEGORIES = ("Success", "Warning")
OUT_OF_RESOURCES = range(0xA700, 0xA800)
NETWORK_TIMEOUT_S = 30.0  # connecting, and each answer of the destination


class DestinationUnavailable(Exception):
    """The destination cannot take outputs now (down, refusing associations, out of resources)."""


@dataclass
class Backoff:
    """Waits between tries: ``initial_s``, doubling after each failure, at most ``max_s``."""

    initial_s: float
    max_s: float
    failures: int = 0

    def next_wait_s(self) -> float:
        wait = min(self.max_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return wait

    def reset(self) -> None:
        self.failures = 0


class Sender:
    """C-STOREs outputs to one destination as ``calling_ae_title``."""

    def __init__(self, calling_ae_title: str, destination: DicomDestination) -> None:
        self.destination = destination
        self.ae = AE(ae_title=calling_ae_title)
        for sop_class in OUTPUT_STORAGE:
            self.ae.add_requested_context(sop_class, list(UNCOMPRESSED))
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = NETWORK_TIMEOUT_S
        self.ae.connection_timeout = NETWORK_TIMEOUT_S

    def send(
        self,
        outputs: Sequence[PendingOutput],
        on_delivered: Callable[[PendingOutput], None],
        on_refused: Callable[[PendingOutput, Failure], None],
    ) -> None:
        """Send each output in order on one association (blocking); raises :class:`DestinationUnavailable`
        at the first sign that the destination cannot take them now."""
        association = self._associate()
        try:
            for output in outputs:
                self._send_one(association, output, on_delivered, on_refused)
        finally:
            if association.is_established:
                association.release()

    def _associate(self) -> Association:
        destination = self.destination
        association = self.ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not association.is_established:
            what = "rejected the association" if association.is_rejected else "cannot be reached"
            raise DestinationUnavailable(f"{destination} {what}")
        return association

    def _send_one(
        self,
        association: Association,
        output: PendingOutput,
        on_delivered: Callable[[PendingOutput], None],
        on_refused: Callable[[PendingOutput, Failure], None],
    ) -> None:
        try:
            dataset = dcmread(output.path)
        except (InvalidDicomError, OSError) as error:
            on_refused(output, Failure("unreadable-output", type(error).__name__, "the spooled output cannot be read"))
            return
        try:
            answer = association.send_c_store(dataset)
        except ValueError:  # no accepted presentation context fits the output's SOP class
            message = f"{self.destination} accepts no {dataset.SOPClassUID.name}"
            on_refused(output, Failure("not-accepted", "NoPresentationContext", message))
            return
        except RuntimeError as error:  # the association was released or aborted underneath
            raise DestinationUnavailable(f"{self.destination}: {error}") from None
        status = answer.get("Status")
        if status is None:
            raise DestinationUnavailable(f"{self.destination} gave no answer to a C-STORE")
        if code_to_category(status) in STORED_CATEGORIES:
            on_delivered(output)
        elif status in OUT_OF_RESOURCES:
            raise DestinationUnavailable(f"{self.destination} is out of resources (status 0x{status:04X})")
        else:
            message = f"{self.destination} refused it with status 0x{status:04X}"
            on_refused(output, Failure("refused-by-destination", "C-STORE", message))
