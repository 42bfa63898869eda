"""The container images (docker/): what can be checked without a Docker engine.

No Docker engine runs here, so the images are never built in the tests. What the builds rely on is
checked instead: the torch pins and the packages the Dockerfiles copy agree with pyproject.toml,
the build context keeps what they copy, the receiver image's command really runs without torch,
with the config file the chart gives it, and the server pod's `robustloop serve` serves, follows
the store and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from robustloop.config import RobustloopConfig
from tests.conftest import free_port
from tests.test_helm import CHART, FULLNAME, _one, _template

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {
    "server": REPO_ROOT / "docker" / "Dockerfile",
    "receiver": REPO_ROOT / "docker" / "Dockerfile.webhook",
}
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Run a robustloop command in this interpreter with torch made unimportable: the receiver image.
WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision"}:
            raise ModuleNotFoundError(f"No module named {name!r} (the receiver image has no torch)")
        return None

sys.meta_path.insert(0, NoTorch())
from robustloop.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _packages() -> list[str]:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(pattern.rstrip("*") for pattern in include)


def _pin(name: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{name}==([\w.]+)", requirement)
        if match:
            return match.group(1)
    raise AssertionError(f"pyproject.toml does not pin {name}")


def test_server_image_pins_the_same_torch_as_pyproject() -> None:
    text = DOCKERFILES["server"].read_text(encoding="utf-8")
    assert f"ARG TORCH_VERSION={_pin('torch')}\n" in text
    assert f"ARG TORCHVISION_VERSION={_pin('torchvision')}\n" in text


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", requirement)[0].lower() for requirement in requirements}


def test_both_images_get_waitress_from_pyproject_and_no_gunicorn() -> None:
    """Both servers run waitress (robustloop.httpserver): the server image installs the
    project's dependencies, the receiver image its `webhook` extra; gunicorn is gone."""
    assert "waitress" in _names(PYPROJECT["project"]["dependencies"])
    assert "waitress" in _names(PYPROJECT["project"]["optional-dependencies"]["webhook"])
    for image, dockerfile in DOCKERFILES.items():
        assert "gunicorn" not in dockerfile.read_text(encoding="utf-8"), image


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_copy_every_package_and_run_as_non_root(image: str) -> None:
    text = DOCKERFILES[image].read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (\S+) \./\1$", text, flags=re.MULTILINE))
    assert set(_packages()) <= copied, f"{image} image misses {set(_packages()) - copied}"
    assert "COPY pyproject.toml README.md ./" in text
    # Numeric user, so that Kubernetes' runAsNonRoot can check it; the chart's runAsUser.
    assert "USER 10001:10001" in text
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_build_context_keeps_what_the_images_copy() -> None:
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in [*_packages(), "pyproject.toml", "README.md"]:
        assert needed not in ignored, f".dockerignore drops {needed}, which the images copy"
    assert {".git", ".venv", ".robustloop"} <= ignored, "the build context must stay small"


def test_receiver_image_installs_no_torch() -> None:
    names = _names(PYPROJECT["project"]["optional-dependencies"]["webhook"])
    assert not names & {"torch", "torchvision"}, "the receiver image must not install torch"
    text = DOCKERFILES["receiver"].read_text(encoding="utf-8")
    assert "['optional-dependencies']['webhook']" in text
    assert "pip install --no-deps --no-build-isolation ." in text


def test_receiver_command_parses_without_torch() -> None:
    """The build's last check (`robustloop webhook --help` without torch) passes here."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "webhook", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout


@pytest.fixture(scope="module")
def chart_objects(helm: str) -> list[dict[str, Any]]:
    """The objects of the chart's default scenario."""
    return _template(helm)


