"""The datasets, and their deterministic train / eval / traffic splits.

``data.format`` picks the reader:

- ``fashion-mnist`` (the default): Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) from a folder of
  the four IDX files, gzipped or not, as the Debian package ``dataset-fashion-mnist`` installs
  them in ``/usr/share/datasets/fashion-mnist``; torchvision's ``<root>/FashionMNIST/raw``
  layout works too.
- ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (PNG or JPEG).
- ``npz``: one file holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally
  ``class_names``). The two readers are in :mod:`training._images`.

The splits: *train* is the dataset's training part (optionally capped by ``train_limit``);
*eval* and *traffic* are disjoint slices of its test part chosen by ``seed``. Only the gate and
benchmarks look at *eval*; *traffic* is what clients send to the server. Every model records
:meth:`Splits.describe` in its manifest, so one can tell which images it may have seen.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from robustloop.config import DataConfig
from training._idx import IdxFormatError, parse_idx, read_bytes
from training._images import ImageFormatError, RawImages, read_imagefolder, read_npz
from training.models import FASHION_CLASSES, ModelSpec

DEBIAN_PACKAGE = "dataset-fashion-mnist"
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
CLASSES = FASHION_CLASSES
"""Fashion-MNIST's class names, by label."""

_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3, TRAIN_SIZE),
    "train_labels": ("train-labels-idx1-ubyte", 1, TRAIN_SIZE),
    "test_images": ("t10k-images-idx3-ubyte", 3, TEST_SIZE),
    "test_labels": ("t10k-labels-idx1-ubyte", 1, TEST_SIZE),
}


class DatasetError(Exception):
    """The dataset is missing or corrupt, or a split cannot be made; the message says what to do."""


@dataclass(frozen=True, eq=False)
class FashionMNIST:
    """The whole dataset as decoded tensors (shared, do not modify in place).

    Attributes:
        train_images: uint8 ``[60000, 28, 28]``.
        train_labels: int64 ``[60000]`` in 0..9.
        test_images: uint8 ``[10000, 28, 28]``.
        test_labels: int64 ``[10000]`` in 0..9.
        root: the folder the files were read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path


def _candidates(root: Path, stem: str) -> list[Path]:
    folders = [root, root / "FashionMNIST" / "raw", root / "raw"]
    return [folder / name for folder in folders for name in (stem + ".gz", stem)]


def _find(root: Path, stem: str) -> Path:
    for path in _candidates(root, stem):
        if path.is_file():
            return path
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root} (nor in its FashionMNIST/raw "
        f"subfolder); install the Debian package {DEBIAN_PACKAGE} "
        f"(`apt-get install {DEBIAN_PACKAGE}`) or point data.root at a folder of the IDX files"
    )


def load_fashion_mnist(root: Path | str) -> FashionMNIST:
    """Load and validate the four Fashion-MNIST IDX files under ``root``.

    Decoded arrays are cached in-process (keyed by path, size and modification time of each
    file), since servers, steps and tests load the dataset many times.

    Raises:
        DatasetError: the folder or a file is missing (the message names the path and the Debian
            package), or a file is corrupt, truncated or holds the wrong number of items.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST folder {root} does not exist; install the Debian package "
            f"{DEBIAN_PACKAGE} (`apt-get install {DEBIAN_PACKAGE}`, which fills "
            f"/usr/share/datasets/fashion-mnist) or set data.root in robustloop.yaml"
        )
    paths = tuple(_find(root, stem) for stem, _, _ in _FILES.values())
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_cached(root, key)


