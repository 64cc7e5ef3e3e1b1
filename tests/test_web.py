"""The web application end to end: the gateway (tiny untrained models in-process, a phantom case
bank) served by uvicorn on a loopback port, the page in a real headless Chromium driven by
selenium, every request real HTTP.

Untrained models give arbitrary stages, so the browser tests check that the page shows what the
gateway answered (the same heads, labels, boxes at the right pixels in the stage's colour, the
study's sides, the gateway's error message) and that the modes record and score what the user
chose; clinical correctness is the models' tests' business. The new REST endpoints the page uses
(display renditions, the case bank) are checked over HTTP first. Screenshots go to
``artifacts/web/`` (git-ignored) as test artefacts.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from gateway_support import ApiKey, phantom_dicom, phantom_png, write_tiny_run
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from web_support import (
    DESKTOP,
    KEY_STORAGE,
    TABLET,
    LiveGateway,
    chromium,
    close_chromium,
    live_gateway,
    load_signed_in,
    page_errors,
    set_viewport,
    wait_for,
    wait_until,
)

from avn.dataset.format import Dataset, FemoralHeadAnnotation, ImageRecord, load_dataset
from avn.dataset.images import read_radiograph
from avn.drawing import STAGE_COLOURS, Window, apply_window
from avn.phantom.build import PhantomOptions, build_phantom
from avn.pipeline.pipeline import Pipeline
from avn.readers_format import READER_COLUMNS, read_reader
from avn.serving.inprocess import InProcessBackend
from avn.vocabulary import SIDES, STAGES
from gateway.cases import MIN_SPLIT_CASES, CaseBank, select_cases
from gateway.rest import create_app
from gateway.settings import Settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "web"
READING = "window.avn.modes.reading"
SECOND_OPINION = "window.avn.modes['second-opinion']"
SELF_STUDY = "window.avn.modes['self-study']"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def case_bank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom data set (DICOM, fifth size) as the self-study case bank."""
    folder = tmp_path_factory.mktemp("case-bank")
    build_phantom(PhantomOptions(subjects=2, seed=3, image_format="dicom", scale=0.2), folder, workers=1)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    garbage = folder / "notes.dcm"
    garbage.write_bytes(b"this is not a radiograph at all")
    return {"dicom": phantom_dicom(folder, 0), "png": phantom_png(folder, 1), "garbage": garbage}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, case_bank_dir: Path, api_key: ApiKey) -> Iterator[LiveGateway]:
    run_dir = write_tiny_run(tmp_path_factory.mktemp("tiny-run"))
    pipeline = Pipeline(InProcessBackend.from_run(run_dir))
    settings = Settings(api_keys_file=api_key.file)
    app = create_app(pipeline, settings, case_bank=CaseBank.from_folder(case_bank_dir))
    with live_gateway(app, api_key.headers) as server:
        yield server
    asyncio.run(pipeline.close())


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[WebDriver]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = chromium(downloads)
    try:
        yield driver
    finally:
        close_chromium(driver)


@pytest.fixture
def page(browser: WebDriver, gateway: LiveGateway, api_key: ApiKey) -> Iterator[WebDriver]:
    """The app freshly loaded at desktop size, signed in; the test fails on any script error in the page."""
    set_viewport(browser, DESKTOP)
    load_signed_in(browser, f"{gateway.url}/", api_key.key)
    wait_for(browser, "window.avn && window.avn.modes", "the app to start")
    page_errors(browser)  # drop the log of earlier pages
    yield browser
    errors = page_errors(browser)
    assert not errors, f"script errors in the page: {errors}"


# ---------------------------------------------------------------- HTTP helpers


def http(gateway: LiveGateway, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{gateway.url}{path}", data=body, method="POST" if body is not None else "GET", headers=gateway.headers
    )
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def http_json(gateway: LiveGateway, path: str, body: bytes | None = None) -> dict:
    status, _, data = http(gateway, path, body)
    assert status == 200, data
    return json.loads(data)


