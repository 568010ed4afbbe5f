"""QAT switches at its epoch, keeps validation out of the observers, composes with EMA, resumes."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from src.callbacks.postfilter.qat import QuantizationAwareTraining
from src.core.errors import ConfigError
from src.modules.postfilter.module import PostFilterModule
from src.modules.postfilter.quant import quantization_state
from tests.video_support import one_thread, toy_datamodule, toy_module, toy_trainer  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_cache")


def observer_buffers(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Observer statistics and scales (not the on/off flags, which evaluation switches)."""
    return {
        k: v.clone() for k, v in module.state_dict().items() if "activation_post_process" in k and "enabled" not in k
    }


class Probe(pl.Callback):
    """Records the quantization state of each epoch's first batch, and whether validation
    changed any observer buffer."""

    def __init__(self) -> None:
        self.states: list[tuple[bool, bool]] = []
        self.validation_changed: list[bool] = []
        self._before: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.states.append(quantization_state(pl_module.net.body))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._before = observer_buffers(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        after = observer_buffers(pl_module)
        self.validation_changed.append(any(not torch.equal(after[k], v) for k, v in self._before.items()))


def test_qat_switches_at_its_epoch_and_validation_never_observes(tmp_path: Path, cache: Path) -> None:
    probe = Probe()
    qat = QuantizationAwareTraining(start_epoch=1, freeze_observers_epoch=2)
    trainer = toy_trainer(tmp_path, [qat, probe], epochs=3)
    module = toy_module()
    trainer.fit(module, datamodule=toy_datamodule(cache))
    assert probe.states == [(False, False), (True, True), (True, False)]  # float, QAT, QAT with frozen scales
    assert probe.validation_changed == [False, False, False]
    assert float(trainer.callback_metrics["qat/active"]) == 1.0
    assert qat.state_dict() == {"active": True, "frozen": True, "start_epoch": 1}


def test_ema_composes_with_qat_and_restarts_at_the_switch(tmp_path: Path, cache: Path) -> None:
    ema = EMAWeightAveraging(decay=0.5, use_buffers=False, update_starting_at_step=0)
    trainer = toy_trainer(tmp_path, [ema, QuantizationAwareTraining(start_epoch=1)], epochs=3)
    module = toy_module()
    trainer.fit(module, datamodule=toy_datamodule(cache))
    average = ema._average_model
    assert int(average.n_averaged) == 4  # 2 QAT epochs x 2 steps: restarted at the switch
    assert average.module.qat_prepared
    for (name, a), (_, b) in zip(average.module.named_parameters(), module.named_parameters(), strict=True):
        assert torch.equal(a, b), name  # training ends on the averaged weights
    with pytest.raises(ConfigError, match="use_buffers: false"):
        bad = toy_trainer(tmp_path, [EMAWeightAveraging(), QuantizationAwareTraining()], epochs=1)
        bad.fit(toy_module(), datamodule=toy_datamodule(cache))


def test_resume_in_the_qat_phase_continues_exactly(tmp_path: Path, cache: Path) -> None:
    def run(epochs: int, folder: str, ckpt: str | None = None) -> PostFilterModule:
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True)
        ema = EMAWeightAveraging(decay=0.7, use_buffers=False, update_starting_at_step=0)
        trainer = toy_trainer(tmp_path, [ema, QuantizationAwareTraining(start_epoch=1), checkpoint], epochs=epochs)
        trainer.fit(module := toy_module(), datamodule=toy_datamodule(cache), ckpt_path=ckpt, weights_only=False)
        return module

    straight = run(4, "straight")
    run(2, "interrupted")  # stops after epoch 1: QAT on, observers and EMA mid-way
    last = tmp_path / "interrupted" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["callbacks"]["QuantizationAwareTraining"]["active"] and "postfilter_qat" in state
    resumed = run(4, "interrupted", ckpt=str(last))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # weights and every observer buffer
    assert quantization_state(resumed.net.body)[0]


def test_a_qat_checkpoint_loads_into_a_float_module(tmp_path: Path, cache: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = toy_trainer(tmp_path, [QuantizationAwareTraining(start_epoch=0), checkpoint], epochs=1)
    trainer.fit(module := toy_module(), datamodule=toy_datamodule(cache))
    fresh = toy_module()
    assert not fresh.qat_prepared
    loaded = PostFilterModule.load_from_checkpoint(tmp_path / "last.ckpt", net=fresh.net, weights_only=False)
    assert loaded.qat_prepared  # rebuilt from the checkpoint's record before the state dict loaded
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), module.eval()(x))