def _pod_container(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    deployment = _one(objects, "Deployment", f"{FULLNAME}-{component}")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.fixture
def chart_config(chart_objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The robustloop.yaml of the chart's default scenario (a fresh copy per test)."""
    config_map = _one(chart_objects, "ConfigMap", f"{FULLNAME}-config")
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["robustloop.yaml"])
    return config


@contextlib.contextmanager
def _pod_process(
    command: list[str], env: dict[str, str], workdir: Path, url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a pod's command here until it listens at url; always stopped (SIGTERM, as kubelet)."""
    log_path = workdir / "pod.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env={**os.environ, "HOME": str(workdir), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise AssertionError(
                        f"{command[0]} exited with {process.returncode}:\n"
                        + log_path.read_text()[-3000:]
                    )
                try:
                    requests.get(url, timeout=5)
                    break
                except (requests.ConnectionError, requests.Timeout):
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{command[0]} did not listen within 120 s:\n"
                            + log_path.read_text()[-3000:]
                        ) from None
                    time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture
def receiver_without_torch(
    tmp_path: Path, chart_objects: list[dict[str, Any]], chart_config: dict[str, Any]
) -> Iterator[str]:
    """`robustloop webhook` as the receiver pod runs it: the chart's arguments and config, the
    token from its mounted Secret file, torch unimportable. Only what a pod provides is
    redirected to tmp_path: the listen address, the outbox volume and the token files.
    """
    container = _pod_container(chart_objects, "receiver")
    assert container["command"] == ["robustloop"]
    args = list(container["args"])
    config_file = tmp_path / "robustloop.yaml"
    assert args[-2:] == ["--config", f"{container['workingDir']}/robustloop.yaml"]
    args[-1] = str(config_file)
    port = free_port()
    config = chart_config
    config["webhook"]["host"] = "127.0.0.1"
    config["webhook"]["port"] = port
    config["webhook"]["db_path"] = str(tmp_path / "outbox" / "webhook.sqlite3")
    (tmp_path / "outbox").mkdir()
    argo_token = tmp_path / "argo-token"
    argo_token.write_text("not-a-real-service-account-token\n", encoding="utf-8")
    config["submitter"]["argo"]["token_file"] = str(argo_token)
    # The receiver's Secret as the kubelet mounts it: one file, the token.
    token_file = Path(config["webhook"]["token_file"])
    token_mount = next(m for m in container["volumeMounts"] if m["name"] == "token")
    assert token_file.parent == Path(token_mount["mountPath"])
    mounted = tmp_path / "receiver-secret" / token_file.name
    mounted.parent.mkdir()
    mounted.write_text("s3cret-token-of-the-test", encoding="utf-8")
    config["webhook"]["token_file"] = str(mounted)
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    env: dict[str, str] = {}
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", WITHOUT_TORCH, *args]
    with _pod_process(command, env, tmp_path, f"{url}/healthz") as process:
        yield url
    assert process.returncode == 0, "SIGTERM (as kubelet sends it) must stop the receiver cleanly"


