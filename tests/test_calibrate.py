"""Calibrating the alert thresholds: the statistics, their Monte Carlo check, and
``robustloop calibrate`` end to end."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from alert_rules.calibration import (
    CalibrationError,
    SignalStats,
    alerts_from_record,
    calibrate_alerts,
    check_threshold,
    rewrite_alerts_section,
    simulate_false_alarms,
    window_threshold,
)
from robustloop.cli import main
from robustloop.config import RobustloopConfig, dump_config, load_config
from serving.signals import CleanSignals
from tests.conftest import DATASET_ROOT
from workflows.calibrate import ANNOTATION_KEY

REPO_ROOT = Path(__file__).resolve().parent.parent

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _skewed(n: int = 5000, seed: int = 1) -> list[float]:
    """Values shaped like clean per-image entropies: most near 0, a long right tail."""
    return list(np.random.default_rng(seed).beta(0.5, 2.0, n))


# -- statistics --------------------------------------------------------------------------------


def test_threshold_is_baseline_plus_gaussian_quantile_of_the_window_mean() -> None:
    stats = SignalStats(count=1000, mean=0.2, sd=0.15, skewness=0.0)
    got = window_threshold(
        stats, window_seconds=30, samples_per_second=10, false_alarms_per_hour=0.1
    )
    p = 0.1 / (3600 / 30)
    z = statistics.NormalDist().inv_cdf(1 - p)
    exact = 0.2 + z * 0.15 / math.sqrt(300)
    assert got.samples_per_window == 300
    assert got.per_window_probability == pytest.approx(p)
    assert got.z == pytest.approx(z)
    assert exact <= got.threshold < exact + 1e-4  # rounded up, never below the target
    assert got.baseline == 0.2
    assert got.baseline + got.delta == pytest.approx(got.threshold)


def test_stricter_targets_and_thinner_windows_give_higher_thresholds() -> None:
    stats = SignalStats.of(_skewed())

    def thr(window: float, rate: float, fah: float) -> float:
        return window_threshold(
            stats, window_seconds=window, samples_per_second=rate, false_alarms_per_hour=fah
        ).threshold

    assert thr(30, 10, 0.01) > thr(30, 10, 0.1) > thr(30, 10, 1.0)
    assert thr(30, 2, 0.1) > thr(30, 10, 0.1)  # fewer samples per window: a noisier mean
    assert thr(30, 10, 0.1) > stats.mean


def test_cornish_fisher_raises_the_threshold_of_a_right_skewed_signal() -> None:
    skewed = SignalStats(count=1000, mean=0.2, sd=0.15, skewness=1.5)
    symmetric = SignalStats(count=1000, mean=0.2, sd=0.15, skewness=0.0)

    def z(stats: SignalStats) -> float:
        return window_threshold(
            stats, window_seconds=30, samples_per_second=2.5, false_alarms_per_hour=0.1
        ).z_cornish_fisher

    assert z(skewed) > z(symmetric)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_seconds": 30, "samples_per_second": 0.01}, "holds under one sample"),
        ({"window_seconds": 30, "false_alarms_per_hour": 60}, "must be below 0.5"),
    ],
)
def test_impossible_calibrations_are_clear_errors(kwargs: dict[str, float], message: str) -> None:
    args = {"window_seconds": 30.0, "samples_per_second": 10.0, "false_alarms_per_hour": 0.1}
    args.update(kwargs)
    with pytest.raises(CalibrationError, match=message):
        window_threshold(
            SignalStats.of(_skewed()),
            window_seconds=args["window_seconds"],
            samples_per_second=args["samples_per_second"],
            false_alarms_per_hour=args["false_alarms_per_hour"],
        )
    with pytest.raises(CalibrationError, match="at least 30 clean values"):
        SignalStats.of([0.1] * 29)


def test_simulated_false_alarm_rate_meets_the_target_and_is_not_far_below() -> None:
    """Monte Carlo of clean traffic (Poisson arrivals, bootstrap values, 1 s evaluation)."""
    values = _skewed()
    target = 6.0
    proposed = window_threshold(
        SignalStats.of(values),
        window_seconds=30,
        samples_per_second=10,
        false_alarms_per_hour=target,
    )
    rate = simulate_false_alarms(
        values,
        proposed.threshold,
        window_seconds=30,
        samples_per_second=10,
        for_seconds=10,
        hours=100,
    )
    assert target / 4 <= rate <= target


def test_a_threshold_that_alarms_too_often_is_raised_until_it_does_not() -> None:
    """With for: 0s every overlapping window is a chance to alarm: the formula alone is too low."""
    values = _skewed()
    proposed = window_threshold(
        SignalStats.of(values), window_seconds=30, samples_per_second=10, false_alarms_per_hour=6
    )
    unchecked = simulate_false_alarms(
        values,
        proposed.threshold,
        window_seconds=30,
        samples_per_second=10,
        for_seconds=0,
        hours=20,
    )
    assert unchecked > 6  # the Bonferroni count of disjoint windows undercounts here
    checked = check_threshold(values, proposed, window_seconds=30, for_seconds=0)
    assert checked.raised
    assert checked.threshold > proposed.threshold
    assert checked.simulated_false_alarms_per_hour <= 6


def test_calibration_sets_relative_thresholds_and_skips_a_signal_without_samples() -> None:
    cfg = RobustloopConfig()
    cfg.serving.squeeze_fraction = 0.0
    values = _skewed(600)
    signals = CleanSignals(entropy=values, squeeze=values, accuracy=0.87)
    alerts, record = calibrate_alerts(cfg, signals, "v0003-12345678")
    assert alerts.calibrated_version == "v0003-12345678"
    assert alerts.entropy.mode == "relative"
    assert alerts.entropy.baseline == pytest.approx(statistics.fmean(values), abs=1e-4)
    assert alerts.entropy.threshold == record["signals"]["entropy"]["delta"] > 0
    assert alerts.squeeze == cfg.alerts.squeeze  # the server scores no images: unchanged
    assert record["signals"]["squeeze"] == {"skipped": "serving.squeeze_fraction is 0"}
    assert alerts.canary_accuracy.baseline == 0.87
    assert alerts.canary_accuracy.threshold == cfg.alerts.canary_accuracy.threshold


# -- rewriting the config file -------------------------------------------------------------------


def test_rewriting_the_alerts_section_keeps_every_other_line() -> None:
    cfg = RobustloopConfig()
    text = (
        "# my settings\nmodel:\n  name: my-model   # keep this comment\n"
        "alerts:\n  entropy:\n    threshold: 0.5\n# about the webhook\nwebhook:\n  port: 9999\n"
    )
    cfg.model.name = "my-model"
    cfg.webhook.port = 9999
    cfg.alerts.calibrated_version = "v0007-00000000"
    new = rewrite_alerts_section(text, cfg)
    assert new.startswith("# my settings\nmodel:\n  name: my-model   # keep this comment\nalerts:")
    assert new.endswith("# about the webhook\nwebhook:\n  port: 9999\n")
    assert RobustloopConfig.model_validate(yaml.safe_load(new)) == cfg


def test_a_file_without_alerts_gets_the_section_appended() -> None:
    cfg = RobustloopConfig()
    cfg.alerts.calibrated_version = "v0001-00000000"
    new = rewrite_alerts_section("data:\n  seed: 0\n", cfg)
    assert new.startswith("data:\n  seed: 0\n")
    assert yaml.safe_load(new)["alerts"]["calibrated_version"] == "v0001-00000000"
    assert rewrite_alerts_section(None, cfg) == dump_config(cfg)


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A config file and a store holding one briefly trained model (a few seconds on 2 cores)."""
    if not (DATASET_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not installed in {DATASET_ROOT}")
    import torch

    import training

    root = tmp_path_factory.mktemp("calibrate")
    cfg = RobustloopConfig()
    cfg.data.eval_size = 500
    cfg.data.traffic_size = 500
    cfg.data.train_limit = 1000
    cfg.store.path = root / "store"
    cfg.stack.run_dir = root / "run"
    torch.manual_seed(0)
    splits = training.make_splits(cfg.data)
    model = training.build_model("cnn")
    training.train_standard(
        model, splits.train, epochs=1, batch_size=100, lr=1e-3, seed=0, progress=False
    )
    version = training.ModelStore(cfg.store.path).register(
        model,
        architecture="cnn",
        parent=None,
        recipe={"test": True},
        metrics={},
        split={"seed": 0},
        provenance={"test": "calibrate"},
    )
    config = root / "robustloop.yaml"
    config.write_text(dump_config(cfg), encoding="utf-8")
    return config, version


def _outside_alerts(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("alerts:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace())
    while lines[end - 1].startswith("#"):
        end -= 1
    return lines[:start] + lines[end:]


def test_calibrate_writes_thresholds_records_them_and_renders_rules_that_pass_promtool(
    calibration_setup: tuple[Path, str], tmp_path: Path
) -> None:
    original, version = calibration_setup
    config = tmp_path / "robustloop.yaml"
    shutil.copy(original, config)
    before = config.read_text()
    rules = tmp_path / "rules"

    assert main(["calibrate", "--config", str(config), "--rules-out", str(rules)]) == 0

    after = config.read_text()
    assert _outside_alerts(after) == _outside_alerts(before)  # the rest of the file is kept
    cfg = load_config(config)
    a = cfg.alerts
    assert a.calibrated_version == version
    for signal in (a.entropy, a.squeeze):
        assert signal.mode == "relative"
        assert signal.baseline is not None and signal.threshold > 0
    assert a.canary_accuracy.baseline is not None and 0 < a.canary_accuracy.baseline <= 1

    import training

    record = training.ModelStore(cfg.store.path).annotation(version, ANNOTATION_KEY)
    assert record is not None and record["version"] == version
    entropy = record["signals"]["entropy"]
    assert entropy["baseline"] == a.entropy.baseline
    assert entropy["delta"] == a.entropy.threshold
    assert entropy["simulation"]["simulated_false_alarms_per_hour"] <= 0.1

    rendered = (rules / "robustloop.rules.yaml").read_text()
    assert f'{{version="{version}"}}' in rendered
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "tests/robustloop.test.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_calibrate_json_and_dry_run_write_nothing(
    calibration_setup: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, version = calibration_setup
    config = tmp_path / "robustloop.yaml"
    shutil.copy(original, config)
    rules = tmp_path / "rules"
    code = main(
        ["calibrate", "--config", str(config), "--rules-out", str(rules), "--dry-run", "--json"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == version
    assert set(printed["signals"]) == {"entropy", "squeeze"}
    assert config.read_text() == original.read_text()
    assert not rules.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "v9999"], "unknown model version 'v9999'"),
        (["--n", "10"], "--n must be at least 30"),
    ],
)
def test_calibrate_bad_input_is_a_clear_error_and_changes_nothing(
    calibration_setup: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    original, _ = calibration_setup
    config = tmp_path / "robustloop.yaml"
    shutil.copy(original, config)
    rules = tmp_path / "rules"
    assert main(["calibrate", "--config", str(config), "--rules-out", str(rules), *args]) == 2
    assert message in capsys.readouterr().err
    assert config.read_text() == original.read_text()
    assert not rules.exists()


def _clean_signals() -> CleanSignals:
    values = [0.05 + 0.3 * ((i * 7919) % 101) / 101 for i in range(300)]
    return CleanSignals(entropy=values, squeeze=[v / 2 for v in values], accuracy=0.83)


def test_a_record_gives_back_the_calibrated_alerts_section() -> None:
    """What calibrate_alerts returns is what its record gives again: a version's rules can be
    rendered anew from the store without measuring the model (the chart's bootstrap Job)."""
    cfg = RobustloopConfig()
    alerts, record = calibrate_alerts(cfg, _clean_signals(), "v0007-00c0ffee")
    again = alerts_from_record(cfg, json.loads(json.dumps(record)))  # as stored
    assert again == alerts
    assert again.calibrated_version == "v0007-00c0ffee" and again.entropy.mode == "relative"
    # Settings that do not decide a threshold come from the config in force.
    louder = cfg.model_copy(
        update={"alerts": cfg.alerts.model_copy(update={"runbook_base_url": "https://x/rb"})}
    )
    kept = alerts_from_record(louder, record)
    assert kept is not None and kept.runbook_base_url == "https://x/rb"
    assert kept.squeeze.baseline == alerts.squeeze.baseline


def _changed(cfg: RobustloopConfig, changes: dict[str, Any]) -> RobustloopConfig:
    """``cfg`` with ``changes`` merged in, two levels deep (a section, then a signal)."""
    data = cfg.model_dump(by_alias=True, mode="json")
    for section, values in changes.items():
        for key, value in values.items():
            old = data[section][key]
            data[section][key] = {**old, **value} if isinstance(value, dict) else value
    return RobustloopConfig.model_validate(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"alerts": {"false_alarms_per_hour": 0.5}},
        {"alerts": {"expected_rate": 20.0}},
        {"alerts": {"entropy": {"window": "60s"}}},
        {"alerts": {"squeeze": {"for": "20s"}}},
        {"alerts": {"entropy": {"enabled": False}}},
        {"serving": {"squeeze_fraction": 0.5}},
    ],
    ids=["false-alarms", "traffic", "window", "for", "a-signal-off", "squeeze-fraction"],
)
def test_a_record_made_for_other_settings_does_not_fit(changes: dict[str, Any]) -> None:
    cfg = RobustloopConfig()
    _, record = calibrate_alerts(cfg, _clean_signals(), "v0007-00c0ffee")
    assert alerts_from_record(_changed(cfg, changes), record) is None
    assert alerts_from_record(cfg, {"version": "v1"}) is None  # another shape: no fit either


