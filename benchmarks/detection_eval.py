"""COCO evaluation of detection records: podium's evaluator against pycocotools and faster-coco-eval.

    python benchmarks/detection_eval.py [--seeds 2] [--images 5000] [--preds 100]
    python benchmarks/detection_eval.py --seeds 1 --images 200   # smoke run

Each repeat generates (numpy, seeded) a detection artifact in a temporary folder: ``--images``
images of random size, 5 to 10 ground-truth boxes each from 3 classes and of every COCO size
range, and ``--preds`` scored predictions per image (each ground-truth box jittered, its label
sometimes wrong, then random boxes of lower scores), written as a ``gt_vs_pred.jsonl`` of the
artifact contract, and the same boxes as COCO ``coco_gt.json`` / ``coco_preds.json``. Four
timed ways to the same COCO bbox AP, in rotating order from one repeat to the next:

(a) pycocotools: ``COCO(gt json)``, ``loadRes(preds json)``, ``COCOeval`` evaluate / accumulate /
    summarize;
(b) faster-coco-eval: the same steps with its ``COCO`` and ``COCOeval_faster``;
(c) podium end to end on the records file: ``src.core.evaluating.evaluate`` with the config of
    ``python evaluate.py path=<folder> task=detection metrics=coco log_mlflow=false`` (records
    read, parsed, converted, evaluated, ``eval/`` written). When that wiring is not available,
    (c') times the library path instead: ``read_record_lines`` + ``parse_record`` + ``to_coco`` +
    ``coco_metrics``, and the result file says which one ran;
(d) ``coco_metrics`` once with each backend on the same in-memory COCO data: the measurement
    behind ``backend="auto"``.

Targets: (c) / (a) <= 2.0 on the per-repeat ratio, and the AP of (c) equal to that of (a) within
1e-9 (the records hold the same decimal coordinates as the COCO files). The default run took 6 min
on a shared 2-core CPU (load about 3): per seed (a) 53 s, (b) 15 s, (c') 24 s (of which parsing
the records 11 s), (d) 46 s with pycocotools and 9 s with faster-coco-eval.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Recorder  # noqa: E402

CLASSES = ("car", "person", "sign")
RATIO_TARGET = 2.0
AGREE_TARGET = 1e-9
RECORDS = "gt_vs_pred.jsonl"
GT_JSON = "coco_gt.json"
PREDS_JSON = "coco_preds.json"


# ---- data ----------------------------------------------------------------------------------------


def _boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``n`` boxes inside the image, sides log-uniform in [6, 300] px (small, medium and large)."""
    sides = np.exp(rng.uniform(np.log(6), np.log(300), size=(n, 2)))
    sides = np.minimum(sides, [width - 1, height - 1])
    x1 = rng.uniform(0, width - sides[:, 0])
    y1 = rng.uniform(0, height - sides[:, 1])
    return np.column_stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]])


def _jitter(rng: np.random.Generator, gt: np.ndarray, width: int, height: int) -> np.ndarray:
    """Each box moved and resized by up to ~15 % of its sides, kept inside the image and non-empty."""
    size = np.repeat(gt[:, 2:] - gt[:, :2], 2, axis=0).reshape(-1, 4)
    out = gt + rng.normal(0, 0.08, size=gt.shape) * size
    out = np.clip(out, 0, [width, height, width, height])
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1)
    return np.clip(out, 0, [width, height, width, height])


