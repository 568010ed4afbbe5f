"""Damage recipes for the hostile-input test: each builds bad input under a test root.

A recipe takes a :class:`Workspace` (the test's project root plus lazily built clean sources to
copy) and returns the command-line overrides that point an entry point at the damage. Damage is
done to private copies, never to the session's shared datasets.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.datamodules.images.test_layout import make_fruit_set
from tests.ensemble.synthetic import write_member

#: The generic-layout set of tests/datamodules/images/test_layout.py (15 classes, 90 JPEGs).
FRUITS = ["experiment=image_folder", "data.name=fruits", "data.num_classes=15", "data.group_column=plu",
          "data.image_size=32", "data.num_workers=0"]  # fmt: skip
#: Video experiment at CPU scale.
VIDEO = ["experiment=video_postfilter", "data=video_toy"]


@dataclass
class Workspace:
    """Where a case builds its input.

    Attributes:
        root: The test's project root (``PODIUM_ROOT``): ``outputs/``, ``mlruns/``, ``data/``.
        ariel_source: Returns the session's simulated Ariel dataset (read-only: copy it first).
    """

    root: Path
    ariel_source: Callable[[], Path]

    def folder(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fruits(self, with_test: bool = True) -> Path:
        """A fresh fruit set at ``<root>/data/fruits`` (the ``FRUITS`` overrides read it)."""
        return make_fruit_set(self.root / "data" / "fruits", with_test=with_test)

    def ariel(self) -> Path:
        """A private copy of the simulated Ariel set at ``<root>/data/ariel_bad``."""
        return Path(shutil.copytree(self.ariel_source(), self.root / "data" / "ariel_bad"))


# ---- image datasets ------------------------------------------------------------------------------


def image_csv(ws: Workspace, text: str | bytes) -> list[str]:
    """A dataset folder whose train.csv holds ``text`` (bytes: written as is)."""
    folder = ws.folder("data", "bad_csv")
    csv = folder / "train.csv"
    csv.write_bytes(text) if isinstance(text, bytes) else csv.write_text(text)
    return ["experiment=digits", f"data.root={folder}", "data.prepare=null"]


def binary_csv(ws: Workspace) -> list[str]:
    """train.csv that is really a PNG."""
    digit = next((ws.root / "data" / "digits" / "train" / "0").glob("*.png"))
    return image_csv(ws, digit.read_bytes() * 4)


def missing_image(ws: Workspace) -> list[str]:
    """A train.csv row whose image file does not exist."""
    folder = ws.folder("data", "missing_image")
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train.csv").write_text("image_id,label,group\nimg1,cat,g1\n")
    return ["experiment=digits", f"data.root={folder}", "data.prepare=null"]


def fruits_with(**values: object) -> Callable[[Workspace], list[str]]:
    """A recipe: the clean fruit set, trained with some ``FRUITS`` values replaced or added."""

    def build(ws: Workspace) -> list[str]:
        ws.fruits()
        base = dict(o.split("=", 1) for o in FRUITS)
        return [f"{k}={v}" for k, v in {**base, **values}.items()]

    return build


def duplicated_image_id(ws: Workspace) -> list[str]:
    """The fruit set with one train.csv row repeated."""
    root = ws.fruits()
    table = pd.read_csv(root / "train.csv")
    pd.concat([table, table.iloc[[3]]]).to_csv(root / "train.csv", index=False)
    return FRUITS


def unknown_test_label(ws: Workspace) -> list[str]:
    """A labelled test.csv with a class the training split does not have."""
    root = ws.fruits()
    labels = ["fruit00", "fruit01", "kiwi", "fruit02", "fruit03"]
    pd.DataFrame({"image_id": [f"t{i}" for i in range(5)], "label": labels}).to_csv(root / "test.csv", index=False)
    return FRUITS


def text_as_jpeg(ws: Workspace) -> list[str]:
    """One training JPEG among 90 good ones replaced by an HTML error page."""
    root = ws.fruits()
    (root / "train" / "fruit03" / "fruit03_2.jpg").write_text("<html>404 Not Found</html>\n")
    return FRUITS


def quarantined_jpeg(ws: Workspace) -> list[str]:
    """The unreadable JPEG of ``text_as_jpeg``, quarantined: one fast_dev_run step on the rest."""
    return [*text_as_jpeg(ws), "data.bad_images=quarantine", "debug=fdr", "model.net.model_name=test_resnet"]


def truncated_test_png(ws: Workspace) -> list[str]:
    """One test PNG cut to half its bytes (a torn download)."""
    root = ws.fruits()
    path = root / "test" / "t4.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return FRUITS


# ---- Ariel ---------------------------------------------------------------------------------------


def ariel_overrides(experiment: str, root: Path) -> list[str]:
    """Train on a (damaged) copy of the simulated set: 2 training planets, 2 folds, no simulation."""
    return [f"experiment={experiment}", "data=ariel_toy", f"data.root={root}", "data.simulate.if_missing=false",
            "data.n_folds=2"]  # fmt: skip


def first_planet(root: Path) -> int:
    return int(pd.read_csv(root / "train.csv")["planet_id"].iloc[0])


def ariel_case(experiment: str, damage: Callable[[Path], object]) -> Callable[[Workspace], list[str]]:
    """A recipe: copy the simulated set, ``damage(copy)``, train ``experiment`` on it."""

    def build(ws: Workspace) -> list[str]:
        root = ws.ariel()
        damage(root)
        return ariel_overrides(experiment, root)

    return build


def ariel_clean(experiment: str, *extra: str) -> Callable[[Workspace], list[str]]:
    """A recipe: an undamaged copy of the simulated set, with extra (bad) overrides."""
    return lambda ws: [*ariel_overrides(experiment, ws.ariel()), *extra]


def labels_first_columns(root: Path, n: int = 100) -> None:
    path = root / "train.csv"
    pd.read_csv(path).iloc[:, :n].to_csv(path, index=False)


def labels_duplicate_planet(root: Path) -> None:
    path = root / "train.csv"
    labels = pd.read_csv(path)
    pd.concat([labels, labels.iloc[:1]]).to_csv(path, index=False)


def labels_empty(root: Path) -> None:
    (root / "train.csv").write_bytes(b"")


def signal_path(root: Path, instrument: str) -> Path:
    return root / "train" / str(first_planet(root)) / f"{instrument}_signal_0.parquet"


def signal_drop_columns(root: Path) -> None:
    path = signal_path(root, "FGS1")
    pq.write_table(pq.read_table(path).select(list(range(1000))), path)


def signal_as_strings(root: Path) -> None:
    path = signal_path(root, "FGS1")
    table = pq.read_table(path)
    pq.write_table(table.set_column(0, table.column_names[0], table.column(0).cast(pa.string())), path)


def signal_all_nan(root: Path) -> None:
    path = signal_path(root, "FGS1")
    nan = np.full(pq.read_metadata(path).num_rows, np.nan)
    pq.write_table(pa.table({str(j): nan for j in range(32 * 32)}), path)


def calibration_path(root: Path, name: str) -> Path:
    return root / "train" / str(first_planet(root)) / "FGS1_calibration_0" / f"{name}.parquet"


def calibration_truncated(root: Path) -> None:
    path = calibration_path(root, "flat")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def calibration_missing(root: Path) -> None:
    calibration_path(root, "dark").unlink()


# ---- video ---------------------------------------------------------------------------------------


def garbage_video(ws: Workspace) -> list[str]:
    """A .mp4 that holds text."""
    path = ws.folder("clips") / "clip.mp4"
    path.write_bytes(b"\x00not a video\n" * 200)
    return [*VIDEO, f"data.source={path}"]


# ---- ensemble and predict --------------------------------------------------------------------------


def member(ws: Workspace, name: str = "cv_a") -> str:
    """A valid synthetic K-fold member under ``<root>/members`` (not outputs/); its relative path."""
    write_member(ws.folder("members"), name, seed=1, n=60, n_test=10)
    return f"members/{name}"


def member_without_oof(ws: Workspace) -> list[str]:
    """A run folder with a finished single run's files but no oof/."""
    folder = ws.folder("members", "single_run")
    (folder / "config.yaml").write_text("seed: 42\n")
    return ["members=[members/single_run]"]


