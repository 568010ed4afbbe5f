"""The lens module's parts: the learned network's start, the losses, the optimizer's groups, the
checkpointed table, refused settings, and the export of a predicted split."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from src.core.errors import ConfigError
from src.datamodules.lens.geometry import Camera, undistort
from src.modules.lens.export import export_lens
from src.modules.lens.heuristics import CoefficientTable, Fit
from src.modules.lens.losses import check_weights, image_terms
from src.modules.lens.module import TABLE_KEY, LensCorrector
from src.modules.lens.networks import LensNet


@pytest.fixture(scope="module")
def net() -> LensNet:
    torch.manual_seed(0)
    return LensNet(backbone="resnet18", hidden=16)


def test_an_untrained_network_is_the_prior_camera(net: LensNet) -> None:
    thumb = torch.rand(3, 3, 32, 32)
    sizes = torch.tensor([[384.0, 256.0], [256.0, 384.0], [288.0, 256.0]])
    prior = torch.tensor([[-0.3, 0.1, 0.0, 0.0]]).repeat(3, 1)
    assert torch.equal(net(thumb, sizes, prior), torch.zeros(3, 4))


def test_camera_targets_move_the_focal_length_into_k1_and_k2() -> None:
    truth = torch.tensor([[-0.3, 0.1, 1 / 6, 0.0, 4 / 3], [float("nan")] * 5])
    got = LensCorrector.camera_targets(truth)
    assert got[0].tolist() == pytest.approx([-0.3 / (4 / 3) ** 2, 0.1 / (4 / 3) ** 4, 1 / 6, 0.0])
    assert torch.isnan(got[1]).all()
    # the same distortion: correcting with (k1 / f^2, k2 / f^4) at focal 1 equals (k1, k2) at focal f
    photo = np.ascontiguousarray(data.astronaut()[100:356, 64:352])
    a = undistort(photo, Camera(-0.3, 0.1, focal=4 / 3)).astype(float)
    b = undistort(photo, Camera(float(got[0, 0]), float(got[0, 1]))).astype(float)
    assert np.abs(a - b).mean() < 1.0


def test_image_terms_are_zero_for_the_target_and_grow_with_the_distortion() -> None:
    photo = torch.from_numpy(np.ascontiguousarray(data.coffee()[:192, :256])).permute(2, 0, 1)[None].float() / 255
    same = image_terms(photo, photo)
    assert all(float(v) < 1e-3 for v in same.values())
    mild = image_terms(torch.from_numpy(undistort(data.coffee()[:192, :256], Camera(-0.1, 0.0))).permute(2, 0, 1)[None]
                       .float() / 255, photo)  # fmt: skip
    strong = image_terms(torch.from_numpy(undistort(data.coffee()[:192, :256], Camera(-0.4, 0.0))).permute(2, 0, 1)
                         [None].float() / 255, photo)  # fmt: skip
    for name in ("edge", "gradient", "ssim"):
        assert 1e-3 < float(mild[name]) < float(strong[name]), name


def test_loss_weights_are_checked() -> None:
    assert check_weights({"edge": 2.0}) == {"edge": 2.0, "gradient": 0.0, "ssim": 0.0}
    with pytest.raises(ConfigError, match=r"unknown terms \['mae'\]"):
        check_weights({"mae": 1.0})
    with pytest.raises(ConfigError, match="must be finite, >= 0 and not all 0"):
        check_weights({"edge": 0.0})


def test_the_shape_path_learns_at_its_own_rate(net: LensNet) -> None:
    model = LensCorrector(
        method="learned", net=net, shape_lr_scale=10.0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )  # fmt: skip
    optimizer = model._make_optimizer()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
    shape_ids = {id(p) for p in net.shape_head.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == shape_ids
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_the_fitted_table_travels_in_the_checkpoint() -> None:
    model = LensCorrector(method="bucket")
    table = CoefficientTable(
        "bucket", Fit(Camera(-0.2, 0.1), 90.0, 40), buckets={"384x256": Fit(Camera(-0.3), 93.0, 16)}
    )
    model.table = table
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    again = LensCorrector(method="bucket")
    again.on_load_checkpoint(checkpoint)
    assert checkpoint[TABLE_KEY]["buckets"]["384x256"]["camera"]["k1"] == -0.3
    assert again.prior_cameras(["384x256", "320x240"], ["landscape", "landscape"]) == [Camera(-0.3), Camera(-0.2, 0.1)]
    with pytest.raises(ConfigError, match="has no fitted cameras"):
        LensCorrector(method="bucket").prior_cameras(["a"], ["b"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "unet"}, "model.method='unet' is not a lens correction"),
        ({"method": "learned"}, "model.method=learned needs model.net"),
        ({"method": "bucket", "jpeg_quality": 0}, "model.jpeg_quality=0"),
        ({"method": "bucket", "camera_weight": float("nan")}, "model.camera_weight=nan"),
        ({"method": "bucket", "search": {"k1": [0.1, -0.1, 0.05]}}, r"model.search.k1=\[0.1, -0.1, 0.05\]"),
    ],
)
def test_refused_settings_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LensCorrector(**kwargs)


def test_the_export_writes_the_corrected_photos_zip_scores_and_report(tmp_path: Path) -> None:
    photo = np.ascontiguousarray(data.astronaut()[:96, :128])
    records = []
    for i, camera in enumerate([Camera(-0.3, 0.1), Camera(), Camera(-0.1, 0.0, cx=0.1)]):
        source, target = tmp_path / f"IMG_{i}.jpg", tmp_path / f"IMG_{i}_target.jpg"
        Image.fromarray(photo).save(source, quality=95)
        Image.fromarray(photo).save(target, quality=95)
        records.append({
            "sample_id": f"IMG_{i}", "split": "test", "bucket": "128x96", "width": 128, "height": 96,
            "input": str(source), "gt": {"target": str(target)} if i < 2 else None,
            "pred": {**camera.as_dict(), "score": 50.0 + i, "hard_fail": None, "components": {}},
            "errors": [],
        })  # fmt: skip
    out = tmp_path / "predictions"
    out.mkdir()
    written = export_lens(records, out, quality=95, report_worst=1, coefficients={"method": "bucket"})
    assert set(written) == {"corrected", "submission", "coefficients", "scores", "buckets", "report"}
    names = sorted(p.name for p in (out / "corrected").iterdir())
    assert names == ["IMG_0.jpg", "IMG_1.jpg", "IMG_2.jpg"]
    corrected = np.asarray(Image.open(out / "corrected" / "IMG_0.jpg"))
    assert corrected.shape == photo.shape
    assert np.abs(corrected.astype(float) - undistort(photo, Camera(-0.3, 0.1))).mean() < 4  # JPEG twice
    with zipfile.ZipFile(out / "submission.zip") as archive:
        assert sorted(archive.namelist()) == names
    with open(out / "scores.csv") as fh:
        assert list(csv.reader(fh)) == [["image_id", "score"], ["IMG_0", "50.0000"], ["IMG_1", "51.0000"]]
    report = (out / "report.html").read_text()
    assert "IMG_0" in report and "IMG_1 ·" not in report and report.count("data:image/png;base64,") == 4
    assert not list(out.glob(".*")) and not list((out / "corrected").glob(".*"))
