"""The traffic generator: its JSON-lines log, feedback, the adaptive attacker, partial attacks,
the black-box attacker through a real server, a server outage."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from robustloop.cli import main
from robustloop.commands.serving import TRAFFIC_MODES
from robustloop.config import RobustloopConfig, dump_config
from serving import RunningServer, create_app, get_state
from serving.traffic import (
    MODES,
    AdaptiveAttacker,
    AttackSchedule,
    ServerClient,
    TrafficError,
    TrafficOptions,
    add_noise,
    run_traffic,
)
from tests.support import Serve, register_model
from training import ModelStore

MODEL = "fashion-cnn"
LOG_KEYS = {
    "t",
    "mode",
    "version",
    "sent",
    "images",
    "accuracy",
    "correct_fraction",
    "errors",
    "attacked",
    "attacked_accuracy",
    "queries",
}


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
        (["--mode", "pgd", "--steps", "0"], "steps must be >= 1"),
        (["--mode", "fgsm", "--attack-fraction", "0"], "attack fraction must be in (0, 1]"),
        (["--mode", "bpda", "--attack-fraction", "1.5"], "attack fraction must be in (0, 1]"),
        (["--attack-fraction", "0.5"], "applies to the attack modes"),
        (["--mode", "noise", "--attack-fraction", "0.5"], "applies to the attack modes"),
        (["--mode", "square", "--query-budget", "0"], "query budget must be >= 1"),
        (["--mode", "pgd", "--query-budget", "10"], "applies to the square mode"),
        (["--mode", "bpda", "--bpda-weight", "-1"], "BPDA weight must be a number >= 0"),
        (["--mode", "bpda", "--bpda-weight", "nan"], "BPDA weight must be a number >= 0"),
        (["--mode", "pgd", "--bpda-weight", "0.3"], "applies to the bpda mode"),
    ],
)
def test_traffic_command_rejects_bad_options_clearly(
    option: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["traffic", "--url", "http://127.0.0.1:9", *option]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err


def test_the_command_line_offers_every_mode_of_the_generator() -> None:
    assert set(TRAFFIC_MODES) == set(MODES)
    assert {"fgsm", "pgd", "bpda", "square"} <= set(MODES)


def test_the_demo_refuses_attack_options_outside_the_attack_scenario(
    small_config: RobustloopConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "robustloop.yaml"
    config.write_text(dump_config(small_config))
    demo = ["--config", str(config), "demo"]
    assert main([*demo, "--scenario", "drift", "--attack", "pgd"]) == 2
    assert "apply to --scenario attack only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*demo, "--attack-fraction", "0"])
    assert exited.value.code == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
    assert not small_config.stack.run_dir.exists()


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0])
def test_an_attack_schedule_attacks_the_fraction_asked_for_in_every_window(
    fraction: float,
) -> None:
    """Any n consecutive requests hold n*F attacked ones, give or take one; the same seed
    attacks the same requests."""
    for seed in range(4):
        schedule = AttackSchedule(fraction, seed)
        marks = [schedule.attacked(k) for k in range(300)]
        assert marks == [AttackSchedule(fraction, seed).attacked(k) for k in range(300)]
        for size in (1, 7, 30, 300):
            for start in range(0, 300 - size + 1, 13):
                count = sum(marks[start : start + size])
                assert math.floor(size * fraction) <= count <= math.ceil(size * fraction)
    phases = {AttackSchedule(0.5, seed).phase for seed in range(4)}
    assert len(phases) == 4, "the seed does not move the schedule"


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


@pytest.mark.parametrize("weight", [None, 0.3])
def test_the_bpda_weight_reaches_both_of_its_penalties(
    small_config: RobustloopConfig, weight: float | None
) -> None:
    from training import BPDA

    store = ModelStore(small_config.store.path)
    version = register_model(store, seed=1)
    attacker = AdaptiveAttacker(store, "bpda", eps=0.1, pgd_steps=2, bpda_weight=weight)
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    adv = attacker.craft(images, torch.tensor([0, 1]), version)
    assert (adv - images).abs().max() <= 0.1 + 1e-6
    attack = attacker.attack
    assert isinstance(attack, BPDA)
    default = BPDA(attacker.model or torch.nn.Identity())
    expected = default.squeeze_weight if weight is None else weight
    assert (attack.squeeze_weight, attack.entropy_weight) == (expected, expected)


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


def _served_requests(registry: CollectorRegistry, version: str) -> float:
    labels = {"model": MODEL, "version": version, "code": "200"}
    return registry.get_sample_value("robustloop_inference_requests_total", labels) or 0.0


@pytest.mark.parametrize(("mode", "fraction", "sent"), [("fgsm", 0.25, 16), ("bpda", 0.5, 4)])
def test_a_partial_attack_attacks_that_fraction_of_the_requests_and_says_so(
    small_config: RobustloopConfig,
    served: tuple[RunningServer, CollectorRegistry, str],
    mode: str,
    fraction: float,
    sent: int,
) -> None:
    server, registry, version = served
    images = torch.rand(sent, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(sent) % 10
    out = io.StringIO()
    options = TrafficOptions(
        url=server.url,
        rate=1000,
        mode=mode,  # type: ignore[arg-type]
        feedback_fraction=0.0,
        pgd_steps=2,
        requests=sent,
        attack_fraction=fraction,
    )
    summary = run_traffic(small_config, options, out, data=(images, labels))
    assert summary.errors == 0
    assert summary.sent == sent and summary.attacked == int(sent * fraction)
    assert summary.attacked_images == summary.attacked and summary.queries == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(set(line) >= LOG_KEYS for line in lines)
    assert sum(line["attacked"] for line in lines) == summary.attacked
    assert _served_requests(registry, version) == sent


@pytest.fixture
def serve_process(small_config: RobustloopConfig, tmp_path: Path, port: int) -> Iterator[str]:
    """``robustloop serve`` as a real process on a free port, serving an untrained CNN: its URL."""
    register_model(ModelStore(small_config.store.path), seed=0)
    config_path = tmp_path / "robustloop.yaml"
    config_path.write_text(dump_config(small_config))
    server = Serve(config_path, "--host", "127.0.0.1", "--port", str(port))
    try:
        url = server.announced().group(3)
        assert url == f"http://127.0.0.1:{port}"
        yield url
    finally:
        code, err = server.stop()
        assert code == 0, err


def _served_infer_requests(url: str) -> float:
    """Infer requests the server answered with 200, from its own /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "robustloop_inference_requests_total" and sample.labels["code"] == "200"
    )


