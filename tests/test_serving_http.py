"""Both servers over real HTTP (waitress, robustloop.httpserver): the model server's body limits
with and without Content-Length, keep-alive after an error, the cap on huge uploads, and a busy
port answered with a clear error by the model server and the webhook receiver alike."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.cli import main
from robustloop.config import RobustloopConfig, dump_config
from robustloop.httpserver import AddressInUse, body_cap
from serving import RunningServer, create_app, get_state
from tests.support import register_model
from training import ModelStore
from webhook import ReceiverServer
from webhook import create_app as create_receiver_app
from webhook import serve as serve_receiver
from webhook.errors import ConfigurationError

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
    assert len(small) < LIMIT < len(large) < body_cap(LIMIT)
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


def test_a_huge_upload_is_refused_before_its_body_is_read(server: RunningServer) -> None:
    """Past the server's cap the 413 comes from waitress, on the headers alone; the server
    closes that connection and serves the next one."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", f"/v2/models/{MODEL}/infer")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(body_cap(LIMIT) + 1))
        connection.endheaders()  # and not one byte of the body
        response = connection.getresponse()
        assert response.status == 413
        assert response.getheader("Connection", "").lower() == "close"
        response.read()
    finally:
        connection.close()
    ready = requests.get(f"{server.url}/v2/health/ready", timeout=30)
    assert ready.status_code == 200


def test_the_model_server_on_a_busy_port_is_a_clear_error(
    server: RunningServer, small_config: RobustloopConfig
) -> None:
    app = create_app(small_config, registry=CollectorRegistry(), watch=False)
    with pytest.raises(AddressInUse) as caught:
        RunningServer(app, "127.0.0.1", server.port)
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "in use" in message and "--port" in message
    assert isinstance(caught.value, OSError)
    # the server already there is unharmed
    assert requests.get(f"{server.url}/v2/health/live", timeout=30).status_code == 200


def test_robustloop_serve_on_a_busy_port_exits_2_with_the_reason(
    server: RunningServer,
    small_config: RobustloopConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = tmp_path / "robustloop.yaml"
    config_path.write_text(dump_config(small_config), encoding="utf-8")
    argv = ["serve", "--config", str(config_path), "--host", "127.0.0.1"]
    assert main([*argv, "--port", str(server.port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{server.port}" in err
    assert "in use" in err
    assert "Traceback" not in err


@pytest.fixture
def receiver_config(small_config: RobustloopConfig) -> RobustloopConfig:
    small_config.webhook.auth = "none"
    return small_config


def test_the_receiver_on_a_busy_port_is_a_clear_error(
    server: RunningServer, receiver_config: RobustloopConfig
) -> None:
    app = create_receiver_app(receiver_config, registry=CollectorRegistry(), start_dispatcher=False)
    try:
        with pytest.raises(AddressInUse) as caught:
            ReceiverServer(app, "127.0.0.1", server.port)
        message = str(caught.value)
        assert f"127.0.0.1:{server.port}" in message
        assert "in use" in message and "--port" in message
    finally:
        with ReceiverServer(app) as receiver:  # the same app still serves on a free port
            assert requests.get(f"{receiver.url}/healthz", timeout=30).status_code == 200


def test_robustloop_webhook_on_a_busy_port_is_a_configuration_error(
    server: RunningServer, receiver_config: RobustloopConfig
) -> None:
    """``robustloop webhook`` prints ConfigurationError as one line and exits 2."""
    with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{server.port}: port .* in use"):
        serve_receiver(receiver_config, host="127.0.0.1", port=server.port)
