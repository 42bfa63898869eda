"""The machine header of the benchmarks (bench/_machine.py) names the machine the figures come
from with its real values, and every script in bench/ prints it."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
import torch

from robustloop.config import RobustloopConfig, dump_config, load_config
from training import use_bf16

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    """bench/<name>.py as a module, without putting bench/ on sys.path (its serving.py and
    webhook.py would shadow the packages of those names)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(header: str) -> dict[str, str]:
    """The header's ``# key: value`` lines as a mapping; each key once, nothing else."""
    fields: dict[str, str] = {}
    for line in header.splitlines():
        assert line.startswith("# "), line
        key, sep, value = line[2:].partition(": ")
        assert sep and key not in fields, line
        fields[key] = value
    return fields


@pytest.fixture(scope="module")
def machine() -> ModuleType:
    return _load("_machine")


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_header_names_every_field_with_this_machines_values(
    machine: ModuleType, restore_threads: None
) -> None:
    # GIVEN torch on one thread
    torch.set_num_threads(1)
    # WHEN a benchmark prints its header
    fields = _fields(machine.machine_header())
    # THEN it names the machine class and the run settings, in this order
    assert fields == {
        "cpu": machine.cpu_model(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "native bf16": "yes" if use_bf16("auto") else "no",
        "precision": "fp32",
        "device": "cpu",
        "threads": "1",
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
    }
    assert list(fields) == [
        "cpu",
        "cpu capability",
        "native bf16",
        "precision",
        "device",
        "threads",
        "cores",
        "torch",
    ]


def test_threads_follow_torch_unless_given(machine: ModuleType, restore_threads: None) -> None:
    torch.set_num_threads(2)
    assert _fields(machine.machine_header())["threads"] == "2"
    torch.set_num_threads(1)
    assert _fields(machine.machine_header())["threads"] == "1"
    # a benchmark whose figures come from servers it starts names their thread count
    assert _fields(machine.machine_header(threads=3))["threads"] == "3"


@pytest.mark.parametrize(
    "precision", ["bf16", "fp32", "bf16 (parts 1-2), fp32 (parts 3-4: remediation.precision auto)"]
)
def test_precision_is_passed_through(machine: ModuleType, precision: str) -> None:
    assert _fields(machine.machine_header(precision=precision))["precision"] == precision
    assert machine.describe_machine(precision=precision)["precision"] == precision


def test_cpu_model_is_the_first_model_name_of_cpuinfo(machine: ModuleType, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineTest\nmodel name\t: Test CPU 9000 @ 1.00GHz\n\n"
        "processor\t: 1\nmodel name\t: Other CPU\n"
    )
    assert machine.cpu_model(cpuinfo) == "Test CPU 9000 @ 1.00GHz"


def test_cpu_model_falls_back_to_platform(
    machine: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "processor", lambda: "test-processor")
    assert machine.cpu_model(tmp_path / "absent") == "test-processor"
    nameless = tmp_path / "cpuinfo"
    nameless.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # as on some ARM kernels
    assert machine.cpu_model(nameless) == "test-processor"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert machine.cpu_model(nameless) == platform.machine()


def test_real_cpu_model_matches_proc_cpuinfo(machine: ModuleType) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("model name")
    ]
    assert machine.cpu_model() == (
        names[0] if names else platform.processor() or platform.machine()
    )


@pytest.mark.parametrize("supported", [True, False])
def test_native_bf16_follows_onednn(
    machine: ModuleType, monkeypatch: pytest.MonkeyPatch, supported: bool
) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
    assert _fields(machine.machine_header())["native bf16"] == ("yes" if supported else "no")
    assert machine.describe_machine()["native_bf16"] is supported


