"""The contracts between the layers, declared in one place.

A task plugs into podium as a datamodule, a module, its callbacks and an experiment YAML. What
the spine (``src.core``) and the callbacks rely on is written down here as Protocols, and checked
when a run starts (:func:`check_compatibility`): an experiment that pairs a callback with a module
or datamodule lacking the hook it calls is refused with a ConfigError naming both, before the run
directory or the MLflow run exist, instead of failing with an AttributeError mid-run.

Concrete bases implement them: ``src.datamodules.base.PodiumDataModule`` and
``src.modules.base.PodiumModule``. Callbacks declare what they call with two class attributes::

    class TemperatureScaling(Callback):
        module_hooks = (GaussianPredictor,)      # Protocols the LightningModule must satisfy
        datamodule_hooks = (EvaluationSets,)    # Protocols the LightningDataModule must satisfy
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from src.core.errors import ConfigError

# ---- what the spine calls ---------------------------------------------------------------------


@runtime_checkable
class TaskDataModule(Protocol):
    """What ``train.py``/``predict.py``/``cv.py`` call on every datamodule."""

    def check_settings(self) -> None:
        """Refuse settings no loader accepts (``batch_size=-1``) before anything is written."""
        ...

    def fingerprint(self) -> str:
        """A short hash of the data (files and split settings) recorded in the manifest."""
        ...

    @property
    def has_test(self) -> bool:
        """Whether a test split exists (``trainer.test`` runs after fit, predict may use it)."""
        ...

    def splits(self) -> tuple[str, ...]:
        """The splits :meth:`predict_dataloader_for` serves (``val``, ``test``, ...)."""
        ...

    def sample_ids(self, split: str) -> list[str]:
        """The stable ids of a split's samples, in loader order (the records' ``sample_id``)."""
        ...

    def predict_dataloader_for(self, split: str) -> Any:
        """A loader over one split for ``trainer.predict`` (every sample once, in order)."""
        ...

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """How samples become a batch (None: torch's default collate). A detector returns one
        that keeps variable-length targets as lists."""
        ...


@runtime_checkable
class TaskModule(Protocol):
    """What the spine calls on every LightningModule besides Lightning's own hooks."""

    task: str
    evaluator: str

    def check_optimizers(self) -> None:
        """Build the optimizer once at start-up so a refused value fails before anything is written."""
        ...

    def predict_records(self, outputs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Per-sample records (``src.core.artifacts``) from ``trainer.predict`` outputs."""
        ...

    def export_predictions(self, records: Sequence[dict[str, Any]], out_dir: Any, keep_frames: bool = False) -> Any:
        """Write the competition export derived from the records; artifact name -> path."""
        ...


@runtime_checkable
class PredictCalibrator(Protocol):
    """A callback that rewrites ``predict_step`` outputs with state it fitted during training
    (σ temperature scaling, conformal half-widths). ``predict.py`` runs every callback of the
    experiment that has this hook as a Trainer callback: Lightning restores its state from the
    checkpoint, and the callback applies :meth:`calibrate` to each predict batch (in
    ``on_predict_batch_end``), before the module turns the outputs into records."""

    def calibrate(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The batch's outputs with the calibration applied (``sigma`` rescaled, ...)."""
        ...


# ---- hooks that callbacks call on modules -----------------------------------------------------


@runtime_checkable
class GaussianPredictor(Protocol):
    """A module predicting a mean and a standard deviation per target (``mu``, ``sigma`` in its
    validation/predict outputs), scored against a naive prediction (the training labels' mean
    and standard deviation, kept in buffers). Used by σ calibration, physics checks, reports."""

    naive_mean: Any
    naive_sigma: Any


@runtime_checkable
class LossTermHost(Protocol):
    """A module whose training loss accepts extra terms registered by callbacks."""

    def add_loss_term(self, name: str, term: Callable[..., Any]) -> None:
        """Add ``term(output, batch)`` (a scalar) to the training loss."""
        ...


@runtime_checkable
class Quantizable(Protocol):
    """A module that can carry fake quantizers for quantization-aware training."""

    @property
    def qat_prepared(self) -> bool:
        """Whether the fake quantizers are in place."""
        ...

    def prepare_qat(self, quantizer: Any) -> None:
        """Insert fake quantizers (switched off) into the network."""
        ...


@runtime_checkable
class SelfEvaluating(Protocol):
    """A module that scores itself over a loader outside the Trainer (SWA selection)."""

    def evaluate(self, loader: Any) -> dict[str, float]:
        """Metrics (``loss``, ``acc``, ...) over every batch of ``loader``."""
        ...


# ---- hooks that callbacks call on datamodules -------------------------------------------------


@runtime_checkable
class ClassLabels(Protocol):
    """A datamodule of labelled classes (out-of-fold tables, class names in records)."""

    classes: Sequence[str]


@runtime_checkable
class RecodableVideo(Protocol):
    """A video datamodule that can encode its clip at other codec settings (RD curves)."""

    def with_crf(self, crf: int) -> Any:
        """The codec settings with another CRF."""
        ...

    def encode(self, settings: Any) -> Any:
        """The clip encoded with ``settings``."""
        ...

    def decoded_frames(self, settings: Any) -> Any:
        """The clip's frames after an encode/decode round trip with ``settings``."""
        ...


# ---- the start-up check -----------------------------------------------------------------------


def protocol_members(protocol: type) -> list[str]:
    """The names a Protocol declares (methods, properties and annotated attributes)."""
    names = {n for n in vars(protocol) if not n.startswith("_")}
    names |= set(getattr(protocol, "__annotations__", {}))
    return sorted(names)


def _missing(obj: Any, protocol: type) -> list[str]:
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]


def check_compatibility(model: Any, datamodule: Any, callbacks: Iterable[tuple[str, Any]]) -> None:
    """Refuse a callback whose module or datamodule hooks are missing, naming both sides.

    Args:
        model: The instantiated LightningModule.
        datamodule: The instantiated LightningDataModule.
        callbacks: ``(config key, callback)`` pairs, e.g. ``("callbacks.temperature", cb)``.

    Raises:
        ConfigError: ``callbacks.<key> (<Callback>) needs <Protocol> (<members>) from the model,
            which <Module> lacks``, with the fix.
    """
    for key, callback in callbacks:
        sides = (("model", model, "module_hooks"), ("data", datamodule, "datamodule_hooks"))
        for side, obj, attr in sides:
            for protocol in getattr(type(callback), attr, ()):
                missing = _missing(obj, protocol)
                if not missing:
                    continue
                raise ConfigError(
                    f"{key} ({type(callback).__name__}) needs {protocol.__name__} "
                    f"({', '.join(protocol_members(protocol))}) from the {side}, which "
                    f"{type(obj).__name__} lacks ({', '.join(missing)})",
                    f"drop {key} from this experiment (callbacks=...), or use a {side} that provides "
                    f"{protocol.__name__}",
                )