@functools.lru_cache(maxsize=4)
def _load_cached(root: Path, key: tuple[tuple[str, int, int], ...]) -> FashionMNIST:
    arrays: dict[str, torch.Tensor] = {}
    for (field, (_, ndim, count)), (path_text, _, _) in zip(_FILES.items(), key, strict=True):
        path = Path(path_text)
        try:
            array = parse_idx(read_bytes(path), ndim)
        except IdxFormatError as exc:
            raise DatasetError(
                f"{path} is not a valid Fashion-MNIST IDX file: {exc}; reinstall "
                f"{DEBIAN_PACKAGE} or replace the file"
            ) from None
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
        if array.shape[0] != count or (ndim == 3 and array.shape[1:] != (28, 28)):
            raise DatasetError(
                f"{path} holds an array of shape {array.shape}, expected {count} items"
                + (" of 28x28" if ndim == 3 else "")
            )
        if ndim == 1:
            if array.max(initial=0) > 9:
                raise DatasetError(f"{path} holds labels above 9: not Fashion-MNIST labels")
            arrays[field] = torch.from_numpy(array.astype(np.int64))
        else:
            arrays[field] = torch.from_numpy(array)
    return FashionMNIST(root=root, **arrays)


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset's two parts, whatever its format (shared, do not modify in place).

    Attributes:
        train_images: uint8 ``[N, C, H, W]``.
        train_labels: int64 ``[N]`` in ``0..K-1``.
        test_images: uint8 ``[M, C, H, W]``.
        test_labels: int64 ``[M]`` in ``0..K-1``.
        classes: the K class names, by label.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


def load_images(data_cfg: DataConfig) -> ImageData:
    """The dataset that ``data.format`` and ``data.root`` name (cached in-process).

    Raises:
        DatasetError: the files are missing or do not hold a dataset of that format; the
            message names the path or key and the fix.
    """
    root = Path(data_cfg.root)
    if data_cfg.format == "fashion-mnist":
        fashion = load_fashion_mnist(root)
        return _fashion_images(fashion)
    size = tuple(data_cfg.image_size) if data_cfg.image_size is not None else None
    return _load_files(data_cfg.format, root, size, data_cfg.channels, _signature(root))


@functools.lru_cache(maxsize=4)
def _fashion_images(data: FashionMNIST) -> ImageData:
    return ImageData(
        data.train_images.unsqueeze(1),
        data.train_labels,
        data.test_images.unsqueeze(1),
        data.test_labels,
        CLASSES,
    )