def test_native_bf16_is_no_on_builds_without_onednn(
    machine: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> bool:
        raise RuntimeError("No such operator mkldnn::_is_mkldnn_bf16_supported")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    assert _fields(machine.machine_header())["native bf16"] == "no"


def test_cuda_device_names_the_gpu(machine: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def device_name(device: torch.device) -> str:
        asked.append(device)
        return "Test GPU 80GB"

    monkeypatch.setattr(torch.cuda, "get_device_name", device_name)
    fields = _fields(machine.machine_header(device="cuda:0"))
    assert (fields["device"], fields["gpu"]) == ("cuda:0", "Test GPU 80GB")
    assert asked == [torch.device("cuda:0")]
    assert "gpu" not in machine.describe_machine(device="cpu")


def test_description_is_json_for_reports(machine: ModuleType) -> None:
    info = machine.describe_machine(precision="bf16")
    assert json.loads(json.dumps(info)) == info
    assert _fields(machine.machine_header(precision="bf16"))["cpu"] == info["cpu"]


BENCHES = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.name)
def test_every_bench_prints_the_header_in_main(script: Path) -> None:
    tree = ast.parse(script.read_text(encoding="utf-8"))
    main = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"
    )
    calls = [
        node
        for node in ast.walk(main)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "machine_header"
    ]
    assert calls, f"{script.name}: main() prints no machine_header()"


@pytest.fixture
def training_speed(machine: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/training_speed.py, finding the helper as it does when run as a script."""
    monkeypatch.setitem(sys.modules, "_machine", machine)
    return _load("training_speed")


Seen = list[tuple[Path | None, RobustloopConfig | None]]


def _fake_harden(seen: Seen) -> Any:
    """A stand-in for training_speed.harden_run that records the config file the CLI would get
    and what it holds (read while it exists: a forced precision's copy is temporary)."""

    def harden_run(config: Path | None, *args: Any, **kwargs: Any) -> dict[str, object]:
        seen.append((config, None if config is None else load_config(config)))
        return {
            "version": "v0002-00000000",
            "wall_seconds": 1.0,
            "cpu_seconds": 1.0,
            "pgd20_accuracy": 0.5,
            "ci95": (0.4, 0.6),
            "n": 100,
        }

    return harden_run


def _user_config(
    tmp_path: Path, precision: Literal["auto", "fp32", "bf16"]
) -> tuple[RobustloopConfig, Path]:
    user = RobustloopConfig()
    user.remediation.precision = precision
    user.store.path = tmp_path / "store"
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(user))
    return user, path


def test_training_speed_precision_reaches_the_harden_runs(
    training_speed: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a config that hardens in float32
    user, config = _user_config(tmp_path, "fp32")
    seen: Seen = []
    monkeypatch.setattr(training_speed, "harden_run", _fake_harden(seen))
    argv = ["--config", str(config), "--skip-throughput", "--harden-from", "v0001"]
    argv += ["--harden-methods", "fgsm-rs", "fgsm-prior"]

    # WHEN parts 3 and 4 run with --precision bf16
    assert training_speed.main([*argv, "--precision", "bf16"]) == 0

    # THEN every harden run gets a copy of the config that differs only in the precision
    forced = user.model_copy(deep=True)
    forced.remediation.precision = "bf16"
    assert [cfg for _, cfg in seen] == [forced, forced]
    assert all(path is not None and path != config for path, _ in seen)
    assert not any(path.exists() for path, _ in seen if path is not None)  # cleaned up
    # AND the header says which precision parts 3 and 4 ran at
    out = capsys.readouterr().out
    assert "# precision: bf16 (parts 3-4: remediation.precision bf16)\n" in out
    assert out.index("# precision:") < out.index("harden --method")


def test_training_speed_keeps_the_config_without_precision(
    training_speed: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, config = _user_config(tmp_path, "auto")
    seen: Seen = []
    monkeypatch.setattr(training_speed, "harden_run", _fake_harden(seen))
    argv = ["--config", str(config), "--skip-throughput", "--harden-from", "v0001"]
    assert training_speed.main([*argv, "--harden-methods", "fgsm-rs"]) == 0

    assert [path for path, _ in seen] == [config]  # the user's own file, as without the option
    resolved = "bf16" if use_bf16("auto") else "fp32"
    out = capsys.readouterr().out
    assert f"# precision: {resolved} (parts 3-4: remediation.precision auto)\n" in out
