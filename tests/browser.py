"""Headless Chromium for the tests that render a page (Debian's ``chromium``; ``make setup``
installs it). Where it is absent those tests skip, except under ``CI=true``, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-logging=stderr",
    "--v=0",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium() -> str:
    """The browser's path; skips the test (fails it under ``CI=true``) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed but CI=true: install Debian's chromium package (make setup)")
    pytest.skip("chromium not installed (Debian: apt-get install chromium); the page is not rendered")
    raise AssertionError("unreachable")


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render(page: Path, tmp_path: Path, size: str = "1200,2400") -> tuple[str, np.ndarray]:
    """The page's DOM after rendering and a screenshot's grey levels; asserts no console error.

    Args:
        page: The HTML file.
        tmp_path: Where the browser profiles and the screenshot go.
        size: The window size of the screenshot (``width,height``).
    """
    browser = chromium()
    url = page.resolve().as_uri()
    dom = run_chromium(browser, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "page.png"
    proc = run_chromium(browser, tmp_path / "profile-shot", f"--screenshot={shot}", f"--window-size={size}", url)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    console = [line for line in (dom.stderr + proc.stderr).splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "\n".join(console)
    return dom.stdout, np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
