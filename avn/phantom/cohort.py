"""Plans a phantom cohort: subjects, their hips' disease, their radiographs and the splits.

The composition follows the paper's Table I (SPEC §3–4) by default: about 3.7 radiographs and
6 femoral heads per subject, AP:FL about 2:1, stages absence:II:III:IV about 1025:810:1271:1983
over heads, bilateral disease in about 3 of 4 patients, each hip keeping its stage on every
radiograph of its subject. Subjects are split into train / test (T-set) / E1 / E2 / E3 as in the
paper, scaled to the cohort size. Planning is sequential and cheap; rendering is parallel, so the
same seed gives the same data set whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avn.phantom.specs import HipSpec, RadiographSpec, SubjectAnatomy
from avn.vocabulary import SIDES, SPLITS, STAGES

# Table I of the paper: heads per stage, subjects per set, radiographs per view.
PAPER_STAGE_COUNTS = {"absence": 1025, "II": 810, "III": 1271, "IV": 1983}
PAPER_MAIN_SUBJECTS = 841  # train + T-set
PAPER_SPLIT_SUBJECTS = {"test": 50, "E1": 100, "E2": 30, "E3": 30}
PAPER_AP_PER_SUBJECT = 2096 / 841
PAPER_FL_PER_SUBJECT = 1040 / 841
BILATERAL_SHARE_OF_PATIENTS = 0.75

# One radiograph in about 0.38 shows a single annotated head (5,089 heads on 3,136 radiographs):
# here a hip replacement on the other side (a subject trait) or a field coned to one hip.
PROSTHESIS_SUBJECT_SHARE = 0.18
COLLIMATED_RADIOGRAPH_SHARE = 0.24

EVALUATION_SPLITS = ("E1", "E2", "E3")  # one AP radiograph with both heads per subject


@dataclass(frozen=True)
class SubjectPlan:
    subject_id: str
    split: str
    anatomy: SubjectAnatomy
    hips: dict[str, HipSpec]  # by side
    prosthesis_side: str | None


def plan_cohort(subjects: int, seed: int) -> tuple[list[SubjectPlan], list[RadiographSpec]]:
    """All subjects and radiograph specs of a phantom data set, in a deterministic order."""
    if subjects < 1:
        raise ValueError("a cohort needs at least one subject")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA7F]))
    splits = assign_splits(subjects, rng)
    plans: list[SubjectPlan] = []
    radiographs: list[RadiographSpec] = []
    for index, split in enumerate(splits):
        plan = plan_subject(f"S{index + 1:04d}", split, rng)
        plans.append(plan)
        radiographs.extend(plan_radiographs(plan, first_image_id=len(radiographs) + 1, rng=rng))
    return plans, radiographs


def split_sizes(subjects: int) -> dict[str, int]:
    """Subjects per split: Table I's proportions scaled to ``subjects`` (T-set about 6%)."""
    sizes = {name: int(round(subjects * count / PAPER_MAIN_SUBJECTS)) for name, count in PAPER_SPLIT_SUBJECTS.items()}
    if subjects >= 2:
        sizes["test"] = max(sizes["test"], 1)  # a T-set always exists once there is a choice
    while sum(sizes.values()) >= subjects:  # training keeps at least one subject
        largest = max(sizes, key=sizes.get)
        if sizes[largest] == 0:
            break
        sizes[largest] -= 1
    sizes["train"] = subjects - sum(sizes.values())
    return {name: sizes[name] for name in SPLITS}


def assign_splits(subjects: int, rng: np.random.Generator) -> list[str]:
    sizes = split_sizes(subjects)
    labels = np.array([name for name in SPLITS for _ in range(sizes[name])])
    return [str(label) for label in rng.permutation(labels)]


def sample_anatomy(rng: np.random.Generator) -> SubjectAnatomy:
    """A subject's skeleton within the adult ranges of SPEC §4 (men a little larger)."""
    sex = "F" if rng.random() < 0.5 else "M"
    male = sex == "M"
    return SubjectAnatomy(
        sex=sex,
        head_diameter_mm=float(rng.uniform(47.0, 53.0) if male else rng.uniform(43.0, 49.0)),
        head_asymmetry_mm=float(rng.normal(0.0, 0.5)),
        neck_shaft_angle_deg=float(rng.uniform(125.0, 135.0)),
        acetabular_inclination_deg=float(rng.uniform(35.0, 45.0)),
        joint_space_mm=float(rng.uniform(3.0, 5.0)),
        pelvis_width_mm=float(rng.uniform(270.0, 320.0) if not male else rng.uniform(260.0, 305.0)),
        inter_teardrop_mm=float(rng.uniform(110.0, 130.0)),
        shaft_cortex_mm=float(rng.uniform(4.0, 7.0)),
        soft_tissue=float(rng.beta(2.0, 2.5)),
        anatomy_seed=int(rng.integers(2**31)),
    )


