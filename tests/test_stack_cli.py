"""`robustloop up` / `demo` refuse clearly when the stack cannot run, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustloop.cli import main
from robustloop.config import RobustloopConfig, dump_config
from robustloop.stack.supervisor import INSTALL_HINT


def _write(cfg: RobustloopConfig, tmp_path: Path) -> Path:
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(cfg))
    return path


@pytest.mark.parametrize("command", ["up", "demo"])
@pytest.mark.parametrize("field", ["prometheus_binary", "alertmanager_binary"])
def test_a_missing_binary_names_the_install_command_and_starts_nothing(
    command: str,
    field: str,
    tmp_path: Path,
    small_config: RobustloopConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setattr(small_config.stack, field, "robustloop-missing-binary")
    config = _write(small_config, tmp_path)

    assert main(["--config", str(config), command]) == 2

    err = capsys.readouterr().err
    assert "robustloop-missing-binary" in err
    assert INSTALL_HINT in err
    assert not small_config.stack.run_dir.exists()
    assert not small_config.store.path.exists()


def test_demo_rejects_an_unknown_scenario(
    tmp_path: Path, small_config: RobustloopConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(small_config, tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), "demo", "--scenario", "flood"])
    assert info.value.code == 2
    assert "invalid choice: 'flood'" in capsys.readouterr().err
    assert not small_config.stack.run_dir.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--timeout", "0", "must be above zero"),
        ("--clean-seconds", "-5", "must be above zero"),
        ("--rate", "fast", "is not a number"),
        ("--eps", "1.5", "eps must be in (0, 1]"),
    ],
)
def test_demo_rejects_bad_numbers_before_starting_anything(
    flag: str,
    value: str,
    message: str,
    tmp_path: Path,
    small_config: RobustloopConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write(small_config, tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), "demo", flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not small_config.stack.run_dir.exists()


@pytest.mark.parametrize(
    ("scenario", "by", "escalate_after", "expected", "says"),
    [
        ("drift", ["CanaryAccuracyEscalated"], "60s", True, "the escalation remediated the drift"),
        ("drift", ["CanaryAccuracyEscalated"], None, False, "wrongly"),
        ("drift", ["AdversarialInputSuspected"], "60s", False, "by AdversarialInputSuspected"),
        (
            "drift",
            ["AdversarialInputSuspected", "CanaryAccuracyEscalated"],
            "60s",
            False,
            "wrongly",
        ),
        ("drift", [], "60s", False, "wrongly"),
        ("clean", ["CanaryAccuracyEscalated"], "60s", False, "during clean traffic"),
    ],
)
def test_only_the_escalation_may_remediate_unattacked_traffic(
    scenario: str, by: list[str], escalate_after: str | None, expected: bool, says: str
) -> None:
    from robustloop.commands.stack import unattacked_remediation_verdict

    ok, line = unattacked_remediation_verdict(scenario, {"remediated_by": by}, escalate_after)
    assert ok is expected and says in line
