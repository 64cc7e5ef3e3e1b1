"""Avascular-necrosis findings on a femoral head, and the notes they imply (SPEC §4).

A hip's lesion layout is planned once from ``HipSpec.lesion_seed`` (and its stage and severity), in
the head's own 3D frame (unit = head radius, canonical femur: x lateral, y caudal, z anterior). The
same plan is then projected on every radiograph of that hip, so the AP and FL views show the same
lesions seen from different directions.

Stage picture, subtle (severity 0) to obvious (severity 1):
* absence (Ficat 0/I) — nothing visible;
* II — patchy sclerosis with a sclerotic demarcation, cysts with sclerotic rims, a thin subchondral
  lucent crescent; the contour is intact;
* III — a flattened (chord) or stepped (collapsed) segment of the weight-bearing dome and/or a
  deformed head;
* IV — deformed head and acetabulum, joint-space narrowing, osteophytes.

Finding names (renderer vocabulary): see ``FINDINGS``. Notes are derived only from the findings
drawn, and only notes of the head's own stage are reported (``vocabulary.notes_of_stage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avn.phantom.specs import HipSpec
from avn.vocabulary import notes_of_stage

FINDINGS: tuple[str, ...] = (
    "sclerosis",
    "cyst",
    "crescent",
    "flattening",
    "collapse",
    "deformation",
    "acetabular_deformation",
    "joint_space_narrowing",
    "osteophyte",
)

# Which drawn finding yields which note; the notes themselves come from the vocabulary, in its order.
_II_NOTE = dict(zip(("sclerosis", "cyst", "crescent"), notes_of_stage("II"), strict=True))
_III_FLAT, _III_DEFORM, _III_BOTH = notes_of_stage("III")
_IV_NOTE = dict(zip(("acetabular_deformation", "joint_space_narrowing"), notes_of_stage("IV"), strict=True))

PROFILE_SAMPLES = 360  # head contour radius sampled per degree of the projected polar angle


def notes_from_findings(stage: str, findings: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The notes a reader would write for the findings drawn on a head of ``stage``."""
    drawn = set(findings)
    if stage == "II":
        notes = [note for name, note in _II_NOTE.items() if name in drawn]
    elif stage == "III":
        flat = bool(drawn & {"flattening", "collapse"})
        deform = "deformation" in drawn
        notes = [_III_BOTH] if flat and deform else [_III_FLAT] if flat else [_III_DEFORM] if deform else []
    elif stage == "IV":
        notes = [note for name, note in _IV_NOTE.items() if name in drawn]
    else:
        notes = []
    own = notes_of_stage(stage)
    return tuple(n for n in own if n in notes)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Blob:
    """A spherical feature inside the head: head-local centre (unit radius) and radius (unit)."""

    centre: tuple[float, float, float]
    radius: float
    strength: float


@dataclass
class LesionPlan:
    stage: str
    severity: float
    findings: tuple[str, ...]
    direction: np.ndarray  # head-local unit vector to the lesion centre (anterosuperior)
    sclerosis: list[Blob] = field(default_factory=list)
    demarcation: float = 0.0  # strength of the sclerotic band bounding the necrotic segment
    cysts: list[Blob] = field(default_factory=list)
    crescent: dict | None = None  # half_angle_deg, depth_mm, width_mm, strength
    flattening: dict | None = None  # half_angle_deg, depth_mm, stepped
    deformation: dict | None = None  # harmonic amplitudes/phases (relative), widening
    acetabulum: dict | None = None  # irregularity, sclerosis, cysts
    joint_space_mm: float | None = None  # narrowed joint space; None keeps the subject's
    osteophytes: list[dict] = field(default_factory=list)

    @property
    def notes(self) -> tuple[str, ...]:
        return notes_from_findings(self.stage, self.findings)


