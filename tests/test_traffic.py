"""The traffic generator: its JSON-lines log, feedback, the adaptive attacker, a server outage."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from torch import nn

from robustloop.cli import main
from robustloop.config import RobustloopConfig, dump_config
from serving import RunningServer, create_app, get_state
from serving.traffic import (
    AdaptiveAttacker,
    TrafficError,
    TrafficOptions,
    add_noise,
    run_traffic,
)
from tests.support import register_model
from training import ModelStore

MODEL = "fashion-cnn"
LOG_KEYS = {"t", "mode", "version", "sent", "images", "accuracy", "correct_fraction", "errors"}


class CountingStore:
    """The real store, counting the loads the attacker makes."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.loads: list[str] = []

    def production(self) -> str | None:
        return self.store.production()

    def load(self, ref: str, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
        self.loads.append(ref)
        return self.store.load(ref, device)


@pytest.fixture
def served(
    small_config: RobustloopConfig,
) -> Iterator[tuple[RunningServer, CollectorRegistry, str]]:
    version = register_model(ModelStore(small_config.store.path), seed=0)
    registry = CollectorRegistry()
    app = create_app(small_config, registry=registry)
    try:
        with RunningServer(app) as server:
            yield server, registry, version
    finally:
        get_state(app).close()


def test_traffic_command_logs_one_json_line_a_second_and_feeds_back_labels(
    small_config: RobustloopConfig,
    served: tuple[RunningServer, CollectorRegistry, str],
    tmp_path: Path,
) -> None:
    server, registry, version = served
    config_path = tmp_path / "robustloop.yaml"
    config_path.write_text(dump_config(small_config))
    log_path = tmp_path / "traffic.jsonl"
    command = [
        sys.executable, "-m", "robustloop", "--config", str(config_path), "traffic",
        "--url", server.url, "--rate", "20", "--duration", "2", "--mode", "noise",
        "--batch", "2", "--feedback-fraction", "1", "--log", str(log_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) >= 2
    for line in lines:
        assert set(line) >= LOG_KEYS
        assert line["mode"] == "noise"
        assert line["version"] == version
        assert line["errors"] == 0
        assert line["accuracy"] == line["correct_fraction"]
        assert line["accuracy"] is None or 0.0 <= line["accuracy"] <= 1.0
    sent = sum(line["sent"] for line in lines)
    assert 0 < sent <= 40  # 20 a second for 2 seconds, fewer if the server is slow
    assert sum(line["images"] for line in lines) == 2 * sent
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)
    fed_back = sum(
        registry.get_sample_value(
            "robustloop_feedback_total", {"model": MODEL, "version": version, "outcome": o}
        )
        or 0.0
        for o in ("correct", "wrong")
    )
    assert fed_back == 2 * sent


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--feedback-fraction", "2"], "feedback fraction must be in [0, 1]"),
        (["--eps", "0"], "eps must be in (0, 1]"),
        (["--rate", "0"], "rate and duration must be > 0"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_traffic_command_rejects_bad_options_clearly(
    option: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["traffic", "--url", "http://127.0.0.1:9", *option]) == 2
    assert fragment in capsys.readouterr().err


def test_adaptive_attacker_loads_each_new_version_once_and_attacks_it(
    small_config: RobustloopConfig,
) -> None:
    store = ModelStore(small_config.store.path)
    v1, v2 = register_model(store, seed=1), register_model(store, seed=2)
    counting = CountingStore(store)
    attacker = AdaptiveAttacker(counting, "pgd", eps=0.1, pgd_steps=3)
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])

    for version in (v1, v1, v2, v2):
        adv = attacker.craft(images, labels, version)
        assert attacker.version == version
        assert (adv - images).abs().max() <= 0.1 + 1e-6
        assert bool(((adv >= 0) & (adv <= 1)).all())
    assert counting.loads == [v1, v2]
    expected, _ = store.load(v2)
    assert attacker.model is not None
    for key, value in expected.state_dict().items():
        assert torch.equal(attacker.model.state_dict()[key], value)


def test_noise_is_clipped_to_the_pixel_range_and_has_the_asked_spread() -> None:
    images = torch.full((64, 1, 28, 28), 0.5)
    noisy = add_noise(images, 0.1, torch.Generator().manual_seed(0))
    assert bool(((noisy >= 0) & (noisy <= 1)).all())
    assert float((noisy - images).std()) == pytest.approx(0.1, rel=0.05)
    edge = add_noise(torch.ones(8, 1, 28, 28), 0.5, torch.Generator().manual_seed(0))
    assert float(edge.max()) == 1.0


def test_an_unreachable_server_is_counted_as_errors_not_a_crash(
    small_config: RobustloopConfig, port: int
) -> None:
    out = io.StringIO()
    data = (torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.int64))
    options = TrafficOptions(url=f"http://127.0.0.1:{port}", rate=20, duration=60, requests=10)
    summary = run_traffic(small_config, options, out, data=data)
    assert summary.errors == 10
    assert summary.images == 0 and summary.accuracy is None
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line["errors"] for line in lines) == 10
    assert all(line["accuracy"] is None for line in lines)


def test_attacker_without_the_servers_store_says_what_it_needs(tmp_path: Path) -> None:
    attacker = AdaptiveAttacker(ModelStore(tmp_path / "empty"), "fgsm", eps=0.1, pgd_steps=1)
    with pytest.raises(TrafficError, match=r"v0001-deadbeef.*store\.path"):
        attacker.craft(
            torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.int64), "v0001-deadbeef"
        )
