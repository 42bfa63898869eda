"""The training CLI as other components and users call it: train, harden, evaluate, models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustloop.config import RobustloopConfig, dump_config, load_config
from tests.conftest import DATASET_ROOT
from tests.support import run_cli
from training import DEFAULT_LR, ModelStore, build_model

pytestmark = pytest.mark.skipif(not DATASET_ROOT.is_dir(), reason=f"{DATASET_ROOT} absent")


@pytest.fixture
def config_path(small_config: RobustloopConfig, tmp_path: Path, precision: str) -> Path:
    """A small config whose hardening runs at ``precision`` (each test runs with both)."""
    small_config.data.train_limit = 300
    small_config.data.eval_size = 100
    small_config.data.traffic_size = 100
    small_config.remediation.check_size = 32
    small_config.remediation.precision = precision  # type: ignore[assignment]
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(small_config))
    return path


def test_train_harden_evaluate_promote_rollback(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = ["--config", str(config_path)]
    code, out, _ = run_cli(capsys, *cfg, "train", "--epochs", "1")
    assert code == 0
    standard = out.strip().splitlines()[-1]
    assert standard.startswith("v0001-")

    code, out, err = run_cli(
        capsys, *cfg, "harden", "--from", "production", "--method", "pgd", "--steps", "2",
        "--epochs", "1", "--max-seconds", "none", "--incident", "inc-42",
    )  # fmt: skip
    assert code == 0
    assert "warning" not in err
    hardened = out.strip().splitlines()[-1]
    store = ModelStore(tmp_path / "store")
    manifest = store.manifest(hardened)
    assert manifest.parent == standard
    assert manifest.provenance["incident"] == "inc-42"
    assert manifest.recipe["method"] == "pgd" and manifest.recipe["eps"] == 0.1
    assert manifest.recipe["max_seconds"] is None  # the config says 60; "none" lifts the clock
    # remediation.lr: null resolves to the optimizer's default, and the recipe records it
    assert manifest.recipe["optimizer"] == "sgd" and manifest.recipe["lr"] == DEFAULT_LR["sgd"]
    assert manifest.recipe["warmup"] == 0.2
    assert manifest.recipe["precision"] == load_config(config_path).remediation.precision
    assert [h["epoch"] for h in manifest.metrics["history"]] == [0, 1]
    assert store.production() == standard, "harden must not promote"

    code, out, _ = run_cli(
        capsys, *cfg, "evaluate", "--model", hardened, "--attack", "pgd", "--eps", "0.1",
        "--steps", "2", "--restarts", "2", "--n", "40", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result.keys() == {"model", "attack", "eps", "n", "accuracy", "ci95"}
    assert (result["model"], result["attack"], result["eps"], result["n"]) == (
        hardened, "pgd", 0.1, 40,
    )  # fmt: skip
    assert result["ci95"][0] <= result["accuracy"] <= result["ci95"][1]

    code, out, _ = run_cli(capsys, *cfg, "models", "list", "--json")
    rows = json.loads(out)
    assert [(r["version"], r["production"]) for r in rows] == [
        (standard, True),
        (hardened, False),
    ]
    assert run_cli(capsys, *cfg, "models", "promote", hardened)[0] == 0
    assert store.production() == hardened
    code, out, _ = run_cli(capsys, *cfg, "models", "rollback")
    assert code == 0 and out.strip() == standard
    assert store.production() == standard

    code, out, _ = run_cli(capsys, *cfg, "models", "list")
    assert code == 0 and f"* {standard}" in out


def test_harden_warns_when_the_learning_rate_is_of_the_other_optimizers_scale(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config written before remediation.optimizer existed holds Adam's lr 3e-3."""
    cfg = load_config(config_path)
    cfg.remediation.lr = 3e-3
    old = tmp_path / "old.yaml"
    old.write_text(dump_config(cfg))
    assert run_cli(capsys, "--config", str(old), "train", "--epochs", "1")[0] == 0
    code, out, err = run_cli(
        capsys, "--config", str(old), "harden", "--from", "production", "--epochs", "1"
    )
    assert code == 0, err
    assert "warning: remediation.lr 0.003 is far from sgd's usual scale" in err
    recipe = ModelStore(tmp_path / "store").manifest(out.strip().splitlines()[-1]).recipe
    assert (recipe["optimizer"], recipe["lr"]) == ("sgd", 3e-3), "a warning, not a change"


def test_a_divergent_recipe_registers_nothing_and_says_why_in_one_line(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """GIVEN remediation.lr: 5, WHEN harden runs, THEN it exits non-zero with one line naming
    the epoch, the learning rate and what to change; the store and production are untouched."""
    cfg = load_config(config_path)
    cfg.remediation.lr = 5.0
    wild = tmp_path / "wild.yaml"
    wild.write_text(dump_config(cfg))
    assert run_cli(capsys, "--config", str(wild), "train", "--epochs", "1")[0] == 0
    store = ModelStore(tmp_path / "store")
    versions, production = [m.version for m in store.list()], store.production()
    pointer = store.pointer_path.read_bytes()
    code, out, err = run_cli(
        capsys, "--config", str(wild), "harden", "--from", "production", "--epochs", "2"
    )
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if not line.startswith(("20", "robustloop: warn"))]
    assert len(lines) == 1, err
    assert lines[0].startswith("robustloop: error: adversarial training diverged in epoch 1 ")
    assert "peak 5)" in lines[0] and "lower remediation.lr" in lines[0]
    assert [m.version for m in store.list()] == versions
    assert store.production() == production and store.pointer_path.read_bytes() == pointer


