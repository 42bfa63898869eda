"""The server over real HTTP: body limits with and without Content-Length, keep-alive after an
error, and the documented gunicorn command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig, dump_config
from serving import RunningServer, create_app, get_state
from tests.support import register_model
from training import ModelStore

MODEL = "fashion-cnn"
LIMIT = 64 * 1024


def body(n: int) -> bytes:
    tensor = {"name": "x", "shape": [n, 784], "datatype": "FP32", "data": [0.25] * (n * 784)}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.fixture
def server(small_config: RobustloopConfig) -> Iterator[RunningServer]:
    register_model(ModelStore(small_config.store.path))
    small_config.serving.max_body_bytes = LIMIT
    small_config.serving.max_batch = 64
    app = create_app(small_config, registry=CollectorRegistry())
    try:
        with RunningServer(app) as running:
            yield running
    finally:
        get_state(app).close()


def chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_body_limit_holds_with_and_without_content_length(server: RunningServer) -> None:
    url = f"{server.url}/v2/models/{MODEL}/infer"
    small, large = body(2), body(40)
    assert len(small) < LIMIT < len(large)
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        for data in (large, chunked(large)):
            response = session.post(url, data=data, headers=headers, timeout=30)
            assert response.status_code == 413
            assert f"over the limit of {LIMIT} bytes" in response.json()["error"]
            # the connection (or a fresh one) still serves the next request
            assert session.post(url, data=small, headers=headers, timeout=30).status_code == 200
        response = session.post(url, data=chunked(small), headers=headers, timeout=30)
        assert response.status_code == 200
        assert len(response.json()["outputs"][2]["data"]) == 2


def test_documented_gunicorn_command_serves_the_app(
    small_config: RobustloopConfig, tmp_path: Path, port: int
) -> None:
    version = register_model(ModelStore(small_config.store.path))
    config_path = tmp_path / "robustloop.yaml"
    config_path.write_text(dump_config(small_config))
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip(f"gunicorn is not installed next to {sys.executable} (pip install gunicorn)")
    command = [
        str(gunicorn), "--workers", "1", "--threads", "4", "--bind", f"127.0.0.1:{port}",
        "--control-socket", str(tmp_path / "gunicorn.ctl"), "serving.wsgi:make_app()",
    ]  # fmt: skip
    env = {**os.environ, "ROBUSTLOOP_CONFIG": str(config_path)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = requests.get(f"{url}/v2/health/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # the worker is still importing torch and loading the model
            assert proc.poll() is None, "gunicorn exited early"
            assert time.monotonic() < deadline, "gunicorn did not become ready within 120s"
            time.sleep(0.2)
        response = requests.post(f"{url}/v2/models/{MODEL}/infer", data=body(1), timeout=30)
        assert response.status_code == 200
        assert response.json()["model_version"] == version
        assert (
            "robustloop_inference_samples_total" in requests.get(f"{url}/metrics", timeout=5).text
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