def plan_findings(hip: HipSpec) -> LesionPlan:
    """Lay out the lesions of ``hip`` (deterministic in lesion_seed, stage and severity)."""
    rng = np.random.default_rng([hip.lesion_seed, 21])
    s = float(np.clip(hip.severity, 0.0, 1.0))
    direction = _unit(np.array([0.30, -0.85, 0.42]) + rng.normal(0, 0.12, 3))
    plan = LesionPlan(stage=hip.stage, severity=s, findings=(), direction=direction)
    if hip.stage == "absence":
        return _osteoarthritis(plan, rng)
    k = 0.35 + 0.65 * s  # visibility: subtle .. obvious
    drawn: list[str] = []

    if hip.stage == "II":
        wants = {
            "sclerosis": rng.random() < 0.55 + 0.35 * s,
            "cyst": rng.random() < 0.45 + 0.35 * s,
            "crescent": rng.random() < 0.30 + 0.40 * s,
        }
        if not any(wants.values()):
            wants[str(rng.choice(["sclerosis", "cyst", "crescent"], p=[0.5, 0.3, 0.2]))] = True
        drawn += [name for name, on in wants.items() if on]
    elif hip.stage == "III":
        mode = rng.choice(["flat", "deform", "both"], p=[0.4, 0.25, 0.35])
        if mode in ("flat", "both"):
            drawn.append("collapse" if rng.random() < 0.4 else "flattening")
        if mode in ("deform", "both"):
            drawn.append("deformation")
        drawn += [n for n, p in (("sclerosis", 0.7), ("cyst", 0.35), ("crescent", 0.25)) if rng.random() < p]
    elif hip.stage == "IV":
        acet = rng.random() < 0.6 + 0.4 * s
        jsn = rng.random() < 0.6 + 0.4 * s
        if not (acet or jsn):
            acet, jsn = (True, False) if rng.random() < 0.5 else (False, True)
        drawn += ["deformation", "collapse", "sclerosis", "osteophyte"]
        drawn += ["acetabular_deformation"] if acet else []
        drawn += ["joint_space_narrowing"] if jsn else []
        if rng.random() < 0.6:
            drawn.append("cyst")

    if "sclerosis" in drawn:
        plan.sclerosis = _sclerotic_patches(rng, direction, k * (1.4 if hip.stage == "IV" else 1.0))
        plan.demarcation = k * float(rng.uniform(0.8, 1.3))
    if "cyst" in drawn:
        plan.cysts = _cysts(rng, direction, k)
    if "crescent" in drawn:
        plan.crescent = {
            "half_angle_deg": float(rng.uniform(22, 40)),
            "depth_mm": float(rng.uniform(1.4, 2.6)),
            "width_mm": 0.7 + 0.6 * s,
            "strength": k,
        }
    if "flattening" in drawn or "collapse" in drawn:
        depth = 1.0 + 4.0 * s + (1.5 if hip.stage == "IV" else 0.0)
        plan.flattening = {
            "half_angle_deg": float(rng.uniform(20, 34)),
            "depth_mm": depth,
            "stepped": "collapse" in drawn,
            "step_side": float(rng.choice([-1.0, 1.0])),
        }
    if "deformation" in drawn:
        amp = (0.025 + 0.05 * s) * (1.6 if hip.stage == "IV" else 1.0)
        plan.deformation = {
            "a2": amp,
            "a3": amp * float(rng.uniform(0.2, 0.5)),
            "p3": float(rng.uniform(0, 2 * math.pi)),
            "widen": amp * 0.6,
        }
    if "acetabular_deformation" in drawn:
        plan.acetabulum = {
            "irregularity_mm": 0.6 + 1.4 * s,
            "phase": float(rng.uniform(0, 2 * math.pi)),
            "sclerosis": 1.3 + 1.2 * s,
            "cysts": int(rng.integers(0, 3)),
            "cyst_seed": int(rng.integers(1 << 30)),
        }
    if "joint_space_narrowing" in drawn:
        plan.joint_space_mm = float(1.8 - 1.3 * s + rng.uniform(-0.1, 0.05))
    if "osteophyte" in drawn:
        plan.osteophytes = [
            {"where": "acetabular_rim", "length_mm": 3.0 + 6.0 * s},
            {"where": "head_neck_inferior", "length_mm": 2.5 + 5.0 * s},
        ]
        if rng.random() < 0.5:
            plan.osteophytes.append({"where": "head_neck_superior", "length_mm": 2.0 + 3.0 * s})
    plan.findings = tuple(n for n in FINDINGS if n in drawn)
    return plan


