"""The layering is checked, not hoped for: import-linter's contracts in pyproject.toml.

The CLI and the local stack on top; the receiver and the workflow; the model server and the alert
rules; training; the floor (config, atomic writes, the HTTP server wrapper). These tests run the
real ``lint-imports`` on the repository, and on a copy with one forbidden import planted, which it
must refuse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("robustloop", "training", "serving", "webhook", "workflows", "alert_rules")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    for name in PACKAGES:
        shutil.copytree(
            REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "tests")
        )
    return root


def test_the_repository_keeps_every_import_contract() -> None:
    done = _lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        # the workflow reaching up into the CLI
        ("workflows/steps.py", "import robustloop.cli", "Components import only the layers"),
        # training reaching up into the model server
        ("training/harden.py", "import serving.signals", "Components import only the layers"),
        # the receiver loading torch (its image has none)
        ("webhook/outbox.py", "import torch", "The receiver never loads torch"),
        # a cycle inside one component
        ("alert_rules/_yaml.py", "import alert_rules.render", "No import cycles"),
    ],
)
def test_a_planted_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    root = _copy(tmp_path)
    path = root / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{planted}  # planted\n")
    done = _lint_imports(root)
    assert done.returncode != 0, done.stdout
    broken = done.stdout[done.stdout.index("Broken contracts") :]
    assert contract in broken, done.stdout


def test_no_workflow_step_shells_out_to_the_cli() -> None:
    """The steps call the use cases directly: no ``python -m robustloop``, no argparse."""
    for path in (REPO_ROOT / "workflows").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""["']-m["'],\s*["']robustloop["']""", text), path
        assert "argparse" not in text, path
        assert "CommandError" not in text, path
