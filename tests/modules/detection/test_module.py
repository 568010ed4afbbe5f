"""Detector: prediction records and the detections.csv export from hand-made outputs, class names from
the datamodule or the config, predict_step on real batches, and the class-count check of ``setup``."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src.core.artifacts import NONFINITE_PRED
from src.core.errors import ConfigError
from src.datamodules.detection.datamodule import DetectionDataModule
from src.datamodules.detection.shapes import write_shapes
from src.modules.detection.module import EXPORT_FILE, Detector
from src.modules.detection.networks import build_detector

NAMES = ["circle", "rect, wide"]


def dets(boxes: list, scores: list, labels: list) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def targets(boxes: list, labels: list) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def outputs() -> list[dict]:
    """Two predict batches as ``predict_step`` returns them (sizes are ``(width, height)``)."""
    nan, inf = math.nan, math.inf
    return [
        {
            "ids": ["img_a", 7],
            "sizes": [(64, 48), (32, 16)],
            "detections": [
                dets(
                    [[1, 2, 30, 40], [5, 6, 7, 8], [0, 0, 10, 10], [2, 2, 4, 12.345678]],
                    [0.25, 0.875, 0.5, 0.5],
                    [1, 2, 3, 1],
                ),
                dets([], [], []),
            ],
            "targets": [targets([[1, 1, 5, 5], [8, 8, 9.5, 12]], [2, 1]), targets([], [])],
        },
        {
            "ids": ["img_c", "img_d"],
            "sizes": [(20, 10), (20, 10)],
            "detections": [dets([[1, nan, 3, 4], [1, 1, 2, 2]], [0.5, 0.75], [1, 1]), dets([[1, 1, 2, 2]], [inf], [2])],
            "targets": [targets([[0, 0, 5, 5]], [1]), targets([], [])],
        },
    ]


def box(points: list[float], desc: str, score: float | None = None) -> dict:
    out = {"type": "bbox_2d", "points": points, "desc": desc}
    return out if score is None else {**out, "score": score}


#: The records of :func:`outputs` with :data:`NAMES`, by hand: predictions by decreasing score (ties
#: in their order), label 3 has no name, a NaN box or an infinite score leaves no prediction.
EXPECTED = [
    {"sample_id": "img_a", "split": "val", "width": 64, "height": 48,
     "gt": [box([1.0, 1.0, 5.0, 5.0], "rect, wide"), box([8.0, 8.0, 9.5, 12.0], "circle")],
     "pred": [box([5.0, 6.0, 7.0, 8.0], "rect, wide", 0.875), box([0.0, 0.0, 10.0, 10.0], "3", 0.5),
              box([2.0, 2.0, 4.0, float(torch.tensor(12.345678))], "circle", 0.5),
              box([1.0, 2.0, 30.0, 40.0], "circle", 0.25)],
     "errors": []},
    {"sample_id": "7", "split": "val", "width": 32, "height": 16, "gt": [], "pred": [], "errors": []},
    {"sample_id": "img_c", "split": "val", "width": 20, "height": 10, "gt": [box([0.0, 0.0, 5.0, 5.0], "circle")],
     "pred": [], "errors": [NONFINITE_PRED]},
    {"sample_id": "img_d", "split": "val", "width": 20, "height": 10, "gt": [], "pred": [],
     "errors": [NONFINITE_PRED]},
]  # fmt: skip


def test_records_by_hand() -> None:
    records = Detector(nn.Identity(), num_classes=2, class_names=NAMES).predict_records(outputs(), "val")
    assert records == EXPECTED
    assert EXPECTED[2]["errors"] == ["nonfinite_pred"]


def test_class_names_come_from_the_datamodule_then_the_config_then_the_label() -> None:
    def descs(module: Detector) -> list[str]:
        return [b["desc"] for b in module.predict_records(outputs()[:1], "test")[0]["pred"]]

    attached = Detector(nn.Identity(), num_classes=2, class_names=NAMES)
    attached.trainer = SimpleNamespace(datamodule=SimpleNamespace(classes=["dm_one", "dm_two"]))
    assert descs(attached) == ["dm_two", "3", "dm_one", "dm_one"]
    assert descs(Detector(nn.Identity(), num_classes=2, class_names=NAMES)) == ["rect, wide", "3", "circle", "circle"]
    assert descs(Detector(nn.Identity(), num_classes=2)) == ["2", "3", "1", "1"]


def test_export_writes_one_row_per_predicted_box(tmp_path: Path) -> None:
    module = Detector(nn.Identity(), num_classes=2, class_names=NAMES)
    written = module.export_predictions(module.predict_records(outputs(), "val"), tmp_path)
    assert written == {"detections": tmp_path / EXPORT_FILE} and EXPORT_FILE == "detections.csv"
    text = (tmp_path / EXPORT_FILE).read_text()
    assert text.splitlines() == [
        "sample_id,label,score,x1,y1,x2,y2",
        'img_a,"rect, wide",0.875,5,6,7,8',
        "img_a,3,0.5,0,0,10,10",
        "img_a,circle,0.5,2,2,4,12.3457",
        "img_a,circle,0.25,1,2,30,40",
    ]  # the image without predictions and those with errors have no rows
    with open(tmp_path / EXPORT_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == {"sample_id": "img_a", "label": "rect, wide", "score": "0.875", "x1": "5", "y1": "6", "x2": "7",
                       "y2": "8"}  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [EXPORT_FILE]  # written atomically, no temp file left


# ---- with data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataModule:
    """Six 32 px shape images (three classes) in two ungrouped folds, read and split."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, n_train=6, n_test=2, image_size=32, max_shapes=2, min_size=6, max_size=12, seed=3)
    dm = DetectionDataModule(str(root), num_classes=3, group_field=None, n_folds=2, seed=0, batch_size=2)
    dm.prepare_data()
    with warnings.catch_warnings():  # scikit-learn: a class with one image among six, in two folds
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        dm.setup("fit")
    return dm