def _signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Paths, sizes and modification times of the files under ``root`` (the cache's key)."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


@functools.lru_cache(maxsize=4)
def _load_files(
    fmt: str,
    root: Path,
    image_size: tuple[int, ...] | None,
    channels: int | None,
    signature: tuple[tuple[str, int, int], ...],
) -> ImageData:
    del signature  # part of the cache key only
    try:
        if fmt == "imagefolder":
            size = (image_size[0], image_size[1]) if image_size is not None else None
            raw: RawImages = read_imagefolder(root, size, channels)
        else:
            raw = read_npz(root)
    except ImageFormatError as exc:
        raise DatasetError(str(exc)) from None
    return ImageData(
        torch.from_numpy(raw.train_images),
        torch.from_numpy(raw.train_labels),
        torch.from_numpy(raw.test_images),
        torch.from_numpy(raw.test_labels),
        raw.classes,
    )


@dataclass(frozen=True, eq=False)
class Splits:
    """The three splits as ``TensorDataset(images float32 [N, C, H, W] in [0, 1], labels int64)``.

    Attributes:
        train: training images (the official training set, capped by ``train_limit``).
        eval: held-out test images for evaluation and the gate only.
        traffic: test images clients send (disjoint from ``eval``).
        seed: the split seed.
        train_indices: indices into the official training set.
        eval_indices: indices into the official test set.
        traffic_indices: indices into the official test set.
        classes: the class names, by label.
    """

    train: TensorDataset
    eval: TensorDataset
    traffic: TensorDataset
    seed: int
    train_indices: torch.Tensor
    eval_indices: torch.Tensor
    traffic_indices: torch.Tensor
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train.tensors[0].shape[1:]
        return (int(c), int(h), int(w))

    def describe(self) -> dict[str, Any]:
        """What a manifest records: seed, sizes and a hash of the index lists."""
        digest = hashlib.sha256()
        for name in ("train_indices", "eval_indices", "traffic_indices"):
            digest.update(name.encode())
            digest.update(getattr(self, name).numpy().astype("<i8").tobytes())
        return {
            "seed": self.seed,
            "train_size": len(self.train_indices),
            "eval_size": len(self.eval_indices),
            "traffic_size": len(self.traffic_indices),
            "indices_sha256": digest.hexdigest(),
        }


def check_fits(splits: Splits, spec: ModelSpec, what: str) -> None:
    """The data must have the model's input shape and number of classes.

    Raises:
        DatasetError: it does not; the message gives both shapes.
    """
    if splits.image_shape != spec.input_shape or len(splits.classes) != spec.num_classes:
        raise DatasetError(
            f"the data ({_shape(splits.image_shape)} images, {len(splits.classes)} classes) does "
            f"not fit {what} ({_shape(spec.input_shape)}, {spec.num_classes} classes); point "
            "data at the dataset it was trained on"
        )


def _shape(chw: tuple[int, int, int]) -> str:
    return "x".join(str(d) for d in chw)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (or ``[N, H, W]``, one channel) to float32 ``[N, C, H, W]`` in
    [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return images.to(torch.float32).div_(255.0)


def make_splits(data_cfg: DataConfig) -> Splits:
    """The deterministic train / eval / traffic splits of the ``data`` config section.

    The same config gives the same splits on every machine (a seeded ``torch.Generator``).
    Results are cached in-process; the returned tensors are shared, so do not modify them.

    Raises:
        DatasetError: the dataset is missing or corrupt, or ``eval_size + traffic_size``
            exceeds its test images, or ``train_limit`` its training images.
    """
    data = load_images(data_cfg)
    test_size, train_size = len(data.test_labels), len(data.train_labels)
    if data_cfg.eval_size + data_cfg.traffic_size > test_size:
        raise DatasetError(
            f"data.eval_size ({data_cfg.eval_size}) + data.traffic_size "
            f"({data_cfg.traffic_size}) exceed the {test_size} test images of {data_cfg.root}; "
            "lower one of them"
        )
    if data_cfg.train_limit is not None and data_cfg.train_limit > train_size:
        raise DatasetError(
            f"data.train_limit ({data_cfg.train_limit}) exceeds the {train_size} training "
            f"images of {data_cfg.root}"
        )
    return _splits_cached(
        data, data_cfg.seed, data_cfg.eval_size, data_cfg.traffic_size, data_cfg.train_limit
    )


@functools.lru_cache(maxsize=4)
def _splits_cached(
    data: ImageData, seed: int, eval_size: int, traffic_size: int, train_limit: int | None
) -> Splits:
    test_size, train_size = len(data.test_labels), len(data.train_labels)
    test_perm = torch.randperm(test_size, generator=torch.Generator().manual_seed(seed))
    eval_idx = test_perm[:eval_size].sort().values
    traffic_idx = test_perm[eval_size : eval_size + traffic_size].sort().values
    if train_limit is None:
        train_idx = torch.arange(train_size)
    else:
        gen = torch.Generator().manual_seed(seed + 1)
        train_idx = torch.randperm(train_size, generator=gen)[:train_limit].sort().values
    return Splits(
        train=TensorDataset(to_float(data.train_images[train_idx]), data.train_labels[train_idx]),
        eval=TensorDataset(to_float(data.test_images[eval_idx]), data.test_labels[eval_idx]),
        traffic=TensorDataset(
            to_float(data.test_images[traffic_idx]), data.test_labels[traffic_idx]
        ),
        seed=seed,
        train_indices=train_idx,
        eval_indices=eval_idx,
        traffic_indices=traffic_idx,
        classes=data.classes,
    )
