"""Hot reload: a version promoted mid-traffic is served with zero failed requests; a version
whose weights fail verification is refused and the old one keeps serving."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from serving import RunningServer, create_app, get_state
from serving.traffic import TrafficOptions, TrafficSummary, run_traffic
from tests.support import register_model
from training import ModelStore

MODEL = "fashion-cnn"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def test_promotion_mid_traffic_switches_version_with_zero_failed_requests(
    small_config: RobustloopConfig,
) -> None:
    # GIVEN a server of v1 and an adaptive FGSM client streaming requests at it
    small_config.serving.reload_interval_seconds = 0.1
    store = ModelStore(small_config.store.path)
    v1 = register_model(store, seed=1)
    v2 = register_model(store, seed=2)
    registry = CollectorRegistry()

    def samples(version: str) -> float:
        value = registry.get_sample_value(
            "robustloop_inference_samples_total", {"model": MODEL, "version": version}
        )
        return value or 0.0

    app = create_app(small_config, store=store, registry=registry)
    stop = threading.Event()
    result: list[TrafficSummary] = []
    log = io.StringIO()
    try:
        with RunningServer(app) as server:
            options = TrafficOptions(
                url=server.url, rate=40, duration=300, mode="fgsm", feedback_fraction=0.5
            )
            client = threading.Thread(
                target=lambda: result.append(
                    run_traffic(small_config, options, log, store=store, stop=stop)
                )
            )
            client.start()
            try:
                wait_for(lambda: samples(v1) >= 20, "20 requests served by v1")
                # WHEN v2 is promoted while requests keep coming
                store.promote(v2)
                wait_for(lambda: samples(v2) >= 20, "20 requests served by v2")
            finally:
                stop.set()
                client.join()
            metadata = requests.get(f"{server.url}/v2/models/{MODEL}", timeout=5).json()
    finally:
        get_state(app).close()

    # THEN no request failed, the client saw v1 then v2, and the metrics switched version
    summary = result[0]
    assert summary.errors == 0
    assert summary.sent == summary.images > 40
    assert summary.versions == [v1, v2]
    assert metadata["versions"] == [v2]
    codes = {
        s.labels["code"]
        for metric in registry.collect()
        if metric.name == "robustloop_inference_requests"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert codes == {"200"}
    info = {
        s.labels["version"]: s.value
        for metric in registry.collect()
        if metric.name == "robustloop_model_info"
        for s in metric.samples
    }
    assert info == {v2: 1.0}, "model_info must name only the version now served"


def test_tampered_version_is_refused_and_the_old_one_keeps_serving(
    small_config: RobustloopConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a server of v1, and v2 promoted but then modified on disk
    store = ModelStore(small_config.store.path)
    v1 = register_model(store, seed=1)
    v2 = register_model(store, seed=2)
    registry = CollectorRegistry()
    app = create_app(small_config, store=store, registry=registry, watch=False)
    watcher = get_state(app).watcher
    store.promote(v2)
    weights = store.versions_dir / v2 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    # WHEN the server looks at the production pointer
    with caplog.at_level(logging.ERROR, logger="serving.reload"):
        swapped = watcher.check()

    # THEN it refuses v2, says why, counts the failure and keeps answering with v1
    assert not swapped
    assert watcher.current is not None and watcher.current.version == v1
    assert any(
        v2 in r.getMessage() and "TamperedModelError" in r.getMessage() for r in caplog.records
    )
    failures = registry.get_sample_value("robustloop_model_reload_failures_total", {"model": MODEL})
    assert failures == 1.0
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
    response = app.test_client().post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200
    assert response.get_json()["model_version"] == v1

    # AND once the file is restored, the next look after the back-off serves v2
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    wait_for(watcher.check, "v2 to load after the back-off", timeout=10)
    assert watcher.current is not None and watcher.current.version == v2
    get_state(app).close()
