"""The dataset's training images as the review app serves them, and look-alikes by class.

Images are served only by ``image_id`` through the dataset's own table (``train.csv`` resolved by
:func:`src.datamodules.images.layout.read_split`), so no request names a path: an id that is not
in the table is refused, and so is a row whose path climbs out of the dataset folder (``..``).
Look-alikes are the training images of a class closest to the image in a small grey thumbnail
(cosine similarity of ``thumb x thumb`` pixels, zero-mean), computed per class on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from src.datamodules.images.layout import ImageTable, read_split

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
               ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}  # fmt: skip


class DatasetImages:
    """The training split of a dataset in the generic image layout.

    Args:
        root: The dataset folder (``data/<name>``).
        label_column: The label column of ``train.csv``.
        group_column: Its group column (or None).
        thumb: Side of the thumbnails look-alikes are found with (pixels).
        neighbours: Look-alikes returned per image.
    """

    def __init__(
        self,
        root: Path,
        label_column: str = "label",
        group_column: str | None = None,
        thumb: int = 24,
        neighbours: int = 6,
    ) -> None:
        self.root = Path(os.path.normpath(root.absolute()))
        self.table: ImageTable = read_split(root, "train", label_column, group_column)
        self.paths = dict(zip(self.table.sample_ids, self.table.paths, strict=True))
        self.labels = dict(zip(self.table.sample_ids, self.table.labels, strict=True))
        self.thumb, self.k = thumb, neighbours
        self._vectors: dict[int, tuple[list[str], npt.NDArray[np.float32]]] = {}
        self._lock = threading.Lock()

    def path(self, image_id: str) -> Path | None:
        """The image's file, or None for an id not in the table or a file outside the dataset."""
        path = self.paths.get(image_id)
        if path is None:
            return None
        # Lexically inside the dataset folder (a train.csv row may not climb out with ..); a
        # symlinked image folder is the user's own layout and is followed.
        normal = Path(os.path.normpath(path.absolute()))
        return normal if normal.is_relative_to(self.root) and normal.is_file() else None

    def vector(self, path: Path) -> npt.NDArray[np.float32]:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L").resize((self.thumb, self.thumb)), dtype=np.float32).ravel()
        pixels -= pixels.mean()
        return pixels / (np.linalg.norm(pixels) + 1e-6)

    def _class_vectors(self, label: int) -> tuple[list[str], npt.NDArray[np.float32]]:
        with self._lock:
            if label not in self._vectors:
                ids = [i for i, lab in self.labels.items() if lab == label]
                vectors = np.stack([self.vector(self.paths[i]) for i in ids]) if ids else np.zeros((0, self.thumb**2))
                self._vectors[label] = (ids, vectors.astype(np.float32))
            return self._vectors[label]

    def look_alikes(self, image_id: str, label: int) -> list[str]:
        """The ``neighbours`` training images of class ``label`` most like ``image_id`` (itself excluded)."""
        path = self.path(image_id)
        ids, vectors = self._class_vectors(label)
        if path is None or not ids:
            return []
        similarity = vectors @ self.vector(path)
        order = [ids[i] for i in np.argsort(-similarity, kind="stable") if ids[i] != image_id]
        return order[: self.k]
