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