def sample_hip_stages(rng: np.random.Generator) -> dict[str, str]:
    """Stages by side, with the paper's absence share per head and bilateral share of patients.

    With a = P(both absent), b = P(only one given side absent), c = P(both diseased), A the
    absence share and B the bilateral share: a + b = A, c / (c + 2b) = B, a + 2b + c = 1,
    hence a = (2A + B - 1) / (1 + B).
    """
    absence_share = PAPER_STAGE_COUNTS["absence"] / sum(PAPER_STAGE_COUNTS.values())
    both_absent = (2 * absence_share + BILATERAL_SHARE_OF_PATIENTS - 1) / (1 + BILATERAL_SHARE_OF_PATIENTS)
    one_absent = absence_share - both_absent
    diseased_weights = np.array([PAPER_STAGE_COUNTS[stage] for stage in STAGES[1:]], dtype=float)
    diseased_weights /= diseased_weights.sum()

    def diseased_stage() -> str:
        return str(rng.choice(STAGES[1:], p=diseased_weights))

    draw = rng.random()
    if draw < both_absent:
        left, right = "absence", "absence"
    elif draw < both_absent + one_absent:
        left, right = "absence", diseased_stage()
    elif draw < both_absent + 2 * one_absent:
        left, right = diseased_stage(), "absence"
    else:
        left, right = diseased_stage(), diseased_stage()
    return {"left": left, "right": right}


def sample_hip(side: str, stage: str, rng: np.random.Generator, *, typical: bool | None = None) -> HipSpec:
    """A hip with its lesion visibility; textbook cases are the clearly visible ones."""
    severity = float(rng.uniform(0.0, 1.0))
    if typical is None:
        typical = bool(severity >= 0.7) if stage != "absence" else bool(rng.random() < 0.3)
    elif typical:
        severity = float(rng.uniform(0.7, 1.0))
    return HipSpec(
        side=side,
        stage=stage,
        severity=severity,
        typical=typical,
        lesion_seed=int(rng.integers(2**31)),
    )


def plan_subject(subject_id: str, split: str, rng: np.random.Generator) -> SubjectPlan:
    anatomy = sample_anatomy(rng)
    stages = sample_hip_stages(rng)
    # The E3 set of the paper holds typical cases only (the students' test).
    typical = True if split == "E3" else None
    hips = {side: sample_hip(side, stages[side], rng, typical=typical) for side in SIDES}
    prosthesis_side = None
    if split not in EVALUATION_SPLITS and rng.random() < PROSTHESIS_SUBJECT_SHARE:
        prosthesis_side = str(rng.choice(SIDES))
    return SubjectPlan(subject_id, split, anatomy, hips, prosthesis_side)


def plan_views(split: str, rng: np.random.Generator) -> list[str]:
    """The subject's radiographs: one AP for the reader-study sets, else AP and FL as in Table I."""
    if split in EVALUATION_SPLITS:
        return ["AP"]
    ap = 1 + int(rng.poisson(PAPER_AP_PER_SUBJECT - 1))
    fl = int(rng.poisson(PAPER_FL_PER_SUBJECT))
    return ["AP"] * ap + ["FL"] * fl


def plan_radiographs(plan: SubjectPlan, first_image_id: int, rng: np.random.Generator) -> list[RadiographSpec]:
    specs = []
    for offset, view in enumerate(plan_views(plan.split, rng)):
        annotated_sides = list(SIDES)
        missing_reason = None
        if plan.prosthesis_side is not None:
            annotated_sides.remove(plan.prosthesis_side)
            missing_reason = "prosthesis"
        elif plan.split not in EVALUATION_SPLITS and rng.random() < COLLIMATED_RADIOGRAPH_SHARE:
            annotated_sides = [str(rng.choice(SIDES))]
            missing_reason = "collimated"
        specs.append(
            RadiographSpec(
                image_id=first_image_id + offset,
                subject_id=plan.subject_id,
                view=view,
                anatomy=plan.anatomy,
                hips=tuple(plan.hips[side] for side in annotated_sides),
                missing_reason=missing_reason,
                detector="CR" if rng.random() < 0.5 else "DX",
                seed=int(rng.integers(2**31)),
            )
        )
    return specs
