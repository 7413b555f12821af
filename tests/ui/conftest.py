"""Fixtures for browser tests: headless Chromium (Debian packages) driven through selenium."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
WINDOW = (1600, 1000)


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    """Run apt-get non-interactively, capturing its output for the failure message."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver when missing; fail loudly if that fails."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} / {CHROMEDRIVER} missing and they cannot be installed here "
            "(needs apt-get as root): apt-get install chromium chromium-driver"
        )
    packages = ("install", "-y", "--no-install-recommends", "chromium", "chromium-driver")
    result = _apt(*packages)
    if result.returncode != 0:
        # A clean machine has no package lists yet: refresh them and try once more.
        update = _apt("update")
        if update.returncode != 0:
            pytest.fail(f"apt-get update failed:\n{update.stdout[-2000:]}\n{update.stderr[-2000:]}")
        result = _apt(*packages)
    if result.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"installing chromium chromium-driver failed (rc {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    """Chromium and chromedriver present at their Debian paths (installed when missing)."""
    ensure_chromium()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder screenshots are written to (test-artifacts/screenshots in the repo root)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def browser(chromium_installed: None) -> Iterator[WebDriver]:
    """One headless Chromium (1600x1000 viewport) for the browser tests, closed at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # runs as root in CI containers, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # --window-size sizes the window; make the page's viewport the intended size.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
        driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
        yield driver
    finally:
        driver.quit()
