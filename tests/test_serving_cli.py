"""`robustloop serve` as the demo runs it: a subprocess that announces its URL once ready."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from robustloop.config import RobustloopConfig, dump_config
from tests.support import Serve, register_model
from training import ModelStore


@pytest.fixture
def config_path(small_config: RobustloopConfig, tmp_path: Path) -> Path:
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(small_config))
    return path


@pytest.fixture
def serve(config_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for proc in started:
        proc.stop()


def test_serve_on_port_0_announces_its_url_refuses_a_busy_port_and_stops_on_sigterm(
    small_config: RobustloopConfig, config_path: Path, serve: list[Serve]
) -> None:
    version = register_model(ModelStore(small_config.store.path))
    server = Serve(config_path, "--port", "0")
    serve.append(server)
    name, announced_version, url = server.announced().groups()
    assert (name, announced_version) == ("fashion-cnn", version)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200

    port = url.rsplit(":", 1)[1]
    second = Serve(config_path, "--port", port)
    serve.append(second)
    second.proc.wait(timeout=120)
    code, stderr = second.stop()
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in stderr

    code, stderr = server.stop()
    assert code == 0, stderr


def test_serve_with_an_empty_store_listens_unready_and_announces_once_a_model_arrives(
    small_config: RobustloopConfig, config_path: Path, serve: list[Serve], port: int
) -> None:
    server = Serve(config_path, "--host", "127.0.0.1", "--port", str(port))
    serve.append(server)
    url = f"http://127.0.0.1:{port}"
    ready = None
    for _ in range(600):  # the process needs a moment to import torch and bind
        try:
            ready = requests.get(f"{url}/v2/health/ready", timeout=10)
            break
        except requests.ConnectionError:
            assert server.proc.poll() is None, server.stop()[1]
            threading.Event().wait(0.2)
    assert ready is not None and ready.status_code == 503
    assert server.lines.empty()
    version = register_model(ModelStore(small_config.store.path))
    assert server.announced().groups() == ("fashion-cnn", version, url)
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
