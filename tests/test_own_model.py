"""Protect your own model: a 3-channel 32x32 ImageFolder and a factory of the user's, through the
CLI as a user runs it (init, train, harden, evaluate, gate, promote, serve, infer, feedback);
torchvision's resnet18; weights trained elsewhere (`models import`); the npz format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from robustloop.config import load_config
from tests.support import CLASSES, FACTORY, Serve, image_of_class, run_cli, write_imagefolder
from training import DatasetError, ModelStore, make_splits


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("own")
    data = write_imagefolder(root / "images", {"train": 40, "test": 20})
    code = root / "user-code"
    code.mkdir()
    (code / "mynets.py").write_text(FACTORY)
    yield {"root": root, "data": data, "code": code}


def _config(own: dict[str, Path], name: str, architecture: str, **extra: object) -> Path:
    doc: dict[str, object] = {
        "device": "cpu",
        "data": {
            "format": "imagefolder",
            "root": str(own["data"]),
            "eval_size": 100,
            "traffic_size": 100,
        },
        "model": {"name": name, "architecture": architecture, "python_path": [str(own["code"])]},
        "store": {"path": str(own["root"] / f"store-{name}")},
        "training": {"epochs": 4, "batch_size": 32, "lr": 0.003},
        # a gentle recipe for 400 small images: SGD's default peak (0.1) is tuned for 60k
        "remediation": {
            "epochs": 2,
            "batch_size": 32,
            "check_size": 64,
            "max_seconds": 120,
            "lr": 0.01,
            "eps": 0.03,
        },
        "gate": {"n": 100},
    }
    for section, values in extra.items():
        doc.setdefault(section, {}).update(values)  # type: ignore[attr-defined]
    path = own["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_users_factory_on_a_3_channel_imagefolder_goes_through_the_whole_loop(
    own: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = own["root"] / "my-net.yaml"
    code, _, _ = run_cli(capsys, "init", "--config", str(config))
    assert code == 0 and config.exists()
    config = _config(own, "my-net", "mynets:small_net")
    cli = ["--config", str(config)]

    code, out, err = run_cli(capsys, *cli, "train")
    assert code == 0, err
    base = out.strip().splitlines()[-1]
    store = ModelStore(load_config(config).store.path)
    manifest = store.manifest(base)
    assert manifest.spec.input_shape == (3, 32, 32)
    assert list(manifest.spec.class_names) == CLASSES
    assert manifest.architecture == "mynets:small_net"
    assert manifest.metrics["eval_clean_accuracy"] > 0.5  # it learned the classes

    code, out, err = run_cli(capsys, *cli, "harden", "--from", base, "--max-seconds", "none")
    assert code == 0, err
    candidate = out.strip().splitlines()[-1]
    assert store.manifest(candidate).spec == manifest.spec

    code, out, err = run_cli(
        capsys, *cli, "evaluate", "--model", candidate, "--attack", "pgd", "--n", "100", "--json"
    )
    assert code == 0, err
    robust = json.loads(out)
    assert robust["attack"] == "pgd" and robust["n"] == 100

    code, out, err = run_cli(capsys, *cli, "gate", "--candidate", candidate, "--json")
    assert code in (0, 1), err  # passed or rejected: either is a verdict on this model
    assert json.loads(out)["candidate"] == candidate

    code, _, err = run_cli(capsys, *cli, "models", "promote", candidate)
    assert code == 0, err

    server = Serve(config, "--host", "127.0.0.1", "--port", "0")
    try:
        _, version, url = server.announced().groups()
        assert version == candidate
        meta = requests.get(f"{url}/v2/models/my-net", timeout=10).json()
        assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
        assert meta["parameters"]["class_names"] == CLASSES

        image = image_of_class(4, np.random.default_rng(1)).transpose(2, 0, 1)
        body = {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 3, 32, 32],
                    "datatype": "UINT8",
                    "data": image.reshape(-1).tolist(),
                }
            ]
        }
        answer = requests.post(f"{url}/v2/models/my-net/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["probabilities"]["shape"] == [1, 10]
        label = outputs["predicted_label"]["data"][0]
        assert label == CLASSES[outputs["predicted_class"]["data"][0]]

        ids = outputs["sample_ids"]["data"]
        fed = requests.post(
            f"{url}/v2/models/my-net/feedback", json={"ids": ids, "labels": [4]}, timeout=10
        ).json()
        assert fed["correct"] + fed["wrong"] == 1
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("robustloop_feedback_total{")
            and 'model="my-net"' in line
            and f'version="{candidate}"' in line
        ]
        assert sum(counted) == 1  # the feedback is counted for the served version

        wrong = {
            "inputs": [
                {"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
            ]
        }
        refused = requests.post(f"{url}/v2/models/my-net/infer", json=wrong, timeout=10)
        assert refused.status_code == 400
        message = refused.json()["error"]
        assert "[N, 3, 32, 32]" in message and "[1, 1, 28, 28]" in message
    finally:
        server.stop()


def test_torchvision_resnet18_trains_and_hardens(
    own: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(
        own,
        "resnet",
        "torchvision:resnet18",
        data={"train_limit": 100},
        training={"epochs": 1},
        remediation={"epochs": 1, "check_size": 32},
        model={"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
    )
    code, out, err = run_cli(capsys, "--config", str(config), "train")
    assert code == 0, err
    base = out.strip().splitlines()[-1]
    code, out, err = run_cli(capsys, "--config", str(config), "harden", "--from", base)
    assert code == 0, err
    store = ModelStore(load_config(config).store.path)
    spec = store.manifest(out.strip().splitlines()[-1]).spec
    assert spec.architecture == "torchvision:resnet18" and spec.normalize is not None
    model, _ = store.load("latest")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_models_import_registers_weights_trained_elsewhere_and_refuses_a_misfit(
    own: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    sys.path.insert(0, str(own["code"]))
    try:
        import mynets  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(own["code"]))
    config = _config(own, "imported", "mynets:small_net")
    elsewhere = mynets.small_net(in_channels=3, num_classes=10, image_size=(32, 32))
    weights = own["root"] / "elsewhere.pt"
    torch.save(elsewhere.state_dict(), weights)

    code, out, err = run_cli(
        capsys, "--config", str(config), "models", "import", str(weights), "--promote"
    )
    assert code == 0, err
    version = out.strip()
    store = ModelStore(load_config(config).store.path)
    assert store.production() == version
    manifest = store.manifest(version)
    assert manifest.recipe["method"] == "imported"
    assert 0 <= manifest.metrics["eval_clean_accuracy"] <= 1
    assert manifest.provenance["file_sha256"]
    model, _ = store.load(version)
    for key, tensor in elsewhere.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor)

    misfit = own["root"] / "misfit.pt"
    torch.save(
        mynets.small_net(in_channels=1, num_classes=10, image_size=(32, 32)).state_dict(), misfit
    )
    before = [m.version for m in store.list()]
    code, _, err = run_cli(capsys, "--config", str(config), "models", "import", str(misfit))
    assert code == 2
    assert "weight '0.weight' has shape [16, 1, 3, 3], the architecture needs [16, 3, 3, 3]" in err
    assert len(err.strip().splitlines()) == 1
    assert [m.version for m in store.list()] == before  # nothing registered

    code, _, err = run_cli(
        capsys,
        "--config",
        str(config),
        "models",
        "import",
        str(weights),
        "--architecture",
        "mynets:wrong_output",
    )
    assert code == 2 and "expected logits [2, 10]" in err


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float"])
def test_the_npz_format_loads_each_layout(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 12, 12, 3), dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {
        "NHW": x[..., 0],
        "NHWC": x,
        "NCHW": x.transpose(0, 3, 1, 2),
        "float": x / 255.0,
    }
    images = arrays[layout]
    labels = rng.integers(0, 4, size=300)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x_train=images[:200],
        y_train=labels[:200],
        x_test=images[200:],
        y_test=labels[200:],
        class_names=np.array(["a", "b", "c", "d"]),
    )
    cfg = load_config(None).data.model_copy(
        update={"format": "npz", "root": path, "eval_size": 50, "traffic_size": 50}
    )
    splits = make_splits(cfg)
    channels = 1 if layout == "NHW" else 3
    assert splits.image_shape == (channels, 12, 12)
    assert splits.classes == ("a", "b", "c", "d")
    first = splits.train.tensors[0][0]
    expected = torch.from_numpy(x[0] if layout != "NHW" else x[0, ..., :1]).permute(2, 0, 1)
    assert torch.allclose(first, expected.float() / 255, atol=1 / 255)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda root: (root / "test" / "kind-3").rename(root / "test" / "other"),
            "same class folders",
        ),
        (
            lambda root: [p.unlink() for p in (root / "train" / "kind-2").iterdir()],
            "holds no PNG or JPEG image",
        ),
        (
            lambda root: Image.new("RGB", (20, 20)).save(root / "train" / "kind-1" / "odd.png"),
            "differ in size or channels",
        ),
        (lambda root: (root / "test").rename(root / "elsewhere"), "is missing"),
    ],
)
def test_a_broken_imagefolder_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], break_it: object, message: str
) -> None:
    data = write_imagefolder(tmp_path / "images", {"train": 2, "test": 20})
    break_it(data)  # type: ignore[operator]
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "format": "imagefolder",
                    "root": str(data),
                    "eval_size": 100,
                    "traffic_size": 100,
                },
                "store": {"path": str(tmp_path / "store")},
            }
        )
    )
    with pytest.raises(DatasetError, match=message):
        make_splits(load_config(config).data)
    code, _, err = run_cli(capsys, "--config", str(config), "train")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_digits_script_writes_a_second_real_dataset_that_robustloop_reads(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    out = tmp_path / "digits"

    def write() -> subprocess.CompletedProcess[str]:
        script = REPO_ROOT / "scripts" / "digits-imagefolder.py"
        argv = [sys.executable, str(script), str(out)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    done = write()
    assert done.returncode == 0, done.stderr
    assert sum(1 for _ in (out / "train").rglob("*.png")) == 1297
    assert sum(1 for _ in (out / "test").rglob("*.png")) == 500
    splits = make_splits(load_config(out / "robustloop.yaml").data)
    assert splits.image_shape == (1, 8, 8)
    assert splits.classes == tuple(str(d) for d in range(10))
    assert len(splits.eval) == len(splits.traffic) == 250
    again = write()
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites
