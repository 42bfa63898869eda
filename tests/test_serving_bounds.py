"""What one client may cost the model server: pending predictions, feedback labels, memory.

A client flooding infer must not evict the canary's pending predictions; a client holding the
feedback credential must not move canary accuracy faster than its rate; a request's memory is
bounded by the largest legal request, not by its body's size, measured as the peak RSS of a
real `robustloop serve` under 8 concurrent maximal requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig, dump_config
from serving._decode import infer_bounds
from serving.feedback import FeedbackMap, RateLimiter
from tests.support import Serve, register_model
from training import ModelStore

MODEL = "fashion-cnn"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_flooding_infer_evicts_its_own_predictions_not_the_canarys() -> None:
    pending = FeedbackMap(ttl_seconds=600, max_entries=100, clock=FakeClock())
    pending.add([f"canary-{i}" for i in range(20)], [1] * 20, "v1", client="10.0.0.1")
    for batch in range(50):  # 5,000 predictions from one address, in batches of 100
        ids = [f"flood-{batch}-{i}" for i in range(100)]
        pending.add(ids, [0] * 100, "v1", client="10.0.0.66")
    assert len(pending) == 100
    assert pending.held_by("10.0.0.1") == 20
    assert pending.held_by("10.0.0.66") == 80
    assert pending.take("canary-0") is not None and pending.take("flood-0-0") is None
    assert pending.take("flood-49-99") is not None  # the flooder keeps its newest


def test_eviction_evens_out_the_largest_holders_and_expiry_still_applies() -> None:
    clock = FakeClock()
    pending = FeedbackMap(ttl_seconds=60, max_entries=10, clock=clock)
    pending.add([f"a{i}" for i in range(6)], [0] * 6, "v1", client="a")
    pending.add([f"b{i}" for i in range(4)], [0] * 4, "v1", client="b")
    pending.add(["c0", "c1"], [0, 0], "v1", client="c")
    assert (pending.held_by("a"), pending.held_by("b"), pending.held_by("c")) == (4, 4, 2)
    assert pending.take("a0") is None and pending.take("a2") is not None
    clock.now += 61
    pending.add(["d0"], [0], "v1", client="d")
    assert len(pending) == 1 and pending.held_by("a") == 0


def test_the_rate_limiter_allows_a_burst_then_the_rate_per_client() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=50, clock=clock)
    assert limiter.take("x", 50) == 0.0
    assert limiter.take("x", 5) == pytest.approx(0.5)  # nothing taken: it waits for 5 tokens
    assert limiter.take("y", 50) == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("x", 5) == 0.0
    assert limiter.take("x", 51) == float("inf")  # more than a bucket holds never fits
    clock.now += 100
    assert limiter.take("x", 50) == 0.0  # refilled to the burst, not beyond
    assert limiter.take("x", 1) > 0


@pytest.fixture
def limited_server(small_config: RobustloopConfig) -> Iterator[str]:
    from serving import RunningServer, create_app, get_state

    small_config.serving.feedback_rate_per_client = 1.0
    small_config.serving.feedback_burst_per_client = 8
    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    try:
        with RunningServer(app) as server:
            yield server.url
    finally:
        get_state(app).close()


def _infer_ids(base: str, n: int) -> list[str]:
    body = {
        "inputs": [{"name": "x", "shape": [n, 784], "datatype": "UINT8", "data": [0] * 784 * n}]
    }
    outputs = requests.post(f"{base}/infer", json=body, timeout=30).json()["outputs"]
    (ids,) = [o["data"] for o in outputs if o["name"] == "sample_ids"]
    return list(ids)


def _feedback_counted(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("robustloop_feedback_total{")
    )


def test_feedback_over_the_clients_rate_is_a_429_with_retry_after_and_counts_nothing(
    limited_server: str,
) -> None:
    base = f"{limited_server}/v2/models/{MODEL}"
    ids = _infer_ids(base, 12)
    first = requests.post(f"{base}/feedback", json={"ids": ids[:8], "labels": [0] * 8}, timeout=10)
    assert first.status_code == 200 and sum(first.json().values()) == 8
    second = requests.post(f"{base}/feedback", json={"ids": ids[8:], "labels": [0] * 4}, timeout=10)
    assert second.status_code == 429, second.text
    assert "serving.feedback_rate_per_client" in second.json()["error"]
    assert int(second.headers["Retry-After"]) >= 1
    assert _feedback_counted(limited_server) == 8
    too_many = {"ids": [*ids[:9], "x"], "labels": [0] * 10}  # more than one bucket holds
    answer = requests.post(f"{base}/feedback", json=too_many, timeout=10)
    assert answer.status_code == 400 and "at most 8" in answer.json()["error"]


def test_a_body_with_more_values_than_the_largest_legal_batch_is_refused_before_parsing(
    served_model: str,
) -> None:
    """Two bytes of `0,` cost about 32 bytes once parsed; the server counts before it parses."""
    base = f"{served_model}/v2/models/{MODEL}"
    values = 256 * 784 + 2048  # one batch of max_batch images, and then some
    data = "[" + ",".join(["0"] * values) + "]"
    body = '{"inputs":[{"name":"x","shape":[256,784],"datatype":"UINT8","data":' + data + "}]}"
    answer = requests.post(
        f"{base}/infer", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status_code == 413, answer.text
    assert "largest legal request" in answer.json()["error"]


def test_a_body_over_the_largest_legal_batch_is_a_413_below_max_body_bytes(
    served_model: str,
) -> None:
    base = f"{served_model}/v2/models/{MODEL}"
    body = b'{"inputs": []}' + b" " * (6 * 1024 * 1024)  # legal JSON, 6 MB of whitespace
    answer = requests.post(
        f"{base}/infer", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status_code == 413 and "over the limit of" in answer.json()["error"]


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


CHART_MEMORY_LIMIT_MIB = 2048
"""The chart's server container limit (helm/robustloop/values.yaml, server.resources)."""


