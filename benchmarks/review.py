"""The label review app as a user meets it: time to the first image, actions per second.

    python benchmarks/review.py [--repeats 3] [--actions 50] [--root DIR --source RUN] [--screenshot PNG]

Without ``--source`` it makes its own source in a temporary project: a 5-fold cross-validation of
digits with the 0.4 M-parameter test network, one epoch (the app's speed does not depend on the
model's quality). Each repeat starts ``python review.py data=digits source=<run> limit=200`` with
a fresh journal, opens its URL in headless Chromium (Debian's, driven by Playwright), and times:
the command to its printed URL, the command to the first image shown (decoded in the page), and
``--actions`` skips by keyboard, each until the next image is shown (actions/s: the journal write,
the next lease, the page update and the image load). ``--screenshot`` keeps the first page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import ROOT, Recorder

IMAGE = "document.getElementById('image')"


def make_source(root: Path) -> str:
    """A tiny 5-fold digits cross-validation in ``root``; returns its run directory (relative)."""
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    cmd = [sys.executable, str(ROOT / "cv.py"), "experiment=digits", "model.net.model_name=test_resnet",
           "trainer.max_epochs=1", "logger=csv", "test=false", "run_name=bench"]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return "outputs/digits/bench"


def one_repeat(root: Path, source: str, actions: int, screenshot: Path | None) -> dict[str, float]:
    """Start the server, open the page, act; returns the timings (seconds, actions/s)."""
    from playwright.sync_api import sync_playwright

    shutil.rmtree(root / "outputs" / "review", ignore_errors=True)
    env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "review.py"), "data=digits", f"source={source}", "open_browser=false"]
    cmd.append("limit=200")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = next(m.group(1) for line in proc.stdout if (m := re.search(r"open: (\S+)", line)))
    to_url = time.perf_counter() - start
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(url)
            page.wait_for_function(f"{IMAGE}.dataset.imageId && {IMAGE}.naturalWidth > 0")
            to_image = time.perf_counter() - start
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            before, begin = page.get_attribute("#image", "data-image-id"), time.perf_counter()
            for _ in range(actions):
                page.keyboard.press("s")
                page.wait_for_function(f"{IMAGE}.dataset.imageId !== {json.dumps(before)} && {IMAGE}.complete")
                before = page.get_attribute("#image", "data-image-id")
            rate = actions / (time.perf_counter() - begin)
            browser.close()
    finally:
        proc.kill()
        proc.wait()
    return {"to_url": to_url, "to_image": to_image, "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--root", type=Path, default=None, help="project root holding --source (default: a temp one)")
    parser.add_argument("--source", default=None, help="cv or ensemble run, relative to --root")
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    rec = Recorder("review", title="Label review in the browser: time to first image, actions/s")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        source = args.source or make_source(root)
        shots = [args.screenshot] + [None] * (args.repeats - 1)
        runs = [one_repeat(root, source, args.actions, shot) for shot in shots]
    rec.figure("to_url_s", [r["to_url"] for r in runs], label="command to printed URL", unit="s", digits=2)
    rec.figure("to_first_image_s", [r["to_image"] for r in runs], label="command to first image shown", unit="s",
               digits=2)  # fmt: skip
    rec.figure("actions_per_s", [r["rate"] for r in runs], label="keyboard actions/s, each until the next image",
               digits=1)  # fmt: skip
    rec.write(
        summary=f"`python review.py data=digits source=<5-fold digits run> limit=200` in headless Chromium, "
        f"{args.repeats} repeats, {args.actions} keyboard skips each; every action is fsynced to the journal "
        "before the page gets the next image."
    )


if __name__ == "__main__":
    main()
