"""Fashion-MNIST loading and splits: what a user sees with good, missing and corrupt files."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch

from robustloop.config import DataConfig
from tests.conftest import DATASET_ROOT
from training import DatasetError, load_fashion_mnist, make_splits

pytestmark = pytest.mark.skipif(
    not DATASET_ROOT.is_dir(),
    reason=f"{DATASET_ROOT} absent (apt-get install dataset-fashion-mnist)",
)

STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _copy_dataset(target: Path, gunzip: set[str] | None = None) -> Path:
    """Copy the real files into ``target``, decompressing the stems in ``gunzip``."""
    target.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        source = DATASET_ROOT / f"{stem}.gz"
        if gunzip and stem in gunzip:
            (target / stem).write_bytes(gzip.decompress(source.read_bytes()))
        else:
            shutil.copyfile(source, target / f"{stem}.gz")
    return target


def test_loads_the_official_sizes_and_types() -> None:
    data = load_fashion_mnist(DATASET_ROOT)
    assert data.train_images.shape == (60_000, 28, 28)
    assert data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (60_000,)
    assert data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (10_000, 28, 28)
    assert data.test_labels.shape == (10_000,)
    assert set(data.test_labels.unique().tolist()) == set(range(10))
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10


def test_plain_idx_and_torchvision_layout_load_the_same(tmp_path: Path) -> None:
    reference = load_fashion_mnist(DATASET_ROOT)
    plain = _copy_dataset(tmp_path / "plain", gunzip=set(STEMS))
    torchvision_root = tmp_path / "tv"
    _copy_dataset(torchvision_root / "FashionMNIST" / "raw", gunzip={STEMS[1]})
    for root in (plain, torchvision_root):
        data = load_fashion_mnist(root)
        assert torch.equal(data.train_images, reference.train_images)
        assert torch.equal(data.test_labels, reference.test_labels)


def test_missing_folder_names_the_path_and_the_package(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(missing)
    assert str(missing) in str(info.value)
    assert "dataset-fashion-mnist" in str(info.value)


def test_missing_file_names_the_file_and_the_package(tmp_path: Path) -> None:
    root = _copy_dataset(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.*dataset-fashion-mnist"):
        load_fashion_mnist(root)


def _corrupt_truncated_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_bad_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2:4] = b"\x0d\x03"  # float type instead of ubyte
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))


def _corrupt_truncated_body(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: -28 * 28 * 10], compresslevel=1))


def _corrupt_wrong_count(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    header = struct.pack(">IIII", 2051, 100, 28, 28)
    path.write_bytes(gzip.compress(header + raw[16 : 16 + 100 * 28 * 28], compresslevel=1))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_truncated_gzip, "corrupt gzip"),
        (_corrupt_bad_magic, "bad magic"),
        (_corrupt_truncated_body, "truncated"),
        (_corrupt_wrong_count, "expected 10000"),
    ],
)
def test_corrupt_file_is_refused_with_its_path(tmp_path: Path, corrupt, message: str) -> None:  # type: ignore[no-untyped-def]
    root = _copy_dataset(tmp_path / "d")
    victim = root / "t10k-images-idx3-ubyte.gz"
    corrupt(victim)
    with pytest.raises(DatasetError, match=message) as info:
        load_fashion_mnist(root)
    assert str(victim) in str(info.value)


def test_splits_are_disjoint_deterministic_and_in_range() -> None:
    cfg = DataConfig(eval_size=500, traffic_size=700, train_limit=1000, seed=3)
    splits = make_splits(cfg)
    assert len(splits.train) == 1000 and len(splits.eval) == 500 and len(splits.traffic) == 700
    assert not set(splits.eval_indices.tolist()) & set(splits.traffic_indices.tolist())
    images, labels = splits.eval.tensors
    assert images.shape == (500, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    again = make_splits(DataConfig(eval_size=500, traffic_size=700, train_limit=1000, seed=3))
    assert again.describe() == splits.describe()
    other = make_splits(DataConfig(eval_size=500, traffic_size=700, train_limit=1000, seed=4))
    assert other.describe()["indices_sha256"] != splits.describe()["indices_sha256"]
    assert not torch.equal(other.eval_indices, splits.eval_indices)


def test_describe_records_seed_and_sizes() -> None:
    described = make_splits(DataConfig(eval_size=200, traffic_size=300, train_limit=400)).describe()
    assert described["seed"] == 0
    assert (described["train_size"], described["eval_size"], described["traffic_size"]) == (
        400,
        200,
        300,
    )
    assert len(described["indices_sha256"]) == 64


def test_splits_that_do_not_fit_the_test_set_are_refused() -> None:
    with pytest.raises(DatasetError, match="exceed the 10000 test images"):
        make_splits(DataConfig(eval_size=6000, traffic_size=5000))


def test_missing_data_in_config_gives_the_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        make_splits(DataConfig(root=tmp_path / "absent"))
