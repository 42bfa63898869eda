"""``robustloop smoke``: one inference and one dry-run alert against a real ``robustloop serve``
and a real ``robustloop webhook`` process, each on a free port of 127.0.0.1.

The command runs as the chart's ``helm test`` Pod runs it, in a fresh interpreter with torch
made unimportable (the receiver image has none). It passes against the live pair and changes
nothing there; a wrong receiver token, a server that is down, and both at once end it with
one line and exit 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from robustloop.commands.base import CommandError
from robustloop.commands.smoke import (
    SMOKE_ALERTNAME,
    CheckFailed,
    input_shape,
    receiver_token,
    smoke_payload,
)
from robustloop.config import RobustloopConfig, dump_config
from tests.conftest import REPO_ROOT, free_port
from tests.support import Serve, register_model
from tests.test_helm_images import WITHOUT_TORCH
from tests.webhook_support import wait_for
from training import ModelStore
from webhook.models import WebhookPayload

TOKEN = "smoke-test-token-93b1"


@dataclass(frozen=True)
class Deployment:
    """A model server and a receiver running as processes, and what the smoke test needs."""

    server: str
    receiver: str
    token_file: Path
    config_file: Path
    runs_dir: Path
    version: str


def _wait_listening(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=120, what=url)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """`robustloop serve` on a store with one production model, and `robustloop webhook` with a
    token file, as the chart runs them; both stopped with SIGTERM afterwards."""
    root = tmp_path_factory.mktemp("smoke")
    config = RobustloopConfig()
    config.store.path = root / "store"
    config.serving.port = free_port()
    config.webhook.port = free_port()
    config.webhook.db_path = root / "outbox" / "webhook.sqlite3"
    config.submitter.runs_dir = root / "runs"
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    config.webhook.token_file = token_file
    config_file = root / "robustloop.yaml"
    config_file.write_text(dump_config(config), encoding="utf-8")
    version = register_model(ModelStore(config.store.path))

    server = Serve(config_file)
    receiver_log = root / "webhook.log"
    with receiver_log.open("w") as log:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "robustloop", "--config", str(config_file), "webhook"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        match = server.announced()
        assert match.group(2) == version
        receiver_url = f"http://127.0.0.1:{config.webhook.port}"
        _wait_listening(f"{receiver_url}/readyz", receiver, receiver_log)
        yield Deployment(
            server=match.group(3),
            receiver=receiver_url,
            token_file=token_file,
            config_file=config_file,
            runs_dir=config.submitter.runs_dir,
            version=version,
        )
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait(timeout=10)
        code, err = server.stop()
        assert code == 0, err[-2000:]
    assert receiver.returncode == 0, receiver_log.read_text()[-2000:]


def _smoke(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """`robustloop smoke` in a fresh interpreter without torch (the receiver image)."""
    env = {k: v for k, v in os.environ.items() if k != "ROBUSTLOOP_WEBHOOK_TOKEN"}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            "smoke",
            "--config",
            str(deployment.config_file),
            "--timeout",
            "20",
            *args,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _smoke_live(
    deployment: Deployment,
    *extra: str,
    server: str | None = None,
    receiver: str | None = None,
    token_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`robustloop smoke` against the deployment's server and receiver with the receiver's
    token file, as the helm test Pod runs it; a test replaces one of them to break it."""
    return _smoke(
        deployment,
        "--server",
        server or deployment.server,
        "--receiver",
        receiver or deployment.receiver,
        "--token-file",
        str(token_file or deployment.token_file),
        *extra,
    )


def _remediations(deployment: Deployment) -> dict[str, object]:
    response = requests.get(
        f"{deployment.receiver}/api/v1/remediations",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _runs(deployment: Deployment) -> list[Path]:
    return sorted(deployment.runs_dir.glob("*")) if deployment.runs_dir.exists() else []


def test_smoke_passes_against_a_live_server_and_receiver_and_changes_nothing(
    deployment: Deployment,
) -> None:
    # WHEN the smoke test runs with the receiver's token file, as the helm test Pod does
    done = _smoke_live(deployment)

    # THEN both checks pass, and say what they saw: the served version, the model's input
    # shape read from its metadata, and the receiver's decision
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"server ok: model fashion-cnn version {deployment.version} ")
    assert "one blank [1, 1, 28, 28] input" in lines[0]
    assert lines[1].startswith(f"receiver ok: dry run of one {SMOKE_ALERTNAME} alert for model")
    assert "decision submit (decided: submitting workflow rl-fashion-cnn-" in lines[1]
    assert lines[2].startswith("smoke test passed")
    # ... and the receiver recorded nothing and started nothing
    remediations = _remediations(deployment)
    assert remediations["remediations"] == []
    assert not any(remediations["counts"].values())  # type: ignore[union-attr]
    assert _runs(deployment) == []


