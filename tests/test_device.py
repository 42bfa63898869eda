"""The ``device`` key: resolved in one place, honoured by every command that runs a model.

No GPU is at hand where the suite runs, so the end-to-end test makes torch *see* one and
records where the commands place their models, each move landing on the CPU. The training,
attack and evaluation loops follow the model's device (``training.model_device``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import training.device
from robustloop.config import RobustloopConfig, dump_config
from tests.conftest import DATASET_ROOT
from tests.support import run_cli
from training import DeviceError, ModelStore, build_model, model_device, resolve_device

needs_data = pytest.mark.skipif(not DATASET_ROOT.is_dir(), reason=f"{DATASET_ROOT} absent")


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch sees no GPU, whatever this machine has."""
    monkeypatch.setattr(training.device, "gpu_available", lambda: False)


@pytest.fixture
def seen_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """torch sees a CUDA GPU; every ``Module.to`` aimed at it is recorded (by the module's
    class name) and lands on the CPU, where the computation then runs."""
    moves: list[str] = []
    real_to = nn.Module.to

    def to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        target = kwargs.pop("device", args[0] if args else None)
        rest = args[1:] if args else ()
        if target is not None and torch.device(target).type == "cuda":
            moves.append(type(self).__name__)
            target = "cpu"
        return real_to(self, *(() if target is None else (target,)), *rest, **kwargs)

    monkeypatch.setattr(training.device, "gpu_available", lambda: True)
    monkeypatch.setattr(training.device, "gpu_bf16", lambda: True)
    monkeypatch.setattr(nn.Module, "to", to)
    yield moves


def test_names_resolve_in_one_place(no_gpu: None) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="device cuda: torch sees no CUDA GPU here"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"unknown device 'tpu'; choose one of"):
        resolve_device("tpu")
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu"), "no parameters: the CPU"


def test_auto_prefers_a_gpu_that_torch_sees(seen_gpu: list[str]) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def _config(tmp_path: Path, **device: str) -> Path:
    cfg = RobustloopConfig(**device)
    cfg.data.train_limit = 300
    cfg.data.eval_size = 100
    cfg.data.traffic_size = 100
    cfg.training.epochs = 1
    cfg.remediation.epochs = 1
    cfg.remediation.check_size = 32
    cfg.remediation.max_seconds = None
    cfg.gate.n = 100
    cfg.store.path = tmp_path / "store"
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(cfg))
    return path


@needs_data
@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["harden", "--from", "production"],
        ["evaluate", "--model", "production"],
        ["gate", "--candidate", "v0001", "--baseline", "v0001"],
        ["serve", "--port", "0"],
    ],
    ids=lambda argv: argv[0],
)
@pytest.mark.parametrize("where", ["flag", "config"])
def test_cuda_where_torch_sees_no_gpu_is_refused_in_one_line_and_changes_nothing(
    no_gpu: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    where: str,
) -> None:
    config = _config(tmp_path, **({"device": "cuda"} if where == "config" else {}))
    store = ModelStore(tmp_path / "store")
    store.register(
        build_model("cnn"), architecture="cnn", parent=None, recipe={}, metrics={}, split={},
        provenance={},
    )  # fmt: skip
    versions = [m.version for m in store.list()]
    flag = ["--device", "cuda"] if where == "flag" else []
    code, out, err = run_cli(capsys, "--config", str(config), *command, *flag)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if not line.startswith("20")]  # log lines
    assert lines == [
        "robustloop: error: device cuda: torch sees no CUDA GPU here (a CPU-only torch build, "
        "or no driver); set device: auto or cpu"
    ]
    assert [m.version for m in store.list()] == versions


@needs_data
def test_every_command_places_its_model_on_the_resolved_device(
    seen_gpu: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN device: auto and a GPU torch sees, WHEN train, harden, evaluate and gate run and
    the server answers a request, THEN each put its models on the GPU (the recorded moves), and
    the hardened version's recipe names the device and bf16 (auto on a bf16-capable GPU)."""
    cfg = ["--config", str(_config(tmp_path))]
    code, out, err = run_cli(capsys, *cfg, "train")
    assert code == 0, err
    assert seen_gpu == ["Sequential"], "train builds the model on the GPU"
    code, out, err = run_cli(capsys, *cfg, "harden", "--from", "production")
    assert code == 0, err
    hardened = out.strip().splitlines()[-1]
    recipe = ModelStore(tmp_path / "store").manifest(hardened).recipe
    assert (recipe["device"], recipe["precision"]) == ("cuda", "bf16")
    assert seen_gpu == ["Sequential"] * 2, "harden loads the base onto the GPU"
    code, out, err = run_cli(capsys, *cfg, "evaluate", "--model", hardened, "--n", "20", "--json")
    assert code == 0 and json.loads(out)["n"] == 20, err
    assert len(seen_gpu) == 3
    code, out, err = run_cli(capsys, *cfg, "gate", "--candidate", hardened, "--json")
    assert code in (0, 1), err  # passed or rejected: judged
    assert len(seen_gpu) == 5, "the gate loads candidate and baseline onto the GPU"

    from serving import create_app, get_state

    app = create_app(RobustloopConfig(store={"path": tmp_path / "store"}), watch=False)
    try:
        assert len(seen_gpu) == 6, "the server loads production onto the GPU"
        reply = app.test_client().post(
            "/v2/models/fashion-cnn/infer",
            json={"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32",
                              "data": [0.5] * 784}]},
        )  # fmt: skip
        assert reply.status_code == 200, reply.get_json()
    finally:
        get_state(app).close()
