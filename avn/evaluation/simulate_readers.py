"""`avn readers --simulate`: a demo reader study in the CSV format of ``avn.readers_format``.

The heads are the phantom's reader-study sets as the paper uses them: unassisted reads on E1
(Table VII), assisted reads on E2 (Table VIII). They come from a data set's ``annotations.json``
(``--data``; case_id = the image's file name) or, by default, from planning the paper-sized
phantom cohort (841 subjects, whose splits hold E1 = 100 radiographs / 200 heads and E2 = 30 / 60
as Table I) without rendering a pixel: readers are simulated, so only the ground truth is needed,
and the case ids are the file names ``avn phantom --subjects 841 --seed S`` would write.

A simulated reader of skill s (0 < s ≤ 1):

* reads stages II and III right with probability s and the extremes (absence, IV) with
  1 − (1 − s) / 2, as the paper's orthopedists found II/III hardest (figure 5); a wrong read is an
  adjacent stage (absence → II, IV → III, II → absence or III, III → II or IV);
* with the system, adopts the model's stage with probability clip(1.2 − s, 0, 1) (less
  experienced readers lean on it more, as in Table VIII) and otherwise reads on their own;
* takes a log-normal time per radiograph, median max(8, 107 − 105 s) s without the system
  (44 s at s = 0.6, 23 s at s = 0.8: about the paper's groups R and S) and a quarter of it with
  the system (the paper's "approximately four times faster"), σ = 0.35 on the log scale.

The simulated model answers right with probability ``model_accuracy`` (else an adjacent stage) and
its probabilities are a Dirichlet draw that favours its answer and, a little, the true stage,
so its ROC curves are informative without being perfect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avn.readers_format import (
    MODEL_COLUMNS,
    READER_COLUMNS,
    TRUTH_COLUMNS,
    ModelRow,
    ReaderRow,
    TruthRow,
    write_rows,
)
from avn.vocabulary import STAGES

DEFAULT_MODEL_ACCURACY = 0.85
PAPER_COHORT_SUBJECTS = 841  # the cohort's splits then hold Table I's E1 (100 subjects) and E2 (30)
TIME_SIGMA = 0.35
ASSISTED_TIME_FACTOR = 0.25

Head = tuple[str, str, str]  # (case_id, side, stage)


@dataclass(frozen=True)
class SimulatedReader:
    name: str
    skill: float

    @property
    def reliance(self) -> float:
        """Probability of adopting the model's stage when it is shown."""
        return float(np.clip(1.2 - self.skill, 0.0, 1.0))

    @property
    def median_seconds(self) -> float:
        return max(8.0, 107.0 - 105.0 * self.skill)


@dataclass
class SimulatedStudy:
    truth: Path
    readers: list[Path]
    model: Path


def confuse(stage: int, accuracy: float, rng: np.random.Generator) -> int:
    """The stage read with the given accuracy; a mistake goes to an adjacent stage."""
    if rng.random() < accuracy:
        return stage
    neighbours = [s for s in (stage - 1, stage + 1) if 0 <= s < len(STAGES)]
    return int(rng.choice(neighbours))


def stage_accuracy(skill: float, stage: int) -> float:
    """II and III are the hard stages; absence and IV are read better (figure 5 of the paper)."""
    return skill if STAGES[stage] in ("II", "III") else 1.0 - (1.0 - skill) / 2.0


def reader_stage(reader: SimulatedReader, truth: int, rng: np.random.Generator) -> int:
    return confuse(truth, stage_accuracy(reader.skill, truth), rng)


def model_probabilities(predicted: int, truth: int, rng: np.random.Generator) -> np.ndarray:
    concentration = np.ones(len(STAGES))
    concentration[predicted] += 6.0
    concentration[truth] += 1.5
    p = rng.dirichlet(concentration)
    # The answer must be the argmax: swap the largest probability into its place.
    top = int(p.argmax())
    p[[top, predicted]] = p[[predicted, top]]
    return p


def heads_from_dataset(folder: Path) -> dict[str, list[Head]]:
    """E1 and E2 heads of a data set (case_id = the radiograph's file name)."""
    from avn.dataset.format import load_dataset

    dataset = load_dataset(folder)
    images = {image.id: image for image in dataset.images}
    split_of = dataset.split_of_subject()
    sets: dict[str, list[Head]] = {"E1": [], "E2": []}
    for annotation in dataset.annotations:
        image = images[annotation.image_id]
        split = split_of.get(image.subject_id)
        if split in sets:
            sets[split].append((image.file_name, annotation.side, annotation.stage))
    return sets


