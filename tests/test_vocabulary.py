"""The label sets of SPEC §1 and the helpers derived from them."""

import pytest

from avn import vocabulary as v


def test_label_sets_are_the_specified_ones():
    assert v.VIEWS == ("AP", "FL")
    assert v.SIDES == ("left", "right")
    assert v.STAGES == ("absence", "II", "III", "IV")
    assert v.PRESENCE_CLASSES == ("absence", "presence")
    assert v.COLLAPSE_CLASSES == ("absence", "pre-collapse", "post-collapse")
    assert len(v.NOTES) == 8 and len(set(v.NOTES)) == 8


def test_every_note_belongs_to_one_diseased_stage():
    assert set(v.NOTE_STAGE.values()) == {"II", "III", "IV"}
    assert v.notes_of_stage("II") == ("sclerosis", "cystic change", "crescent sign without collapse")
    assert v.notes_of_stage("III") == (
        "subchondral flattening or collapse",
        "FH deformation",
        "flattening and deformation",
    )
    assert v.notes_of_stage("IV") == ("FH and acetabular deformation", "joint space narrowing")
    assert v.notes_of_stage("absence") == ()


def test_groupings_of_stages():
    assert [v.presence_of(s) for s in v.STAGES] == ["absence", "presence", "presence", "presence"]
    assert [v.collapse_of(s) for s in v.STAGES] == ["absence", "pre-collapse", "post-collapse", "post-collapse"]


def test_subject_level_diagnosis_is_the_most_severe_stage():
    assert v.most_severe(["II", "absence", "IV", "III"]) == "IV"
    assert v.most_severe(["absence"]) == "absence"
    with pytest.raises(ValueError):
        v.most_severe([])


def test_flip_swaps_side_and_right_hip_is_on_image_left():
    assert v.flip_side("left") == "right" and v.flip_side("right") == "left"
    assert v.image_half_of_side("right") == "image-left"
    assert v.image_half_of_side("left") == "image-right"
    with pytest.raises(ValueError):
        v.flip_side("middle")


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        v.notes_of_stage("V")


def test_stage_groupings_as_indices_follow_the_mappings():
    assert v.PRESENCE_INDEX_OF_STAGE == (0, 1, 1, 1)
    assert v.COLLAPSE_INDEX_OF_STAGE == (0, 1, 2, 2)
    for stage, presence, collapse in zip(v.STAGES, v.PRESENCE_INDEX_OF_STAGE, v.COLLAPSE_INDEX_OF_STAGE, strict=True):
        assert v.PRESENCE_CLASSES[presence] == v.presence_of(stage)
        assert v.COLLAPSE_CLASSES[collapse] == v.collapse_of(stage)


def test_a_stage_has_avn_exactly_when_its_presence_class_is_presence():
    assert [v.has_avn(s) for s in v.STAGES] == [False, True, True, True]
    assert v.PRESENT == v.PRESENCE_CLASSES[1]


def test_a_derived_class_has_the_mass_of_its_stages():
    by_stage = {"absence": 0.1, "II": 0.2, "III": 0.3, "IV": 0.4}
    assert v.class_probability("presence", v.STAGE_TO_PRESENCE, by_stage) == pytest.approx(0.9)
    assert v.class_probability("post-collapse", v.STAGE_TO_COLLAPSE, by_stage) == pytest.approx(0.7)
    assert v.class_probability("absence", v.STAGE_TO_COLLAPSE, by_stage) == 0.1