OSTEOARTHRITIS_PROBABILITY = 0.3  # of hips without AVN


def _osteoarthritis(plan: LesionPlan, rng: np.random.Generator) -> LesionPlan:
    """A confounder on a hip without AVN: osteoarthritis (narrowed joint space, marginal
    osteophytes, subchondral sclerosis and cysts of the acetabular roof) with a round, intact head.

    The stage stays ``absence`` and no note is drawn: the models must learn that a worn joint is
    not a necrotic head.
    """
    if rng.random() >= OSTEOARTHRITIS_PROBABILITY:
        return plan
    grade = float(rng.uniform(0.0, 1.0))
    plan.joint_space_mm = float(2.8 - 1.8 * grade + rng.uniform(-0.2, 0.2))
    plan.acetabulum = {
        "irregularity_mm": 0.2 + 0.5 * grade,
        "phase": float(rng.uniform(0, 2 * math.pi)),
        "sclerosis": 0.8 + 1.4 * grade,
        "cysts": int(rng.integers(0, 3)),
        "cyst_seed": int(rng.integers(1 << 30)),
    }
    plan.osteophytes = [{"where": "acetabular_rim", "length_mm": 2.0 + 6.0 * grade}]
    if rng.random() < 0.7:
        plan.osteophytes.append({"where": "head_neck_inferior", "length_mm": 2.0 + 4.0 * grade})
    return plan


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _sclerotic_patches(rng, direction, k) -> list[Blob]:
    """Clustered small dense blobs in the anterosuperior segment: a patchy, mottled sclerosis."""
    blobs = []
    for _ in range(int(rng.integers(7, 14))):
        offset = rng.normal(0, 0.28, 3)
        ctr = direction * rng.uniform(0.35, 0.75) + offset
        if np.linalg.norm(ctr) > 0.82:
            ctr = ctr / np.linalg.norm(ctr) * 0.82
        blobs.append(Blob(tuple(ctr), float(rng.uniform(0.07, 0.2)), float(k * rng.uniform(0.5, 1.1))))
    return blobs


def _cysts(rng, direction, k) -> list[Blob]:
    cysts = []
    for _ in range(int(rng.integers(1, 4))):
        ctr = direction * rng.uniform(0.35, 0.7) + rng.normal(0, 0.18, 3)
        if np.linalg.norm(ctr) > 0.78:
            ctr = ctr / np.linalg.norm(ctr) * 0.78
        cysts.append(Blob(tuple(ctr), float(rng.uniform(0.06, 0.09) + 0.06 * k), float(k)))
    return cysts


# --------------------------------------------------------------------------- projection helpers


