"""With a real Prometheus at 1 s scrape and evaluation intervals, an alert fires ``for:`` after
its metric crosses the threshold, plus at most one scrape and one evaluation interval.

A tiny exporter (prometheus_client, on a free port) serves counters that are exact functions of
the wall clock: clean until the test switches them, bad after. The window value that the rules
compare therefore crosses its threshold at a known instant, computed from the switch time:

- canary accuracy over a window of W seconds, all answers right before the switch and all wrong
  after, is ``1 - (t - switch) / W``: below 0.6 from ``switch + 0.4 W``;
- mean entropy, 0.1 per image before and 0.9 after, exceeds 0.35 from ``switch + 0.3125 W``;
- mean squeeze score, 0.05 before and 1.05 after, exceeds 0.25 from ``switch + 0.2 W``.

Tolerance: the firing must be seen between ``for - 1 s`` and ``for + 1 s (scrape) + 1 s
(evaluation) + 0.5 s``. The 0.5 s covers what is not Prometheus: the 50 ms poll of
/api/v1/alerts, the HTTP round trip and scheduling on a loaded two-core machine. The lower bound
allows for the window's discretisation: Prometheus sees samples only at scrape instants, and a
window spanning 4 to 5 samples' intervals crosses up to 0.4 W / W = 0.4 s earlier than the
continuous one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from alert_rules import render_rules
from robustloop.config import CanaryAlert, RobustloopConfig, SignalAlert
from tests.conftest import free_port, running_prometheus

WINDOW, FOR, SCRAPE, EVAL, SLACK = 5.0, 3.0, 1.0, 1.0, 0.5
MODEL, VERSION = "fashion-cnn", "v0001-00000000"
RATE = 20.0  # images (and feedback) per second

pytestmark = pytest.mark.slow


class _SwitchableExporter(Collector):
    """Counters of a model server whose inputs turn bad at ``switch_at`` (wall clock)."""

    def __init__(self) -> None:
        self.start = time.time()
        self.switch_at: float | None = None
        self._lock = threading.Lock()

    def switch(self) -> float:
        with self._lock:
            self.switch_at = time.time()
            return self.switch_at

    def _split(self, now: float) -> tuple[float, float]:
        """Seconds of clean and of bad traffic so far."""
        with self._lock:
            at = self.switch_at
        if at is None or now < at:
            return now - self.start, 0.0
        return at - self.start, now - at

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        clean, bad = self._split(time.time())
        labels = {"model": MODEL, "version": VERSION}
        feedback = CounterMetricFamily(
            "robustloop_feedback", "ground truth", labels=["model", "version", "outcome"]
        )
        feedback.add_metric([MODEL, VERSION, "correct"], RATE * clean)
        feedback.add_metric([MODEL, VERSION, "wrong"], RATE * bad)
        yield feedback
        for name, before, after in (
            ("robustloop_prediction_entropy", 0.1, 0.9),
            ("robustloop_squeeze_score", 0.05, 1.05),
        ):
            family = HistogramMetricFamily(name, name, labels=list(labels))
            count = RATE * (clean + bad)
            family.add_metric(
                [MODEL, VERSION],
                buckets=[("+Inf", count)],
                sum_value=RATE * (before * clean + after * bad),
            )
            yield family


def _config() -> RobustloopConfig:
    cfg = RobustloopConfig()
    w, f = f"{WINDOW:g}s", f"{FOR:g}s"
    cfg.alerts.canary_accuracy = CanaryAlert(threshold=0.6, window=w, **{"for": f})
    cfg.alerts.entropy = SignalAlert(threshold=0.35, window=w, **{"for": f})
    cfg.alerts.squeeze = SignalAlert(threshold=0.25, window=w, **{"for": f})
    cfg.alerts.health.enabled = False  # no receiver here: only the detection alerts
    return cfg


CROSSING_FRACTION = {
    "CanaryAccuracyDegraded": 0.4,
    "PredictionEntropyShift": 0.3125,
    "AdversarialInputSuspected": 0.2,
    # both the canary and the squeeze conditions: the later of the two crossings
    "AdversarialAttackDetected": 0.4,
}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, _SwitchableExporter]]:
    """An exporter and a Prometheus scraping it, both on free ports; always stopped."""
    exporter = _SwitchableExporter()
    registry = CollectorRegistry()
    registry.register(exporter)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    (tmp_path / "rules.yaml").write_text(render_rules(_config()))
    config = yaml.safe_dump(
        {
            "global": {"scrape_interval": f"{SCRAPE:g}s", "evaluation_interval": f"{EVAL:g}s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": "exporter",
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
    )
    try:
        with running_prometheus(tmp_path, config) as url:
            yield url, exporter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _query(url: str, expr: str) -> list[dict[str, object]]:
    body = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=2).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_alerts_fire_for_plus_at_most_one_scrape_and_one_evaluation_after_the_crossing(
    prometheus: tuple[str, _SwitchableExporter],
) -> None:
    url, exporter = prometheus
    # GIVEN clean traffic long enough to fill every window, with the traffic guards satisfied
    deadline = time.time() + 30
    ready = (
        "model_version:robustloop_feedback:accuracy5s",
        "model_version:robustloop_feedback:rate5s > 10",
        "model_version:robustloop_squeeze_score:rate5s > 10",
    )
    while not all(_query(url, expr) for expr in ready):
        assert time.time() < deadline, "the recording rules never produced values"
        time.sleep(0.2)
    time.sleep(WINDOW + 1)
    assert requests.get(f"{url}/api/v1/alerts", timeout=2).json()["data"]["alerts"] == []

    # WHEN the inputs turn bad
    switched = exporter.switch()
    fired: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    while len(fired) < len(CROSSING_FRACTION) and time.time() < switched + 30:
        for alert in requests.get(f"{url}/api/v1/alerts", timeout=2).json()["data"]["alerts"]:
            name = alert["labels"]["alertname"]
            if alert["state"] == "firing" and name not in fired:
                fired[name] = time.time()
                labels[name] = alert["labels"]
        time.sleep(0.05)

    # THEN each fires for: after its crossing, plus at most a scrape and an evaluation interval
    assert set(fired) == set(CROSSING_FRACTION), f"fired: {sorted(fired)}"
    report = []
    for name, fraction in CROSSING_FRACTION.items():
        crossing = switched + fraction * WINDOW
        latency = fired[name] - crossing
        report.append(f"{name}: {latency:.2f}s")
        assert FOR - SCRAPE <= latency <= FOR + SCRAPE + EVAL + SLACK, report
        assert labels[name]["model"] == MODEL and labels[name]["version"] == VERSION
    print("crossing -> firing:", ", ".join(report))
