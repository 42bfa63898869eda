"""The config model: defaults round-trip through `robustloop init`, bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

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