def screenshot(driver: WebDriver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


# ---------------------------------------------------------------- the endpoints the page uses


def test_the_page_is_served_at_the_root(gateway: LiveGateway) -> None:
    status, headers, body = http(gateway, "/")  # urllib follows the redirect
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script type="module" src="js/app.js">' in body
    for asset in ("/app/js/app.js", "/app/css/app.css", "/app/js/viewer.js"):
        status, headers, _ = http(gateway, asset)
        assert status == 200 and headers["cache-control"] == "no-cache", (
            asset
        )  # a new release is never mixed with old modules
    status, headers, _ = http(gateway, "/app/")
    assert "script-src 'self'" in headers["content-security-policy"]  # no script but the page's own
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    paths = http_json(gateway, "/openapi.json")["paths"]
    assert {"/v1/render", "/v1/cases", "/v1/cases/{case_id}/image", "/v1/cases/{case_id}/truth"} <= set(paths)
    assert "/" not in paths and "image/png" in paths["/v1/render"]["post"]["responses"]["200"]["content"]


def test_a_render_is_the_decoded_radiograph_under_the_window(gateway: LiveGateway, files: dict[str, Path]) -> None:
    data = files["dicom"].read_bytes()
    pixels = read_radiograph(data).pixels
    status, headers, png = http(gateway, "/v1/render?window_center=0.4&window_width=0.25", data)
    assert status == 200 and headers["content-type"] == "image/png"
    assert (float(headers["avn-window-center"]), float(headers["avn-window-width"])) == (0.4, 0.25)
    assert (int(headers["avn-image-width"]), int(headers["avn-image-height"])) == (pixels.shape[1], pixels.shape[0])
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert shown.dtype == np.uint8 and shown.shape == pixels.shape
    expected = np.clip(np.rint((pixels - 0.275) * 255 / 0.25), 0, 255)
    assert np.abs(shown.astype(int) - expected).max() <= 1  # float rounding at the .5 edges only
    assert (shown == 0).any() and (shown == 255).any()  # a narrow window saturates both ends

    # Automatic window: the sliders start from what the gateway chose.
    _, auto_headers, auto_png = http(gateway, "/v1/render", data)
    auto = Window(float(auto_headers["avn-window-center"]), float(auto_headers["avn-window-width"]))
    assert 0 < auto.width <= 1 and 0 < auto.center < 1
    assert np.abs(np.asarray(Image.open(io.BytesIO(auto_png))).astype(int) - apply_window(pixels, auto)).max() <= 1


def test_render_refuses_bad_input_through_the_error_table(gateway: LiveGateway, files: dict[str, Path]) -> None:
    status, headers, body = http(gateway, "/v1/render", files["garbage"].read_bytes())
    assert status == 400 and headers["avn-error-type"] == "InvalidImage"
    assert "not a PNG, JPEG or DICOM file" in json.loads(body)["error"]["message"]
    status, _, body = http(gateway, "/v1/render?window_center=3", files["dicom"].read_bytes())
    assert status == 400 and "window_center" in json.loads(body)["error"]["message"]


def test_the_case_bank_lists_cases_with_their_truth(gateway: LiveGateway, case_bank_dir: Path) -> None:
    dataset = load_dataset(case_bank_dir)
    bank = http_json(gateway, "/v1/cases")
    assert bank["available"] and bank["source"] == case_bank_dir.name and bank["message"] == ""
    assert str(case_bank_dir.parent) not in json.dumps(bank)  # the folder's name, never its path on the server
    split, cases = select_cases(dataset)
    assert bank["split"] == split == "all"  # two subjects: no E3 worth the name
    assert [case["id"] for case in bank["cases"]] == [case.id for case in cases] and len(cases) >= 4
    first = bank["cases"][0]
    truth = http_json(gateway, f"/v1/cases/{first['id']}/truth")
    image = next(image for image in dataset.images if str(image.id) == first["id"])
    annotations = sorted(dataset.annotations_of(image.id), key=lambda a: a.bbox[0])
    assert truth["name"] == image.file_name == first["name"] and truth["view"] == image.view
    assert [(h["side"], h["stage"], h["notes"]) for h in truth["heads"]] == [
        (a.side, a.stage, a.notes) for a in annotations
    ]
    assert [h["side"] for h in truth["heads"]] == first["sides"]

    status, headers, png = http(gateway, f"/v1/cases/{first['id']}/image?window_width=0.5")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (image.width, image.height)
    assert float(headers["avn-window-width"]) == 0.5
    diagnosis = http_json(gateway, f"/v1/cases/{first['id']}/diagnosis")
    assert (diagnosis["width"], diagnosis["height"]) == (image.width, image.height) and diagnosis["heads"]

    status, headers, body = http(gateway, "/v1/cases/no-such-case/truth")
    assert status == 400 and headers["avn-error-type"] == "InvalidArgument" and "unknown case" in body.decode()


def test_a_missing_case_bank_is_reported_not_fatal(tmp_path: Path, api_key: ApiKey) -> None:
    app = create_app(
        Pipeline(InProcessBackend({})), Settings(case_bank=tmp_path / "nowhere", api_keys_file=api_key.file)
    )
    with TestClient(app, headers=api_key.headers) as client:
        bank = client.get("/v1/cases").json()
        assert bank["available"] is False and bank["cases"] == [] and "no annotations.json" in bank["message"]
        assert str(tmp_path) not in json.dumps(bank)
        assert client.get("/v1/cases/1/image").json()["error"]["code"] == "InvalidArgument"
    assert not CaseBank.from_folder(None).available  # AVN_CASE_BANK= (empty)


def test_the_bank_is_the_e3_split_when_it_holds_enough_cases() -> None:
    def dataset(e3_subjects: int) -> Dataset:
        subjects = [f"S{index:03d}" for index in range(20)]
        images = [
            ImageRecord(
                id=index, file_name=f"{s}.png", width=100, height=100, subject_id=s, view="AP", pixel_spacing=(0.1, 0.1)
            )
            for index, s in enumerate(subjects)
        ]
        annotations = [
            FemoralHeadAnnotation(id=index, image_id=index, bbox=(10, 10, 20, 20), side="left", stage="II")
            for index in range(len(images))
        ]
        splits = {"train": subjects[e3_subjects:], "test": [], "E1": [], "E2": [], "E3": subjects[:e3_subjects]}
        return Dataset(images=images, annotations=annotations, splits=splits)

    split, cases = select_cases(dataset(MIN_SPLIT_CASES))
    assert split == "E3" and [case.id for case in cases] == [str(index) for index in range(MIN_SPLIT_CASES)]
    split, cases = select_cases(dataset(MIN_SPLIT_CASES - 1))
    assert split == "all" and len(cases) == 20


# ---------------------------------------------------------------- the page in Chromium


def test_the_page_signs_in_with_an_api_key_kept_in_this_tab_only(
    browser: WebDriver, gateway: LiveGateway, api_key: ApiKey
) -> None:
    """No key: the page asks for one and starts no mode; a wrong key is refused and not kept; the
    right one is kept in sessionStorage (no cookie, no localStorage), the API answers with it, and
    signing out forgets it and asks again."""
    set_viewport(browser, DESKTOP)
    browser.get(f"{gateway.url}/")
    browser.execute_script("sessionStorage.clear();")
    browser.get(f"{gateway.url}/#self-study")
    wait_for(browser, "document.getElementById('sign-in').open", "the sign-in dialog")
    assert browser.execute_script("return window.avn === undefined;"), "a mode started without a key"
    key_field = browser.find_element(By.ID, "sign-in-key")
    assert key_field.get_attribute("type") == "password"

    key_field.send_keys(f"{api_key.id}.not-the-secret")
    browser.find_element(By.ID, "sign-in-submit").click()
    refusal = wait_for(
        browser,
        "!document.getElementById('sign-in-error').hidden && document.getElementById('sign-in-error').textContent",
        "the refusal",
    )
    assert "does not accept this key" in refusal
    assert browser.execute_script("return document.getElementById('sign-in').open;")
    assert browser.execute_script("return sessionStorage.getItem(arguments[0]);", KEY_STORAGE) is None

    key_field.clear()
    key_field.send_keys(api_key.key)
    browser.find_element(By.ID, "sign-in-submit").click()
    wait_for(browser, "window.avn && window.avn.modes", "the app to start once signed in")
    assert not browser.execute_script("return document.getElementById('sign-in').open;")
    assert browser.find_element(By.ID, "signed-in-as").text == f"Signed in as {api_key.id}"
    stored = browser.execute_script(
        "return [sessionStorage.getItem(arguments[0]), localStorage.length, document.cookie];", KEY_STORAGE
    )
    assert stored == [api_key.key, 0, ""]
    # The mode the URL named starts with the key: the case bank (a closed route) loads.
    source = wait_for(
        browser,
        "document.getElementById('ss-source').textContent.includes('cases from') && "
        "document.getElementById('ss-source').textContent",
        "the case bank",
    )
    assert "Case bank:" in source

    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, "document.getElementById('sign-in').open", "the sign-in dialog after signing out")
    assert browser.execute_script("return sessionStorage.getItem(arguments[0]);", KEY_STORAGE) is None
    page_errors(browser)  # the refused requests above are expected


