"""Process-wide logging set-up for the gateway's entry points (``avn serve``, ``python -m
gateway.service``, ``avn dicom-node``): one format, and the DICOM libraries kept quiet.

pynetdicom describes every message it carries and highdicom the data set it copies the patient and
study from (source UIDs among them), at INFO and DEBUG: neither belongs in a log that must hold no
patient data (docs/security.md), whatever level the operator chooses.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DICOM_LIBRARY_LOGGERS = ("pynetdicom", "highdicom")


def quiet_dicom_libraries() -> None:
    """The DICOM libraries log warnings and errors only."""
    for name in DICOM_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str | int) -> None:
    """The root logger at ``level`` in the project's format, the DICOM libraries quiet."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_dicom_libraries()
