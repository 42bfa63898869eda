"""Readers of the user's image datasets: an ImageFolder tree, or one ``.npz`` file.

Both return the same thing, :class:`RawImages`: uint8 arrays ``[N, C, H, W]`` and int64 labels,
for the ``train`` and ``test`` parts, and the class names. Every problem is an
:class:`ImageFormatError` whose message names the path or key and the fix;
:mod:`training.data` turns it into a :class:`~training.data.DatasetError`.

- **imagefolder**: torchvision's layout, ``root/train/<class>/*`` and ``root/test/<class>/*``
  (PNG or JPEG); class names are the sorted folder names, the same in both parts. Images are
  converted to ``channels`` (1: grayscale, 3: RGB) and resized to ``image_size`` when those are
  set; otherwise every image must already have one size and one channel count.
- **npz**: ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally ``class_names``.
  Images are uint8 (0-255) or float (0-1), shaped ``[N, H, W]``, ``[N, H, W, C]`` or
  ``[N, C, H, W]`` (C is 1 or 3, so the layout is never ambiguous).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PARTS = ("train", "test")
CHANNELS = (1, 3)


class ImageFormatError(ValueError):
    """The files do not hold a dataset of the expected layout; the message says what to fix."""


@dataclass(frozen=True)
class RawImages:
    """A dataset as arrays: uint8 images ``[N, C, H, W]``, int64 labels in ``0..K-1``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


# -- imagefolder -------------------------------------------------------------------------------


def read_imagefolder(
    root: Path, image_size: tuple[int, int] | None, channels: int | None
) -> RawImages:
    """Read ``root/train/<class>/*`` and ``root/test/<class>/*``.

    Raises:
        ImageFormatError: a part or a class folder is missing, a class is empty, an image cannot
            be read, or images differ in size or channels while ``image_size``/``channels``
            are null.
    """
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise ImageFormatError(f"data.root {root} is not a folder (format imagefolder)")
    classes: tuple[str, ...] | None = None
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in PARTS:
        folder = root / part
        if not folder.is_dir():
            raise ImageFormatError(
                f"{folder} is missing: an imagefolder dataset has {root}/train/<class>/ and "
                f"{root}/test/<class>/ folders of images"
            )
        names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if not names:
            raise ImageFormatError(f"{folder} has no class folders (expected {folder}/<class>/)")
        if classes is None:
            classes = names
        elif names != classes:
            missing = sorted(set(classes) ^ set(names))
            raise ImageFormatError(
                f"{root}/train and {root}/test must hold the same class folders; "
                f"these are in only one of them: {', '.join(missing)}"
            )
        images: list[np.ndarray] = []
        labels: list[int] = []
        for label, name in enumerate(names):
            files = sorted(
                p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise ImageFormatError(
                    f"class folder {folder / name} holds no PNG or JPEG image; add images "
                    "or remove the folder"
                )
            for path in files:
                try:
                    with Image.open(path) as img:
                        images.append(_pixels(img, image_size, channels))
                except (OSError, UnidentifiedImageError) as exc:
                    raise ImageFormatError(f"cannot read image {path}: {exc}") from None
                labels.append(label)
        shapes = {a.shape for a in images}
        if len(shapes) > 1:
            raise ImageFormatError(
                f"images in {folder} differ in size or channels ({_some(shapes)}); set "
                "data.image_size: [H, W] and data.channels: 1 or 3 to convert them"
            )
        parts[part] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    assert classes is not None
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["test"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ImageFormatError(
            f"{root}/train images are {_chw(train_x)} but {root}/test images are "
            f"{_chw(test_x)}; set data.image_size and data.channels to convert them"
        )
    return RawImages(train_x, train_y, test_x, test_y, classes)


def _pixels(img: object, image_size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """One PIL image as uint8 ``[C, H, W]``, converted and resized as configured."""
    from PIL import Image

    assert isinstance(img, Image.Image)
    if channels is not None:
        img = img.convert("L" if channels == 1 else "RGB")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    if image_size is not None:
        height, width = image_size
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# -- npz ---------------------------------------------------------------------------------------


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> RawImages:
    """Read one ``.npz`` file (see the module's docstring for its keys and layouts).

    Raises:
        ImageFormatError: the file is missing or unreadable, a key is missing, images are not
            uint8 or float in [0, 1], a layout is not one of the three, or labels are outside
            ``0..K-1``.
    """
    if not path.is_file():
        raise ImageFormatError(f"data.root {path} is not a file (format npz needs a .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ImageFormatError(f"cannot read {path} as .npz: {exc}") from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise ImageFormatError(
            f"{path} lacks {', '.join(missing)}; an npz dataset holds "
            f"{', '.join(NPZ_KEYS)} and optionally class_names"
        )
    train_x = _npz_images(path, "x_train", arrays["x_train"])
    test_x = _npz_images(path, "x_test", arrays["x_test"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ImageFormatError(
            f"{path}: x_train images are {_chw(train_x)} but x_test images are {_chw(test_x)}"
        )
    names = arrays.get("class_names")
    train_y = _npz_labels(path, "y_train", arrays["y_train"], len(train_x))
    test_y = _npz_labels(path, "y_test", arrays["y_test"], len(test_x))
    if names is not None:
        classes = tuple(str(n) for n in names.reshape(-1))
    else:
        classes = tuple(str(i) for i in range(int(max(train_y.max(), test_y.max())) + 1))
    for key, labels in (("y_train", train_y), ("y_test", test_y)):
        if labels.max() >= len(classes):
            raise ImageFormatError(
                f"{path}: {key} holds label {int(labels.max())}, outside 0..{len(classes) - 1} "
                f"({len(classes)} class names)"
            )
    return RawImages(train_x, train_y, test_x, test_y, classes)


def _npz_images(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.kind == "f":
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise ImageFormatError(f"{path}: float {key} must hold values in [0, 1]")
        pixels = np.rint(array * 255).astype(np.uint8)
    else:
        raise ImageFormatError(f"{path}: {key} is {array.dtype}; use uint8 (0-255) or float (0-1)")
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    elif pixels.ndim == 4 and pixels.shape[1] not in CHANNELS and pixels.shape[3] in CHANNELS:
        pixels = pixels.transpose(0, 3, 1, 2)
    if pixels.ndim != 4 or pixels.shape[1] not in CHANNELS or len(pixels) == 0:
        raise ImageFormatError(
            f"{path}: {key} has shape {list(array.shape)}; expected [N, H, W], [N, H, W, C] or "
            "[N, C, H, W] with C 1 or 3 and N at least 1"
        )
    return np.ascontiguousarray(pixels)


def _npz_labels(path: Path, key: str, array: np.ndarray, count: int) -> np.ndarray:
    if array.dtype.kind not in "iu" or array.ndim != 1 or len(array) != count:
        raise ImageFormatError(
            f"{path}: {key} must be {count} integer labels (shape [{count}]), got "
            f"{array.dtype} of shape {list(array.shape)}"
        )
    if array.size and array.min() < 0:
        raise ImageFormatError(f"{path}: {key} holds a negative label ({int(array.min())})")
    return array.astype(np.int64)


def _chw(images: np.ndarray) -> str:
    return "x".join(str(d) for d in images.shape[1:])


def _some(shapes: set[tuple[int, ...]]) -> str:
    return ", ".join("x".join(str(d) for d in s) for s in sorted(shapes)[:3])


__all__ = ["ImageFormatError", "RawImages", "read_imagefolder", "read_npz"]
