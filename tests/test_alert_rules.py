"""The generated rules and Alertmanager config: golden files, promtool and amtool, structure.

promtool and amtool are the real Debian binaries; the promtool unit tests pin every alert's
``for:`` boundary, recovery, no traffic, low traffic and natural drift (see
alert_rules/promtool_tests.py for what each generated test checks).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

import alert_rules
from alert_rules import (
    ALERT_NAMES,
    ESCALATED_ALERT,
    HEALTH_ALERT_NAMES,
    OPT_IN_ALERT_NAMES,
    PACKAGE_DIR,
    GenerationError,
    prometheus_rule_groups,
    render_alertmanager,
    render_promtool_tests,
    render_rules,
    write_generated,
)
from robustloop.cli import main
from robustloop.config import (
    CanaryAlert,
    ConfigError,
    RobustloopConfig,
    SignalAlert,
    load_config,
    override,
)
from tests.conftest import REPO_ROOT

GENERATED = ("robustloop.rules.yaml", "alertmanager.yml", "tests/robustloop.test.yml")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _promtool_test(folder: Path) -> subprocess.CompletedProcess[str]:
    return _run(PROMTOOL, "test", "rules", "tests/robustloop.test.yml", cwd=folder)


def _alerts(cfg: RobustloopConfig) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in prometheus_rule_groups(cfg) for r in g["rules"] if "alert" in r}


# -- golden files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATED)
def test_committed_files_equal_a_fresh_render_of_the_defaults(tmp_path: Path, name: str) -> None:
    write_generated(RobustloopConfig(), tmp_path)
    fresh = (tmp_path / name).read_text(encoding="utf-8")
    committed = (PACKAGE_DIR / name).read_text(encoding="utf-8")
    assert committed == fresh, f"alert_rules/{name} is stale: run `make rules`"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_files_say_do_not_edit(name: str) -> None:
    head = (PACKAGE_DIR / name).read_text(encoding="utf-8").splitlines()[:4]
    assert any("GENERATED" in line and "robustloop rules render" in line for line in head)
    assert any("Do not edit" in line for line in head)


def test_render_check_reports_a_hand_edited_file(tmp_path: Path) -> None:
    write_generated(RobustloopConfig(), tmp_path)
    assert main(["rules", "render", "--defaults", "--check", "--out", str(tmp_path)]) == 0
    rules = tmp_path / "robustloop.rules.yaml"
    rules.write_text(rules.read_text().replace("for: 10s", "for: 1m"))
    assert main(["rules", "render", "--defaults", "--check", "--out", str(tmp_path)]) == 1


# -- promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_committed_rules() -> None:
    done = _run(PROMTOOL, "check", "rules", PACKAGE_DIR / "robustloop.rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 16 rules found" in done.stdout  # 7 records, 4 alerts, 5 health alerts


def test_promtool_unit_tests_of_the_committed_rules_pass() -> None:
    done = _promtool_test(PACKAGE_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def _configs() -> dict[str, RobustloopConfig]:
    """Configs unlike the defaults: calibrated (relative, one version, escalating), long windows,
    a switch."""
    calibrated = RobustloopConfig()
    calibrated.capture.enabled = True
    a = calibrated.alerts
    a.entropy = SignalAlert(
        threshold=0.0123, mode="relative", baseline=0.2011, window="1m", remediate=False
    )
    a.squeeze = SignalAlert(threshold=0.0087, mode="relative", baseline=0.0517, **{"for": "15s"})
    a.canary_accuracy = CanaryAlert(
        threshold=0.8, mode="relative", baseline=0.91, window="45s", escalate_after="25s"
    )
    a.calibrated_version = "v0002-0badc0de"
    sparse = RobustloopConfig()
    sparse.alerts.canary_accuracy = CanaryAlert(threshold=0.5, min_rate=0.05, window="2m")
    sparse.alerts.squeeze = SignalAlert(threshold=1.2, min_rate=3.0, severity="warning")
    sparse.alerts.entropy = SignalAlert(threshold=0.4, min_rate=0, **{"for": "0s"})
    no_entropy = RobustloopConfig()
    no_entropy.alerts.entropy = SignalAlert(threshold=0.35, enabled=False)
    no_entropy.model.name = "other-model"
    return {"calibrated": calibrated, "sparse": sparse, "no-entropy": no_entropy}


@pytest.mark.parametrize("name", sorted(_configs()))
def test_promtool_unit_tests_pass_for_other_configs(tmp_path: Path, name: str) -> None:
    cfg = _configs()[name]
    write_generated(cfg, tmp_path)
    check = _run(PROMTOOL, "check", "rules", tmp_path / "robustloop.rules.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    done = _promtool_test(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_tests_cover_boundary_recovery_and_no_traffic() -> None:
    tests = yaml.safe_load(render_promtool_tests(_configs()["calibrated"]))["tests"]
    names = " | ".join(t["name"] for t in tests)
    for alert in ALERT_NAMES:
        assert f"{alert} at its for boundary" in names or f"{alert}: attack, for boundary" in names
    assert "No traffic at all" in names
    assert "below min_rate" in names
    assert "never AdversarialInputSuspected" in names
    assert "never AdversarialAttackDetected" in names  # canary down under drift: no remediation
    assert "another version than v0002-0badc0de" in names
    assert f"{ESCALATED_ALERT} at its for boundary (escalate_after)" in names
    assert f"never {ESCALATED_ALERT}" in names  # the attack signature silences the escalation
    for test in tests:
        checks = test.get("alert_rule_test", [])
        firing = [c for c in checks if c["exp_alerts"]]
        step = int(test["interval"].removesuffix("s"))
        for check in firing:  # a firing check is preceded by a silent one, one interval earlier
            silent_before = [
                c
                for c in checks
                if c["alertname"] == check["alertname"]
                and not c["exp_alerts"]
                and int(c["eval_time"][:-1]) in (int(check["eval_time"][:-1]) - step,)
            ]
            resolved_after = [
                c
                for c in checks
                if c["alertname"] == check["alertname"]
                and not c["exp_alerts"]
                and int(c["eval_time"][:-1]) == int(check["eval_time"][:-1]) + step
            ]
            assert silent_before or resolved_after, (test["name"], check["eval_time"])


def test_the_unit_tests_fail_when_a_rule_changes(tmp_path: Path) -> None:
    """The generated tests pin the thresholds and for: durations: a changed rule fails them."""
    cfg = RobustloopConfig()
    write_generated(cfg, tmp_path)
    rules = tmp_path / "robustloop.rules.yaml"
    original = rules.read_text()
    for old, new, nth in (
        ("mean30s > 0.25", "mean30s > 0.26", 0),  # squeeze threshold of AdversarialAttackDetected
        ("mean30s > 0.25", "mean30s > 0.26", 1),  # threshold of AdversarialInputSuspected
        ("for: 3s", "for: 4s", 0),  # for: of CanaryAccuracyDegraded
        ("for: 3s", "for: 4s", 1),  # for: of AdversarialAttackDetected
        ("rate30s >= 0.5", "rate30s >= 0", 0),  # traffic guard
    ):
        parts = original.split(old)
        assert len(parts) > nth + 1, (old, nth)
        changed = old.join(parts[: nth + 1]) + new + old.join(parts[nth + 1 :])
        rules.write_text(changed)
        done = _promtool_test(tmp_path)
        assert done.returncode != 0, f"promtool tests still pass after {old!r} -> {new!r} ({nth})"


def test_no_room_for_a_test_series_is_a_clear_error(tmp_path: Path) -> None:
    cfg = RobustloopConfig()
    cfg.alerts.entropy = SignalAlert(threshold=1.0)  # the entropy never exceeds 1
    with pytest.raises(GenerationError, match=r"threshold 1\.0 leaves no room"):
        render_promtool_tests(cfg)
    with pytest.raises(GenerationError):
        write_generated(cfg, tmp_path / "all")
    assert not (tmp_path / "all").exists()
    written = write_generated(cfg, tmp_path / "rules-only", tests=False)
    assert sorted(p.name for p in written) == ["alertmanager.yml", "robustloop.rules.yaml"]


# -- structure of the rules ------------------------------------------------------------------


def test_groups_records_and_alerts_follow_the_naming_conventions() -> None:
    groups = prometheus_rule_groups(RobustloopConfig())
    assert [g["name"] for g in groups] == ["robustloop.rules", "robustloop.health"]
    kinds = ["record" if "record" in r else "alert" for r in groups[0]["rules"]]
    assert kinds == sorted(kinds, reverse=True)  # every record before every alert
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    assert records and all(re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z]+[0-9a-z]*", r) for r in records)
    assert "model_version:robustloop_prediction_entropy:mean30s" in records
    unpinned = [n for n in HEALTH_ALERT_NAMES if n != "RobustloopServedVersionUncalibrated"]
    assert sorted(_alerts(RobustloopConfig())) == sorted([*ALERT_NAMES, *unpinned])
    calibrated = _alerts(_configs()["calibrated"])
    assert "RobustloopServedVersionUncalibrated" in calibrated
    assert 'version!="v0002-0badc0de"' in calibrated["RobustloopServedVersionUncalibrated"]["expr"]
    quiet = RobustloopConfig()
    quiet.alerts.health.enabled = False
    assert sorted(_alerts(quiet)) == sorted(ALERT_NAMES)


def test_every_alert_has_labels_annotations_and_a_runbook_section() -> None:
    runbook = (PACKAGE_DIR / "RUNBOOK.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    calibrated = _alerts(_configs()["calibrated"])  # every health alert is rendered for it
    for name, rule in calibrated.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["labels"]["remediation"] in {"adversarial-training", "none"}
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        base, anchor = rule["annotations"]["runbook_url"].split("#")
        assert base == RobustloopConfig().alerts.runbook_base_url
        assert anchor in anchors, f"RUNBOOK.md has no section for {name}"
        if name in (*ALERT_NAMES, *OPT_IN_ALERT_NAMES):
            assert "by (model, version)" not in rule["expr"]  # records aggregate, alerts compare
            assert "and on (model, version)" in rule["expr"]  # the traffic guard
        else:  # the loop's own alerts: notification only, naming the model they guard
            assert rule["labels"]["remediation"] == "none" and rule["labels"]["model"]
    assert set(calibrated) == {*ALERT_NAMES, *OPT_IN_ALERT_NAMES, *HEALTH_ALERT_NAMES}


def test_remediation_labels_follow_the_config() -> None:
    cfg = RobustloopConfig()
    alerts = _alerts(cfg)
    assert alerts["AdversarialAttackDetected"]["labels"]["remediation"] == "adversarial-training"
    assert alerts["AdversarialInputSuspected"]["labels"]["remediation"] == "adversarial-training"
    assert alerts["CanaryAccuracyDegraded"]["labels"]["remediation"] == "none"
    assert alerts["PredictionEntropyShift"]["labels"]["remediation"] == "none"
    cfg.alerts.entropy.remediate = True
    cfg.alerts.canary_accuracy.remediate = True
    cfg.alerts.squeeze.severity = "warning"
    alerts = _alerts(cfg)
    assert alerts["PredictionEntropyShift"]["labels"]["remediation"] == "adversarial-training"
    assert alerts["CanaryAccuracyDegraded"]["labels"]["remediation"] == "adversarial-training"
    assert alerts["AdversarialInputSuspected"]["labels"]["severity"] == "warning"
    cfg.alerts.attack_signature = False
    assert "AdversarialAttackDetected" not in _alerts(cfg)


@pytest.mark.parametrize(
    ("group_wait", "group_interval", "kept"), [("1s", "1m", "1m"), ("2m", "30s", "2m")]
)
def test_remediating_alerts_keep_firing_as_long_as_alertmanager_may_wait(
    group_wait: str, group_interval: str, kept: str
) -> None:
    """A remediating alert stays firing for the longer of group_wait and group_interval after
    its condition clears, so that Alertmanager's next notification still carries it; the
    alerts that only notify resolve at once."""
    cfg = _escalating("10m")
    cfg.alerts.group_wait, cfg.alerts.group_interval = group_wait, group_interval
    alerts = _alerts(cfg)
    for name, rule in alerts.items():
        remediates = rule["labels"]["remediation"] == "adversarial-training"
        assert rule.get("keep_firing_for") == (kept if remediates else None), name
    assert {n for n, r in alerts.items() if "keep_firing_for" in r} >= {
        "AdversarialAttackDetected",
        "AdversarialInputSuspected",
        ESCALATED_ALERT,
    }


def test_the_simulator_keeps_a_fired_alert_firing_but_drops_a_pending_one() -> None:
    """Prometheus's keep_firing_for: after the condition clears, a firing alert stays firing
    with its last value for that long; a pending one (before its for:) is dropped."""
    from dataclasses import replace

    from alert_rules._simulate import first
    from alert_rules.promtool_tests import _Builder, _levels

    b = _Builder(RobustloopConfig())
    squeeze = b.alerts["AdversarialInputSuspected"]
    assert squeeze.keep_firing_for == "1m"
    clean, bad = _levels(squeeze.conditions[0])
    episode = b.simulate(b.episode(squeeze, {"squeeze": bad}, {"squeeze": clean}))
    kept = episode.firing(squeeze, b.version)
    plain = episode.firing(replace(squeeze, keep_firing_for=None), b.version)
    fired, cleared = first(plain), first(plain, first(plain) or 0, lambda v: v is None)
    assert fired is not None and cleared is not None
    assert first(kept) == fired
    assert kept[cleared : cleared + 60] == [plain[cleared - 1]] * 60
    assert kept[cleared + 60] is None
    brief = b.simulate(
        [
            b.phase(b.span + 5, {"squeeze": clean}),
            b.phase(3, {"squeeze": bad}),
            b.phase(b.span + 70, {"squeeze": clean}),
        ]
    )
    assert first(brief.firing(replace(squeeze, for_="1h"), b.version)) is None


def test_the_attack_alert_needs_both_the_canary_and_the_squeeze_condition() -> None:
    alerts = _alerts(_configs()["calibrated"])
    attack = alerts["AdversarialAttackDetected"]["expr"]
    canary = alerts["CanaryAccuracyDegraded"]["expr"]
    squeeze = alerts["AdversarialInputSuspected"]["expr"]
    assert attack == canary + "\nand on (model, version)\n" + squeeze
    assert _alerts(_configs()["calibrated"])["AdversarialAttackDetected"]["for"] == (
        _configs()["calibrated"].alerts.canary_accuracy.for_
    )


def test_calibrated_rules_judge_the_calibrated_version_only() -> None:
    alerts = _alerts(_configs()["calibrated"])
    for name in ("PredictionEntropyShift", "AdversarialInputSuspected"):
        assert '{version="v0002-0badc0de"}' in alerts[name]["expr"]
        assert "calibrated on version v0002-0badc0de" in alerts[name]["annotations"]["description"]
    assert "version=" not in alerts["CanaryAccuracyDegraded"]["expr"]  # labels judge any version
    assert '{version="v0002-0badc0de"}' in alerts["AdversarialAttackDetected"]["expr"]
    # relative thresholds: baseline + shift (label-free), baseline * factor (canary)
    assert "mean1m{" in alerts["PredictionEntropyShift"]["expr"]
    assert "> 0.2134" in alerts["PredictionEntropyShift"]["expr"]
    assert "> 0.0604" in alerts["AdversarialInputSuspected"]["expr"]
    assert "< 0.728" in alerts["CanaryAccuracyDegraded"]["expr"]


def test_a_disabled_signal_has_no_alert() -> None:
    alerts = _alerts(_configs()["no-entropy"])
    assert "PredictionEntropyShift" not in alerts
    assert 'model="other-model"' in render_rules(_configs()["no-entropy"])


# -- the escalation: CanaryAccuracyDegraded that persists without the attack signature ---------


def _escalating(escalate_after: str = "20s", **alerts: Any) -> RobustloopConfig:
    changes: dict[str, Any] = {"canary_accuracy": {"escalate_after": escalate_after}, **alerts}
    return override(RobustloopConfig(), {"capture": {"enabled": True}, "alerts": changes})


def test_the_escalation_is_off_by_default_needs_capture_and_outlasts_the_canary_alert() -> None:
    assert RobustloopConfig().alerts.canary_accuracy.escalate_after is None
    assert ESCALATED_ALERT not in _alerts(RobustloopConfig())
    escalate = {"alerts": {"canary_accuracy": {"escalate_after": "10m"}}}
    with pytest.raises(ConfigError, match=r"escalate_after 10m .* set capture\.enabled: true"):
        override(RobustloopConfig(), escalate)
    with pytest.raises(ConfigError, match="escalate_after 3s must be longer than for 3s"):
        _escalating("3s")
    with pytest.raises(ConfigError, match="escalate_after '10 minutes' is not a Prometheus"):
        _escalating("10 minutes")
    quiet = _escalating()
    quiet.alerts.canary_accuracy.enabled = False
    assert ESCALATED_ALERT not in _alerts(quiet)


def test_the_escalation_remediates_with_the_captured_recipe_only_without_the_signature() -> None:
    alerts = _alerts(_escalating("10m"))
    escalated = alerts[ESCALATED_ALERT]
    # routed to the receiver, selecting the captured recipe
    assert escalated["labels"] == {
        "severity": "critical",
        "remediation": "adversarial-training",
        "recipe": "captured",
    }
    assert escalated["for"] == "10m"
    # the canary condition, unless the squeeze condition (AdversarialAttackDetected's) holds
    canary = alerts["CanaryAccuracyDegraded"]["expr"]
    squeeze = alerts["AdversarialInputSuspected"]["expr"]
    assert escalated["expr"] == f"{canary}\nunless on (model, version)\n(\n{squeeze}\n)"
    assert alerts["AdversarialAttackDetected"]["expr"] == (
        canary + "\nand on (model, version)\n" + squeeze
    )
    assert "for 10m without a break" in escalated["annotations"]["description"]
    # without the attack alert there is no signature to wait for
    unsigned = _alerts(_escalating("10m", attack_signature=False))[ESCALATED_ALERT]
    assert unsigned["expr"] == canary
    assert "AdversarialAttackDetected is not rendered" in unsigned["annotations"]["description"]


def _escalation_tests_only(cfg: RobustloopConfig, folder: Path) -> None:
    """The rules for ``cfg`` and those of their promtool tests that judge the escalation."""
    write_generated(cfg, folder)
    tests_file = folder / "tests" / "robustloop.test.yml"
    document = yaml.safe_load(tests_file.read_text(encoding="utf-8"))
    document["tests"] = [t for t in document["tests"] if ESCALATED_ALERT in t["name"]]
    assert len(document["tests"]) == 2
    tests_file.write_text(yaml.safe_dump(document), encoding="utf-8")


def test_promtool_pins_the_escalation_boundary_and_the_signature_silences_it(
    tmp_path: Path,
) -> None:
    """GIVEN the generated tests of the escalation (drift: fires at escalate_after with its
    labels; the signature for as long: AdversarialAttackDetected, never the escalation), THEN
    promtool passes them on the rules, and fails them on rules with another for: or without
    the unless."""
    _escalation_tests_only(_escalating("20s"), tmp_path)
    done = _promtool_test(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = tmp_path / "robustloop.rules.yaml"
    original = rules.read_text()
    no_unless = re.sub(r"\n +unless on \(model, version\)\n +\((.|\n)*?\n +\)\n", "\n", original)
    assert no_unless != original
    for changed in (original.replace("for: 20s", "for: 21s"), no_unless):
        rules.write_text(changed)
        done = _promtool_test(tmp_path)
        assert done.returncode != 0, "promtool tests still pass after the rule changed"


def test_the_simulator_fires_the_escalation_under_drift_only() -> None:
    """The rule simulator behind the generated tests: under drift the escalation fires
    escalate_after after its condition began (as CanaryAccuracyDegraded does after its for);
    with the squeeze signature it never fires while AdversarialAttackDetected does."""
    from alert_rules._simulate import first
    from alert_rules.promtool_tests import _Builder, _levels

    b = _Builder(_escalating("20s"))
    escalated, canary = b.alerts[ESCALATED_ALERT], b.alerts["CanaryAccuracyDegraded"]
    attack = b.alerts["AdversarialAttackDetected"]
    accuracy_clean, accuracy_bad = _levels(canary.conditions[0])
    squeeze_clean, squeeze_bad = _levels(attack.conditions[1])
    clean = {"canary_accuracy": accuracy_clean, "squeeze": squeeze_clean}
    drift = b.simulate(b.episode(escalated, {"canary_accuracy": accuracy_bad}, clean))
    escalation_fires = first(drift.firing(escalated, b.version))
    canary_fires = first(drift.firing(canary, b.version))
    assert escalation_fires is not None and canary_fires is not None
    assert escalation_fires - canary_fires == 20 - 3  # escalate_after - for, both from one start
    assert first(drift.firing(attack, b.version)) is None
    signed = b.simulate(
        b.episode(escalated, {"canary_accuracy": accuracy_bad, "squeeze": squeeze_bad}, clean)
    )
    assert first(signed.firing(attack, b.version)) is not None
    assert first(signed.firing(escalated, b.version)) is None


def test_prometheus_rule_groups_validate_against_the_operator_crd(schemas: Path) -> None:
    crd = yaml.safe_load(
        (schemas / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml").read_text()
    )
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"
    ]
    groups = prometheus_rule_groups(RobustloopConfig())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "robustloop"},
        "spec": {"groups": groups},
    }
    # The CRD's patterns use Go's inline flags ("^(?i)..."), which Python's re refuses where
    # they do not open the pattern; none of them applies to our objects, so validate without
    # checking the schema itself.
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(obj)
    assert yaml.safe_load(render_rules(RobustloopConfig()))["groups"] == groups


def test_importing_alert_rules_does_not_import_torch() -> None:
    code = "import sys, alert_rules, alert_rules.calibration; print('torch' in sys.modules)"
    done = _run(sys.executable, "-c", code, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert alert_rules.__all__  # the public names are listed


# -- Alertmanager --------------------------------------------------------------------------------


def test_amtool_accepts_the_committed_config() -> None:
    done = _run(AMTOOL, "check-config", PACKAGE_DIR / "alertmanager.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["alertname=AdversarialInputSuspected", "remediation=adversarial-training"],
            "robustloop-remediation",
        ),
        (
            ["alertname=AdversarialAttackDetected", "remediation=adversarial-training"],
            "robustloop-remediation",
        ),
        (
            [f"alertname={ESCALATED_ALERT}", "remediation=adversarial-training", "recipe=captured"],
            "robustloop-remediation",
        ),
        (["alertname=CanaryAccuracyDegraded", "remediation=none"], "robustloop-null"),
        (["alertname=PredictionEntropyShift", "remediation=none"], "robustloop-null"),
        (["alertname=Watchdog", "severity=none"], "robustloop-null"),
    ],
)
def test_amtool_routes_remediation_alerts_to_the_receiver_and_nothing_else(
    labels: list[str], receiver: str
) -> None:
    config = PACKAGE_DIR / "alertmanager.yml"
    args = ["model=fashion-cnn", "severity=critical", *labels]
    done = _run(
        AMTOOL, "config", "routes", "test", f"--config.file={config}",
        f"--verify.receivers={receiver}", *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == receiver


def test_alertmanager_groups_by_model_sends_resolved_and_reads_the_token_from_a_file() -> None:
    cfg = RobustloopConfig()
    doc = yaml.safe_load(
        render_alertmanager(cfg, receiver_url="http://127.0.0.1:1/x", credentials_file="/t")
    )
    route = doc["route"]["routes"][0]
    assert route["matchers"] == ['remediation="adversarial-training"']
    assert route["group_by"] == ["model"]
    (webhook,) = next(r for r in doc["receivers"] if r["name"] == route["receiver"])[
        "webhook_configs"
    ]
    assert webhook["send_resolved"] is True
    assert webhook["url"] == "http://127.0.0.1:1/x"
    assert webhook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": "/t"}
    default = yaml.safe_load(render_alertmanager(cfg))["receivers"][1]["webhook_configs"][0]
    assert default["url"] == cfg.alerts.receiver_url
    assert default["http_config"]["authorization"]["credentials_file"] == "webhook-token"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alerts_yaml", "message"),
    [
        ("entropy: {threshold: 0.05, mode: relative}", "mode relative needs a baseline"),
        ("squeeze: {threshold: 0.3, window: 30sec}", "is not a Prometheus duration"),
        ("squeeze: {threshold: 0.3, window: 0s}", "must not be zero"),
        ("canary_accuracy: {threshold: 0.6, for: 5 s}", "is not a Prometheus duration"),
        ("group_wait: soon", "group_wait 'soon' is not a duration"),
    ],
)
def test_bad_alert_config_is_a_clear_error_and_renders_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alerts_yaml: str, message: str
) -> None:
    config = tmp_path / "robustloop.yaml"
    config.write_text("alerts:\n  " + alerts_yaml + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    out = tmp_path / "out"
    assert main(["rules", "render", "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_render_refuses_thresholds_no_test_series_can_reach_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "robustloop.yaml"
    config.write_text("alerts:\n  squeeze: {threshold: 2.5}\n")  # the score never exceeds 2
    out = tmp_path / "out"
    assert main(["rules", "render", "--config", str(config), "--out", str(out)]) == 2
    assert "cannot generate the promtool tests" in capsys.readouterr().err
    assert not out.exists()


# -- windows and the scrape interval ---------------------------------------------------------

CLUSTER_DIR = PACKAGE_DIR / "cluster"
CLUSTER_SCRAPE = "30s"


def _cluster_config() -> RobustloopConfig:
    cfg = RobustloopConfig()
    cfg.alerts = cfg.alerts.for_scrape_interval(CLUSTER_SCRAPE)[0]
    return cfg


@pytest.mark.parametrize(
    "name", [*GENERATED, "robustloop.alerts.yaml", "robustloop.fixed.rules.yaml"]
)
def test_the_committed_cluster_rules_equal_a_fresh_render_for_a_30s_scrape(
    tmp_path: Path, name: str
) -> None:
    write_generated(_cluster_config(), tmp_path, alerts_section=True, fixed_rules=True)
    committed = (CLUSTER_DIR / name).read_text(encoding="utf-8")
    assert committed == (tmp_path / name).read_text(encoding="utf-8"), (
        f"alert_rules/cluster/{name} is stale: run `make generate`"
    )


def test_a_window_of_fewer_than_four_scrapes_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"canary_accuracy.window 15s holds fewer than 4 "):
        RobustloopConfig.model_validate({"alerts": {"scrape_interval": "30s"}})
    widened, changes = RobustloopConfig().alerts.for_scrape_interval("30s")
    assert {widened.canary_accuracy.window, widened.entropy.window} == {"120s"}
    assert "alerts.canary_accuracy.window: 15s -> 120s" in changes
    assert widened.for_scrape_interval("30s")[1] == []  # already fitted: nothing changes


def test_the_cluster_rules_are_tested_at_their_scrape_interval_and_fail_with_short_windows(
    tmp_path: Path,
) -> None:
    """Samples 30 s apart, as a cluster's Prometheus scrapes them: the attack's alerts fire with
    the fitted windows; with the embedded stack's 15 s and 30 s windows no rate() has the two
    samples it needs, and the same tests fail."""
    tests = yaml.safe_load((CLUSTER_DIR / "tests" / "robustloop.test.yml").read_text())["tests"]
    scraped = [t for t in tests if t["name"].startswith("An attack scraped every")]
    assert len(scraped) == 1 and scraped[0]["interval"] == CLUSTER_SCRAPE
    assert "AdversarialAttackDetected" in str(scraped[0])
    write_generated(_cluster_config(), tmp_path)
    assert _promtool_test(tmp_path).returncode == 0
    rules = tmp_path / "robustloop.rules.yaml"
    narrow = rules.read_text().replace("[120s]", "[30s]")
    rules.write_text(narrow)
    done = _promtool_test(tmp_path)
    assert done.returncode != 0
    assert f"An attack scraped every {CLUSTER_SCRAPE}" in done.stdout + done.stderr


def test_render_for_a_scrape_interval_says_what_it_widened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["rules", "render", "--defaults", "--scrape-interval", "30s", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "alerts.squeeze.window: 30s -> 120s" in out
    assert (tmp_path / "robustloop.alerts.yaml").is_file()
    assert (tmp_path / "robustloop.fixed.rules.yaml").is_file()
    assert main([*argv[:3], "--scrape-interval", "0s", "--out", str(tmp_path / "x")]) == 2
    assert "--scrape-interval '0s'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
