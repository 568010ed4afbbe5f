"""LightningDataModule for the Ariel Data Challenge: calibrated light curves, star metadata, depths.

``prepare_data`` (rank 0) simulates the toy dataset if asked and missing, then runs the
calibration chain over every planet whose cache entry is absent or stale; ``setup`` reads the
cache. Batches are dicts of tensors::

    fgs1, fgs1_var        (batch, time)              electrons per read difference (and e-^2)
    fgs1_time             (batch, time)              hours
    airs, airs_var        (batch, time, 282)         per spectral bin, ascending wavelength
    airs_time             (batch, time)              hours
    meta                  (batch, n_meta)            star_info columns (``meta_columns``)
    target                (batch, 283)               transit depths (train/val only)
    planet_id             (batch,)                   int64
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from src.core.errors import ConfigError, DataError
from src.core.io import STALE_TEMP_S, file_fingerprint, sweep_temp_files
from src.core.ranks import process_rank
from src.datamodules.ariel.cache import CalibrationCache
from src.datamodules.ariel.chain import CalibrationChain, chain_hash
from src.datamodules.ariel.forward import SimConfig, check_difficulty
from src.datamodules.ariel.layout import SPLITS, ArielLayout, get_edition
from src.datamodules.ariel.parallel import PlanetCalibrator, PlanetJob, check_workers, run_jobs
from src.datamodules.ariel.settings import instrument_settings
from src.datamodules.ariel.simulate import simulate_dataset
from src.datamodules.ariel.tables import (
    STAR_COLUMNS,
    read_adc,
    read_axis_info,
    read_labels,
    read_star_info,
    split_planet_ids,
)
from src.datamodules.ariel.torch_path import TorchFrontend, split_steps
from src.datamodules.base import PodiumDataModule
from src.datamodules.folds import check_fold, load_or_create_folds

#: Calibrated array name -> batch key.
BATCH_KEYS = {
    "fgs1_flux": "fgs1",
    "fgs1_var": "fgs1_var",
    "fgs1_time": "fgs1_time",
    "airs_flux": "airs",
    "airs_var": "airs_var",
    "airs_time": "airs_time",
}


def _plain(value: Any) -> Any:
    """OmegaConf nodes to plain dicts and lists (hashable, JSON-serialisable)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class ArielDataset(Dataset):
    """Calibrated planets held in memory as tensors, one dict of tensors per planet.

    Args:
        arrays: Batch key -> array with planets on the first axis.
        planet_ids: Planet ids, shape (planets,).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], planet_ids: Sequence[int]) -> None:
        self.tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self.tensors["planet_id"] = torch.as_tensor(list(planet_ids), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.tensors["planet_id"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}


class ArielDataModule(PodiumDataModule):
    """Ariel planets: calibrated FGS1 and AIRS-CH0 light curves, star metadata and depths.

    Validation is fold ``fold`` of the training planets (grouped by star where the star is
    known), from the dataset's folds file, which is written once and shared by every model.

    Args:
        root: Dataset folder in the competition layout.
        edition: File naming, ``"2025"`` or ``"2024"``.
        visit: Which visit of each planet to use.
        calibration: ``steps`` (list of step names or dicts), ``instruments`` (per-instrument
            settings, see ``settings.DEFAULT_INSTRUMENTS``) and ``chunk_frames`` (reads per
            calibration chunk; null = whole visit).
        cache_dir: Where calibrated planets are cached (default ``<root>/cache``).
        simulate: ``if_missing`` (write a toy dataset when ``root`` does not exist) plus
            ``planets``, ``test_planets``, ``seed`` and ``SimConfig`` fields.
        n_folds: Number of folds.
        fold: Validation fold index.
        seed: Seed of the folds and of the training shuffle.
        batch_size: Global batch size, split evenly over the processes of a DDP run.
        num_workers: DataLoader worker processes per training process.
        pin_memory: Pin host memory for faster GPU transfer.
        group_by: ``star_info`` columns whose shared values identify a star (planets of one star
            share a fold); ``[star]`` uses the ADC table's star column (2024); null: no groups.
        meta_columns: ``star_info`` columns returned as ``meta``.
        folds_dir: Folder of the folds file (default ``root``).
    """

    def __init__(
        self,
        root: str,
        edition: str = "2025",
        visit: int = 0,
        calibration: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        simulate: Mapping[str, Any] | None = None,
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        group_by: Sequence[str] | None = ("Rs", "Ms", "Ts"),
        meta_columns: Sequence[str] = STAR_COLUMNS,
        folds_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_fold(fold, n_folds)
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.layout = ArielLayout(self.root, get_edition(edition))
        calibration = dict(_plain(calibration) or {})
        unknown = set(calibration) - {"steps", "instruments", "chunk_frames", "workers", "torch_device"}
        if unknown:
            raise ConfigError(
                f"data.calibration has unknown key(s) {sorted(unknown)}",
                "use steps, instruments, chunk_frames, workers, torch_device",
            )
        # Processes that calibrate planets at once; results do not depend on it (not in the hash).
        self.workers = check_workers(calibration.get("workers", 1))
        self.chain = CalibrationChain.from_config(calibration.get("steps"))
        self.settings = instrument_settings(calibration.get("instruments"))
        self.chunk_frames = calibration.get("chunk_frames")
        # The per-read steps in torch on this device (None: numpy); checked now, not at the first planet.
        self.torch_device = calibration.get("torch_device")
        torch_path = {}
        if self.torch_device is not None:
            TorchFrontend(split_steps(self.chain.steps)[0], str(self.torch_device))
            torch_path = {"torch_device": str(self.torch_device)}  # float32 rounding differs: own cache
        self.chain_hash = chain_hash(
            self.chain, self.settings, visit=visit, chunk_frames=self.chunk_frames, **torch_path
        )
        self.cache = CalibrationCache(Path(cache_dir) if cache_dir else self.root / "cache", self.chain_hash)
        self.simulate = dict(_plain(simulate) or {})
        self.group_by = None if group_by is None else list(_plain(group_by))
        self.meta_columns = list(_plain(meta_columns))
        self.train_set: ArielDataset | None = None
        self.val_set: ArielDataset | None = None
        self.test_set: ArielDataset | None = None
        self._calibrated: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    # ---- raw data ------------------------------------------------------------------------------

    def _simulate_if_missing(self) -> None:
        """Write a simulated dataset at ``root`` when it is missing and ``simulate.if_missing`` is set.

        ``data.simulate`` holds ``if_missing``, ``planets``, ``test_planets``, ``seed`` and any
        ``SimConfig`` field, ``difficulty`` (``easy``, the default, or ``hard``) among them.

        Raises:
            DataError: ``root`` is missing and simulating is not asked for.
            ConfigError: An unknown key, or a difficulty other than ``easy`` and ``hard``.
        """
        if self.root.exists():
            return
        sim = dict(self.simulate)
        if not sim.pop("if_missing", False):
            raise DataError(
                f"Ariel dataset folder {self.root} does not exist",
                "point data.root at the competition data, or set data.simulate.if_missing=true",
            )
        planets, test_planets, seed = sim.pop("planets", 16), sim.pop("test_planets", 4), sim.pop("seed", 0)
        unknown = set(sim) - {f.name for f in fields(SimConfig)}
        if unknown:
            raise ConfigError(
                f"data.simulate has unknown key(s) {sorted(unknown)}",
                f"use if_missing, planets, test_planets, seed or {[f.name for f in fields(SimConfig)]}",
            )
        check_difficulty(sim.get("difficulty", SimConfig.difficulty), "data.simulate.difficulty")
        cfg = replace(SimConfig(), **{"edition": self.layout.edition.name, **sim})
        rank_zero_info(f"simulating {planets}+{test_planets} Ariel planets into {self.root}")
        simulate_dataset(self.root, planets, seed, test_planets, cfg)

    def planet_ids(self, split: str) -> list[int]:
        """Planet ids of ``split`` (train: the labels' planets, each checked on disk)."""
        labels = read_labels(self.layout) if split == "train" else None
        return split_planet_ids(self.layout, split, labels)

    def planet_fingerprint(self, split: str, planet_id: int) -> str:
        """Fingerprint of one planet visit's raw files and the tables it depends on."""
        files = self.layout.planet_files(split, planet_id, self.hparams.visit)
        for path in files:
            if not path.is_file():
                raise DataError(
                    f"planet {planet_id}: missing raw file {path}",
                    f"restore {path.name} in {path.parent} from the competition data",
                )
        return file_fingerprint(files + self.layout.shared_files(split))

    def fingerprint(self) -> str:
        """Raw-file fingerprint of the whole dataset (names, sizes, mtimes of every input file)."""
        files = [self.layout.labels, self.layout.axis_info, self.layout.adc("train")]
        for split in SPLITS:
            for pid in self.planet_ids(split):
                files += self.layout.planet_files(split, pid, self.hparams.visit)
        return file_fingerprint([f for f in files if f.is_file()], extra=self.layout.edition.name)

    @property
    def has_test(self) -> bool:
        """Whether the dataset has test planets."""
        return bool(self.planet_ids("test"))

    # ---- calibration and cache -----------------------------------------------------------------

    @override
    def prepare_data(self) -> None:
        """Simulate if asked, calibrate every planet not yet in the cache, write the folds file.

        Lightning calls this on one process per node; ``setup`` then only reads.
        """
        self._simulate_if_missing()
        sweep_temp_files(self.cache.folder, older_than_s=STALE_TEMP_S)  # left by killed writers
        # Written here, once, so that setup on every rank only reads it; first, so that a fold
        # count the planets cannot fill fails before minutes of calibration.
        self.folds()
        todo = []
        for split in SPLITS:
            for pid in self.planet_ids(split):
                if (split, pid) in self._calibrated:
                    continue
                fp = self.planet_fingerprint(split, pid)
                arrays = self.cache.load(split, pid, self.hparams.visit, fp)
                if arrays is None:
                    todo.append(PlanetJob(split, pid, fp))
                else:
                    self._calibrated[(split, pid)] = arrays
        calibrator = PlanetCalibrator(
            self.layout,
            self.hparams.visit,
            self.chain,
            self.settings,
            self.chunk_frames,
            self.cache,
            {split: read_adc(self.layout, split) for split in {job.split for job in todo}},
            read_axis_info(self.layout) if todo else None,
            self.torch_device,
        )
        for job, arrays in run_jobs(todo, calibrator, self.workers, show_progress=process_rank() == 0):
            self._calibrated[(job.split, job.planet_id)] = arrays
        computed = len(todo)
        rank_zero_info(f"Ariel calibration: {computed} planets calibrated, {self.cache.hits} read from cache")

    def _load_calibrated(self, split: str, ids: Sequence[int]) -> dict[str, np.ndarray]:
        """Stack the cached arrays of ``ids`` (planets first), checking every entry is present."""
        per_planet = []
        for pid in ids:
            arrays = self._calibrated.get((split, pid))
            if arrays is None:
                fp = self.planet_fingerprint(split, pid)
                arrays = self.cache.load(split, pid, self.hparams.visit, fp)
            if arrays is None:
                path, reason = self.cache.reasons[-1]
                raise DataError(
                    f"planet {pid}: calibrated cache entry {path} is {reason}",
                    "run prepare_data() first (the Trainer does it on rank 0)",
                )
            per_planet.append(arrays)
        return {BATCH_KEYS[k]: np.stack([a[k] for a in per_planet]) for k in BATCH_KEYS}

    # ---- tables, folds, datasets ---------------------------------------------------------------

    def _meta(self, split: str, ids: Sequence[int]) -> np.ndarray:
        info = read_star_info(self.layout, split)
        if info is None:
            return np.zeros((len(ids), 0), dtype=np.float32)
        missing = [c for c in self.meta_columns if c not in info.columns]
        if missing:
            raise ConfigError(
                f"data.meta_columns {missing} are not columns of {self.layout.star_info(split)}",
                f"pick from {list(info.columns)}",
            )
        absent = [p for p in ids if p not in info.index]
        if absent:
            raise DataError(
                f"planet {absent[0]} has no row in {self.layout.star_info(split)}",
                f"add planet {absent[0]} to {self.layout.star_info(split).name}",
            )
        return info.loc[list(ids), self.meta_columns].to_numpy(np.float32)

    def _groups(self, ids: Sequence[int]) -> list[str] | None:
        if not self.group_by:
            return None
        info = read_star_info(self.layout, "train")
        if info is not None and all(c in info.columns for c in self.group_by):
            rows = info.loc[list(ids), self.group_by].astype(str)
            return rows.agg("|".join, axis=1).tolist()
        if self.group_by == ["star"] and self.layout.edition.per_planet_adc:
            adc = read_adc(self.layout, "train").frame
            if "star" in adc.columns:
                return adc.loc[list(ids), "star"].astype(str).tolist()
        rank_zero_info(f"Ariel folds: no star columns {self.group_by}; folds are not grouped")
        return None

    def folds(self) -> pd.DataFrame:
        """The training planets' folds (``sample_id`` = planet id as a string, ``fold``)."""
        ids = self.planet_ids("train")
        folds_dir = Path(self.hparams.folds_dir) if self.hparams.folds_dir else self.root
        return load_or_create_folds(
            folds_dir, [str(p) for p in ids], self.hparams.n_folds, self.hparams.seed, groups=self._groups(ids)
        )

    def _dataset(self, split: str, ids: Sequence[int], labels: pd.DataFrame | None) -> ArielDataset:
        arrays = self._load_calibrated(split, ids)
        arrays["meta"] = self._meta(split, ids)
        if labels is not None:
            arrays["target"] = labels.loc[list(ids)].to_numpy(np.float32)
        return ArielDataset(arrays, ids)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        labels = read_labels(self.layout)
        ids = np.asarray(self.planet_ids("train"))
        fold_of = self.folds()["fold"].to_numpy()
        self.train_set = self._dataset("train", ids[fold_of != self.hparams.fold].tolist(), labels)
        self.val_set = self._dataset("train", ids[fold_of == self.hparams.fold].tolist(), labels)
        test_ids = self.planet_ids("test")
        self.test_set = self._dataset("test", test_ids, None) if test_ids else None

    # ---- loaders -------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if not train:
            return self.make_loader(dataset, self.eval_sampler(dataset))
        world, rank = self._world()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed)
        return self.make_loader(dataset, sampler)

    def sample_ids(self, split: str) -> list[str]:
        """Planet ids of ``split`` (``val`` or ``test``) in loader order, as strings."""
        dataset = self.predict_dataset(split)
        return [str(int(p)) for p in dataset.tensors["planet_id"]]
