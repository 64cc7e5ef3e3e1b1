"""The DICOM node's Storage SCP: what it accepts, from whom, and what a C-STORE does.

* Verification (C-ECHO), and C-STORE of Computed Radiography, Digital X-Ray for presentation and
  Digital X-Ray for processing: the radiographs a pelvis comes as. Any other SOP class is refused at
  association (no presentation context), so the sender knows at once.
* Transfer syntaxes: the uncompressed and deflated ones and every compressed one the project's
  decoder (:mod:`avn.dataset.images`: pydicom and its pylibjpeg plug-ins) can decode on this machine,
  so a file is never acknowledged in a syntax it cannot read.
* Calling AE titles: with ``dicom_allowed_aes`` set, any other is refused with A-ASSOCIATE-RJ.
* A C-STORE writes the file as received (no re-encoding) durably into the spool, and only then
  answers success (0x0000); a spool that cannot be written answers "out of resources" (0xA700), so
  the sender keeps its copy and tries again.

pynetdicom runs each association on a thread of its own: the handler only spools and wakes the
node's diagnosis worker (``on_received``), it never diagnoses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from gateway.dicom_node.spool import Spool, SpoolError
from gateway.settings import Settings

logger = logging.getLogger(__name__)

RADIOGRAPH_STORAGE = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
# The common transfer syntaxes of radiographs, uncompressed first (a sender proposing several gets
# the first one it offers that is in this list).
CANDIDATE_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def accepted_transfer_syntaxes() -> list[str]:
    """The candidate syntaxes whose pixel data pydicom can decode here (a missing plug-in drops its syntax)."""
    return [str(uid) for uid in CANDIDATE_TRANSFER_SYNTAXES if get_decoder(uid).is_available]


def start_storage_scp(settings: Settings, spool: Spool, on_received: Callable[[], None]) -> ThreadedAssociationServer:
    """Listen on ``dicom_host:dicom_port`` as ``dicom_ae_title``, on pynetdicom's threads; the caller
    shuts the returned server down. Raises OSError when the port cannot be bound."""
    ae = AE(ae_title=settings.dicom_ae_title)
    syntaxes = accepted_transfer_syntaxes()
    for sop_class in RADIOGRAPH_STORAGE:
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification)  # pynetdicom answers C-ECHO with success itself
    ae.require_calling_aet = list(settings.dicom_allowed_aes)  # empty: any calling AE
    handlers = [(evt.EVT_C_STORE, store_received, [spool, on_received])]
    return ae.start_server((settings.dicom_host, settings.dicom_port), block=False, evt_handlers=handlers)


def store_received(event: Event, spool: Spool, on_received: Callable[[], None]) -> int:
    """The C-STORE handler: the status is success only once the file is safe in the spool."""
    try:
        item_id = spool.receive(event.encoded_dataset())
    except SpoolError as error:
        logger.error("C-STORE answered 'out of resources': %s", error.strerror)
        return OUT_OF_RESOURCES
    logger.info("received %s from %s", item_id, event.assoc.requestor.ae_title)
    on_received()
    return SUCCESS