def test_the_page_speaks_the_projects_vocabulary(page: WebDriver) -> None:
    script = """
        const done = arguments[arguments.length - 1];
        Promise.all([import('/app/js/vocabulary.js'), import('/app/js/readers_csv.js')])
          .then(([v, csv]) => done({
            stages: v.STAGES, sides: v.SIDES, colours: v.STAGE_COLOURS, columns: csv.READER_COLUMNS,
          }));
    """
    found = page.execute_async_script(script)
    assert found["stages"] == list(STAGES) and sorted(found["sides"]) == sorted(SIDES)
    assert {stage: tuple(rgb) for stage, rgb in found["colours"].items()} == STAGE_COLOURS
    assert found["columns"] == list(READER_COLUMNS)


def upload(driver: WebDriver, input_id: str, *paths: Path) -> None:
    driver.find_element(By.ID, input_id).send_keys("\n".join(str(path) for path in paths))


def drawn(driver: WebDriver, mode: str = READING) -> list[dict]:
    return driver.execute_script(f"return {mode}.panel.viewer.drawn;")


def canvas_rgb(driver: WebDriver, x: float, y: float, mode: str = READING) -> tuple[int, int, int]:
    """The colour of the viewer's canvas at CSS pixel (x, y)."""
    script = f"""
        const canvas = {mode}.panel.viewer.canvas, ratio = window.devicePixelRatio || 1;
        const [x, y] = [Math.floor(arguments[0] * ratio), Math.floor(arguments[1] * ratio)];
        return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
    """
    return tuple(driver.execute_script(script, x, y))


