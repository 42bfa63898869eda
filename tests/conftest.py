"""Shared fixtures: free ports, the shared schemas, a small config with a private store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from robustloop.config import RobustloopConfig

pytest_plugins = ["tests.webhook_support"]  # the webhook receiver's fixtures

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
DATASET_ROOT = Path("/usr/share/datasets/fashion-mnist")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@contextlib.contextmanager
def _running_binary(argv: list[str], url: str, log_path: Path, what: str) -> Iterator[str]:
    """Run ``argv`` (a server of the Debian packages) logging to ``log_path``; yield ``url``
    once its ``/-/ready`` answers 200 (at most 30 s). Always stopped: SIGTERM, then SIGKILL."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                try:
                    if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.time() < deadline, f"{what} did not become ready in 30 s"
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(folder: Path, config: str, *flags: str) -> Iterator[str]:
    """A real Prometheus (the Debian package) on a free port with ``config`` as its
    ``prometheus.yml`` in ``folder`` (relative rule files resolve there): its URL once ready.
    Always stopped; its log is ``folder/prometheus.log``."""
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus is not installed (Debian package prometheus)"
    (folder / "prometheus.yml").write_text(config, encoding="utf-8")
    port = free_port()
    argv = [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
    ]
    url = f"http://127.0.0.1:{port}"
    with _running_binary(argv, url, folder / "prometheus.log", "Prometheus") as ready:
        yield ready


@contextlib.contextmanager
def running_alertmanager(folder: Path, config: str) -> Iterator[str]:
    """A real Alertmanager (the Debian package) on a free port, clustering off, with ``config``
    as ``folder/alertmanager.yml`` and its storage in ``folder/am-data``: its URL once ready.
    Always stopped; its log is ``folder/alertmanager.log``."""
    binary = ALERTMANAGER
    assert Path(binary).exists(), "Alertmanager is not installed (prometheus-alertmanager)"
    config_file = folder / "alertmanager.yml"
    config_file.write_text(config, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={folder / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",
    ]
    with _running_binary(argv, url, folder / "alertmanager.log", "Alertmanager") as ready:
        yield ready


def schemas_dir() -> Path | None:
    """The reference schemas in ../shared/schemas (or $ROBUSTLOOP_SCHEMAS_DIR), if present."""
    env = os.environ.get("ROBUSTLOOP_SCHEMAS_DIR")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "schemas"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def schemas() -> Path:
    """The shared schemas folder; skips with a reason where absent, unless CI requires it."""
    found = schemas_dir()
    if found is None:
        if os.environ.get("ROBUSTLOOP_REQUIRE_SCHEMAS") == "1":
            pytest.fail("ROBUSTLOOP_REQUIRE_SCHEMAS=1 but ../shared/schemas is absent")
        pytest.skip("../shared/schemas is absent (set ROBUSTLOOP_SCHEMAS_DIR to point at it)")
    return found


PRECISIONS = ("fp32", "bf16")
"""Both precisions of adversarial training, each forced: a test that hardens runs in both, so
the suite covers both paths on every CPU (bfloat16 autocast is emulated, slowly, where the CPU
has no native support)."""


@pytest.fixture(params=PRECISIONS)
def precision(request: pytest.FixtureRequest) -> str:
    """``fp32`` or ``bf16``: the test runs once with each."""
    return str(request.param)


@pytest.fixture
def small_config(tmp_path: Path) -> RobustloopConfig:
    """Default config shrunk for tests: small splits, few epochs, a store under tmp_path."""
    cfg = RobustloopConfig()
    cfg.data.eval_size = 500
    cfg.data.traffic_size = 500
    cfg.data.train_limit = 2000
    cfg.training.epochs = 1
    cfg.remediation.epochs = 1
    cfg.remediation.max_seconds = 60
    cfg.gate.n = 200
    cfg.store.path = tmp_path / "store"
    cfg.webhook.db_path = tmp_path / "webhook.sqlite3"
    cfg.stack.run_dir = tmp_path / "run"
    cfg.submitter.runs_dir = tmp_path / "runs"
    cfg.rollout.rules_wait_seconds = 0  # no Prometheus here; the tests of the wait start one
    return cfg


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> Iterator[None]:
    """Keep torch to the machine's two cores and deterministic where it can be."""
    try:
        import torch
    except ImportError:  # the webhook's slim environment
        yield
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def dry_receiver(small_config: RobustloopConfig, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A receiver over real HTTP with a token and ``dry_run`` (nothing is ever submitted):
    its URL and its :class:`webhook.Receiver`. It must still be ready when the test ends."""
    import requests
    from prometheus_client import CollectorRegistry

    from tests.webhook_support import TOKEN
    from webhook import ReceiverServer, create_app, receiver_of

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    small_config.webhook.token_file = token_file
    small_config.webhook.dry_run = True
    app = create_app(small_config, registry=CollectorRegistry())
    with ReceiverServer(app) as server:
        yield server.url, receiver_of(app)
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200


@pytest.fixture
def served_model(small_config: RobustloopConfig) -> Iterator[str]:
    """The model server over real HTTP, serving an untrained reference CNN: its URL. It must
    still be ready when the test ends."""
    import requests
    from prometheus_client import CollectorRegistry

    from serving import RunningServer, create_app, get_state
    from tests.support import register_model
    from training import ModelStore

    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    try:
        with RunningServer(app) as server:
            yield server.url
            ready = requests.get(f"{server.url}/v2/health/ready", timeout=10)
            assert ready.status_code == 200
    finally:
        get_state(app).close()


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary; skips (or fails under CI) where there is none."""
    from tests.test_helm import _find_helm

    found = _find_helm()
    if found is None:
        if os.environ.get("ROBUSTLOOP_REQUIRE_SCHEMAS") == "1":
            pytest.fail("ROBUSTLOOP_REQUIRE_SCHEMAS=1 but helm is absent: run `make helm`")
        pytest.skip("helm is absent: `make helm` installs it into .venv/bin")
    return found


@pytest.fixture(scope="session")
def argo_validator(schemas: Path) -> Any:
    """Validator of a WorkflowTemplate against the (strict copy of the) Argo Workflows schema."""
    import jsonschema

    from tests.support import strict_schema

    raw = json.loads((schemas / "argo-workflows" / "schema.json").read_text(encoding="utf-8"))
    schema = {
        "$schema": raw["$schema"],
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate",
        "definitions": strict_schema(raw["definitions"]),
    }
    return jsonschema.Draft202012Validator(schema)
