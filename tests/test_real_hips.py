"""The real training set (datasets/real-hips): its manifest, and its hold-out from the check set
(training on it: tests/test_training.py)."""

from pathlib import Path

from PIL import Image

from avn.dataset.real import REAL_TRAINING_SET, load_manifest

CHECK_SET = Path(__file__).parent / "data" / "real"


def test_the_real_training_set_is_attributed_small_and_drawn_inside_its_images():
    manifest = load_manifest(REAL_TRAINING_SET)
    assert len(manifest.files) >= 100
    held_out = [entry for entry in manifest.files if entry.split == "validation"]
    assert 0.15 < len(held_out) / len(manifest.files) < 0.25  # measured on, never trained on
    assert all(entry.split in ("train", "validation") for entry in manifest.files)
    for entry in manifest.files:
        path = REAL_TRAINING_SET / entry.file
        assert path.stat().st_size < 1_000_000, entry.file
        assert entry.licence and entry.attribution and entry.source, entry.file
        assert entry.heads or entry.prostheses, entry.file
        width, height = Image.open(path).size
        assert max(width, height) == 640
        for box in [head.box for head in entry.heads] + list(entry.prostheses):
            assert -0.1 * width < box[0] < box[2] < 1.1 * width and -0.1 * height < box[1] < box[3] < 1.1 * height
        sides = [head.side for head in entry.heads]
        assert len(set(sides)) == len(sides), f"{entry.file}: one side twice"
        for head in entry.heads:  # the patient's right is on the image's left
            centre = (head.box[0] + head.box[2]) / 2
            assert (centre < width / 2) == (head.side == "right"), entry.file
    assert "datasets/real-hips" in (Path(__file__).parents[1] / "docs" / "real-data.md").read_text()


def test_no_radiograph_of_the_check_set_is_trained_on():
    def source_image(entry) -> str:
        return entry.source.rsplit("/", 1)[-1]

    checked = {source_image(entry) for entry in load_manifest(CHECK_SET).files}
    trained = {source_image(entry) for entry in load_manifest(REAL_TRAINING_SET).files}
    assert checked and trained and not checked & trained
