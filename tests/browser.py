"""A real headless Debian chromium, driven by selenium through chromedriver (`make test`
installs both; CHROMIUM_BIN and CHROMEDRIVER_BIN point at others). Nothing is downloaded:
selenium is given both paths, so its driver manager stays out of the way."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest


def _binary(variable: str, name: str) -> str | None:
    return os.environ.get(variable) or shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)


@contextmanager
def chromium(*, javascript: bool = False):
    """A headless chromium session; JavaScript is off unless asked for, as the pages Nudge
    shows recipients must work without it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = _binary("CHROMIUM_BIN", "chromium")
    driver_path = _binary("CHROMEDRIVER_BIN", "chromedriver")
    if not browser or not driver_path:
        pytest.fail("chromium and chromedriver are needed: run `make test` (it installs the "
                    "chromium and chromium-driver packages) or set CHROMIUM_BIN and "
                    "CHROMEDRIVER_BIN")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--window-size=1000,800"):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