def canvas_region(driver: WebDriver, box: dict, mode: str = READING) -> np.ndarray:
    """The canvas pixels (RGB) inside an image-space box."""
    script = f"""
        const viewer = {mode}.panel.viewer, ratio = window.devicePixelRatio || 1;
        const [x0, y0] = viewer.toScreen(arguments[0].x0, arguments[0].y0);
        const [x1, y1] = viewer.toScreen(arguments[0].x1, arguments[0].y1);
        const left = Math.max(0, Math.floor(x0 * ratio)), top = Math.max(0, Math.floor(y0 * ratio));
        const width = Math.min(viewer.canvas.width, Math.ceil(x1 * ratio)) - left;
        const height = Math.min(viewer.canvas.height, Math.ceil(y1 * ratio)) - top;
        return [width, height, Array.from(viewer.canvas.getContext('2d').getImageData(left, top, width, height).data)];
    """
    width, height, data = driver.execute_script(script, box)
    return np.asarray(data, dtype=np.int32).reshape(height, width, 4)[:, :, :3]


def label_of(head: dict) -> str:
    """The label the page draws for a head of a diagnosis."""
    return f"{head['side']} · {head['stage']} {round(head['stage_probability'] * 100)}%"


def assert_box_drawn_in_stage_colour(driver: WebDriver, head: dict, mode: str = READING) -> None:
    """Some edge midpoint of the head's box on the canvas has exactly the stage's colour."""
    size = driver.execute_script(f"const c = {mode}.panel.viewer.canvas; return [c.clientWidth, c.clientHeight];")
    x0, y0, x1, y1 = (head[k] for k in ("x0", "y0", "x1", "y1"))
    midpoints = [(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)]
    inside = [(x, y) for x, y in midpoints if 0 <= x < size[0] - 1 and 0 <= y < size[1] - 1]
    colours = {canvas_rgb(driver, x, y, mode) for x, y in inside}
    assert STAGE_COLOURS[head["stage"]] in colours, (head, colours)