def test_eight_concurrent_maximal_requests_stay_far_below_the_charts_memory_limit(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    """A real `robustloop serve` with its default limits and 8 request threads gets 8 hostile
    bodies as large as it accepts, made of `0,` (the most values per byte), at once: they may
    cost no more than three times their bytes. Then 8 legal maximal batches (256 images as FP32
    JSON) and 8 hostile bodies at once: the peak RSS must stay under three quarters of the
    chart's limit. Measured on a 2-core Xeon: 600 MiB at rest, 1.0 GiB at peak; when 16 MiB hostile
    bodies were parsed before their values were counted, 1.7 GiB."""
    register_model(ModelStore(small_config.store.path))
    config = tmp_path / "robustloop.yaml"
    config.write_text(dump_config(small_config), encoding="utf-8")
    server = Serve(config, "--port", "0")
    try:
        url = server.announced().group(3)
        base = f"{url}/v2/models/{MODEL}"
        rng = np.random.default_rng(0)
        pixels = rng.random((256, 784), dtype=np.float32).tolist()
        legal = json.dumps(
            {"inputs": [{"name": "x", "shape": [256, 784], "datatype": "FP32", "data": pixels}]}
        ).encode()
        limit = infer_bounds(small_config.serving.max_body_bytes, 256, (1, 28, 28)).max_bytes
        head = b'{"inputs":[{"name":"x","shape":[256,784],"datatype":"UINT8","data":['
        hostile = head + b"0," * ((limit - len(head)) // 2 - 8) + b"0]}]}"
        assert len(hostile) <= limit
        warm = requests.post(f"{base}/infer", data=legal, timeout=60)
        assert warm.status_code == 200, warm.text
        before = _rss_kib(server.proc.pid, "VmHWM")

        def send(body: bytes) -> int:
            headers = {"Content-Type": "application/json"}
            return requests.post(
                f"{base}/infer", data=body, headers=headers, timeout=120
            ).status_code

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(send, [hostile] * 8)) == [413] * 8
            hostile_peak = _rss_kib(server.proc.pid, "VmHWM")
            codes = list(pool.map(send, [legal, hostile] * 8))
        peak = _rss_kib(server.proc.pid, "VmHWM")
        assert codes.count(200) == 8 and codes.count(413) == 8, codes
        print(
            f"server peak RSS: {before / 1024:.0f} MiB after warm-up, "
            f"{hostile_peak / 1024:.0f} MiB after 8 hostile bodies, {peak / 1024:.0f} MiB "
            "after 8 legal and 8 hostile"
        )
        assert (hostile_peak - before) / 1024 < 8 * 3 * limit / 2**20
        assert peak / 1024 < CHART_MEMORY_LIMIT_MIB * 3 / 4
    finally:
        server.stop()