def projected_direction(frame: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Image polar angle (rad, atan2(dy, dx)) and in-plane length of a head-local direction."""
    w = frame @ v
    return math.atan2(w[1], w[0]), float(math.hypot(w[0], w[1]))


def head_profile(
    plan: LesionPlan | None, radius: float, frame: np.ndarray, fovea_dir: np.ndarray | None = None
) -> np.ndarray:
    """Radius (mm) of the projected head contour at each degree of image polar angle."""
    theta = np.radians(np.arange(PROFILE_SAMPLES, dtype=np.float64))
    rho = np.full(PROFILE_SAMPLES, radius)
    if fovea_dir is not None:  # the fovea capitis: a shallow notch where it meets the contour
        ang, inplane = projected_direction(frame, fovea_dir)
        dist = _angle_diff(theta, ang)
        rho -= 1.6 * inplane**3 * np.exp(-((dist / math.radians(6.5)) ** 2))
    if plan is None:
        return rho
    dome, inplane = projected_direction(frame, plan.direction)
    if plan.deformation is not None:
        d = plan.deformation
        rel = _angle_diff(theta, dome)
        # flattened, widened "mushroom" head: shorter along the dome axis, longer across it
        rho *= 1.0 - d["a2"] * np.cos(2 * rel) + d["a3"] * np.cos(3 * rel + d["p3"]) + d["widen"] * 0.5
    if plan.flattening is not None:
        f = plan.flattening
        depth = f["depth_mm"] * max(inplane, 0.65)
        rel = _angle_diff(theta, dome)
        half = math.radians(f["half_angle_deg"])
        if f["stepped"]:
            # a depressed segment with a sharp step at one end and a ramp at the other
            side = f["step_side"] * rel
            inside = np.abs(rel) < half
            ramp = np.clip((half - side) / (0.6 * half), 0, 1)
            rho -= np.where(inside, depth * ramp, 0.0)
        else:
            chord = (radius - depth) / np.maximum(np.cos(rel), 1e-3)
            rho = np.where(np.abs(rel) < math.pi / 2, np.minimum(rho, chord), rho)
    return rho


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def acetabular_profile(
    plan: LesionPlan | None, head_rho: np.ndarray, healthy_radius: float, healthy_space: float
) -> np.ndarray:
    """Radius (mm, per degree) of the acetabular articular surface around the head centre.

    A healthy socket is spherical; in stage IV, and in an osteoarthritic hip without AVN, it
    follows the head (with the narrowed joint space, if drawn) and its surface turns irregular.
    """
    acet = np.full(PROFILE_SAMPLES, healthy_radius)
    if plan is None or (plan.stage != "IV" and plan.joint_space_mm is None):
        return acet
    space = plan.joint_space_mm if plan.joint_space_mm is not None else healthy_space
    acet = head_rho + space
    if plan.acetabulum is not None:
        theta = np.radians(np.arange(PROFILE_SAMPLES))
        a = plan.acetabulum
        wob = np.sin(5 * theta + a["phase"]) + 0.6 * np.sin(9 * theta + 2 * a["phase"])
        acet = acet + 0.5 * a["irregularity_mm"] * (1 + 0.6 * wob)
        if plan.joint_space_mm is not None:  # keep the narrowing narrow
            acet = np.minimum(acet, head_rho + plan.joint_space_mm)
    return acet


def joint_space(head_rho: np.ndarray, acet_rho: np.ndarray, roof_deg: tuple[float, float]) -> float:
    """Narrowest head-to-socket gap (mm) over the weight-bearing roof (image polar degrees)."""
    lo, hi = sorted(roof_deg)
    idx = np.arange(int(math.floor(lo)), int(math.ceil(hi)) + 1) % PROFILE_SAMPLES
    return float(np.min(acet_rho[idx] - head_rho[idx]))


# --------------------------------------------------------------------------- drawing


def draw_lesions(
    plan: LesionPlan,
    centre: np.ndarray,
    radius: float,
    frame: np.ndarray,
    rho: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Cancellous and cortical path changes (mm) of the plan's lesions on a pixel grid.

    ``xs`` (1, w) and ``ys`` (h, 1) are the pixel-centre coordinates in mm; ``rho`` is the drawn head
    contour (per degree), used to keep the crescent under the (possibly flattened) surface.
    """
    shape = (ys.shape[0], xs.shape[1])
    canc = np.zeros(shape, np.float32)
    cort = np.zeros(shape, np.float32)
    dx = (xs - centre[0]).astype(np.float32)
    dy = (ys - centre[1]).astype(np.float32)
    dist = np.sqrt(dx * dx + dy * dy)
    deg = (np.degrees(np.arctan2(dy, dx)).astype(np.int32)) % PROFILE_SAMPLES
    inside = dist < rho[deg] - 0.8

    for blob in plan.sclerosis:
        p = centre + (frame @ np.asarray(blob.centre))[:2] * radius
        canc += 0.9 * blob.strength * _sphere_chord(xs, ys, p, blob.radius * radius)
    if plan.demarcation > 0:
        # the reactive interface: a sclerotic band around the necrotic segment, concave to the dome
        ang, _ = projected_direction(frame, plan.direction)
        seg_c = centre + 0.55 * radius * np.array([math.cos(ang), math.sin(ang)])
        d_seg = np.sqrt((xs - seg_c[0]) ** 2 + (ys - seg_c[1]) ** 2)
        band = np.exp(-(((d_seg - 0.5 * radius) / 2.2) ** 2))
        toward = (dx * math.cos(ang) + dy * math.sin(ang)) / radius
        band *= np.clip(0.9 - toward, 0, 1) * (toward > -0.55)
        canc += (plan.demarcation * 6.0) * band.astype(np.float32)
    if plan.flattening is not None and plan.stage in ("III", "IV"):
        # compacted trabeculae under the collapsed segment
        ang, _ = projected_direction(frame, plan.direction)
        along = dx * math.cos(ang) + dy * math.sin(ang)
        rel = np.abs(_angle_diff(np.radians(deg.astype(np.float64)), ang))
        depth_band = np.exp(-((((rho[deg] - dist) - 3.0) / 2.5) ** 2)) * (rel < math.radians(40)) * (along > 0)
        canc += (6.0 * (0.5 + plan.severity)) * depth_band.astype(np.float32)
    for cyst in plan.cysts:
        p = centre + (frame @ np.asarray(cyst.centre))[:2] * radius
        rc = cyst.radius * radius
        hole = _sphere_chord(xs, ys, p, rc)
        canc -= 1.4 * hole * cyst.strength + 0.2 * hole
        cort += 0.5 * cyst.strength * (_sphere_chord(xs, ys, p, rc + 0.8) - hole)
    if plan.crescent is not None:
        c = plan.crescent
        ang, _ = projected_direction(frame, plan.direction)
        rel = _angle_diff(np.radians(deg.astype(np.float64)), ang)
        window = np.clip(1.0 - (np.abs(rel) / math.radians(c["half_angle_deg"])) ** 4, 0, 1)
        under = rho[deg] - c["depth_mm"] - dist
        line = np.exp(-((under / c["width_mm"]) ** 2)) * window
        canc -= (24.0 * c["strength"]) * line.astype(np.float32)
    canc *= inside
    return canc, cort


def _sphere_chord(xs, ys, p, r) -> np.ndarray:
    d2 = (xs - p[0]) ** 2 + (ys - p[1]) ** 2
    return (2.0 * np.sqrt(np.maximum(r * r - d2, 0.0))).astype(np.float32)


def osteophyte_spurs(
    plan: LesionPlan,
    head_centre: np.ndarray,
    rho: np.ndarray,
    lateral_sign: float,
    rim_point: np.ndarray,
    neck_dir2: np.ndarray,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Bony spurs as (bone, polyline (n,2) mm, radii (n,)) for the femur or the hip bone."""
    spurs = []
    for o in plan.osteophytes:
        length = o["length_mm"]
        if o["where"] == "acetabular_rim":
            out = np.array([lateral_sign * 0.8, 0.6])
            pts = np.array([rim_point - out * 2.0, rim_point + out * length])
            spurs.append(("hip", pts, np.array([2.6, 0.7])))
            continue
        # at the head-neck junction: where the neck leaves the head, below or above the neck axis
        neck_ang = math.atan2(neck_dir2[1], neck_dir2[0])
        offset = math.radians(62 if o["where"] == "head_neck_inferior" else -62) * (-lateral_sign)
        ang = neck_ang + offset
        deg = int(round(math.degrees(ang))) % PROFILE_SAMPLES
        base = head_centre + rho[deg] * np.array([math.cos(ang), math.sin(ang)])
        out = np.array([math.cos(ang), math.sin(ang)])
        tangent = neck_dir2 / (np.linalg.norm(neck_dir2) + 1e-9)
        tip = base + out * 0.6 * length + tangent * 0.8 * length
        spurs.append(("femur", np.array([base - out * 2.0, tip]), np.array([2.4, 0.6])))
    return spurs