def assert_fits(driver: WebDriver, size: tuple[int, int], vertically: bool = True) -> None:
    """Nothing sticks out of the viewport (desktop: the side panel scrolls, never the page)."""
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];"
    )
    assert width <= size[0], f"the page is {width} px wide in a {size[0]} px viewport"
    if vertically:
        assert height <= size[1], f"the page is {height} px high in a {size[1]} px viewport"


def test_reading_a_phantom_dicom_draws_what_the_gateway_returned(
    page: WebDriver, gateway: LiveGateway, files: dict[str, Path]
) -> None:
    upload(page, "reading-file", files["dicom"])
    wait_for(page, f"{READING}.results.size === 1 && {READING}.panel.viewer.drawn.length > 0", "the result drawn")
    shown = page.execute_script(f"return {READING}.results.get(0);")
    answer = http_json(gateway, "/v1/diagnose", files["dicom"].read_bytes())

    def essentials(result: dict) -> list[tuple]:
        return [(head["side"], head["stage"], head["box"]) for head in result["heads"]]

    assert essentials(shown) == essentials(answer)

    heads = drawn(page)
    assert len(heads) == len(answer["heads"])
    for head, result in zip(heads, answer["heads"], strict=True):
        assert head["label"] == label_of(result)
        to_screen = f"return {READING}.panel.viewer.toScreen(arguments[0], arguments[1]);"
        screen = page.execute_script(to_screen, result["box"]["x0"], result["box"]["y0"])
        assert (head["x0"], head["y0"]) == pytest.approx(tuple(screen))
        assert_box_drawn_in_stage_colour(page, head)

    # The side panel: the view, one card per head with four stage bars and the notes.
    view = page.find_element(By.CSS_SELECTOR, "#reading-result [data-testid=view]").text
    assert view.startswith(f"View: {answer['view']['view']}")
    cards = page.find_elements(By.CSS_SELECTOR, "#reading-result .head-card")
    shown_cards = [(card.get_attribute("data-side"), card.get_attribute("data-stage")) for card in cards]
    assert shown_cards == [(head["side"], head["stage"]) for head in answer["heads"]]
    for card, result in zip(cards, answer["heads"], strict=True):
        rows = card.find_elements(By.CSS_SELECTOR, ".stage-bars tr")
        assert [row.find_element(By.TAG_NAME, "th").text for row in rows] == list(STAGES)
        probabilities = {item["label"]: item["probability"] for item in result["stage_probabilities"]}
        percents = [row.find_element(By.CSS_SELECTOR, ".number").text for row in rows]
        assert percents == [f"{probabilities[stage] * 100:.1f}%" for stage in STAGES]
        assert "Notes" in card.text
    announced = page.find_element(By.ID, "reading-drawn").get_attribute("textContent")
    assert announced.startswith(f"{len(heads)} femoral head{'s' if len(heads) > 1 else ''} drawn")
    assert_fits(page, DESKTOP)
    screenshot(page, "reading")

    # Window/level: new slider values bring a new rendition from the gateway, then the boxes again.
    page.execute_script(f"window.__before = {READING}.panel.viewer.image;")
    page.execute_script("""
        for (const [id, value] of [['reading-wl-center', 30], ['reading-wl-width', 20]]) {
          const slider = document.getElementById(id); slider.value = value;
          slider.dispatchEvent(new Event('input', {bubbles: true}));
        }""")
    wait_for(page, f"{READING}.panel.viewer.image !== window.__before", "the re-windowed rendition")
    assert page.find_element(By.ID, "reading-wl-center-value").text == "30%"
    assert len(drawn(page)) == len(answer["heads"])

    # Zoom and pan, by button and by keyboard on the canvas.
    scale = page.execute_script(f"return {READING}.panel.viewer.view.scale;")
    page.find_element(By.CSS_SELECTOR, '#reading [data-action="zoom-in"]').click()
    assert page.execute_script(f"return {READING}.panel.viewer.view.scale;") == pytest.approx(scale * 1.25)
    canvas = page.find_element(By.ID, "reading-canvas")
    canvas.send_keys(Keys.ARROW_LEFT)
    assert page.execute_script(f"return {READING}.panel.viewer.view.x;") != pytest.approx(0)
    canvas.send_keys("0")
    assert page.execute_script(f"return {READING}.panel.viewer.view.scale;") == pytest.approx(scale)


