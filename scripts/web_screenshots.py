"""The README's screenshots of the web app, one per mode, from the real models at 1280×800.

    python scripts/web_screenshots.py [--models model_store] [--data data/demo] [--out docs/img]

Starts the gateway embedded (models in-process, no TorchServe) on a free loopback port with
``--data`` as the case bank, drives the page in headless Chromium (tests/web_support.py) through
each mode and writes ``web_reading.png``, ``web_second_opinion.png`` and ``web_self_study.png``:

* reading: one demo subject's radiographs as a study, its first whole-pelvis AP shown
  with boxes, heat maps and results, and the subject-level table;
* second opinion: that radiograph read, revealed, revised and exported (reads and CSV);
* self-study: a case answered, with the feedback, score and confusion matrix.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from selenium.webdriver.common.by import By  # noqa: E402
from web_support import DESKTOP, chromium, close_chromium, live_gateway, wait_for  # noqa: E402

from avn.dataset.format import load_dataset  # noqa: E402
from avn.pipeline.pipeline import Pipeline  # noqa: E402
from avn.serving.inprocess import InProcessBackend  # noqa: E402
from gateway.cases import CaseBank  # noqa: E402
from gateway.rest import create_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402

MAX_PNG_BYTES = 900_000
SEVERE = ("III", "IV")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "model_store", help="model store or run folder")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="demo data set (case bank)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(InProcessBackend.from_folder(args.models))
    # A local, loopback-only gateway for the screenshots: no API key to sign in with.
    app = create_app(pipeline, Settings(auth="off"), case_bank=CaseBank.from_folder(args.data))
    with live_gateway(app) as gateway, tempfile.TemporaryDirectory() as downloads:
        driver = chromium(Path(downloads), DESKTOP)
        try:
            driver.get(f"{gateway.url}/")
            wait_for(driver, "window.avn", "the app", 60)
            files, show = study_files(args.data)
            shown = reading(driver, files, show, args.out / "web_reading.png")
            second_opinion(driver, shown, args.out / "web_second_opinion.png")
            self_study(driver, args.out / "web_self_study.png")
        finally:
            close_chromium(driver)
    asyncio.run(pipeline.close())


def study_files(data: Path) -> tuple[list[Path], int]:
    """The radiographs of the first demo subject with a severe head (a study worth showing), and
    the index of its first whole-pelvis AP radiograph (two annotated heads), the one to show."""
    dataset = load_dataset(data)
    severe = {a.image_id for a in dataset.annotations if a.stage in SEVERE}
    heads = {image.id: sum(a.image_id == image.id for a in dataset.annotations) for image in dataset.images}
    subject = next(
        image.subject_id
        for image in dataset.images
        if image.id in severe and heads[image.id] == 2 and image.view == "AP"
    )
    images = [image for image in dataset.images if image.subject_id == subject]
    show = next(i for i, image in enumerate(images) if image.view == "AP" and heads[image.id] == 2)
    return [data / image.file_name for image in images], show


def reading(driver, files: list[Path], show: int, out: Path) -> Path:  # noqa: ANN001 — a selenium WebDriver
    """The study read; shown: radiograph ``show``. Returns that radiograph's file."""
    mode = "window.avn.modes.reading"
    driver.find_element(By.ID, "tab-reading").click()
    driver.find_element(By.ID, "reading-file").send_keys("\n".join(str(path) for path in files))
    wait_for(driver, f"{mode}.results.size > 0 && {mode}.panel.viewer.drawn.length > 0", "the study", 120)
    driver.find_elements(By.CSS_SELECTOR, "#reading-radiograph-list button")[show].click()
    wait_for(driver, f"{mode}.selected === {show} && {mode}.panel.viewer.drawn.length > 0", "the radiograph", 60)
    save(driver, out)
    return files[show]


def second_opinion(driver, radiograph: Path, out: Path) -> None:  # noqa: ANN001
    """One radiograph read unaided, revealed, revised and exported."""
    mode = "window.avn.modes['second-opinion']"
    driver.find_element(By.ID, "tab-second-opinion").click()
    driver.find_element(By.ID, "so-reader").send_keys("R1")
    driver.find_element(By.ID, "so-file").send_keys(str(radiograph))
    wait_for(driver, "!document.getElementById('so-form').hidden", "the first case", 60)
    pick_stages(driver, "so", revise=False)
    driver.find_element(By.ID, "so-submit").click()
    wait_for(driver, f"{mode}.phase === 'final' && !document.getElementById('so-submit').disabled", "the reveal", 120)
    pick_stages(driver, "so", revise=True)
    driver.find_element(By.ID, "so-submit").click()
    wait_for(driver, "document.querySelectorAll('#so-records tbody tr').length > 0", "the reads")
    driver.find_element(By.ID, "so-export").click()
    driver.execute_script("document.querySelector('#second-opinion .panel').scrollTop = 1e6;")
    save(driver, out)


def self_study(driver, out: Path) -> None:  # noqa: ANN001
    mode = "window.avn.modes['self-study']"
    driver.find_element(By.ID, "tab-self-study").click()
    wait_for(driver, "!document.getElementById('ss-form').hidden", "the first case", 60)
    # A case with both heads makes the better picture.
    index = driver.execute_script(f"return Math.max(0, {mode}.cases.findIndex(c => c.sides.length === 2));")
    if index:
        driver.execute_script(f"{mode}.showCase(arguments[0]);", index)
        wait_for(driver, f"{mode}.index === {index} && !document.getElementById('ss-form').hidden", "the case", 60)
    # A student who gets the first head right and the second wrong: both kinds of feedback show.
    case_id = driver.execute_script(f"return {mode}.cases[{mode}.index].id;")
    truth = driver.execute_async_script(
        "fetch(`/v1/cases/${arguments[0]}/truth`).then(r => r.json()).then(arguments[arguments.length - 1]);", case_id
    )
    for index, head in enumerate(truth["heads"]):
        stage = head["stage"] if index == 0 else next(s for s in ("II", "III", "IV") if s != head["stage"])
        driver.find_element(By.CSS_SELECTOR, f'label[for="ss-{head["side"]}-{stage}"]').click()
    driver.find_element(By.ID, "ss-submit").click()
    wait_for(driver, "!document.getElementById('ss-next').hidden", "the feedback", 120)
    save(driver, out)


def pick_stages(driver, prefix: str, revise: bool) -> None:  # noqa: ANN001
    """A reader's choices: IV on the first head; II on the second, revised to III after the reveal."""
    groups = driver.find_elements(By.CSS_SELECTOR, f"#{prefix}-heads .stage-choice")
    for index, group in enumerate(groups):
        stage = "IV" if index == 0 else ("III" if revise else "II")
        group.find_element(By.CSS_SELECTOR, f'label[for="{prefix}-{group.get_attribute("data-side")}-{stage}"]').click()


def save(driver, out: Path) -> None:  # noqa: ANN001
    """The screenshot as an optimised PNG, checked to stay small enough for the README."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.save(out, optimize=True)
    size = out.stat().st_size
    if size > MAX_PNG_BYTES:
        image.quantize(colors=256, dither=Image.Dither.NONE).save(out, optimize=True)  # still readable, far smaller
        size = out.stat().st_size
    print(f"wrote {out} ({image.width}×{image.height}, {size // 1024} KiB)")


if __name__ == "__main__":
    main()
