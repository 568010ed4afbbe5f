"""The private Lightning, torch and torchmetrics APIs podium reads (``src/core/private_api.py``).

Each test checks one of them on the installed versions, on a real trainer after a tiny CPU fit
where it needs one, and fails with a message naming the API, its users and the file to update.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
import torchmetrics
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging, WeightAveraging
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from src.core import private_api as api
except ImportError as exc:  # a private name moved or was removed
    raise ImportError(
        f"src/core/private_api.py no longer imports against the installed lightning {lightning.__version__}, "
        f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}: {exc}; update it there"
    ) from exc

VERSIONS = f"lightning {lightning.__version__}, torch {torch.__version__}, torchmetrics {torchmetrics.__version__}"
BATCH, STEPS, FEATURES = 4, 2, 8
#: What a changed private API raises where podium reads it.
BROKEN = (AssertionError, AttributeError, ImportError, KeyError, TypeError, RuntimeError)


@contextlib.contextmanager
def private(name: str, used_by: str) -> Iterator[None]:
    """Turn any failure inside into one message naming the private API, its users and the fix."""
    try:
        yield
    except BROKEN as exc:
        pytest.fail(
            f"private API {name} (used by {used_by}) changed in the installed {VERSIONS}: "
            f"{type(exc).__name__}: {exc}. Update its accessor in src/core/private_api.py",
            pytrace=False,
        )


class TinyModule(pl.LightningModule):
    """A linear layer fitted to nothing in particular, logging its loss per step and per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(FEATURES, 2)
        self.losses: list[float] = []

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=BATCH)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(pl.Callback):
    """Reads the private APIs where podium's callbacks read them, during the fit.

    What a read raises is kept in ``seen`` and raised again by the test that checks that API.
    """

    def __init__(self, swa: StochasticWeightAveraging) -> None:
        self.swa = swa
        self.seen: dict[str, Any] = {}

    def _read(self, key: str, read: Any) -> None:
        try:
            self.seen[key] = read()
        except BROKEN as exc:
            self.seen[key] = exc

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read("environment", lambda: api.cluster_environment(trainer))
        self._read("average_model", lambda: api.swa_average_model(self.swa))
        self._read("swa_end", lambda: self.swa.swa_end)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        def sums() -> dict[str, Any]:
            found = {rm.meta.name: rm for rm in api.epoch_accumulators(trainer).values()}
            rm = found["train/loss"]
            return {"accumulator": rm, "value": float(rm.value), "count": float(rm.cumulated_batch_size)}

        self._read("logged", sums)

    def get(self, key: str) -> Any:
        """What the read of ``key`` returned; raises what it raised."""
        value = self.seen[key]
        if isinstance(value, Exception):
            raise value
        return value


