"""The coded concepts of the hospital outputs (DICOM SR and FHIR): the one table, documented in
docs/integration.md ("Codes").

SNOMED CT (``SCT``), DICOM (``DCM``) and UCUM concepts are taken from pydicom's copy of the DICOM
standard's code tables (``pydicom.sr.codedict.codes``), so no code is typed here by hand where the
standard has one. What no standard terminology names — the AVN stage groups this service reports,
the eight radiological notes, the operating points — is coded in the private scheme
:data:`PRIVATE_SCHEME` (``99AVN``: DICOM reserves designators starting with ``99`` for private
schemes, PS3.16 §8.2); the one note with a SNOMED CT concept (cystic change: "Cyst") uses it.
The labels themselves come from :mod:`avn.vocabulary`; this module only attaches codes to them.
"""

from __future__ import annotations

from typing import Final

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from avn.pipeline.results import Diagnosis
from avn.vocabulary import COLLAPSE_CLASSES, NOTES, PRESENCE_CLASSES, SIDES, STAGES

PRIVATE_SCHEME: Final = "99AVN"
PRIVATE_SCHEME_NAME: Final = "AVN-net serving codes"
SCT_SYSTEM: Final = "http://snomed.info/sct"  # the FHIR system of SCT codes
DICOM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
PRIVATE_SYSTEM: Final = "urn:avn-net:codes"  # the FHIR system of the private scheme


MAX_CODE_VALUE_LENGTH: Final = 16  # a DICOM Code Value is an SH


def private(value: str, meaning: str) -> Code:
    if len(value) > MAX_CODE_VALUE_LENGTH:
        raise ValueError(f"private code value {value!r} is longer than {MAX_CODE_VALUE_LENGTH} characters")
    return Code(value, PRIVATE_SCHEME, meaning)


# ---------------------------------------------------------------- anatomy and laterality (SNOMED CT)

FEMORAL_HEAD: Final = codes.SCT.FemoralHead  # 2812003
HIP_JOINT: Final = codes.SCT.HipJoint  # 24136001
LATERALITY: Final[dict[str, Code]] = {"right": codes.SCT.Right, "left": codes.SCT.Left}  # 24028007, 7771000
LATERALITY_ATTRIBUTE: Final = codes.SCT.Laterality  # 272741003
assert set(LATERALITY) == set(SIDES)

# ---------------------------------------------------------------- the finding and its evaluations

# The finding of every head group: necrosis (SCT 6574001) at the femoral head. Whether it is there
# is the "presence" evaluation below; a head without AVN is reported as the same finding, absent.
FINDING: Final = codes.SCT.Necrosis
FINDING_CATEGORY: Final = codes.SCT.Finding  # 404684003
PROCEDURE: Final = codes.SCT.PlainRadiography  # 168537006
DEVICE_OBSERVER: Final = codes.DCM.Device  # 121007: the observer is this software, not a person

PRESENCE_NAME: Final = codes.DCM.PresenceOfProperty  # 121052
PRESENCE_VALUE: Final[dict[str, Code]] = {"absence": codes.SCT.Absent, "presence": codes.SCT.Present}
assert set(PRESENCE_VALUE) == set(PRESENCE_CLASSES)

STAGE_NAME: Final = codes.SCT.Stage  # 258214002
STAGE_MEANINGS: Final[dict[str, str]] = {
    "absence": "No avascular necrosis of the femoral head",
    "II": "AVN stage II (sclerosis, cysts, crescent without collapse)",
    "III": "AVN stage III (subchondral collapse, head deformation)",
    "IV": "AVN stage IV (joint space narrowing, acetabular involvement)",
}
STAGE_VALUE: Final[dict[str, Code]] = {
    stage: private(f"STAGE-{stage.upper()}", STAGE_MEANINGS[stage]) for stage in STAGES
}
assert set(STAGE_MEANINGS) == set(STAGES)

