"""The one place podium touches private Lightning, torch and torchmetrics APIs.

Each accessor below names the private API it reads, the public alternative that was checked and
why that alternative does not serve. ``tests/core/test_private_api.py`` fails, naming the API and
this file, when an installed Lightning, torch or torchmetrics changes one of them; update the
accessor here (the call sites only use the names below).

Checked against Lightning 2.6, torch 2.14 and torchmetrics 1.9. Private names for which a public
alternative does serve are not wrapped here, the public one is used instead:

- ``lightning.fabric.utilities.types._PATH`` is ``str | Path``, written out in ``checkpoint_io``;
- ``StochasticWeightAveraging._max_epochs == -1`` is ``swa_end`` being infinite;
- reading ``Metric._update_count`` is ``Metric.update_count``;
- ``LightningModule._trainer`` (None when detached) is ``LightningModule.trainer``, which raises
  ``RuntimeError`` when detached.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.callbacks import StochasticWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from torchmetrics import Metric

#: Lightning's accumulator of one ``self.log`` key over an epoch (running sum, batch count, reduce
#: function in ``meta``). Public alternative checked: ``trainer.callback_metrics`` and
#: ``trainer.logged_metrics`` hold the values computed from it (the epoch mean, the last step's
#: value), not the running sums an interrupted epoch has to carry into its resumed half.
ResultMetric = _ResultMetric

#: The base class of every batch-norm layer. Public alternative checked: ``nn.BatchNorm1d/2d/3d``,
#: ``nn.SyncBatchNorm`` and ``nn.LazyBatchNorm1d/2d/3d`` share no public base class, and a tuple of
#: them would miss any other subclass; Lightning's ``StochasticWeightAveraging`` tests for this one.
BatchNormBase = _BatchNorm

__all__ = [
    "BatchNormBase",
    "IndexBatchesLoader",
    "ResultMetric",
    "cluster_environment",
    "epoch_accumulators",
    "forget_computed",
    "set_update_count",
    "swa_average_model",
    "weight_averaging_model",
    "weight_averaging_uses_buffers",
]


def epoch_accumulators(trainer: pl.Trainer) -> dict[str, Any]:
    """The training epoch loop's ``self.log`` accumulators by key (``_ResultMetric`` for tensors).

    Private: ``trainer.fit_loop.epoch_loop._results`` (a ``_ResultCollection``). Public
    alternative checked: ``trainer.callback_metrics`` and ``trainer.logged_metrics`` only hold
    computed values, not the running sums and batch counts an interrupted epoch must carry over.

    Args:
        trainer: A trainer inside ``fit``.

    Returns:
        A shallow copy of the collection (key -> accumulator); the accumulators are the live ones.
    """
    return dict(trainer.fit_loop.epoch_loop._results)


def cluster_environment(trainer: pl.Trainer) -> ClusterEnvironment:
    """The cluster environment Lightning runs under (``SLURMEnvironment``, ``LightningEnvironment``...).

    Private: ``trainer._accelerator_connector.cluster_environment``, the object Lightning's own
    signal connector reads when it installs the SLURM requeue handler. Public alternative checked:
    ``trainer.strategy.cluster_environment`` exists only on parallel strategies (DDP, FSDP, ...);
    a one-device SLURM job runs ``SingleDeviceStrategy``, which has none, and ``Trainer`` has no
    public property for it.

    Args:
        trainer: Any trainer.

    Returns:
        The environment chosen by the trainer's accelerator connector.
    """
    return trainer._accelerator_connector.cluster_environment


def swa_average_model(callback: StochasticWeightAveraging) -> pl.LightningModule | None:
    """The averaged copy of the module held by Lightning's ``StochasticWeightAveraging``.

    Private: ``StochasticWeightAveraging._average_model`` (set in ``setup``; None before).
    Public alternative checked: the callback exposes ``n_averaged``, ``swa_start`` and ``swa_end``
    but not the averaged module; ``n_averaged`` is None until averaging starts, whereas the copy
    exists from ``setup`` on and is what ``on_train_end`` transfers into the module.

    Args:
        callback: The SWA callback.

    Returns:
        The averaged module, or None before ``setup``.
    """
    return callback._average_model


def weight_averaging_uses_buffers(callback: WeightAveraging) -> bool:
    """Whether a ``WeightAveraging`` callback (EMA, ...) averages the module's buffers too.

    Private: ``WeightAveraging._use_buffers`` (the ``use_buffers`` constructor argument). Public
    alternative checked: ``AveragedModel.use_buffers`` on the callback's averaged copy, which only
    exists after the callback's ``setup``; the setting must be checked before that.

    Args:
        callback: The averaging callback.

    Returns:
        The ``use_buffers`` it was built with.
    """
    return bool(callback._use_buffers)


def weight_averaging_model(callback: WeightAveraging) -> AveragedModel | None:
    """The ``AveragedModel`` a ``WeightAveraging`` callback (EMA, ...) keeps, None before ``setup``.

    Private: ``WeightAveraging._average_model``. Public alternative checked: the callback exposes
    neither the averaged copy nor its update count; both are needed to tell an average that has
    never been updated (a copy of the initial weights) from a real one.

    Args:
        callback: The averaging callback.

    Returns:
        Its averaged model (``.module``, ``.n_averaged``), or None before ``setup``.
    """
    return callback._average_model


def set_update_count(metric: Metric, count: int) -> None:
    """Restore how many times a torchmetrics ``Metric`` was updated, and drop its cached result.

    Private: ``Metric._update_count`` and ``Metric._computed``. Public alternative checked:
    ``Metric.update_count`` is read-only, ``merge_state`` refuses metrics with
    ``full_state_update=True`` and adds states instead of restoring them, and ``load_state_dict``
    restores only persistent states, never the update count that ``compute`` checks.

    Args:
        metric: The metric whose states were just restored.
        count: Its update count at the time those states were saved.
    """
    metric._update_count = count
    forget_computed(metric)


def forget_computed(metric: Metric) -> None:
    """Drop a metric's cached ``compute()`` result after its states were changed in place.

    Private: ``Metric._computed``. Public alternative checked: ``Metric.reset()`` drops the cache
    but also resets the states just restored; torchmetrics clears the cache itself only inside
    ``update``/``forward``.

    Args:
        metric: A torchmetrics metric (Lightning's ``_ResultMetric`` is one).
    """
    metric._computed = None


class IndexBatchesLoader(DataLoader):
    """A DataLoader whose iterators take their batches of indices from :meth:`index_batches`.

    Private: ``DataLoader._index_sampler``, the property torch's single- and multi-process
    iterators read (once, when they are made) to get the batches of indices to load. Public
    alternative checked: a custom ``batch_sampler`` passed to the constructor. Lightning rebuilds a
    loader's batch sampler from its constructor arguments (``_update_dataloader``, for sampler
    injection and prediction) and wraps it for prediction, which a sampler with its own state does
    not survive; it also leaves ``batch_size`` None on the loader.
    """

    def index_batches(self, base: Any) -> Any:
        """The batches of indices this iteration loads.

        Args:
            base: torch's own (the batch sampler, or the sampler when batching is off).

        Returns:
            ``base`` here; subclasses may skip or reorder batches.
        """
        return base

    @property
    def _index_sampler(self) -> Any:
        return self.index_batches(super()._index_sampler)