def test_the_heat_map_toggles_and_fades(page: WebDriver, files: dict[str, Path]) -> None:
    upload(page, "reading-file", files["dicom"])
    wait_for(page, f"{READING}.panel.viewer.drawn.length > 0", "the result drawn")
    cam_box = page.execute_script(f"return {READING}.results.get(0).heads[0].cam_box;")
    with_cam = canvas_region(page, cam_box)
    page.find_element(By.CSS_SELECTOR, 'label[for="reading-cam"]').click()  # the label toggles the checkbox
    assert page.find_element(By.ID, "reading-cam").is_selected() is False
    without_cam = canvas_region(page, cam_box)
    assert np.abs(with_cam - without_cam).mean() > 5, "the heat map should change the pixels under it"
    screenshot(page, "reading_without_cam")

    page.find_element(By.ID, "reading-cam").send_keys(Keys.SPACE)  # and the keyboard toggles it back
    assert np.array_equal(canvas_region(page, cam_box), with_cam)
    page.execute_script("""const s = document.getElementById('reading-cam-opacity'); s.value = 0;
                           s.dispatchEvent(new Event('input', {bubbles: true}));""")
    assert np.array_equal(canvas_region(page, cam_box), without_cam)  # opacity 0: the radiograph alone


def test_a_study_shows_the_subject_level_result(page: WebDriver, gateway: LiveGateway, files: dict[str, Path]) -> None:
    upload(page, "reading-file", files["dicom"], files["png"])
    both = f"{READING}.results.size + {READING}.skipped.size === 2 && {READING}.panel.viewer.drawn.length > 0"
    wait_for(page, both, "the study")
    rows = page.find_elements(By.CSS_SELECTOR, "#reading-study-table tbody tr")
    sides = [row.find_element(By.TAG_NAME, "th").text for row in rows]
    assert rows and set(sides) <= set(SIDES) and len(sides) == len(set(sides))
    buttons = page.find_elements(By.CSS_SELECTOR, "#reading-radiograph-list button")
    assert [b.get_attribute("aria-pressed") for b in buttons] == ["true", "false"]
    buttons[1].click()
    wait_for(page, f"{READING}.selected === 1 && {READING}.panel.viewer.drawn.length > 0", "the second radiograph")
    second = page.execute_script(f"return {READING}.results.get(1);")
    assert [head["label"] for head in drawn(page)] == [label_of(head) for head in second["heads"]]
    assert files["png"].name in page.find_element(By.ID, "reading-result").text
    screenshot(page, "reading_study")


def test_a_gateway_error_is_shown_as_its_message(page: WebDriver, files: dict[str, Path]) -> None:
    upload(page, "reading-file", files["garbage"])
    alert = page.find_element(By.ID, "reading-error")
    wait_until(lambda: alert.is_displayed() and "InvalidImage" in alert.text, "the error message")
    assert "400 InvalidImage: not a PNG, JPEG or DICOM file" in alert.text and "request " in alert.text
    assert alert.get_attribute("role") == "alert"
    screenshot(page, "reading_error")


def choose(driver: WebDriver, prefix: str, side: str, stage: str) -> None:
    """Pick a stage the keyboard way: focus the group's first radio, Space, then arrow to the stage.
    (Keys go to the focused element: the radios themselves are visually hidden behind their labels.)"""
    radios = driver.find_elements(By.CSS_SELECTOR, f'input[name="{prefix}-{side}"]')
    driver.execute_script("arguments[0].focus();", radios[0])
    keys = ActionChains(driver).send_keys(Keys.SPACE)
    for _ in range([radio.get_attribute("value") for radio in radios].index(stage)):
        keys = keys.send_keys(Keys.ARROW_RIGHT)
    keys.perform()
    assert driver.find_element(By.ID, f"{prefix}-{side}-{stage or 'na'}").is_selected()


