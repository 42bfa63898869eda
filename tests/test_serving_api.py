"""The model server's protocol: OIP v2 endpoints, feedback, metrics, and bad input.

An untrained model is enough here: these tests check what a client sees (status codes, bodies,
metric values), not what the model predicts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from serving import create_app, get_state
from serving.feedback import FeedbackMap
from tests.support import register_model
from training import ModelStore

MODEL = "fashion-cnn"
INFER = f"/v2/models/{MODEL}/infer"
FEEDBACK = f"/v2/models/{MODEL}/feedback"


@pytest.fixture
def config(small_config: RobustloopConfig) -> RobustloopConfig:
    small_config.serving.max_batch = 8
    small_config.serving.max_body_bytes = 64 * 1024
    small_config.serving.squeeze_fraction = 1.0
    return small_config


@pytest.fixture
def store(config: RobustloopConfig) -> ModelStore:
    return ModelStore(config.store.path)


@pytest.fixture
def version(store: ModelStore) -> str:
    return register_model(store, seed=0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(
    config: RobustloopConfig, store: ModelStore, version: str, registry: CollectorRegistry
) -> Iterator[Flask]:
    app = create_app(config, store=store, registry=registry, watch=False)
    yield app
    get_state(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def infer_body(x: torch.Tensor, datatype: str = "FP32", flat: bool = False) -> dict[str, Any]:
    shape = [x.shape[0], 784] if flat else list(x.shape)
    if datatype == "UINT8":
        data: list[Any] = (x * 255).round().to(torch.int64).reshape(-1).tolist()
    else:
        data = x.reshape(-1).tolist() if flat else x.tolist()
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}]}


def outputs(response: Any) -> dict[str, Any]:
    return {out["name"]: out for out in response.get_json()["outputs"]}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- health and metadata ------------------------------------------------------------------------


def test_health_and_metadata_name_the_served_version(
    client: FlaskClient, version: str, store: ModelStore
) -> None:
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get(f"/v2/models/{MODEL}")
    assert meta.status_code == 200
    body = meta.get_json()
    assert body["name"] == MODEL
    assert body["versions"] == [version]
    assert body["parameters"]["sha256"] == store.manifest(version).sha256
    assert client.get(f"/v2/models/{MODEL}/ready").get_json() == {"name": MODEL, "ready": True}


def test_unknown_model_is_404_with_the_served_name(client: FlaskClient) -> None:
    for response in (
        client.get("/v2/models/other"),
        client.post("/v2/models/other/infer", json=infer_body(images(1))),
    ):
        assert response.status_code == 404
        assert MODEL in response.get_json()["error"]


def test_empty_store_is_not_ready_until_a_version_is_promoted(
    config: RobustloopConfig, store: ModelStore
) -> None:
    app = create_app(config, store=store, registry=CollectorRegistry(), watch=False)
    client = app.test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    response = client.post(INFER, json=infer_body(images(1)))
    assert response.status_code == 503
    assert "no version loaded" in response.get_json()["error"]
    version = register_model(store, seed=1)
    assert get_state(app).watcher.check()
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(INFER, json=infer_body(images(1))).get_json()["model_version"] == version


# -- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize(("datatype", "flat"), [("FP32", False), ("FP32", True), ("UINT8", True)])
def test_infer_returns_probabilities_classes_and_one_id_per_image(
    client: FlaskClient, registry: CollectorRegistry, version: str, datatype: str, flat: bool
) -> None:
    response = client.post(INFER, json={**infer_body(images(3), datatype, flat), "id": "req-1"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model_name"] == MODEL
    assert body["model_version"] == version
    assert body["id"] == "req-1"
    out = outputs(response)
    probs = torch.tensor(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    assert probs.shape == (3, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    assert out["predicted_class"]["data"] == probs.argmax(dim=1).tolist()
    ids = out["sample_ids"]["data"]
    assert len(ids) == 3 and len(set(ids)) == 3
    labels = {"model": MODEL, "version": version}
    assert sample(registry, "robustloop_inference_samples_total", **labels) == 3
    assert sample(registry, "robustloop_prediction_entropy_count", **labels) == 3
    assert sample(registry, "robustloop_max_probability_count", **labels) == 3
    assert sample(registry, "robustloop_squeeze_score_count", **labels) == 3
    assert sample(registry, "robustloop_inference_requests_total", code="200", **labels) == 1
    assert sample(registry, "robustloop_request_duration_seconds_count", **labels) == 1


def test_uint8_and_fp32_encodings_of_one_image_agree(client: FlaskClient) -> None:
    x = (images(4) * 255).round() / 255
    as_float = outputs(client.post(INFER, json=infer_body(x)))
    as_bytes = outputs(client.post(INFER, json=infer_body(x, "UINT8", flat=True)))
    assert as_float["predicted_class"]["data"] == as_bytes["predicted_class"]["data"]
    assert as_float["probabilities"]["data"] == pytest.approx(
        as_bytes["probabilities"]["data"], abs=1e-5
    )


def test_model_info_names_version_and_hash(
    client: FlaskClient, registry: CollectorRegistry, store: ModelStore, version: str
) -> None:
    sha = store.manifest(version).sha256
    assert sample(registry, "robustloop_model_info", model=MODEL, version=version, sha256=sha) == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        f'robustloop_model_info{{model="{MODEL}",sha256="{sha}",version="{version}"}} 1.0' in text
    )
    assert f'robustloop_model_reload_failures_total{{model="{MODEL}"}} 0.0' in text


# -- feedback --------------------------------------------------------------------------------


def test_feedback_counts_correct_and_wrong_once_per_prediction(
    client: FlaskClient, registry: CollectorRegistry, version: str
) -> None:
    out = outputs(client.post(INFER, json=infer_body(images(4))))
    ids, predicted = out["sample_ids"]["data"], out["predicted_class"]["data"]
    labels = [predicted[0], predicted[1], (predicted[2] + 1) % 10, (predicted[3] + 1) % 10]
    response = client.post(FEEDBACK, json={"ids": ids, "labels": labels})
    assert response.status_code == 200
    assert response.get_json() == {"correct": 2, "wrong": 2, "unknown": 0}
    again = client.post(FEEDBACK, json={"ids": [ids[0], "never-issued"], "labels": [0, 0]})
    assert again.get_json() == {"correct": 0, "wrong": 0, "unknown": 2}
    common = {"model": MODEL, "version": version}
    assert sample(registry, "robustloop_feedback_total", outcome="correct", **common) == 2
    assert sample(registry, "robustloop_feedback_total", outcome="wrong", **common) == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"ids": ["a"]}, "'ids' and 'labels'"),
        ({"ids": ["a", "b"], "labels": [1]}, "2 entries"),
        ({"ids": ["ID"], "labels": [10]}, "integer class in [0, 9]"),
        ({"ids": ["ID"], "labels": ["3"]}, "integer class in [0, 9]"),
        ({"ids": ["ID"], "labels": [True]}, "integer class in [0, 9]"),
        ({"ids": [7], "labels": [1]}, "every id must be a string"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_feedback_is_400_and_consumes_nothing(
    client: FlaskClient, registry: CollectorRegistry, version: str, body: Any, fragment: str
) -> None:
    out = outputs(client.post(INFER, json=infer_body(images(1))))
    sample_id, predicted = out["sample_ids"]["data"][0], out["predicted_class"]["data"][0]
    # The bad request names a real pending id next to its garbage: it must not be consumed.
    text = json.dumps(body).replace('"ID"', json.dumps(sample_id))
    bad = client.post(FEEDBACK, data=text, content_type="application/json")
    assert bad.status_code == 400
    assert fragment in bad.get_json()["error"]
    good = client.post(FEEDBACK, json={"ids": [sample_id], "labels": [predicted]})
    assert good.get_json() == {"correct": 1, "wrong": 0, "unknown": 0}


def test_feedback_map_forgets_expired_and_oldest_entries() -> None:
    now = [0.0]
    pending = FeedbackMap(ttl_seconds=10.0, max_entries=3, clock=lambda: now[0])
    pending.add(["a", "b"], [1, 2], "v1")
    now[0] = 5.0
    pending.add(["c", "d"], [3, 4], "v1")  # over the bound: "a" goes
    assert pending.take("a") is None
    assert pending.take("b") is not None
    now[0] = 10.5  # "c" and "d" (added at 5) live until 15
    assert pending.take("c") is not None
    now[0] = 15.0
    assert pending.take("d") is None
    assert len(pending) == 0


# -- bad input -------------------------------------------------------------------------------


def _tensor(shape: Any, datatype: str, data: Any) -> str:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    )


GOOD_PIXELS = [0.5] * 784
BAD_INPUTS = [
    ("{not json", "malformed JSON"),
    ("", "empty request body"),
    ("[1, 2, 3]", "JSON object"),
    ('{"inputs": []}', "exactly one tensor"),
    ('{"inputs": [1]}', "must be an object"),
    ('{"id": 5, "inputs": []}', "'id' must be a string"),
    (json.dumps({"inputs": [{"shape": [1, 784], "data": GOOD_PIXELS}]}), "no 'datatype'"),
    (_tensor([1, 784], "INT32", GOOD_PIXELS), "datatype must be one of FP32, UINT8"),
    (_tensor([1, 28, 28], "FP32", GOOD_PIXELS), "shape must be [N, 1, 28, 28] or [N, 784]"),
    (_tensor([1, 3, 28, 28], "FP32", GOOD_PIXELS * 3), "shape must be"),
    (_tensor([1, 784.0], "FP32", GOOD_PIXELS), "shape must be"),
    (_tensor([2, 784], "FP32", GOOD_PIXELS), "holds 784 values but shape [2, 784] needs 1568"),
    (_tensor([0, 784], "FP32", []), "at least 1"),
    (_tensor([9, 784], "FP32", GOOD_PIXELS * 9), "over this server's limit of 8"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], 1.5]), "must be in [0, 1]"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], -0.01]), "must be in [0, 1]"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], math.nan]), "NaN"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], math.inf]), "is not JSON; send finite numbers"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], "0.5"]), "numbers only"),
    (_tensor([1, 784], "FP32", [*GOOD_PIXELS[:-1], None]), "numbers only"),
    (_tensor([1, 784], "FP32", [GOOD_PIXELS[:-1], [0.5]]), "ragged"),
    (_tensor([1, 784], "FP32", {"a": 1}), "must be a list"),
    (_tensor([1, 784], "UINT8", [0] * 783 + [256]), "must be in [0, 255]"),
    (_tensor([1, 784], "UINT8", [0] * 783 + [-1]), "must be in [0, 255]"),
    (_tensor([1, 784], "UINT8", GOOD_PIXELS), "UINT8 data must be integers"),
    (_tensor([1, 784], "UINT8", [0] * 783 + [10**30]), "numbers only"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_INPUTS)
def test_bad_input_is_400_with_a_clear_message_and_changes_nothing(
    client: FlaskClient, registry: CollectorRegistry, version: str, body: str, fragment: str
) -> None:
    response = client.post(INFER, data=body, content_type="application/json")
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]
    labels = {"model": MODEL, "version": version}
    assert sample(registry, "robustloop_inference_samples_total", **labels) == 0
    assert sample(registry, "robustloop_prediction_entropy_count", **labels) == 0
    assert sample(registry, "robustloop_inference_requests_total", code="400", **labels) == 1
    assert len(get_state(client.application).feedback) == 0


def test_body_over_the_limit_is_413(
    client: FlaskClient, registry: CollectorRegistry, version: str
) -> None:
    body = _tensor([8, 784], "FP32", [0.123456789] * (8 * 784))
    assert len(body) > 64 * 1024
    response = client.post(INFER, data=body, content_type="application/json")
    assert response.status_code == 413
    assert "over the limit of 65536 bytes" in response.get_json()["error"]
    labels = {"model": MODEL, "version": version}
    assert sample(registry, "robustloop_inference_requests_total", code="413", **labels) == 1
    assert sample(registry, "robustloop_inference_samples_total", **labels) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.text(max_size=3),
        "shape": st.one_of(
            st.lists(st.integers(-2, 10), max_size=4),
            st.sampled_from([[1, 784], [2, 784], [1, 1, 28, 28], [9, 784]]),
            json_values,
        ),
        "datatype": st.sampled_from(["FP32", "UINT8", "BYTES", "fp32", 7]),
        "data": st.one_of(
            json_values,
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=784, max_size=784),
            st.lists(st.integers(-300, 300), min_size=784, max_size=784),
        ),
    }
)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda t: json.dumps({"inputs": [t]}), tensors),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_garbage_never_gets_a_500(client: FlaskClient, body: str) -> None:
    response = client.post(INFER, data=body, content_type="application/json")
    assert response.status_code in (200, 400), (response.status_code, response.get_data()[:200])
    assert response.is_json
