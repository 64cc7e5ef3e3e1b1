"""Subject-grouped cross-validation: no subject is ever on both sides of a split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold


@dataclass(frozen=True)
class Fold:
    repeat: int
    index: int
    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.index}"


def subject_folds(subjects: list[str], folds: int, repeats: int, seed: int, limit: int | None = None) -> list[Fold]:
    """``repeats`` × ``folds`` splits of the subjects (k-1 : 1), reshuffled per repeat."""
    unique = np.array(sorted(set(subjects)))
    if len(unique) < 2:
        raise ValueError("cross-validation needs at least two training subjects")
    k = min(folds, len(unique))
    result = []
    for repeat in range(repeats):
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed + repeat)
        for index, (train, val) in enumerate(splitter.split(unique)):
            if limit is not None and index >= limit:
                break
            result.append(Fold(repeat, index, tuple(unique[train]), tuple(unique[val])))
    return result
