"""Two replicas of the model server behind one address, as behind a Kubernetes Service.

Two real `robustloop serve` processes share one store and one signing key
(``serving.feedback_signing_key_file``); a small round-robin HTTP proxy, started here on
127.0.0.1, stands in for the Service and sends each request to the next replica in turn. Every
label fed back through it is counted exactly once, by one replica, and none is unknown, even
though each one reaches the replica that did not make the prediction.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from robustloop.config import RobustloopConfig, dump_config
from tests.support import Serve, register_model
from training import ModelStore

MODEL = "fashion-cnn"
FORWARDED = ("Content-Type", "Authorization")
ANSWERED = ("Content-Type", "Retry-After")


class RoundRobinProxy:
    """An HTTP proxy on 127.0.0.1 that sends each request to the next of ``backends``
    (``host:port``) in turn and records which one answered; a context manager that stops it."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.answered_by: list[tuple[str, int]] = []  # (path, backend index), in order
        turns = itertools.cycle(range(len(backends)))
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    turn = next(turns)
                    proxy.answered_by.append((self.path, turn))
                host, port = proxy.backends[turn].split(":")
                upstream = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    headers = {k: v for k in FORWARDED if (v := self.headers.get(k)) is not None}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name in ANSWERED:
                    if (value := answer.getheader(name)) is not None:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads answered_by, not a log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def replicas(small_config: RobustloopConfig, tmp_path: Path) -> Iterator[list[str]]:
    """Two `robustloop serve` processes on one store and one key: their URLs. Always stopped,
    and each must stop cleanly."""
    key = tmp_path / "signing-key"
    key.write_text("a-signing-key-both-replicas-hold-0123456789\n", encoding="utf-8")
    small_config.serving.feedback_signing_key_file = key
    config_path = tmp_path / "robustloop.yaml"
    config_path.write_text(dump_config(small_config), encoding="utf-8")
    register_model(ModelStore(small_config.store.path))
    servers = [Serve(config_path, "--port", "0") for _ in range(2)]
    try:
        yield [server.announced().group(3) for server in servers]
    finally:
        stopped = [server.stop() for server in servers]
    for code, stderr in stopped:
        assert code == 0, stderr


def _counted(url: str) -> dict[str, float]:
    """outcome -> labels this replica counted (all versions)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    counts = {"correct": 0.0, "wrong": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "robustloop_feedback_total":
                counts[sample.labels["outcome"]] += sample.value
    return counts


def test_every_label_is_counted_once_whichever_replica_it_reaches(replicas: list[str]) -> None:
    """GIVEN two replicas behind a round-robin proxy WHEN 9 infer requests of 2 images go
    through it, then the 9 feedback requests for them THEN every feedback request lands on the
    replica that did not predict, and yet each of the 18 labels is counted exactly once in
    total, as correct or wrong as it was sent, and none is unknown."""
    requests_sent = 9
    backends = [url.removeprefix("http://") for url in replicas]
    base = f"/v2/models/{MODEL}"
    with RoundRobinProxy(backends) as proxy:
        predictions = []
        for i in range(requests_sent):
            body = {
                "inputs": [
                    {"name": "x", "shape": [2, 784], "datatype": "UINT8", "data": [i] * 784 * 2}
                ]
            }
            answer = requests.post(f"{proxy.url}{base}/infer", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            predictions.append((outputs["sample_ids"], outputs["predicted_class"]))
        totals = {"correct": 0, "wrong": 0, "unknown": 0}
        for i, (ids, predicted) in enumerate(predictions):
            labels = predicted if i % 3 else [(c + 1) % 10 for c in predicted]
            answer = requests.post(
                f"{proxy.url}{base}/feedback", json={"ids": ids, "labels": labels}, timeout=60
            )
            assert answer.status_code == 200, answer.text
            for outcome, n in answer.json().items():
                totals[outcome] += n
        log = proxy.answered_by
    inferred_by = [turn for path, turn in log if path.endswith("/infer")]
    judged_by = [turn for path, turn in log if path.endswith("/feedback")]
    assert len(inferred_by) == len(judged_by) == requests_sent
    assert all(a != b for a, b in zip(inferred_by, judged_by, strict=True)), (
        "each label must reach the replica that did not predict"
    )
    wrong = 2 * len(range(0, requests_sent, 3))
    labels_sent = 2 * requests_sent
    assert totals == {"correct": labels_sent - wrong, "wrong": wrong, "unknown": 0}
    per_replica = [_counted(url) for url in replicas]
    assert all(sum(c.values()) > 0 for c in per_replica), "both replicas judged some"
    assert sum(c["correct"] for c in per_replica) == labels_sent - wrong
    assert sum(c["wrong"] for c in per_replica) == wrong
