"""The review app in a real headless browser (Debian's chromium driven by Playwright).

One tiny cross-validation of digits is the source; ``python review.py`` runs as a subprocess the
way a user starts it. The tests run in file order on one server: keyboard review, two tabs, a
killed server restarted, the security of the routes, then export into the manifest.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.utils import instantiate

from src.core.cv import run_cv
from src.core.resolvers import PROJECT_ROOT
from src.datamodules.images.cleaning import read_manifest
from src.review.jobs import build_session, dataset
from src.review.journal import decisions, read_entries
from tests.browser import chromium
from tests.conftest import TINY_MODEL, compose_cfg, project_root

SOURCE = "outputs/digits/cv"
LIMIT = 40
ARGS = ["data=digits", f"source={SOURCE}", "open_browser=false", f"limit={LIMIT}"]


class Server:
    """``python review.py`` in a subprocess; ``url`` is the address it printed."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "PODIUM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, str(PROJECT_ROOT / "review.py"), *ARGS]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.perf_counter()
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            found = re.search(r"open: (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError("review.py exited without serving:\n" + "".join(lines))

    @property
    def base(self) -> str:
        return self.url.split("/?")[0]

    @property
    def token(self) -> str:
        return self.url.split("token=")[1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    folder = project_root(tmp_path_factory.mktemp("review"), data_dir)
    toy = ["experiment=digits", *TINY_MODEL, "data.n_folds=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
           "logger=csv", "run_name=cv", "test=false"]  # fmt: skip
    run_cv(compose_cfg(toy, folder, "cv"))
    # The shared digits data must not see this module's manifest: the dataset folder is copied.
    data = folder / "data" / "digits"
    target = data.resolve()
    data.unlink()
    data.mkdir()
    (data / "train.csv").write_text((target / "train.csv").read_text())
    (data / "train").symlink_to(target / "train", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[dict]:
    holder = {"server": Server(root)}
    yield holder
    holder["server"].kill()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def journal(root: Path) -> list[dict]:
    path = root / "outputs" / "review" / "digits" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shown(page) -> str:
    return page.get_attribute("#image", "data-image-id")


def next_image(page, before: str) -> str:
    page.wait_for_function(f"document.getElementById('image').dataset.imageId !== {json.dumps(before)}")
    page.wait_for_function("document.getElementById('image').complete")
    return shown(page)


def open_page(page, url: str) -> str:
    page.goto(url)
    page.wait_for_function(
        "document.getElementById('image').dataset.imageId && document.getElementById('image').naturalWidth > 0"
    )
    return shown(page)


def test_the_queue_loads_and_the_keyboard_decides_and_undoes(server: dict, browser, root: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    first = open_page(page, server["server"].url)
    print(f"time to first image: {time.perf_counter() - server['server'].started:.2f} s after the command")
    assert page.text_content("#progress") == f"0 of {LIMIT} decided"
    assert len(page.query_selector_all("#top li")) == 3 and len(page.query_selector_all("#neighbours img")) == 6
    page.keyboard.press("k")
    second = next_image(page, first)
    page.keyboard.press("3")
    third = next_image(page, second)
    page.keyboard.press("t")
    fourth = next_image(page, third)
    page.keyboard.press("z")  # the trash of the third image is taken back
    assert next_image(page, fourth) == third
    page.wait_for_function("document.getElementById('status').textContent === 'undone'")
    assert page.text_content("#progress") == f"2 of {LIMIT} decided"
    entries = journal(root)
    assert [e["action"] for e in entries] == ["keep", "relabel", "trash", "undo"]
    assert entries[1]["image_id"] == second and entries[1]["label"] == 3 and entries[3]["undoes"] == entries[2]["seq"]
    shot = root / "outputs" / "review" / "digits" / "review.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    start, before, actions = time.perf_counter(), third, 10
    for _ in range(actions):
        page.keyboard.press("s")
        before = next_image(page, before)
    print(f"actions/s through the browser: {actions / (time.perf_counter() - start):.1f}")
    assert not errors, errors
    page.close()


def test_two_tabs_never_get_the_same_image_and_both_decisions_count(server: dict, browser, root: Path) -> None:
    context = browser.new_context()
    one, two = context.new_page(), context.new_page()
    a, b = open_page(one, server["server"].url), open_page(two, server["server"].url)
    assert a != b
    before = len(journal(root))
    one.keyboard.press("k")
    two.keyboard.press("t")
    assert next_image(one, a) != next_image(two, b)
    new = journal(root)[before:]
    assert sorted((e["image_id"], e["action"]) for e in new) == sorted([(a, "keep"), (b, "trash")])
    assert len({e["reviewer"] for e in new}) == 2
    context.close()


def test_a_killed_server_restarts_where_it_stopped(server: dict, browser, root: Path) -> None:
    server["server"].kill()
    decided_before = set(decisions(read_entries(root / "outputs" / "review" / "digits" / "journal.jsonl")))
    server["server"] = Server(root)
    page = browser.new_page()
    current = open_page(page, server["server"].url)
    done = int(page.text_content("#progress").split(" of ")[0])
    assert done == 4 and current not in decided_before  # keep, relabel, and the two tabs' decisions
    page.close()


def test_requests_without_the_token_and_paths_outside_the_dataset_are_refused(server: dict) -> None:
    srv = server["server"]
    for url in (f"{srv.base}/api/state?reviewer=x", f"{srv.base}/?token=wrong", f"{srv.base}/image/digit_0000"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        assert err.value.code == 403
    for bad in ("..%2F..%2Ftrain.csv", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "nope"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{srv.base}/image/{bad}?token={srv.token}", timeout=10)
        assert err.value.code == 404
    with urllib.request.urlopen(f"{srv.base}/image/digit_0000?token={srv.token}", timeout=10) as ok:
        assert ok.headers["content-type"] == "image/png"
    port = int(srv.base.rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]  # fmt: skip
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only


def test_export_writes_the_manifest_the_datamodule_applies(server: dict, root: Path) -> None:
    env = {**os.environ, "PODIUM_ROOT": str(root)}
    cmd = [sys.executable, str(PROJECT_ROOT / "review.py"), *ARGS, "export"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 decisions (keep 2, trash 1, relabel 1) written into" in proc.stdout
    manifest = read_manifest(root / "data" / "digits" / "cleaning_manifest.csv").set_index("image_id")
    relabelled = manifest.index[manifest["action"] == "relabel"][0]
    assert manifest.loc[relabelled, "new_label"] == "3" and manifest.loc[relabelled, "reason"] == "review:relabel"
    trashed = manifest.index[manifest["action"] == "drop"][0]
    cfg = compose_cfg([*ARGS], root, "review")
    dm = instantiate(cfg.data)
    dm.setup()
    ids = dm.train_set.sample_ids + dm.val_set.sample_ids
    labels = dict(zip(ids, dm.train_set.labels + dm.val_set.labels, strict=True))
    assert labels[relabelled] == 3 and trashed not in labels
    # A second review of the same data starts from the manifest: the reviewed images are left out.
    session, count = build_session(cfg, dataset(cfg))
    assert count == LIMIT and not set(session.order) & set(manifest.index)
    session.journal.close()