def test_a_second_opinion_read_is_exported_as_the_reader_csv(
    page: WebDriver, files: dict[str, Path], downloads: Path, tmp_path: Path
) -> None:
    page.find_element(By.ID, "tab-second-opinion").click()
    reader = page.find_element(By.ID, "so-reader")
    reader.clear()
    reader.send_keys("Dr R1")
    upload(page, "so-file", files["dicom"])
    wait_for(page, "!document.getElementById('so-form').hidden", "the first-read form")
    assert drawn(page, SECOND_OPINION) == []  # nothing of the system's before the first read
    choose(page, "so", "right", "II")
    choose(page, "so", "left", "IV")
    page.find_element(By.ID, "so-submit").click()
    wait_for(
        page, f"{SECOND_OPINION}.phase === 'final' && {SECOND_OPINION}.panel.viewer.drawn.length > 0", "the reveal"
    )
    assert page.find_element(By.ID, "so-left-IV").is_selected()  # the final read starts from the first
    assert page.find_elements(By.CSS_SELECTOR, "#so-result .head-card")
    choose(page, "so", "left", "III")  # revised after seeing the system's result
    wait_for(page, "!document.getElementById('so-submit').disabled", "the final-read button")
    page.find_element(By.ID, "so-submit").click()
    wait_for(page, "document.querySelectorAll('#so-records tbody tr').length === 2", "the reads table")
    screenshot(page, "second_opinion")

    page.find_element(By.ID, "so-export").click()
    assert_fits(page, DESKTOP)
    text = page.find_element(By.ID, "so-csv").get_attribute("value")
    exported = tmp_path / "reader.csv"
    exported.write_text(text, encoding="utf-8")
    rows = read_reader(exported)
    reads = {(r.reader, r.case_id, r.side, r.stage, r.assisted) for r in rows}
    name = files["dicom"].name
    assert reads == {
        ("Dr R1", name, "right", "II", "no"),
        ("Dr R1", name, "left", "IV", "no"),
        ("Dr R1", name, "right", "II", "yes"),
        ("Dr R1", name, "left", "III", "yes"),
    }
    first = {r.seconds for r in rows if r.assisted == "no"}
    final = {r.seconds for r in rows if r.assisted == "yes"}
    assert len(first) == len(final) == 1 and 0 < first.pop() <= final.pop()
    download = downloads / "reader-Dr_R1.csv"
    wait_until(download.exists, "the downloaded CSV")
    assert wait_until(lambda: download.read_text(encoding="utf-8") == text, "the whole download")


def test_a_self_study_case_is_scored(page: WebDriver, gateway: LiveGateway) -> None:
    page.find_element(By.ID, "tab-self-study").click()
    wait_for(page, "!document.getElementById('ss-form').hidden", "the first case")
    case = page.execute_script(f"return {SELF_STUDY}.cases[0];")
    truth = http_json(gateway, f"/v1/cases/{case['id']}/truth")
    # The first head answered right, any second one wrong: the score must say so.
    answers = {}
    for index, head in enumerate(truth["heads"]):
        answers[head["side"]] = head["stage"] if index == 0 else next(s for s in STAGES if s != head["stage"])
        choose(page, "ss", head["side"], answers[head["side"]])
    page.find_element(By.ID, "ss-submit").send_keys(Keys.ENTER)
    wait_for(page, "!document.getElementById('ss-next').hidden", "the feedback")

    expected_right = 1
    total = len(truth["heads"])
    assert page.find_element(By.ID, "ss-score").text.startswith(f"{expected_right} of {total} femoral heads correct")
    for head in truth["heads"]:
        selector = f'#ss-confusion td[data-truth="{head["stage"]}"][data-answer="{answers[head["side"]]}"]'
        cell = page.find_element(By.CSS_SELECTOR, selector)
        assert int(cell.text) >= 1
    cells = page.find_elements(By.CSS_SELECTOR, "#ss-confusion td")
    assert sum(int(c.text) for c in cells) == total
    feedback = page.find_elements(By.CSS_SELECTOR, "#ss-feedback table.feedback tbody tr")
    assert [(r.get_attribute("data-side"), r.get_attribute("class")) for r in feedback] == [
        (h["side"], "right" if i == 0 else "wrong") for i, h in enumerate(truth["heads"])
    ]
    assert "Notes of the truth" in page.find_element(By.ID, "ss-feedback").text
    shown = drawn(page, SELF_STUDY)
    assert [h["label"] for h in shown if h["dashed"]] == [f"truth: {h['side']} · {h['stage']}" for h in truth["heads"]]
    system = page.execute_script(f"return {SELF_STUDY}.panel.viewer.heads.filter(h => !h.dashed).length;")
    assert system == len(http_json(gateway, f"/v1/cases/{case['id']}/diagnosis")["heads"])
    assert_fits(page, DESKTOP)
    screenshot(page, "self_study")

    page.find_element(By.ID, "ss-next").click()
    wait_for(page, f"{SELF_STUDY}.index === 1 && !document.getElementById('ss-form').hidden", "the next case")
    assert page.find_element(By.ID, "ss-progress").text.startswith("Case 2 of")