COLLAPSE_NAME: Final = private("COLLAPSE", "Femoral head collapse")
COLLAPSE_VALUE: Final[dict[str, Code]] = {
    "absence": codes.SCT.Absent,
    "pre-collapse": private("PRE-COLLAPSE", "Pre-collapse"),
    "post-collapse": private("POST-COLLAPSE", "Post-collapse"),
}
assert set(COLLAPSE_VALUE) == set(COLLAPSE_CLASSES)

# Each passed note is an associated finding of the head (SCT 246090004): not "Finding", which
# names the head's finding itself (necrosis).
NOTE_NAME: Final = codes.SCT.AssociatedFinding
# A short key per note (code values are at most 16 characters), then the note's meaning.
NOTE_KEYS: Final[dict[str, tuple[str, str]]] = {
    "sclerosis": ("SCLEROSIS", "Sclerosis"),
    "cystic change": ("CYST", "Cystic change"),
    "crescent sign without collapse": ("CRESCENT", "Crescent sign without collapse"),
    "subchondral flattening or collapse": ("FLATTENING", "Subchondral flattening or collapse"),
    "FH deformation": ("FH-DEFORM", "Femoral head deformation"),
    "flattening and deformation": ("FLAT-DEFORM", "Flattening and deformation"),
    "FH and acetabular deformation": ("FH-ACET-DEFORM", "Femoral head and acetabular deformation"),
    "joint space narrowing": ("JSN", "Joint space narrowing"),
}
# SNOMED CT where it has the concept, else the private code.
NOTE_VALUE: Final[dict[str, Code]] = {
    note: codes.SCT.Cyst if note == "cystic change" else private(key, meaning)  # Cyst: 367643001
    for note, (key, meaning) in NOTE_KEYS.items()
}
assert tuple(NOTE_VALUE) == NOTES

LOW_CONFIDENCE_NAME: Final = private("LOW-CONFIDENCE", "Low model confidence: route to a human reader")
YES: Final = codes.SCT.Yes  # 373066001

OPERATING_POINT_NAME: Final = codes.DCM.CADOperatingPoint  # 111071
THRESHOLD_NAME: Final = codes.DCM.ThresholdValue  # 122411


def operating_point_value(name: str) -> Code:
    """The coded name of an operating point (``sensitive``, ``specific``, ``default``, ...)."""
    return private(f"OP-{name.upper()}", f"{name} operating point")


def operating_point_figures(diagnosis: Diagnosis) -> list[tuple[Code, float]]:
    """(code, value) of the result's operating point threshold and validation figures, those it has
    (the argmax point has none)."""
    point = diagnosis.operating_point
    if point is None:
        return []
    figures = [
        (THRESHOLD_NAME, point.threshold),
        (VALIDATION_SENSITIVITY, point.validation_sensitivity),
        (VALIDATION_SPECIFICITY, point.validation_specificity),
    ]
    return [(name, float(value)) for name, value in figures if value is not None]


# ---------------------------------------------------------------- probabilities (UCUM "1")

PROBABILITY_UNIT: Final = codes.UCUM.NoUnits  # "1": a probability in [0, 1]
VALIDATION_SENSITIVITY: Final = private("VAL-SENSITIVITY", "Sensitivity on the validation fold")
VALIDATION_SPECIFICITY: Final = private("VAL-SPECIFICITY", "Specificity on the validation fold")


def stage_probability_name(stage: str) -> Code:
    what = "no AVN" if stage == "absence" else f"AVN stage {stage}"
    return private(f"P-STAGE-{stage.upper()}", f"Probability of {what}")


PRESENCE_PROBABILITY: Final = private("P-PRESENCE", "Probability of avascular necrosis (any stage)")


def note_probability_name(note: str) -> Code:
    key, meaning = NOTE_KEYS[note]
    return private(f"P-{key}", f"Probability of {meaning.lower()} (fused)")
