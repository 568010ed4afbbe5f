"""LightningDataModule of (decoded frame, original frame) pairs from one source video.

``prepare_data`` runs the codec round trip once (cached on disk by source fingerprint and codec
settings); ``setup`` decodes the source and the cached encoding into memory as uint8 tensors and
splits them by time. Training draws random patches from the train block (position seeded per
sample and epoch, so a resumed run sees the same patches); validation and test serve whole frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from src.core.errors import ConfigError, DataError
from src.core.io import STALE_TEMP_S, sweep_temp_files
from src.datamodules.base import PodiumDataModule
from src.datamodules.seeding import SeededDistributedSampler
from src.datamodules.video.cache import EncodedVideo, RoundTripCache, settings_hash
from src.datamodules.video.codec import COLORS, CodecSettings, SourceVideo, decode, frames_array, read_source
from src.datamodules.video.sources import file_sha256, resolve_source
from src.datamodules.video.split import check_shares, fold_blocks, time_split

#: Sample id of a frame in prediction records: its index in the clip.
FRAME_ID = "frame_{:05d}"


def _pair(decoded: torch.Tensor, original: torch.Tensor, frame: int) -> dict[str, Any]:
    return {"decoded": decoded.float() / 255.0, "original": original.float() / 255.0, "frame": frame}


class PatchDataset(Dataset):
    """``patches`` random crops of the given frames; ``dataset[(index, seed)]`` draws under ``seed``.

    Args:
        decoded: ``(frames, 3, H, W)`` uint8 codec output.
        original: ``(frames, 3, H, W)`` uint8 source frames.
        frames: Indices of the frames crops are drawn from.
        patches: Crops per epoch (the dataset's length).
        size: Crop side in pixels.
        align: Crop corners lie on multiples of this many pixels (keeps the codec's block grid
            and a pixel-unshuffle phase where inference sees them).
    """

    def __init__(
        self, decoded: torch.Tensor, original: torch.Tensor, frames: Sequence[int], patches: int, size: int, align: int
    ) -> None:
        height, width = decoded.shape[-2:]
        if size > height or size > width:
            raise ConfigError(
                f"data.patch_size={size} exceeds the {width}x{height} frames",
                f"use data.patch_size <= {min(height, width)}",
            )
        self.decoded, self.original, self.frames = decoded, original, list(frames)
        self.patches, self.size, self.align = patches, size, align
        self.rows, self.cols = (height - size) // align + 1, (width - size) // align + 1

    def __len__(self) -> int:
        return self.patches

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        _, seed = key if isinstance(key, tuple) else (key, key)
        g = torch.Generator().manual_seed(int(seed))
        t = self.frames[int(torch.randint(len(self.frames), (1,), generator=g))]
        y = int(torch.randint(self.rows, (1,), generator=g)) * self.align
        x = int(torch.randint(self.cols, (1,), generator=g)) * self.align
        crop = (slice(None), slice(y, y + self.size), slice(x, x + self.size))
        return _pair(self.decoded[t][crop], self.original[t][crop], t)


class FrameDataset(Dataset):
    """Whole frames of one block, in time order."""

    def __init__(self, decoded: torch.Tensor, original: torch.Tensor, frames: Sequence[int]) -> None:
        self.decoded, self.original, self.frames = decoded, original, list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        t = self.frames[index]
        return _pair(self.decoded[t], self.original[t], t)


class VideoPairDataModule(PodiumDataModule):
    """(decoded, original) frame pairs of one video through one codec setting.

    Args:
        source: A bundled clip (``carphone``, ``bikes``) or a path to any video FFmpeg reads.
        codec: The codec round trip (``CodecSettings``).
        max_frames: Use only the first this many frames of the source (None: all of them);
            they are what is encoded, split and scored.
        cache_dir: Folder of the round-trip cache.
        color: ``rgb`` or ``yuv`` (4:4:4): the space the filter sees and metrics are taken in.
        split: Shares of the (train, val, test) time blocks.
        gap: Frames left out between blocks.
        n_folds: None: train/val/test blocks in time order. K: cross-validation over K contiguous
            blocks of the frames before the test block (``fold`` validates on block ``fold``).
        fold: The validation block of a K-fold split.
        patch_size: Side of training crops in pixels.
        patch_align: Crop corners on multiples of this many pixels.
        patches_per_epoch: Training crops per epoch (all processes together).
        batch_size: Global training batch size (crops), split over processes.
        eval_batch_size: Whole frames per validation/test batch and process.
        num_workers: DataLoader worker processes.
        seed: Seed of the crop positions.
        pin_memory: Pin host memory for faster GPU transfer.
    """

    def __init__(
        self,
        source: str = "carphone",
        codec: CodecSettings | None = None,
        max_frames: int | None = None,
        cache_dir: str = "data/video_cache",
        color: str = "rgb",
        split: Sequence[float] = (0.7, 0.15, 0.15),
        gap: int = 2,
        n_folds: int | None = None,
        fold: int = 0,
        patch_size: int = 64,
        patch_align: int = 8,
        patches_per_epoch: int = 1024,
        batch_size: int = 16,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 42,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if color not in COLORS:
            raise ConfigError(f"data.color={color!r} is not a colour space", "use 'rgb' or 'yuv'")
        if patch_align < 1 or patch_size < 1 or patches_per_epoch < 1:
            raise ConfigError(
                f"data.patch_size={patch_size}, patch_align={patch_align}, patches_per_epoch={patches_per_epoch}",
                "all three must be positive integers",
            )
        if max_frames is not None and (
            isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
        ):
            raise ConfigError(
                f"data.max_frames={max_frames!r} is not a positive frame count",
                "pass data.max_frames=<N >= 1> (the first N frames of the clip), or null for all of them",
            )
        check_shares(split, gap)  # the block sizes are checked once the video's length is known
        if n_folds is not None and (n_folds < 2 or not 0 <= fold < n_folds):
            raise ConfigError(
                f"data.n_folds={n_folds}, data.fold={fold}: need at least 2 folds and a fold in 0..n_folds-1",
                "pass data.n_folds=<K >= 2> and data.fold=<0..K-1>, or data.n_folds=null for the time split",
            )
        self.save_hyperparameters(logger=False, ignore=["codec"])
        self.codec = codec if codec is not None else CodecSettings()
        self.source_path = resolve_source(source)
        self.cache = RoundTripCache(cache_dir)
        self.blocks: dict[str, range] = {}
        self.decoded: torch.Tensor | None = None
        self.original: torch.Tensor | None = None
        self.encoded: EncodedVideo | None = None
        self._source: SourceVideo | None = None
        self._fingerprint: str | None = None

    @property
    def has_test(self) -> bool:
        """The latest time block is the test split."""
        return True

    def source_fingerprint(self) -> str:
        """sha256[:16] of the source file's content, plus ``-first<N>`` with ``max_frames`` (computed once)."""
        if self._fingerprint is None:
            sha, count = file_sha256(self.source_path), self.hparams.max_frames
            self._fingerprint = sha if count is None else f"{sha}-first{count}"
        return self._fingerprint

    def fingerprint(self) -> str:
        """Source content and codec settings: what the training pairs depend on."""
        return f"{self.source_fingerprint()}-{settings_hash(self.codec)}"

    def source(self) -> SourceVideo:
        """The decoded source video (read once)."""
        if self._source is None:
            self._source = read_source(self.source_path, self.hparams.max_frames)
        return self._source

    def encode(self, settings: CodecSettings | None = None) -> EncodedVideo:
        """The (cached) encoding of the source under ``settings`` (default: ``codec``)."""
        return self.cache.get_or_encode(self.source(), self.source_fingerprint(), settings or self.codec)

    def decoded_frames(self, settings: CodecSettings | None = None) -> torch.Tensor:
        """``(frames, 3, H, W)`` uint8 codec output under ``settings`` (default: ``codec``)."""
        settings = settings or self.codec
        encoded = self.encode(settings)
        frames = decode(encoded.path, self.source().size, settings, self.hparams.color)
        if len(frames) != len(self.source().frames):
            raise DataError(
                f"{encoded.path} decodes to {len(frames)} frames, the source {self.source_path} to "
                f"{len(self.source().frames)}",
                f"delete {encoded.path.parent} to re-encode, or check the source for variable frame rate",
            )
        return torch.from_numpy(frames)

    def with_crf(self, crf: int) -> CodecSettings:
        """The codec settings at another CRF (validated)."""
        return dataclasses.replace(self.codec, crf=crf)

    @override
    def prepare_data(self) -> None:
        sweep_temp_files(self.cache.folder, older_than_s=STALE_TEMP_S)  # left by killed writers
        self.encode()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.decoded is not None:
            return
        hp = self.hparams
        self.original = torch.from_numpy(frames_array(self.source().frames, hp.color))
        self.decoded = self.decoded_frames()
        self.encoded = self.encode()
        self.blocks = time_split(len(self.original), hp.split, hp.gap)
        if hp.get("n_folds"):
            self.blocks = fold_blocks(self.blocks, hp.n_folds, hp.fold, hp.gap)

    def dataset(self, split: str) -> Dataset:
        """The training patches or the whole frames of a block."""
        hp = self.hparams
        if split == "train":
            return PatchDataset(
                self.decoded, self.original, self.blocks["train"], hp.patches_per_epoch, hp.patch_size, hp.patch_align
            )
        return FrameDataset(self.decoded, self.original, self.blocks[split])

    @override
    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        dataset = self.dataset("train")
        sampler = SeededDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed)
        return self.make_loader(dataset, sampler, drop_last=True)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.hparams.eval_batch_size,
            sampler=self.eval_sampler(dataset),
            shuffle=False,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=self.collate_fn(),
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    @override
    def splits(self) -> tuple[str, ...]:
        """The time blocks served whole for prediction: ``val`` and ``test``."""
        return tuple(name for name in ("val", "test") if name in self.blocks)

    @override
    def predict_dataset(self, split: str) -> Dataset:
        self.check_split(split)
        return self.dataset(split)

    @override
    def sample_ids(self, split: str) -> list[str]:
        """``frame_<index in the clip>`` of the block's frames, in time order."""
        self.check_split(split)
        return [FRAME_ID.format(t) for t in self.blocks[split]]
