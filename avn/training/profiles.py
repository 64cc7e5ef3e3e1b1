"""Training profiles: ``paper`` follows SPEC §2; ``quick`` fits the whole chain in ~20 CPU minutes."""

from __future__ import annotations

from dataclasses import dataclass, field

from avn.pipeline.crop import DEFAULT_RESAMPLES, INPUT_SIZE


@dataclass(frozen=True)
class Profile:
    name: str
    input_size: int  # classifier crop side in pixels
    resamples: int  # N: crops per head (2N for typical heads)
    folds: int  # k of the subject-grouped k-fold cross-validation (9:1 for k = 10)
    repeats: int  # the whole CV repeated with different seeds
    fold_limit: int | None  # train only the first folds of each repeat (None = all)
    epochs: dict[str, int] = field(default_factory=dict)
    batch_size: int = 32
    detector_backbone: str = "ssdlite320_mobilenet_v3_large"
    detector_batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    plateau_patience: int = 2  # epochs without validation gain before the LR is halved
    focal_gamma: float = 2.0
    phantom_subjects: int = 200
    phantom_scale: float = 1.0


PAPER = Profile(
    name="paper",
    input_size=INPUT_SIZE,
    resamples=DEFAULT_RESAMPLES,
    folds=10,
    repeats=10,
    fold_limit=None,
    epochs={"detection": 60, "view": 30, "side": 30, "staging": 60, "notes": 40},
    batch_size=32,
    phantom_subjects=841,
)

# One 9:1 split instead of 10 × 10 folds, 96-px crops, N = 3 and few epochs: the models learn
# every task on the phantom but the CIs over repeats are not available, and fine findings (thin
# crescents) are harder to see at 96 px than at 224.
QUICK = Profile(
    name="quick",
    input_size=96,
    resamples=3,
    folds=10,
    repeats=1,
    fold_limit=1,
    epochs={"detection": 8, "view": 1, "side": 1, "staging": 4, "notes": 4},
    batch_size=32,
    plateau_patience=1,
    phantom_subjects=200,
    phantom_scale=0.5,
)

PROFILES = {profile.name: profile for profile in (QUICK, PAPER)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
