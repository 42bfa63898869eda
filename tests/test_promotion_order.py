"""A promoted model is judged from its first request: the promote step puts the rules calibrated
for the candidate in force before production moves, moves it by compare-and-swap, and can be
retried. Prometheus is real where the rules' being in force is checked."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from robustloop.config import RobustloopConfig, dump_config, load_config
from tests.conftest import DATASET_ROOT, free_port, running_prometheus

pytestmark = pytest.mark.skipif(
    not (DATASET_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST is not installed in {DATASET_ROOT}",
)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[RobustloopConfig, str, str]:
    """A config and a store holding two briefly trained versions, the first in production."""
    import torch

    import training

    root = tmp_path_factory.mktemp("promotion")
    cfg = RobustloopConfig()
    cfg.data.eval_size = 300
    cfg.data.traffic_size = 100
    cfg.data.train_limit = 1000
    cfg.store.path = root / "store"
    cfg.stack.run_dir = root / "run"
    cfg.rollout.rules_wait_seconds = 0
    splits = training.make_splits(cfg.data)
    store = training.ModelStore(cfg.store.path)
    versions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = training.build_model("cnn")
        training.train_standard(
            model, splits.train, epochs=1, batch_size=100, lr=1e-3, seed=seed, progress=False
        )
        versions.append(
            store.register(
                model,
                architecture="cnn",
                parent=versions[0] if versions else None,
                recipe={"seed": seed},
                metrics={},
                split={"seed": 0},
                provenance={"test": "promotion order"},
            )
        )
    return cfg, versions[0], versions[1]


@pytest.fixture
def site(
    two_versions: tuple[RobustloopConfig, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, str, str]]:
    """The module's store, copied for one test, with its config file in $ROBUSTLOOP_CONFIG."""
    from workflows.steps import CONFIG_ENV

    cfg, baseline, candidate = two_versions
    cfg = cfg.model_copy(deep=True)
    shutil.copytree(cfg.store.path, tmp_path / "store")
    cfg.store.path = tmp_path / "store"
    cfg.stack.run_dir = tmp_path / "run"
    config = tmp_path / "robustloop.yaml"
    config.write_text(dump_config(cfg), encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    yield config, baseline, candidate


def _promote(config: Path, baseline: str, candidate: str) -> str:
    import json

    from workflows.steps import promote

    decision = json.dumps({"passed": True, "candidate": candidate, "metrics": {}})
    cfg = load_config(config)
    result: str = promote(cfg.model.name, candidate, baseline, "inc-1", "rl-test", decision)
    return result


def _production(config: Path) -> str | None:
    import training

    return training.ModelStore(load_config(config).store.path).production()


def test_the_candidates_rules_are_written_before_production_moves(
    site: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import workflows.calibrate

    config, baseline, candidate = site
    seen: list[tuple[str | None, str | None]] = []
    original = workflows.calibrate.write_generated

    def recording(cfg: RobustloopConfig, *args: Any, **kwargs: Any) -> Any:
        seen.append((cfg.alerts.calibrated_version, _production(config)))
        return original(cfg, *args, **kwargs)

    monkeypatch.setattr(workflows.calibrate, "write_generated", recording)
    assert _promote(config, baseline, candidate) == candidate
    assert seen == [(candidate, baseline)]  # rules for the candidate, while the baseline serves
    assert _production(config) == candidate
    rules = (
        load_config(config).stack.run_dir / "alert_rules" / "robustloop.rules.yaml"
    ).read_text()
    assert f'version="{candidate}"' in rules


def test_when_the_rules_cannot_be_written_nothing_is_promoted(
    site: tuple[Path, str, str],
) -> None:
    config, baseline, candidate = site
    run_dir = load_config(config).stack.run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.write_text("a file where the rules' folder should be\n")
    with pytest.raises(SystemExit, match=f"{candidate} is not promoted"):
        _promote(config, baseline, candidate)
    assert _production(config) == baseline


def test_a_retried_promotion_after_the_pointer_moved_succeeds_and_changes_nothing_more(
    site: tuple[Path, str, str],
) -> None:
    import training

    config, baseline, candidate = site
    assert _promote(config, baseline, candidate) == candidate
    store = training.ModelStore(load_config(config).store.path)
    history = store.history()
    assert _promote(config, baseline, candidate) == candidate  # the retry
    assert store.production() == candidate and store.history() == history


def test_a_promotion_whose_rules_prometheus_never_loads_moves_nothing(
    site: tuple[Path, str, str],
) -> None:
    config, baseline, candidate = site
    cfg = load_config(config)
    cfg.rollout.rules_wait_seconds = 2
    cfg.rollout.prometheus_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config.write_text(dump_config(cfg), encoding="utf-8")
    with pytest.raises(SystemExit, match="did not load the rules that judge"):
        _promote(config, baseline, candidate)
    assert _production(config) == baseline


def test_a_production_moved_by_someone_else_is_not_overwritten(
    site: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the step's first look and its swap, production moves: the swap refuses and the
    rules go back to judging what is served."""
    import training
    import workflows.steps

    config, baseline, candidate = site
    store = training.ModelStore(load_config(config).store.path)
    third = store.register(
        training.build_model("cnn"),
        architecture="cnn",
        parent=baseline,
        recipe={},
        metrics={},
        split={},
        provenance={"test": "moved by hand"},
    )
    original = workflows.steps._wait_rules_in_force

    def meanwhile(cfg: RobustloopConfig, version: str) -> None:
        original(cfg, version)
        store.promote(third)  # someone promotes by hand while the rules are being published

    monkeypatch.setattr(workflows.steps, "_wait_rules_in_force", meanwhile)
    with pytest.raises(SystemExit, match=f"production is {third}, not {baseline}"):
        _promote(config, baseline, candidate)
    assert store.production() == third
    assert load_config(config).alerts.calibrated_version == third


# -- the rules in force, asked of a real Prometheus ---------------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real Prometheus reading one rules file, reloadable over HTTP."""
    rules = tmp_path / "robustloop.rules.yaml"
    rules.write_text("groups: []\n")
    config = f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{rules}']\n"
    with running_prometheus(tmp_path, config, "--web.enable-lifecycle") as url:
        yield url, rules


def test_rules_are_in_force_once_prometheus_has_loaded_them(
    prometheus: tuple[str, Path],
) -> None:
    from alert_rules import render_rules
    from alert_rules.in_force import RulesNotInForce, rules_in_force, wait_until_in_force

    url, rules = prometheus
    cfg = RobustloopConfig()
    cfg.alerts.calibrated_version = "v0001-aaaaaaaa"
    rules.write_text(render_rules(cfg))
    requests.post(f"{url}/-/reload", timeout=10).raise_for_status()
    wait_until_in_force(url, "v0001-aaaaaaaa", 30, poll_seconds=0.2)
    assert not rules_in_force(url, "v0002-bbbbbbbb")

    cfg.alerts.calibrated_version = "v0002-bbbbbbbb"
    rules.write_text(render_rules(cfg))  # written, not yet loaded
    with pytest.raises(RulesNotInForce, match="did not load the rules that judge v0002"):
        wait_until_in_force(url, "v0002-bbbbbbbb", 1.0, poll_seconds=0.2)
    requests.post(f"{url}/-/reload", timeout=10).raise_for_status()
    wait_until_in_force(url, "v0002-bbbbbbbb", 30, poll_seconds=0.2)
    assert not rules_in_force(url, "v0001-aaaaaaaa")
