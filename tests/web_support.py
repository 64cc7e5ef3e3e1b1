"""Shared by the web app's tests and ``scripts/web_screenshots.py``: a live gateway on a loopback
port (uvicorn in a background thread, real HTTP) and a real headless Chromium driven through
Debian's chromedriver with selenium.

Chromium runs with a fresh profile per driver and the flags that keep it from reaching anything
but the page under test (no background networking, component updates, sync or QUIC). The viewport
is fixed through the DevTools protocol, so screenshots are exactly the size asked for.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from avn.serving.torchserve import LOOPBACK, free_ports

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
)
DESKTOP = (1280, 800)
TABLET = (800, 1180)
SERVER_START_TIMEOUT_S = 20.0
WAIT_S = 30.0


class LiveGateway:
    """``app`` served by uvicorn on a free loopback port from a daemon thread, until :meth:`stop`.
    ``headers``: what the tests' HTTP clients send with every request (the API key)."""

    def __init__(self, app: FastAPI, headers: dict[str, str] | None = None) -> None:
        self.headers = dict(headers or {})
        self.port = free_ports(1)[0]
        config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)  # signal handlers are only installed on the main thread
        self.thread = threading.Thread(target=self.server.run, name="live-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def live_gateway(app: FastAPI, headers: dict[str, str] | None = None) -> Iterator[LiveGateway]:
    gateway = LiveGateway(app, headers).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def chromium(download_dir: Path, size: tuple[int, int] = DESKTOP) -> webdriver.Chrome:
    """A headless Chromium with a fresh profile, downloads going to ``download_dir``."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).exists():
            raise RuntimeError(f"{tool} is missing: `make system-deps` installs chromium and chromium-driver")
    profile = Path(tempfile.mkdtemp(prefix="avn-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never runs Selenium Manager (which would download one).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.avn_profile = profile  # removed by close_chromium
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    set_viewport(driver, size)
    return driver


KEY_STORAGE = "avn-api-key"  # web/js/api.js keeps the tab's API key under this sessionStorage name


def load_signed_in(driver: webdriver.Chrome, url: str, key: str) -> None:
    """Load the page at ``url`` with ``key`` already in the tab's sessionStorage, as after signing in.
    The key is stored from the gateway's /healthz (same origin, so the same storage): on the page
    itself a start-up call without the key could answer 401 after the key was stored, and the page
    would forget it."""
    origin = "/".join(url.split("/", 3)[:3])
    driver.get(f"{origin}/healthz")
    driver.execute_script("sessionStorage.setItem(arguments[0], arguments[1]);", KEY_STORAGE, key)
    driver.get(url)


def close_chromium(driver: webdriver.Chrome) -> None:
    driver.quit()
    shutil.rmtree(driver.avn_profile, ignore_errors=True)


def set_viewport(driver: webdriver.Chrome, size: tuple[int, int]) -> None:
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def wait_for(driver: webdriver.Chrome, script: str, what: str, timeout_s: float = WAIT_S) -> Any:
    """The first truthy value of the JavaScript expression ``script``; fails naming ``what``."""

    def probe(d: webdriver.Chrome) -> Any:
        return d.execute_script(f"return ({script});")

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(probe)
    except TimeoutException:
        errors = "\n".join(page_errors(driver)) or "none"
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; browser errors: {errors}") from None


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def page_errors(driver: webdriver.Chrome) -> list[str]:
    """Severe browser-console entries since the last call, except failed requests the test asked for
    (a refused upload logs "Failed to load resource" by design)."""
    entries = driver.get_log("browser")
    return [
        entry["message"]
        for entry in entries
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