def test_the_square_attacker_queries_only_the_api_within_its_budget(
    small_config: RobustloopConfig, serve_process: str, tmp_path: Path
) -> None:
    """The black-box attacker reads no weights (its store is empty) and sends every query to the
    server's infer endpoint: the server counts the attacked requests plus the queries, and the
    queries stay within the budget per attacked image."""
    url = serve_process
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    client = ServerClient(url, MODEL)
    try:
        predicted, _, _ = client.infer(images)  # labels the server agrees with: margins > 0
    finally:
        client.close()
    small_config.store.path = tmp_path / "no-weights-here"
    before = _served_infer_requests(url)
    out = io.StringIO()
    budget = 5
    options = TrafficOptions(
        url=url,
        rate=1000,
        mode="square",
        eps=0.01,  # small enough that images rarely fool the model before the budget ends
        feedback_fraction=0.0,
        requests=6,
        attack_fraction=0.5,
        query_budget=budget,
    )
    summary = run_traffic(small_config, options, out, data=(images, torch.tensor(predicted)))
    assert summary.errors == 0 and summary.sent == 6 and summary.attacked == 3
    assert summary.attacked <= summary.queries <= budget * summary.attacked
    assert _served_infer_requests(url) - before == summary.sent + summary.queries
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line["queries"] for line in lines) == summary.queries
    assert not (tmp_path / "no-weights-here").exists()