def test_receiver_runs_without_torch_on_the_charts_config(receiver_without_torch: str) -> None:
    url = receiver_without_torch
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    # The token comes from the mounted Secret's file: no token, no entry.
    payload = {"version": "4", "status": "firing", "alerts": []}
    assert requests.post(f"{url}/api/v1/alerts", json=payload, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    response = requests.post(f"{url}/api/v1/alerts", json=payload, headers=wrong, timeout=5)
    assert response.status_code == 401
    # With the file's token the request is read (and this empty one refused as garbage)
    right = {"Authorization": "Bearer s3cret-token-of-the-test"}
    response = requests.post(f"{url}/api/v1/alerts", json=payload, headers=right, timeout=5)
    assert response.status_code == 400


def test_server_pod_command_serves_and_its_probes_follow_the_store(
    tmp_path: Path, chart_objects: list[dict[str, Any]], chart_config: dict[str, Any]
) -> None:
    """The server container's command and probes, run here: on a fresh claim (no store folder
    yet) it lives but is not ready; once a production model is registered (the bootstrap Job's
    work) it turns ready without a restart, and serves /metrics for the ServiceMonitor. The
    chart's config makes feedback need the token of the mounted Secret: none or a wrong one is
    a 401, the Secret's token is accepted; the sample ids are signed with the mounted key.
    """
    from tests.support import register_model
    from training import ModelStore

    container = _pod_container(chart_objects, "server")
    binary = Path(sys.executable).parent / container["command"][0]
    assert binary.is_file(), f"{container['command'][0]} is not installed beside python"
    args = list(container["args"])
    config_file = tmp_path / "robustloop.yaml"
    args[-1] = str(config_file)
    port = free_port()
    claim = tmp_path / "claim"
    claim.mkdir()
    mount = next(m for m in container["volumeMounts"] if m["name"] == "store")["mountPath"]
    store_path = Path(chart_config["store"]["path"])
    config = chart_config
    config["store"]["path"] = str(claim / store_path.relative_to(mount))
    config["serving"]["reload_interval_seconds"] = 0.2
    config["serving"]["host"] = "127.0.0.1"
    config["serving"]["port"] = port
    # The feedback Secret as the kubelet mounts it: one file, the token.
    token_file = Path(config["serving"]["feedback_token_file"])
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "feedback-token")
    assert token_file.parent == Path(secret_mount["mountPath"])
    mounted = tmp_path / "feedback-secret" / token_file.name
    mounted.parent.mkdir()
    mounted.write_text("labeller-token-of-the-test", encoding="utf-8")
    config["serving"]["feedback_token_file"] = str(mounted)
    key_file = Path(config["serving"]["feedback_signing_key_file"])
    key_mount = next(m for m in container["volumeMounts"] if m["name"] == "feedback-signing-key")
    assert key_file.parent == Path(key_mount["mountPath"])
    signing = tmp_path / "signing-secret" / key_file.name
    signing.parent.mkdir()
    signing.write_text("k" * 64, encoding="utf-8")
    config["serving"]["feedback_signing_key_file"] = str(signing)
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    env_names = {e["name"] for e in container["env"]}
    assert "ROBUSTLOOP_CONFIG" in env_names
    url = f"http://127.0.0.1:{port}"
    live = url + container["livenessProbe"]["httpGet"]["path"]
    ready = url + container["readinessProbe"]["httpGet"]["path"]
    env = {"ROBUSTLOOP_CONFIG": str(config_file)}
    with _pod_process([str(binary), *args], env, tmp_path, live) as process:
        assert requests.get(live, timeout=5).status_code == 200
        assert requests.get(ready, timeout=5).status_code == 503
        # stands in for the chart's bootstrap Job, which trains the first model
        version = register_model(ModelStore(config["store"]["path"]))
        deadline = time.monotonic() + 60
        while requests.get(ready, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the server did not turn ready within 60 s"
            time.sleep(0.2)
        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert f'version="{version}"' in metrics.text
        model = RobustloopConfig.model_validate(config).model.name
        feedback = f"{url}/v2/models/{model}/feedback"
        image = {
            "inputs": [{"name": "x", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
        }
        infer = requests.post(f"{url}/v2/models/{model}/infer", json=image, timeout=30).json()
        outputs = {o["name"]: o["data"] for o in infer["outputs"]}
        labels = {"ids": outputs["sample_ids"], "labels": outputs["predicted_class"]}
        for headers in ({}, {"Authorization": "Bearer guess"}):
            refused = requests.post(feedback, json=labels, headers=headers, timeout=5)
            assert refused.status_code == 401, refused.text
        good = {"Authorization": "Bearer labeller-token-of-the-test"}
        accepted = requests.post(feedback, json=labels, headers=good, timeout=5)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"correct": 1, "wrong": 0, "unknown": 0}
    assert process.returncode == 0, "SIGTERM (as kubelet sends it) must stop the server cleanly"


def test_server_pod_runs_robustloop_serve_on_the_charts_config(
    chart_objects: list[dict[str, Any]], chart_config: dict[str, Any]
) -> None:
    """One way to serve: `robustloop serve` (waitress), listening where the config says, which
    the chart sets to all interfaces and the container's port."""
    container = _pod_container(chart_objects, "server")
    assert container["command"] == ["robustloop"]
    config_file = f"{container['workingDir']}/robustloop.yaml"
    assert container["args"] == ["serve", "--config", config_file]
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert chart_config["serving"]["host"] == "0.0.0.0"
    assert chart_config["serving"]["port"] == http["containerPort"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ROBUSTLOOP_CONFIG"] == config_file
