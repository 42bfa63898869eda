"""The config model: defaults round-trip through `robustloop init`, bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from robustloop.cli import main
from robustloop.config import ConfigError, RobustloopConfig, iter_fields, load_config


def test_init_writes_defaults_that_load_back(tmp_path: Path) -> None:
    path = tmp_path / "robustloop.yaml"
    assert main(["--config", str(path), "init"]) == 0
    assert load_config(path) == RobustloopConfig()
    assert main(["--config", str(path), "init"]) == 2, "init must not overwrite without --force"


def test_every_field_has_a_description() -> None:
    rows = iter_fields()
    assert rows, "no fields found"
    missing = [key for key, _, description in rows if not description]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("remediation:\n  eps: -1\n", "remediation.eps"),
        ("remediaton:\n  eps: 0.1\n", "remediaton"),
        ("remediation:\n  optimizer: rmsprop\n", "remediation.optimizer"),
        ("remediation:\n  warmup: 1\n", "remediation.warmup"),
        ("remediation:\n  lr: 0\n", "remediation.lr"),
        ("model:\n  name: Bad_Name\n", "model.name"),
        ("serving:\n  squeezers: [jpeg]\n", "serving.squeezers"),
        ("serving:\n  squeezers: []\n", "serving.squeezers"),
    ],
)
def test_bad_config_gives_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "robustloop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"invalid|YAML|mapping") as info:
        load_config(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="robustloop init"):
        load_config(tmp_path / "nope.yaml")


def test_the_file_and_the_components_name_the_same_choices() -> None:
    """The config names what a user may write; training owns what each name means."""
    import alert_rules
    import training
    from robustloop.config import Device, Method, Optimizer, Precision, Recipe, choices
    from workflows import contract

    assert choices(Method) == training.METHODS
    assert choices(Optimizer) == training.OPTIMIZERS
    assert choices(Device) == training.DEVICES
    assert choices(Precision) == training.PRECISIONS
    # the recipes: the file, training, the workflow's parameter, the escalated alert's label
    assert choices(Recipe) == training.RECIPES == contract.RECIPES
    assert alert_rules.CAPTURED_RECIPE in contract.RECIPES
    assert alert_rules.RECIPE_LABEL == contract.RECIPE_LABEL


def test_override_returns_a_new_checked_config_and_leaves_the_shared_one_alone() -> None:
    from robustloop.config import override

    shared = RobustloopConfig()
    changed = override(shared, {"remediation": {"eps": 0.05, "epochs": 2}, "device": "cpu"})
    assert (changed.remediation.eps, changed.remediation.epochs, changed.device) == (0.05, 2, "cpu")
    assert shared == RobustloopConfig()
    with pytest.raises(ConfigError, match=r"remediation.eps: .*less than or equal to 1 \(got 2\)"):
        override(shared, {"remediation": {"eps": 2}})
    with pytest.raises(ConfigError, match=r"remediation\.nonsense"):
        override(shared, {"remediation": {"nonsense": 1}})
    assert shared == RobustloopConfig()


@pytest.mark.parametrize("value", [0, -0.1, 1.01, float("nan")])
def test_one_rule_for_eps_in_the_file_and_everywhere_else(value: float) -> None:
    from robustloop.config import check_eps

    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
        check_eps(value)
    for section in ("remediation", "gate"):
        with pytest.raises(ValidationError):
            RobustloopConfig.model_validate({section: {"eps": value}})
    assert check_eps(1.0) == 1.0


@pytest.mark.parametrize(
    ("section", "given", "expected"),
    [
        # a canary section naming only the escalation keeps a notify-only canary alert
        (
            "canary_accuracy",
            {"escalate_after": "60s"},
            {"remediate": False, "threshold": 0.6, "window": "15s", "for_": "3s"},
        ),
        ("entropy", {"for": "20s"}, {"remediate": False, "threshold": 0.35, "for_": "20s"}),
        ("entropy", {"for_": "20s"}, {"remediate": False, "for_": "20s"}),
        ("squeeze", {"threshold": 0.3}, {"remediate": True, "threshold": 0.3, "for_": "10s"}),
        ("canary_accuracy", {"remediate": True}, {"remediate": True, "threshold": 0.6}),
    ],
)
def test_a_partial_signal_section_keeps_that_signals_own_defaults(
    tmp_path: Path, section: str, given: dict[str, object], expected: dict[str, object]
) -> None:
    path = tmp_path / "robustloop.yaml"
    doc = {"capture": {"enabled": True}, "alerts": {section: given}}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    alert = getattr(load_config(path).alerts, section)
    assert {key: getattr(alert, key) for key in expected} == expected