@pytest.fixture(scope="module")
def fitted() -> tuple[pl.Trainer, Probe, StochasticWeightAveraging, TinyModule]:
    """A two-step CPU fit with SWA (max_epochs=-1, so SWA's ``swa_end`` is infinite) and the probe."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(BATCH * 4, FEATURES)), batch_size=BATCH)
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    probe = Probe(swa)
    module = TinyModule()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, swa],
    )
    trainer.fit(module, train_dataloaders=data)
    return trainer, probe, swa, module


def test_epoch_accumulators_hold_the_running_sums_partial_epoch_restores(fitted: tuple) -> None:
    _, probe, _, module = fitted
    with private("trainer.fit_loop.epoch_loop._results / _ResultMetric", "src/callbacks/partial_epoch.py"):
        logged = probe.get("logged")
        rm = logged["accumulator"]
        assert isinstance(rm, api.ResultMetric), f"_results['train/loss'] is a {type(rm).__name__}"
        assert rm.is_tensor is True, "_ResultMetric.is_tensor is no longer True for a tensor value"
        assert rm.meta.on_epoch is True, "_ResultMetric.meta.on_epoch does not say on_epoch=True"
        assert rm.meta.is_mean_reduction, "_ResultMetric.meta.is_mean_reduction is False for the default mean"
        for flag in ("is_sum_reduction", "is_max_reduction", "is_min_reduction"):
            assert getattr(rm.meta, flag) is False, f"_ResultMetric.meta.{flag} is not False for a mean"
        assert rm.meta.reduce_fx is torch.mean, f"_ResultMetric.meta.reduce_fx is {rm.meta.reduce_fx!r}"
        value, count = logged["value"], logged["count"]
        # value is the running sum of loss x batch size, cumulated_batch_size the samples behind it
        assert count == BATCH * STEPS, f"cumulated_batch_size is {count}, expected {BATCH * STEPS}"
        assert value == pytest.approx(sum(module.losses) * BATCH, rel=1e-5), "value is not the running sum"


def test_torchmetrics_update_count_and_cached_result_can_be_restored() -> None:
    with private("torchmetrics Metric._update_count / _computed", "src/callbacks/partial_epoch.py"):
        metric = torchmetrics.MeanMetric()
        metric.update(torch.tensor([1.0, 3.0]))
        assert float(metric.compute()) == 2.0
        assert metric.update_count == 1, f"Metric.update_count is {metric.update_count}"
        metric.mean_value, metric.weight = torch.tensor(10.0), torch.tensor(2.0)
        api.set_update_count(metric, 5)
        assert metric.update_count == 5, "set_update_count did not change Metric.update_count"
        assert float(metric.compute()) == 5.0, "compute() returned the cached result after set_update_count"
        metric.mean_value = torch.tensor(12.0)
        api.forget_computed(metric)
        assert float(metric.compute()) == 6.0, "compute() returned the cached result after forget_computed"


def test_cluster_environment_is_the_one_lightning_installs_signal_handlers_for(fitted: tuple) -> None:
    trainer, probe, _, _ = fitted
    with private("trainer._accelerator_connector.cluster_environment", "src/callbacks/requeue.py"):
        environment = probe.get("environment")
        assert isinstance(environment, ClusterEnvironment), repr(environment)
        assert api.cluster_environment(trainer) is environment
        slurm = SLURMEnvironment(auto_requeue=True)
        one_device = pl.Trainer(accelerator="cpu", devices=1, plugins=[slurm], logger=False)
        assert api.cluster_environment(one_device) is slurm, "the SLURM plugin is not the trainer's environment"
    # Why the public strategy attribute does not serve: a one-device job's strategy has none.
    assert getattr(one_device.strategy, "cluster_environment", None) is None


def test_swa_average_model_exists_from_setup_and_swa_end_is_infinite_without_max_epochs(fitted: tuple) -> None:
    _, probe, swa, module = fitted
    with private("StochasticWeightAveraging._average_model", "src/callbacks/swa.py"):
        assert api.swa_average_model(StochasticWeightAveraging(swa_lrs=0.05)) is None, "set before setup"
        average = probe.get("average_model")
        assert isinstance(average, pl.LightningModule), f"after setup it is {type(average).__name__}"
        assert average is not module, "the average is the module itself, not a copy"
        assert api.swa_average_model(swa) is not None
    with private("StochasticWeightAveraging.swa_end (replaces _max_epochs == -1)", "src/callbacks/swa.py"):
        swa_end = probe.get("swa_end")
        assert swa_end == float("inf"), f"swa_end is {swa_end} with max_epochs=-1"


def test_weight_averaging_reports_use_buffers() -> None:
    with private("WeightAveraging._use_buffers", "src/callbacks/postfilter/qat.py"):
        assert api.weight_averaging_uses_buffers(WeightAveraging()) is True
        assert api.weight_averaging_uses_buffers(WeightAveraging(use_buffers=False)) is False
        assert api.weight_averaging_uses_buffers(EMAWeightAveraging(use_buffers=False)) is False


def test_index_sampler_is_the_property_torch_iterators_take_batches_from() -> None:
    with private("DataLoader._index_sampler", "src/datamodules/base.py (ResumableLoader)"):
        assert isinstance(inspect.getattr_static(DataLoader, "_index_sampler"), property), "no longer a property"

        class SkipFirst(api.IndexBatchesLoader):
            def index_batches(self, base: Any) -> Any:
                return list(base)[1:]

        data = TensorDataset(torch.arange(12))
        plain = [b[0].tolist() for b in DataLoader(data, batch_size=4)]
        skipped = [b[0].tolist() for b in SkipFirst(data, batch_size=4)]
        assert skipped == plain[1:], f"torch's iterator ignored the override: {skipped}"


def test_batch_norm_base_covers_every_batch_norm_layer() -> None:
    with private("torch.nn.modules.batchnorm._BatchNorm", "src/modules/classification/sam.py"):
        layers = (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.LazyBatchNorm2d())
        for layer in layers:
            assert isinstance(layer, api.BatchNormBase), f"{type(layer).__name__} is not a _BatchNorm"
            assert hasattr(layer, "momentum") and hasattr(layer, "num_batches_tracked")
        assert not isinstance(nn.LayerNorm(2), api.BatchNormBase)


def test_a_detached_module_has_no_trainer() -> None:
    with private("LightningModule.trainer raising RuntimeError when detached", "src/modules/guard.py"):
        try:
            _ = TinyModule().trainer
        except RuntimeError:
            pass
        else:
            raise AssertionError("a detached module's trainer property returned instead of raising RuntimeError")


def test_weight_averaging_model_is_the_averaged_copy_with_its_update_count() -> None:
    with private("WeightAveraging._average_model", "src/callbacks/ema.py"):
        callback = EMAWeightAveraging()
        assert api.weight_averaging_model(callback) is None, "set before setup"
        module = pl.LightningModule()
        module.layer = nn.Linear(2, 1)
        callback.setup(pl.Trainer(logger=False, enable_checkpointing=False), module, "fit")
        average = api.weight_averaging_model(callback)
        assert isinstance(average, torch.optim.swa_utils.AveragedModel), type(average).__name__
        assert int(average.n_averaged) == 0 and average.module is not module