def member_truncated_oof(ws: Workspace) -> list[str]:
    """A member whose oof.parquet lost its second half."""
    rel = member(ws)
    path = ws.root / rel / "oof" / "oof.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [f"members=[{rel}]"]


def member_nan_probs(ws: Workspace) -> list[str]:
    """A member whose oof.parquet holds NaN probabilities for some rows."""
    rel = member(ws)
    path = ws.root / rel / "oof" / "oof.parquet"
    frame = pd.read_parquet(path)
    frame.loc[frame.index[:3], "prob_0"] = np.nan
    frame.to_parquet(path, index=False)
    return [f"members=[{rel}]"]


# ---- predict and evaluate ----------------------------------------------------------------------------

#: The digits experiment with the tiny timm network (its checkpoints are built in a second).
DIGITS_TINY = ["experiment=digits", "model.net.model_name=test_resnet"]


def model_checkpoint(ws: Workspace, name: str, *overrides: str) -> Path:
    """A Lightning checkpoint (untrained weights) of the model ``overrides`` configure, in ``<root>/ckpts``."""
    import lightning.pytorch as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from src.core.resolvers import PROJECT_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "configs")):
        cfg = compose(config_name="train", overrides=list(overrides))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(instantiate(cfg.model))
    path = ws.folder("ckpts") / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