def test_production_is_calibrated_once_then_republished_from_its_record(
    calibration_setup: tuple[Path, str], tmp_path: Path
) -> None:
    """The bootstrap Job's use case: no record, a calibration (recorded); then the record;
    with another window, a calibration again. Nothing is written to a config file."""
    from workflows.calibrate import production_calibration

    original, version = calibration_setup
    store = tmp_path / "store"
    shutil.copytree(load_config(original).store.path, store)
    for recorded in store.rglob(f"{ANNOTATION_KEY}.json"):  # other tests calibrated it
        recorded.unlink()
    cfg = load_config(original).model_copy(
        update={"store": load_config(original).store.model_copy(update={"path": store})}
    )
    first = production_calibration(cfg)
    assert (first.version, first.source) == (version, "calibrated")
    assert first.config.alerts.calibrated_version == version
    again = production_calibration(cfg)
    assert (again.source, again.config) == ("recorded", first.config)
    wider = cfg.model_copy(
        update={
            "alerts": cfg.alerts.model_copy(
                update={"entropy": cfg.alerts.entropy.model_copy(update={"window": "60s"})}
            )
        }
    )
    assert production_calibration(wider).source == "calibrated"
    assert load_config(original).alerts == cfg.alerts, "no config file is written"


def test_in_a_cluster_the_promote_step_publishes_the_recalibrated_rules(
    calibration_setup: tuple[Path, str],
    tmp_path: Path,
    schemas: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN the chart's environment for the workflow's pods and the chart's PrometheusRule
    holding the fixed rules, WHEN the promote step recalibrates for a new version, THEN
    robustloop's own PrometheusRule, owned by the chart's, holds exactly the calibrated groups
    rendered from the new thresholds, and the chart's object is untouched."""
    from alert_rules import FIXED_RULES_FILE, prometheus_rule_groups
    from alert_rules.cluster import API_ENV, NAMESPACE_ENV, OWNER_ENV, RULE_ENV
    from tests.kube_standin import KubeStandIn
    from tests.support import load_crd_validators
    from workflows.steps import CONFIG_ENV, recalibrate

    original, version = calibration_setup
    config = tmp_path / "robustloop.yaml"
    shutil.copy(original, config)
    fixed = yaml.safe_load((REPO_ROOT / "alert_rules" / "cluster" / FIXED_RULES_FILE).read_text())
    validator = load_crd_validators(schemas)[("monitoring.coreos.com/v1", "PrometheusRule")]
    with KubeStandIn(validator) as kube:
        chart_rule = kube.add_rule("robustloop", "rl-robustloop", fixed["groups"])
        for name, value in {
            CONFIG_ENV: str(config),
            RULE_ENV: "rl-robustloop-calibrated",
            OWNER_ENV: "rl-robustloop",
            NAMESPACE_ENV: "robustloop",
            API_ENV: kube.url,
        }.items():
            monkeypatch.setenv(name, value)
        recalibrate(load_config(config), version)
    published = kube.objects[("robustloop", "rl-robustloop-calibrated")]
    cfg = load_config(config)
    assert cfg.alerts.calibrated_version == version
    expected = prometheus_rule_groups(cfg, "calibrated")
    for group in expected:  # every alert carries the release's namespace, as the chart's do
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**rule["labels"], "namespace": "robustloop"}
    assert published["spec"]["groups"] == expected
    assert version in str(published["spec"])  # the rules judge the new version
    assert published["metadata"]["ownerReferences"][0]["uid"] == chart_rule["metadata"]["uid"]
    assert kube.objects[("robustloop", "rl-robustloop")] == chart_rule
    assert [r.method for r in kube.requests] == ["GET", "GET", "POST"]