def generate(seed: int, n_images: int, n_preds: int) -> list[dict[str, Any]]:
    """The artifact's records (coordinates rounded to 2 decimals, scores to 4)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_images):
        width, height = int(rng.integers(320, 1025)), int(rng.integers(240, 769))
        n_gt = int(rng.integers(5, 11))
        gt = np.round(_boxes(rng, n_gt, width, height), 2)
        gt_labels = rng.integers(0, len(CLASSES), n_gt)
        found = rng.random(n_gt) < 0.85
        hit = np.round(_jitter(rng, gt[found], width, height), 2)
        hit_labels = np.where(rng.random(len(hit)) < 0.9, gt_labels[found], rng.integers(0, len(CLASSES), len(hit)))
        n_random = max(n_preds - len(hit), 0)
        noise = np.round(_boxes(rng, n_random, width, height), 2)
        boxes = np.concatenate([hit, noise])[:n_preds]
        labels = np.concatenate([hit_labels, rng.integers(0, len(CLASSES), n_random)])[:n_preds]
        scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, len(hit)), rng.uniform(0.0, 0.7, n_random)]), 4)
        records.append(
            {
                "sample_id": f"img_{i:05d}",
                "split": "val",
                "width": width,
                "height": height,
                "errors": [],
                "gt": [
                    {"type": "bbox_2d", "points": b, "desc": CLASSES[c]}
                    for b, c in zip(gt.tolist(), gt_labels, strict=True)
                ],
                "pred": [
                    {"type": "bbox_2d", "points": b, "desc": CLASSES[c], "score": s}
                    for b, c, s in zip(boxes.tolist(), labels, scores.tolist(), strict=True)
                ],
            }
        )
    return records


def coco_json(records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The same boxes as a COCO ground-truth dataset and results list (written independently of podium)."""
    cat = {name: i + 1 for i, name in enumerate(CLASSES)}
    images, anns, dets = [], [], []
    for image_id, r in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": r["sample_id"], "width": r["width"], "height": r["height"]})
        for box in r["gt"]:
            x1, y1, x2, y2 = box["points"]
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat[box["desc"]],
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        for box in r["pred"]:
            x1, y1, x2, y2 = box["points"]
            dets.append({"image_id": image_id, "category_id": cat[box["desc"]], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": box["score"]})  # fmt: skip
    categories = [{"id": i, "name": n, "supercategory": ""} for n, i in cat.items()]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def write_dataset(folder: Path, seed: int, n_images: int, n_preds: int) -> None:
    """Write the records file and the two COCO files of one repeat into ``folder``."""
    from src.core.artifacts import write_records

    records = generate(seed, n_images, n_preds)
    write_records(folder / RECORDS, records)
    gt, dets = coco_json(records)
    (folder / GT_JSON).write_text(json.dumps(gt))
    (folder / PREDS_JSON).write_text(json.dumps(dets))


# ---- the three ways ------------------------------------------------------------------------------


def run_pycocotools(folder: Path) -> dict[str, Any]:
    """(a) pycocotools on the COCO files; its AP and seconds."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / GT_JSON))
        dt = gt.loadRes(str(folder / PREDS_JSON))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"seconds": time.perf_counter() - start, "AP": float(ev.stats[0]), "stats": [float(s) for s in ev.stats]}


def run_faster(folder: Path) -> dict[str, Any]:
    """(b) faster-coco-eval on the COCO files; its AP and seconds."""
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_args: Any, **_kwargs: Any) -> None:
        return None

    start = time.perf_counter()
    gt = COCO(str(folder / GT_JSON), print_function=quiet)
    dt = gt.loadRes(str(folder / PREDS_JSON))
    ev = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"seconds": time.perf_counter() - start, "AP": float(ev.stats[0]), "stats": [float(s) for s in ev.stats]}


def run_podium_evaluate(folder: Path) -> dict[str, Any]:
    """(c) ``evaluate.py path=<folder> task=detection metrics=coco log_mlflow=false``, in process."""
    from hydra import compose, initialize_config_dir

    import src.core  # noqa: F401  (registers the config resolvers)
    from src.core.evaluating import evaluate

    start = time.perf_counter()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[f"path={folder}", "task=detection", "metrics=coco", "log_mlflow=false"],
        )
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = evaluate(cfg)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "AP": _bbox_ap(metrics)}


def _bbox_ap(metrics: dict[str, float]) -> float:
    """The bbox AP (IoU 0.50:0.95) among evaluate's metrics: the one key (not segm) whose last part is ``AP``."""
    keys = [k for k in metrics if re.split(r"[/._]", k)[-1] == "AP" and "segm" not in k]
    if len(keys) != 1:
        raise KeyError(f"no single bbox AP among the metrics {sorted(metrics)}")
    return float(metrics[keys[0]])


def run_podium_library(folder: Path) -> dict[str, Any]:
    """(c') the library path: read the records, parse them, convert to COCO, evaluate (auto backend)."""
    from src.core.artifacts import read_record_lines
    from src.metrics.detection import parse_record
    from src.metrics.detection_coco import coco_metrics, to_coco

    marks = [time.perf_counter()]
    records, _, _ = read_record_lines(folder / RECORDS, strict=False)
    marks.append(time.perf_counter())
    parsed = []
    for position, record in enumerate(records):
        result, _ = parse_record(record, where=f"records[{position}]")
        if result is not None:
            parsed.append((record["sample_id"], result))
    marks.append(time.perf_counter())
    data = to_coco(parsed)
    marks.append(time.perf_counter())
    result = coco_metrics(data, "bbox", "auto")
    marks.append(time.perf_counter())
    stages = dict(zip(("read", "parse", "to_coco", "evaluate"), np.diff(marks).tolist(), strict=True))
    return {"seconds": marks[-1] - marks[0], "AP": result["stats"]["AP"], "stages": stages}


def run_backends(folder: Path) -> dict[str, Any]:
    """(d) ``coco_metrics`` with each backend on the same in-memory COCO data (what ``auto`` chooses between)."""
    from src.core.artifacts import read_record_lines
    from src.metrics.detection import parse_record
    from src.metrics.detection_coco import BACKENDS, coco_metrics, to_coco

    records, _, _ = read_record_lines(folder / RECORDS, strict=False)
    data = to_coco([(r["sample_id"], parse_record(r)[0]) for r in records])
    seconds, stats = {}, {}
    for backend in BACKENDS:
        start = time.perf_counter()
        stats[backend] = list(coco_metrics(data, "bbox", backend)["stats"].values())
        seconds[backend] = time.perf_counter() - start
    a, b = (np.asarray(stats[k]) for k in BACKENDS)
    return {"seconds": seconds, "AP": float(a[0]), "stats_diff": float(np.nanmax(np.abs(a - b)))}


def choose_podium(mode: str) -> tuple[str, Callable[[Path], dict[str, Any]], str]:
    """Which podium path to time: ``(name, function, why)``; ``auto`` tries (c) on 5 images, else (c')."""
    if mode == "library":
        return "c'", run_podium_library, "--podium library"
    if mode == "evaluate":
        return "c", run_podium_evaluate, "--podium evaluate"
    with tempfile.TemporaryDirectory(prefix="detection_eval_try_") as tmp:
        write_dataset(Path(tmp), 0, 5, 10)
        try:
            run_podium_evaluate(Path(tmp))
        except Exception as exc:  # noqa: BLE001  (any failure of the wiring means: time the library path)
            return "c'", run_podium_library, f"evaluate.py's detection path failed: {type(exc).__name__}: {exc}"
    return "c", run_podium_evaluate, "evaluate.py task=detection metrics=coco"


# ---- main ----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2, help="repeats, one data seed each (default 2)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--images", type=int, default=5000, help="images per data set (default 5000)")
    p.add_argument("--preds", type=int, default=100, help="predictions per image (default 100)")
    p.add_argument("--podium", choices=("auto", "evaluate", "library"), default="auto",
                   help="(c) evaluate.py, (c') the library path, or auto: (c) when it works")  # fmt: skip
    args = p.parse_args()
    rec = Recorder("detection_eval", title="Detection COCO evaluation: podium vs pycocotools vs faster-coco-eval")
    rows: list[dict[str, Any]] = []
    podium_name, podium_fn, why = choose_podium(args.podium)
    print(f"podium path: ({podium_name}) — {why}", flush=True)
    for repeat, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
        with tempfile.TemporaryDirectory(prefix="detection_eval_") as tmp:
            folder = Path(tmp)
            start = time.perf_counter()
            write_dataset(folder, seed, args.images, args.preds)
            print(f"--- seed {seed}: {args.images} images x {args.preds} predictions written in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
            runs = {"a": run_pycocotools, "b": run_faster, "c": podium_fn, "d": run_backends}
            order = list(runs)[repeat % len(runs) :] + list(runs)[: repeat % len(runs)]
            row: dict[str, Any] = {"seed": seed}
            for key in order:
                row[key] = result = runs[key](folder)
                name = podium_name if key == "c" else key
                took = ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items()) if key == "d" else (
                    f"{result['seconds']:.2f} s")  # fmt: skip
                extra = f", stages {result['stages']}" if "stages" in result else ""
                print(f"({name}) {took}, AP {result['AP']:.6f}{extra}", flush=True)
            rows.append(row)
    record(rec, rows, podium_name, why, args)


def record(rec: Recorder, rows: list[dict[str, Any]], podium: str, why: str, args: argparse.Namespace) -> None:
    """Figures, targets and the per-repeat table."""
    c_label = "podium evaluate.py end to end" if podium == "c" else "podium library path"
    sec = {k: [r[k]["seconds"] for r in rows] for k in "abc"}
    sec.update({f"d_{k}": [r["d"]["seconds"][k] for r in rows] for k in ("pycocotools", "faster_coco_eval")})

    def ratio(num: str, den: str) -> list[float]:
        return [n / d for n, d in zip(sec[num], sec[den], strict=True)]

    rec.figure("pycocotools_s", sec["a"], label="(a) pycocotools load + evaluate", unit="s", digits=2)
    rec.figure("faster_coco_eval_s", sec["b"], label="(b) faster-coco-eval load + evaluate", unit="s", digits=2)
    rec.figure("podium_s", sec["c"], label=f"({podium}) {c_label}", unit="s", digits=2)
    d_label = "(d) coco_metrics on in-memory COCO data, backend="
    rec.figure("coco_metrics_pycocotools_s", sec["d_pycocotools"], label=d_label + "pycocotools", unit="s", digits=2)
    rec.figure(
        "coco_metrics_faster_s", sec["d_faster_coco_eval"], label=d_label + "faster_coco_eval", unit="s", digits=2
    )
    rec.figure("ratio_podium_pycocotools", ratio("c", "a"), label=f"({podium}) / (a) time ratio", digits=3)
    rec.figure("ratio_podium_faster", ratio("c", "b"), label=f"({podium}) / (b) time ratio", digits=3)
    rec.figure("ratio_faster_pycocotools", ratio("b", "a"), label="(b) / (a) time ratio", digits=3)
    rec.figure(
        "ratio_backends",
        ratio("d_faster_coco_eval", "d_pycocotools"),
        label="(d) faster_coco_eval / pycocotools time ratio in coco_metrics",
        digits=3,
    )
    rec.figure("ap", [r["a"]["AP"] for r in rows], label="bbox AP@[.50:.95] (pycocotools)", digits=4)
    diffs = [abs(r["c"]["AP"] - r["a"]["AP"]) for r in rows]
    rec.figure("ap_diff_podium", diffs, label=f"|AP ({podium}) - AP (a)|", digits=12)
    stats_diffs = [max(abs(x - y) for x, y in zip(r["a"]["stats"], r["b"]["stats"], strict=True)) for r in rows]
    rec.figure("stats_diff_faster", stats_diffs, label="max |stat (b) - stat (a)| over the 12 stats", digits=12)
    backend_diffs = [r["d"]["stats_diff"] for r in rows]
    rec.figure("stats_diff_backends", backend_diffs, label="(d) max |stat| difference of the backends", digits=12)
    rec.target("ratio_podium_pycocotools", "<=", RATIO_TARGET, text="podium end to end over pycocotools alone")
    rec.target("ap_diff_podium", "<=", AGREE_TARGET, text="metrics agree: podium's AP equals pycocotools'")
    stages = ("read", "parse", "to_coco", "evaluate") if all("stages" in r["c"] for r in rows) else ()
    timed = ("a", "b", "c", "d_pycocotools", "d_faster_coco_eval")
    columns = ["seed", "(a) pycocotools", "(b) faster-coco-eval", f"({podium}) podium", "(d) pycocotools"]
    columns += ["(d) faster-coco-eval", "AP", *(f"({podium}) {s}" for s in stages)]
    table = []
    for i, r in enumerate(rows):
        cells = [r["seed"], *(f"{sec[k][i]:.2f}" for k in timed), f"{r['a']['AP']:.4f}"]
        table.append(cells + [f"{r['c']['stages'][s]:.2f}" for s in stages])
    rec.table("Repeats (seconds; one data seed each)", columns, table)
    rec.note(f"podium path timed: ({podium}), {why}")
    rec.write(
        summary=f"{args.images} generated images x {args.preds} predictions (5-10 ground-truth boxes each, "
        f"{len(CLASSES)} classes), {len(rows)} data seeds: COCO bbox evaluation by pycocotools and faster-coco-eval "
        "on COCO JSON files, and by podium on the same boxes as a gt_vs_pred.jsonl."
    )


if __name__ == "__main__":
    main()
