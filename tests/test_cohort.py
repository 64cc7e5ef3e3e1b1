"""Cohort planning: Table I composition, splits by subject, stable hips across radiographs."""

from collections import Counter

import pytest

from avn.phantom.cohort import EVALUATION_SPLITS, PAPER_STAGE_COUNTS, plan_cohort, split_sizes
from avn.vocabulary import SPLITS, STAGES


@pytest.fixture(scope="module")
def cohort():
    return plan_cohort(841, seed=3)


def test_planning_is_deterministic():
    assert plan_cohort(30, seed=5) == plan_cohort(30, seed=5)
    assert plan_cohort(30, seed=5) != plan_cohort(30, seed=6)


def test_composition_follows_table_one(cohort):
    plans, specs = cohort
    main = {p.subject_id for p in plans if p.split not in EVALUATION_SPLITS}
    main_specs = [s for s in specs if s.subject_id in main]
    heads = [h for s in main_specs for h in s.hips]
    assert 3.3 < len(main_specs) / len(main) < 4.1  # paper: 3.73 radiographs per subject
    assert 5.3 < len(heads) / len(main) < 6.6  # paper: 6.05 heads per subject
    views = Counter(s.view for s in main_specs)
    assert 1.7 < views["AP"] / views["FL"] < 2.4  # paper: 2096 / 1040
    shares = Counter(h.stage for h in heads)
    paper_total = sum(PAPER_STAGE_COUNTS.values())
    for stage in STAGES:
        assert shares[stage] / len(heads) == pytest.approx(PAPER_STAGE_COUNTS[stage] / paper_total, abs=0.04)


def test_bilateral_disease_is_common(cohort):
    plans, _ = cohort
    patients = [p for p in plans if any(h.stage != "absence" for h in p.hips.values())]
    bilateral = [p for p in patients if all(h.stage != "absence" for h in p.hips.values())]
    assert 0.68 < len(bilateral) / len(patients) < 0.82


def test_each_hip_keeps_its_disease_on_every_radiograph(cohort):
    plans, specs = cohort
    hips = {p.subject_id: p.hips for p in plans}
    for spec in specs:
        assert 1 <= len(spec.hips) <= 2
        assert len({h.side for h in spec.hips}) == len(spec.hips)
        for hip in spec.hips:
            assert hip == hips[spec.subject_id][hip.side]


def test_splits_are_by_subject_in_paper_proportions(cohort):
    plans, specs = cohort
    sizes = Counter(p.split for p in plans)
    assert sizes["test"] == 50 and sizes["E1"] == 100 and sizes["E2"] == 30 and sizes["E3"] == 30
    assert sum(sizes.values()) == 841
    e_specs = [s for s in specs if s.subject_id in {p.subject_id for p in plans if p.split in EVALUATION_SPLITS}]
    assert all(s.view == "AP" and len(s.hips) == 2 for s in e_specs)
    e3 = {p.subject_id for p in plans if p.split == "E3"}
    assert all(h.typical for s in specs if s.subject_id in e3 for h in s.hips)


@pytest.mark.parametrize("subjects", [1, 2, 5, 20, 200])
def test_split_sizes_add_up_and_keep_a_training_pool(subjects):
    sizes = split_sizes(subjects)
    assert list(sizes) == list(SPLITS)
    assert sum(sizes.values()) == subjects
    assert sizes["train"] >= 1
    if subjects >= 2:
        assert sizes["test"] >= 1
