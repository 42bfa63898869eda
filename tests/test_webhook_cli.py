"""``robustloop webhook``: the token rule, its settings, the CLI, and the receiver's freedom
from torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from robustloop.config import ConfigError, RobustloopConfig, WebhookConfig, dump_config, load_config
from tests.conftest import REPO_ROOT, free_port
from tests.webhook_support import firing_payload, post, wait_for
from webhook._auth import TOKEN_ENV, load_token, token_matches
from webhook.errors import ConfigurationError


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    return {**env, **extra}


def _write_config(config: RobustloopConfig, tmp_path: Path) -> Path:
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    return path


def test_the_receiver_never_imports_torch(tmp_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from robustloop.cli import build_parser
from robustloop.config import RobustloopConfig
from webhook import create_app, receiver_of
build_parser()
config = RobustloopConfig()
config.webhook.auth = "none"
config.webhook.db_path = Path({str(tmp_path / "w.sqlite3")!r})
app = create_app(config)
app.test_client().get("/readyz")
receiver_of(app).close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "training")
               or m in ("workflows.remediation", "workflows.steps", "workflows.executor"))
print("HEAVY", heavy)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_load_token_sources_and_refusal(tmp_path: Path) -> None:
    settings = WebhookConfig()
    assert load_token(settings, {TOKEN_ENV: " from-env \n"}) == "from-env"
    with pytest.raises(ConfigurationError, match=r"auth: none"):
        load_token(settings, {})
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    settings.token_file = token_file
    assert load_token(settings, {TOKEN_ENV: "from-env"}) == "from-file"
    token_file.write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="is empty"):
        load_token(settings, {})
    settings.token_file = tmp_path / "absent"
    with pytest.raises(ConfigurationError, match="absent"):
        load_token(settings, {})
    assert load_token(WebhookConfig(auth="none"), {}) is None


@pytest.mark.parametrize("value", ["0", "-1", ".inf", ".nan"])
def test_drop_resolved_after_seconds_is_positive_and_finite(value: str, tmp_path: Path) -> None:
    assert WebhookConfig().drop_resolved_after_seconds == 3600
    path = tmp_path / "robustloop.yaml"
    path.write_text(f"webhook:\n  drop_resolved_after_seconds: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="drop_resolved_after_seconds"):
        load_config(path)
    path.write_text("webhook:\n  drop_resolved_after_seconds: 600\n", encoding="utf-8")
    assert load_config(path).webhook.drop_resolved_after_seconds == 600


def test_token_matches_only_the_bearer_token() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer   abc ", "abc")
    for header in (None, "", "Bearer", "Bearer abcd", "Basic abc", "abc", "Bearer ab"):
        assert not token_matches(header, "abc"), header


def test_cli_refuses_to_start_without_a_token(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    config_path = _write_config(small_config, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "robustloop", "--config", str(config_path), "webhook"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert TOKEN_ENV in result.stderr and "auth: none" in result.stderr
    assert not small_config.webhook.db_path.exists(), "nothing may be created on refusal"


@pytest.mark.parametrize("mode", ["env-token", "auth-none"])
def test_cli_serves_until_sigterm(
    small_config: RobustloopConfig, tmp_path: Path, mode: str
) -> None:
    env = _env()
    if mode == "auth-none":
        small_config.webhook.auth = "none"
    else:
        env[TOKEN_ENV] = "cli-token"
    small_config.webhook.dry_run = True
    config_path = _write_config(small_config, tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robustloop",
            "webhook",
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on {url}/api/v1/alerts" in line
        assert ("NO authentication" in line) == (mode == "auth-none")
        assert "DRY RUN" in line
        token = None if mode == "auth-none" else "cli-token"
        assert post(url, firing_payload(), token=token).status_code == 200
        if mode == "env-token":
            assert post(url, firing_payload(), token=None).status_code == 401
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