def heads_from_cohort(seed: int, subjects: int = PAPER_COHORT_SUBJECTS) -> dict[str, list[Head]]:
    """E1 and E2 heads of a planned (not rendered) phantom cohort."""
    from avn.phantom.build import relative_file_name
    from avn.phantom.cohort import plan_cohort

    plans, radiographs = plan_cohort(subjects, seed)
    split_of = {plan.subject_id: plan.split for plan in plans}
    sets: dict[str, list[Head]] = {"E1": [], "E2": []}
    for spec in radiographs:
        split = split_of[spec.subject_id]
        if split in sets:
            sets[split].extend((relative_file_name(spec, "dicom"), hip.side, hip.stage) for hip in spec.hips)
    return sets


def simulate_study(
    heads: dict[str, list[Head]],
    readers: list[SimulatedReader],
    out: Path,
    model_accuracy: float = DEFAULT_MODEL_ACCURACY,
    seed: int = 0,
) -> SimulatedStudy:
    """Write truth.csv, reader_<name>.csv (unassisted on E1, assisted on E2) and model.csv."""
    if not heads.get("E1") or not heads.get("E2"):
        raise ValueError("the simulation needs heads in both the E1 and the E2 split")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EAD]))
    # A head in both sets (a second-opinion study reads the same cases twice) is one truth row.
    all_heads = list(dict.fromkeys(heads["E1"] + heads["E2"]))
    truth_rows = [TruthRow(case_id=c, side=s, stage=st) for c, s, st in all_heads]
    model_stage = {(c, s): confuse(STAGES.index(st), model_accuracy, rng) for c, s, st in all_heads}
    model_rows = []
    for case, side, stage in all_heads:
        predicted = model_stage[(case, side)]
        p = model_probabilities(predicted, STAGES.index(stage), rng)
        model_rows.append(
            ModelRow(
                case_id=case,
                side=side,
                stage=STAGES[predicted],
                **{f"p_{name}": round(float(v), 6) for name, v in zip(STAGES, p, strict=True)},
            )
        )
    reader_paths = []
    for reader in readers:
        rows = _reads(reader, heads["E1"], "no", model_stage, rng) + _reads(
            reader, heads["E2"], "yes", model_stage, rng
        )
        path = out / f"reader_{reader.name}.csv"
        write_rows(path, rows, READER_COLUMNS)
        reader_paths.append(path)
    write_rows(out / "truth.csv", truth_rows, TRUTH_COLUMNS)
    write_rows(out / "model.csv", model_rows, MODEL_COLUMNS)
    return SimulatedStudy(out / "truth.csv", reader_paths, out / "model.csv")


def _reads(
    reader: SimulatedReader, heads: list[Head], assisted: str, model_stage: dict, rng: np.random.Generator
) -> list[ReaderRow]:
    factor = ASSISTED_TIME_FACTOR if assisted == "yes" else 1.0
    seconds: dict[str, float] = {}
    rows = []
    for case, side, stage in heads:
        # One time per radiograph, repeated on each of its heads' rows (the format's convention).
        if case not in seconds:
            seconds[case] = round(float(reader.median_seconds * factor * rng.lognormal(0.0, TIME_SIGMA)), 1)
        if assisted == "yes" and rng.random() < reader.reliance:
            read = model_stage[(case, side)]
        else:
            read = reader_stage(reader, STAGES.index(stage), rng)
        rows.append(
            ReaderRow(
                reader=reader.name,
                case_id=case,
                side=side,
                stage=STAGES[read],
                seconds=seconds[case],
                assisted=assisted,
            )
        )
    return rows


def parse_readers(names: str, skills: str) -> list[SimulatedReader]:
    """``R1,R2`` and ``0.6,0.8`` → readers; missing names become reader1, reader2, …"""
    values = [float(v) for v in skills.split(",") if v.strip()]
    labels = [n.strip() for n in names.split(",") if n.strip()]
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError("--skill needs values in (0, 1], e.g. 0.6,0.8")
    labels += [f"reader{i + 1}" for i in range(len(labels), len(values))]
    if len(set(labels[: len(values)])) != len(values):
        raise ValueError("reader names must be distinct")
    return [SimulatedReader(name, skill) for name, skill in zip(labels, values, strict=False)]