def test_tablet_width_stacks_the_panel_under_the_viewer(page: WebDriver, files: dict[str, Path]) -> None:
    set_viewport(page, TABLET)
    upload(page, "reading-file", files["dicom"])
    wait_for(page, f"{READING}.panel.viewer.drawn.length > 0", "the result drawn")
    layout = page.execute_script("""
        const canvas = document.getElementById('reading-canvas').getBoundingClientRect();
        const panel = document.querySelector('#reading .panel').getBoundingClientRect();
        return {canvasBottom: canvas.bottom, canvasWidth: canvas.width, panelTop: panel.top};""")
    assert_fits(page, TABLET, vertically=False)  # at tablet width the page scrolls down, never sideways
    assert layout["panelTop"] >= layout["canvasBottom"] and layout["canvasWidth"] > 0.9 * TABLET[0] - 40
    assert_box_drawn_in_stage_colour(page, drawn(page)[0])
    screenshot(page, "reading_tablet")


def test_the_controls_are_labelled_and_the_tabs_work_by_keyboard(page: WebDriver) -> None:
    unlabelled = page.execute_script("""
        return [...document.querySelectorAll('input, textarea, button, [role=tab]')]
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
          .map(e => e.id || e.outerHTML.slice(0, 80));""")
    assert unlabelled == []
    tab = page.find_element(By.ID, "tab-reading")
    tab.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element.get_attribute("id") == "tab-second-opinion"
    assert (
        page.find_element(By.ID, "second-opinion").is_displayed()
        and not page.find_element(By.ID, "reading").is_displayed()
    )
    assert page.execute_script("return location.hash;") == "#second-opinion"


CONTRAST_SCRIPT = """
    // WCAG contrast of every visible text against the first opaque background behind it.
    const channel = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    const rgba = text => text.match(/[\\d.]+/g).map(Number);
    const background = element => {
      for (let e = element; e; e = e.parentElement) {
        const colour = rgba(getComputedStyle(e).backgroundColor);
        if (colour.length === 3 || colour[3] === 1) return colour.slice(0, 3);
      }
      return [0, 0, 0];
    };
    const low = [];
    for (const element of document.querySelectorAll('body *')) {
      const own = [...element.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
      if (!own || !element.checkVisibility({opacityProperty: true})) continue;
      if (element.closest(':disabled, fieldset:disabled')) continue;
      if (element.closest('.visually-hidden')) continue;
      const style = getComputedStyle(element);
      const [a, b] = [luminance(rgba(style.color)), luminance(background(element))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const text = element.textContent.trim().slice(0, 30);
      if (ratio < 4.5) low.push(`${element.tagName}.${element.className} "${text}" ${ratio.toFixed(2)}`);
    }
    return low;
"""


def test_text_contrast_is_readable_in_every_mode(page: WebDriver, files: dict[str, Path]) -> None:
    upload(page, "reading-file", files["dicom"], files["png"])
    wait_for(page, f"{READING}.results.size === 2 && {READING}.panel.viewer.drawn.length > 0", "the study")
    upload(page, "reading-file", files["garbage"])  # and an error on screen
    wait_for(page, "!document.getElementById('reading-error').hidden", "the error")
    assert page.execute_script(CONTRAST_SCRIPT) == []
    page.find_element(By.ID, "tab-self-study").click()
    wait_for(page, "!document.getElementById('ss-form').hidden", "the first case")
    assert page.execute_script(CONTRAST_SCRIPT) == []
    page.execute_script("document.getElementById('ss-progress').style.color = '#444';")  # the check itself works
    assert [line for line in page.execute_script(CONTRAST_SCRIPT) if "Case 1 of" in line]
