"""What the phantom renders: the contract between the cohort planner and the renderer.

``cohort`` decides who the subjects are, which hips are diseased and which radiographs exist;
``render`` turns one ``RadiographSpec`` into pixels and reports the ground truth it drew.
Everything random in a radiograph derives from the seeds held here, so a spec renders to the same
pixels in any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SubjectAnatomy:
    """A subject's skeleton, the same on all of their radiographs (typical adult ranges, SPEC §4)."""

    sex: str  # "F" or "M": the female pelvis is wider with a rounder inlet
    head_diameter_mm: float  # 43–53
    head_asymmetry_mm: float  # right minus left, small
    neck_shaft_angle_deg: float  # 125–135
    acetabular_inclination_deg: float  # 35–45
    joint_space_mm: float  # 3–5 when healthy
    pelvis_width_mm: float  # at the iliac crests, 260–320
    inter_teardrop_mm: float  # 110–130
    shaft_cortex_mm: float  # 4–7
    soft_tissue: float  # body habitus, 0 (thin) .. 1 (large)
    anatomy_seed: int  # shapes that stay fixed across the subject's radiographs


@dataclass(frozen=True)
class HipSpec:
    """One annotated femoral head: its side, disease and how visible the disease is."""

    side: str  # the patient's side, "left" or "right"
    stage: str  # one of vocabulary.STAGES
    severity: float  # 0 = barely visible .. 1 = obvious
    typical: bool  # a textbook case (the training resamples these twice as often)
    lesion_seed: int  # lesion layout; the same on every radiograph of this hip


@dataclass(frozen=True)
class RadiographSpec:
    """One radiograph to render."""

    image_id: int
    subject_id: str
    view: str  # "AP" or "FL"
    anatomy: SubjectAnatomy
    hips: tuple[HipSpec, ...]  # the annotated heads: one or two, at most one per side
    # Why a side has no annotated head: "prosthesis" (a hip replacement is drawn there) or
    # "collimated" (the field is coned to the other hip). None when both heads are annotated.
    missing_reason: str | None
    detector: str  # "CR" or "DX"
    seed: int  # acquisition, pose and texture of this radiograph

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


@dataclass(frozen=True)
class RenderedHead:
    """Ground truth of one head as drawn."""

    side: str
    stage: str
    bbox: tuple[float, float, float, float]  # COCO [x, y, w, h] in output pixels
    notes: tuple[str, ...]  # derived from the findings actually drawn
    findings: tuple[str, ...]  # names of the findings drawn (renderer vocabulary)
    typical: bool


@dataclass
class RenderedRadiograph:
    """Pixels (H, W) uint16, bone bright, in [0, 2**bits_stored - 1], plus what was drawn."""

    pixels: np.ndarray
    bits_stored: int
    pixel_spacing_mm: float
    heads: list[RenderedHead] = field(default_factory=list)
    marker: str = ""  # the side marker burnt in ("L"/"R"), if any
    # the metal ball of each hip prosthesis drawn, COCO [x, y, w, h] in output pixels (not a head:
    # the detector learns it as a class of its own so that it never answers one as a femoral head)
    prosthetic_heads: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])