def test_smoke_with_a_wrong_receiver_token_fails_in_one_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    wrong = tmp_path / "token"
    wrong.write_text("not-the-receivers-token", encoding="utf-8")
    done = _smoke_live(deployment, token_file=wrong)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("robustloop: error: smoke test failed: receiver: POST ")
    assert "answered 401 (the token sent is not the receiver's)" in line
    assert "server ok:" in done.stdout, "the server's check still ran, and passed"
    assert _remediations(deployment)["remediations"] == []


def test_smoke_with_the_server_down_fails_in_one_line(deployment: Deployment) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    done = _smoke_live(deployment, server=down)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"robustloop: error: smoke test failed: server: cannot connect to {down}"
    )
    assert "receiver ok:" in done.stdout
    assert "smoke test passed" not in done.stdout


def test_smoke_with_both_failing_names_both_in_one_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    wrong = tmp_path / "token"
    wrong.write_text("not-the-receivers-token", encoding="utf-8")
    done = _smoke_live(deployment, server=f"http://127.0.0.1:{free_port()}", token_file=wrong)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "server: cannot connect" in line and "[Errno 111] Connection refused" in line
    assert "receiver: POST" in line and "answered 401" in line
    assert done.stdout == ""


def test_smoke_asks_the_model_the_server_does_not_serve(deployment: Deployment) -> None:
    done = _smoke_live(deployment, "--model", "other-model")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "server: GET " in line and "/v2/models/other-model answered 404" in line


def test_an_unreadable_token_file_is_one_line(deployment: Deployment, tmp_path: Path) -> None:
    done = _smoke(deployment, "--token-file", str(tmp_path / "absent"))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "cannot read --token-file" in line and "absent" in line


def test_the_helm_test_pods_own_command_passes(deployment: Deployment) -> None:
    """The chart's `helm test` Pod's command and arguments, run here: only what the cluster
    provides is redirected (the Services' addresses, the mounted token file and config)."""
    from tests.test_helm import _find_helm
    from tests.test_helm import _template as render
    from tests.test_helm_smoke import SMOKE

    helm = _find_helm()
    if helm is None:
        if os.environ.get("ROBUSTLOOP_REQUIRE_SCHEMAS") == "1":
            pytest.fail("ROBUSTLOOP_REQUIRE_SCHEMAS=1 but helm is absent: run `make helm`")
        pytest.skip("helm is absent: `make helm` installs it into .venv/bin")
    (pod,) = [o for o in render(helm) if o["kind"] == "Pod" and o["metadata"]["name"] == SMOKE]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["robustloop"]
    args = list(container["args"])
    here = {
        "--server": deployment.server,
        "--receiver": deployment.receiver,
        "--token-file": str(deployment.token_file),
        "--config": str(deployment.config_file),
    }
    for flag, value in here.items():
        args[args.index(flag) + 1] = value
    env = {k: v for k, v in os.environ.items() if k != "ROBUSTLOOP_WEBHOOK_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "smoke test passed" in done.stdout
    assert _remediations(deployment)["remediations"] == []


# -- the parts, without processes ----------------------------------------------------------------


def test_the_input_shape_comes_from_the_oip_metadata() -> None:
    metadata = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]}
    assert input_shape(metadata) == ("images", [1, 3, 32, 32])


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0, 28]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": "[-1, 1, 28, 28]"}]},
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]},
    ],
)
def test_metadata_without_a_usable_input_is_refused(metadata: dict[str, object]) -> None:
    with pytest.raises(CheckFailed, match=r"^server: "):
        input_shape(metadata)


def test_the_smoke_payload_is_a_valid_remediating_alertmanager_payload() -> None:
    payload = WebhookPayload.model_validate(smoke_payload("fashion-cnn"))
    (alert,) = payload.alerts
    assert alert.status == "firing"
    assert alert.labels["model"] == "fashion-cnn"
    assert alert.labels["remediation"] == "adversarial-training"
    other = WebhookPayload.model_validate(smoke_payload("fashion-cnn")).alerts[0]
    assert other.fingerprint != alert.fingerprint, "each run is a new incident"


def test_the_token_comes_from_the_flag_then_the_config_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROBUSTLOOP_WEBHOOK_TOKEN", raising=False)
    config = RobustloopConfig()
    assert receiver_token(None, config) is None
    monkeypatch.setenv("ROBUSTLOOP_WEBHOOK_TOKEN", "from-env")
    assert receiver_token(None, config) == "from-env"
    configured = tmp_path / "configured"
    configured.write_text("from-config\n", encoding="utf-8")
    config.webhook.token_file = configured
    assert receiver_token(None, config) == "from-config"
    flag = tmp_path / "flag"
    flag.write_text(" from-flag ", encoding="utf-8")
    assert receiver_token(flag, config) == "from-flag"
    flag.write_text("", encoding="utf-8")
    with pytest.raises(CommandError, match=r"--token-file .* is empty"):
        receiver_token(flag, config)