def test_models_average_registers_the_mean_of_the_weights(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = ["--config", str(config_path)]
    first = run_cli(capsys, *cfg, "train", "--epochs", "1")[1].strip().splitlines()[-1]
    store = ModelStore(tmp_path / "store")
    model, _ = store.load(first)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    second = store.register(
        model, architecture="cnn", parent=first, recipe={}, metrics={}, split={}, provenance={}
    )
    code, out, err = run_cli(capsys, *cfg, "models", "average", first, second)
    assert code == 0, err
    soup = out.strip().splitlines()[-1]
    averaged, soup_manifest = store.load(soup)
    original, _ = store.load(first)
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, original.state_dict()[name] + 0.25)
    assert soup_manifest.recipe == {"method": "average", "sources": [first, second]}
    assert soup_manifest.parent == first
    assert 0 <= soup_manifest.metrics["eval_clean_accuracy"] <= 1
    assert store.production() == first, "average must not promote"

    wide = store.register(
        build_model("wide-cnn"), architecture="wide-cnn", parent=None, recipe={}, metrics={},
        split={}, provenance={},
    )  # fmt: skip
    versions_before = [m.version for m in store.list()]
    for argv, message in [
        ([first], "at least two versions"),
        ([first, wide], "cannot average models of different architectures"),
        ([first, "v0099"], "unknown model version 'v0099'"),
    ]:
        code, _, err = run_cli(capsys, *cfg, "models", "average", *argv)
        assert code == 2 and message in err, err
    assert [m.version for m in store.list()] == versions_before, "a refused average wrote"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_torchscript_computes_the_same_logits(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = ["--config", str(config_path)]
    assert run_cli(capsys, *cfg, "train", "--epochs", "1")[0] == 0
    target = tmp_path / "model.pt"
    code, _, _ = run_cli(
        capsys, *cfg, "models", "export", "production", "--format", "torchscript", str(target)
    )
    assert code == 0
    model, _ = ModelStore(tmp_path / "store").load("production")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(torch.jit.load(str(target))(x), model(x), atol=1e-5)
    import onnx  # in the test extra: this part must run, not skip

    onnx_path = tmp_path / "model.onnx"
    code, _, _ = run_cli(capsys, *cfg, "models", "export", "production", "--format", "onnx",
                      str(onnx_path))  # fmt: skip
    assert code == 0
    onnx.checker.check_model(onnx.load(str(onnx_path)))


def test_user_errors_exit_2_with_a_clear_message(
    config_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = ["--config", str(config_path)]
    code, _, err = run_cli(capsys, *cfg, "evaluate", "--model", "production", "--json")
    assert code == 2 and "robustloop train" in err
    assert run_cli(capsys, *cfg, "train", "--epochs", "1")[0] == 0
    code, _, err = run_cli(capsys, *cfg, "harden", "--from", "v0099")
    assert code == 2 and "unknown model version 'v0099'" in err
    code, _, err = run_cli(capsys, *cfg, "models", "rollback")
    assert code == 2 and "nothing to roll back" in err
    for bad in ("soon", "0", "-5"):  # a clock is a positive number of seconds, or none
        with pytest.raises(SystemExit) as info:
            run_cli(capsys, *cfg, "harden", "--max-seconds", bad)
        assert info.value.code == 2 and "--max-seconds" in capsys.readouterr().err
    assert len(ModelStore(tmp_path / "store").list()) == 1, "a refused harden registered nothing"

    store = ModelStore(tmp_path / "store")
    version = store.production()
    assert version is not None
    weights = store.versions_dir / version / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    code, _, err = run_cli(capsys, *cfg, "evaluate", "--model", version, "--json")
    assert code == 2 and "refusing to load" in err
    code, _, err = run_cli(capsys, *cfg, "models", "export", version, str(tmp_path / "x.pt"))
    assert code == 2 and "refusing to load" in err
    assert not (tmp_path / "x.pt").exists()


def test_missing_data_and_bad_config_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "robustloop.yaml"
    path.write_text(f"data:\n  root: {tmp_path / 'nothing'}\nstore:\n  path: {tmp_path / 's'}\n")
    code, out, err = run_cli(capsys, "--config", str(path), "train")
    assert code == 2 and "dataset-fashion-mnist" in err and str(tmp_path / "nothing") in err
    assert out == "" and not (tmp_path / "s").exists(), "a failed train must write nothing"
    path.write_text("remediation:\n  method: magic\n")
    code, _, err = run_cli(capsys, "--config", str(path), "harden")
    assert code == 2 and "remediation.method" in err