def digits_split(split: str) -> Callable[[Workspace], list[str]]:
    """A recipe: a checkpoint of the tiny digits model, predicted on ``split``."""
    return lambda ws: [*DIGITS_TINY, f"ckpt={model_checkpoint(ws, 'digits', *DIGITS_TINY)}", f"split={split}"]


def foreign_checkpoint(ws: Workspace) -> list[str]:
    """The post-filter's checkpoint given to the digits experiment."""
    ckpt = model_checkpoint(ws, "postfilter", "experiment=video_postfilter")
    return [*DIGITS_TINY, f"ckpt={ckpt}", "split=val"]


def torn_checkpoint(ws: Workspace) -> list[str]:
    """A checkpoint cut to a third of its bytes (a copy that died mid-way)."""
    path = model_checkpoint(ws, "digits", *DIGITS_TINY)
    torn = path.with_name("torn.ckpt")
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return [*DIGITS_TINY, f"ckpt={torn}", "split=val"]


def classification_records(n: int = 4) -> list[dict]:
    """``n`` labelled classification records of three classes."""
    probs = np.eye(3)[np.arange(n) % 3] * 0.7 + 0.1
    return [
        {"sample_id": f"img{i}", "split": "val", "gt": {"label": i % 3}, "pred": {"label": i % 3, "probs": p},
         "errors": []}
        for i, p in enumerate(probs)
    ]  # fmt: skip


def predictions(ws: Workspace, records: list[dict], resolved: dict | None, where: str = "preds") -> Path:
    """A predictions folder under ``<root>/<where>``: the records, and ``resolved_config.json`` when given."""
    from src.core.artifacts import build_resolved_config, write_json, write_records

    folder = ws.folder(*where.split("/"), "val")
    write_records(folder / "gt_vs_pred.jsonl", records)
    if resolved is not None:
        base = build_resolved_config("classification", ["predict"], {"records": "gt_vs_pred.jsonl"}, None, None, {})
        write_json(folder / "resolved_config.json", {**base, **resolved})
    return folder


def truncated_records(strict: bool, where: str = "preds") -> Callable[[Workspace], list[str]]:
    """A recipe: a predictions folder whose last line lost its second half."""

    def build(ws: Workspace) -> list[str]:
        folder = predictions(ws, classification_records(), {}, where)
        path = folder / "gt_vs_pred.jsonl"
        text = path.read_text()
        path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
        return [f"path={folder}", f"strict={str(strict).lower()}"]

    return build


def record_of_another_task(ws: Workspace) -> list[str]:
    """A classification folder whose second record is an Ariel planet's."""
    planet = {"sample_id": "1234", "split": "val", "gt": {"mu": [0.01] * 283},
              "pred": {"mu": [0.01] * 283, "sigma": [0.001] * 283}, "errors": []}  # fmt: skip
    records = classification_records()
    return [f"path={predictions(ws, [records[0], planet, *records[1:]], {})}"]


def schema_version(version: object) -> Callable[[Workspace], list[str]]:
    """A recipe: a predictions folder whose resolved_config.json has ``schema_version: version``."""
    return lambda ws: [f"path={predictions(ws, classification_records(), {'schema_version': version})}"]


def not_a_predictions_folder(ws: Workspace) -> list[str]:
    """A cv.py member folder (out-of-fold parquet files) given as predictions."""
    return [f"path={ws.root / member(ws)}"]


def records_without_task(ws: Workspace) -> list[str]:
    """Records another tool wrote, without resolved_config.json, and no task= given."""
    return [f"path={predictions(ws, classification_records(), None) / 'gt_vs_pred.jsonl'}"]


# ---- the detection evaluator -------------------------------------------------------------------------


def detection_record(sample_id: str, **changes: object) -> dict:
    """A labelled 100x100 detection record: one cat, found exactly with score 0.9; ``changes`` replace keys."""
    cat = {"type": "bbox_2d", "points": [0, 0, 10, 10], "desc": "cat"}
    return {"sample_id": sample_id, "split": "val", "width": 100, "height": 100, "gt": [cat],
            "pred": [{**cat, "score": 0.9}], "errors": [], **changes}  # fmt: skip


def detection_lines(rows: list[dict | str], *overrides: str, where: str = "preds") -> Callable[[Workspace], list[str]]:
    """A recipe: ``<root>/<where>/val/gt_vs_pred.jsonl`` of ``rows`` (dicts as JSON lines, strings as they
    are), no resolved_config.json, evaluated with ``task=detection``."""

    def build(ws: Workspace) -> list[str]:
        import json

        folder = ws.folder(*where.split("/"), "val")
        text = "".join((r if isinstance(r, str) else json.dumps(r, sort_keys=True)) + "\n" for r in rows)
        (folder / "gt_vs_pred.jsonl").write_text(text)
        return [f"path={folder}", "task=detection", "log_mlflow=false", *overrides]

    return build


# ---- lens correction -----------------------------------------------------------------------------

#: The lens experiment on a tiny simulated set at ``<root>/data/lens_bad`` (written by ``lens_set``).
LENS = ["experiment=lens_bucket", "data=lens_toy", "data.prepare=null", "model.search.k1=[-0.2,0.0,0.1]",
        "model.search.k2=[0.0,0.0,0.1]", "model.search.micro_steps=0", "model.fit_per_bucket=2",
        "data.n_folds=2"]  # fmt: skip


def lens_set(ws: Workspace) -> Path:
    """A fresh simulated lens set (12 pairs, 3 test photos) at ``<root>/data/lens_bad``."""
    from src.datamodules.lens.simulate import write_lens_set

    return write_lens_set(ws.root / "data" / "lens_bad", n_train=12, n_test=3, seed=1)


def lens_case(damage: Callable[[Path], object], *extra: str) -> Callable[[Workspace], list[str]]:
    """The lens set damaged by ``damage(root)``, with the overrides that read it."""

    def build(ws: Workspace) -> list[str]:
        root = lens_set(ws)
        damage(root)
        return [*LENS, f"data.root={root}", *extra]

    return build


def lens_first(root: Path, suffix: str) -> Path:
    """The first training file ending in ``suffix`` (``_original.jpg`` or ``_generated.jpg``)."""
    return sorted((root / "lens-correction-train-cleaned").glob(f"*{suffix}"))[0]


def lens_truncate_input(root: Path) -> None:
    path = lens_first(root, "_original.jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def lens_shrink_target(root: Path) -> None:
    from PIL import Image

    path = lens_first(root, "_generated.jpg")
    with Image.open(path) as img:
        img.resize((img.width - 8, img.height)).save(path, quality=90)


def lens_grey_input(root: Path) -> None:
    from PIL import Image

    path = lens_first(root, "_original.jpg")
    with Image.open(path) as img:
        img.convert("L").save(path, quality=90)


def lens_case_collision(root: Path) -> None:
    first = sorted((root / "test-originals").glob("*.jpg"))[0]
    (first.parent / first.name.upper()).write_bytes(first.read_bytes())