def test_setup_refuses_a_class_count_other_than_the_data_s(shapes: DetectionDataModule) -> None:
    module = Detector(nn.Identity(), num_classes=2)
    module.trainer = SimpleNamespace(datamodule=shapes)
    with pytest.raises(ConfigError) as caught:
        module.setup("fit")
    assert caught.value.what == "model.num_classes=2 but the data has 3 classes ['circle', 'rectangle', 'triangle']"
    assert caught.value.fix.startswith("set data.num_classes=3")
    fits = Detector(nn.Identity(), num_classes=3)
    fits.trainer = SimpleNamespace(datamodule=shapes)
    fits.setup("fit")  # no error
    # Without a datamodule the config's names are the data's classes.
    with pytest.raises(
        ConfigError, match=r"model\.num_classes=3 but the data has 2 classes \['circle', 'rect, wide'\]"
    ):
        Detector(nn.Identity(), num_classes=3, class_names=NAMES).setup("predict")


def test_predict_step_records_cover_the_split_with_the_data_s_boxes(shapes: DetectionDataModule) -> None:
    torch.manual_seed(0)
    net = build_detector("fcos", 3, backbone="test_resnet", min_size=32, max_size=32, score_thresh=0.0,
                         detections_per_img=5)  # fmt: skip
    module = Detector(net, num_classes=3).eval()
    module.trainer = SimpleNamespace(datamodule=shapes)
    with torch.no_grad():
        outs = [module.predict_step(b, i) for i, b in enumerate(shapes.predict_dataloader_for("val"))]
    records = module.predict_records(outs, "val")
    val = shapes.val_set
    assert [r["sample_id"] for r in records] == shapes.sample_ids("val") == val.sample_ids
    for record, size, boxes, labels in zip(records, val.sizes, val.boxes, val.labels, strict=True):
        assert (record["width"], record["height"]) == size == (32, 32) and record["errors"] == []
        assert [b["points"] for b in record["gt"]] == boxes.tolist()
        assert [b["desc"] for b in record["gt"]] == [shapes.classes[k - 1] for k in labels]
        scores = [b["score"] for b in record["pred"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
