"""The model server speaks OIP v2 as its clients do: Triton's own HTTP client (`tritonclient`),
with tensors as JSON and with the binary tensor data extension (its default), in both
directions; and the extension's malformed bodies are clear 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from serving import RunningServer, create_app, get_state
from tests.support import register_model
from training import FASHION_CLASSES, ModelStore

MODEL = "fashion-cnn"


@pytest.fixture
def server(small_config: RobustloopConfig) -> Iterator[tuple[RunningServer, torch.nn.Module]]:
    store = ModelStore(small_config.store.path)
    register_model(store)
    model, _ = store.load("production")
    app = create_app(small_config, registry=CollectorRegistry())
    try:
        with RunningServer(app) as running:
            yield running, model
    finally:
        get_state(app).close()


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_tritonclient_infers_with_json_and_binary_tensors(
    server: tuple[RunningServer, torch.nn.Module], binary_in: bool, binary_out: bool
) -> None:
    running, model = server
    images = _images()
    client = triton.InferenceServerClient(url=running.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary_in)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary_out)
            for name in ("probabilities", "predicted_class", "predicted_label", "sample_ids")
        ]
        result = client.infer(MODEL, [tensor], outputs=outputs)
    finally:
        client.close()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    predicted = result.as_numpy("predicted_class")
    assert predicted.tolist() == expected.argmax(axis=1).tolist()
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("predicted_label")]
    assert labels == [FASHION_CLASSES[i] for i in predicted]
    assert len(result.as_numpy("sample_ids")) == 3


def test_tritonclient_defaults_binary_everywhere_and_uint8_works(
    server: tuple[RunningServer, torch.nn.Module],
) -> None:
    running, _ = server
    pixels = (_images(2) * 255).astype(np.uint8)
    client = triton.InferenceServerClient(url=running.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)  # binary_data=True, the client's default
        result = client.infer(MODEL, [tensor])  # no outputs named: all, in binary form
    finally:
        client.close()
    assert result.as_numpy("probabilities").shape == (2, 10)
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 2 * 10 * 4


def _post(
    url: str, header: dict[str, object], binary: bytes, length: str | None
) -> requests.Response:
    body = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream"}
    headers["Inference-Header-Content-Length"] = length if length is not None else str(len(body))
    return requests.post(
        f"{url}/v2/models/{MODEL}/infer", data=body + binary, headers=headers, timeout=10
    )


@pytest.mark.parametrize(
    ("size", "binary", "length", "message"),
    [
        (784 * 4, b"\0" * 784 * 4, "abc", "must be a byte count"),
        (784 * 4, b"\0" * 784 * 4, "999999", "but the body holds"),
        (784 * 4, b"\0" * 100, None, "but 100 bytes follow"),
        (100, b"\0" * 100, None, "its shape needs 784 FP32 values"),
        ("x", b"\0" * 784 * 4, None, "binary_data_size must be a byte count"),
    ],
)
def test_malformed_binary_bodies_are_clear_400s(
    server: tuple[RunningServer, torch.nn.Module],
    size: object,
    binary: bytes,
    length: str | None,
    message: str,
) -> None:
    running, _ = server
    header = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    answer = _post(running.url, header, binary, length)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert requests.get(f"{running.url}/v2/health/ready", timeout=5).status_code == 200


def test_an_unknown_requested_output_is_a_400(
    server: tuple[RunningServer, torch.nn.Module],
) -> None:
    running, _ = server
    body = {
        "inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}],
        "outputs": [{"name": "logits"}],
    }
    answer = requests.post(f"{running.url}/v2/models/{MODEL}/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert "outputs[0] names 'logits'" in answer.json()["error"]
