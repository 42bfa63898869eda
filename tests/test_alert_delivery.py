"""An attack shorter than Alertmanager's grouping delay still reaches the receiver.

Alertmanager notifies a new group ``group_wait`` after its first alert, and a group that
exists at its next ``group_interval`` tick; an alert that has resolved by then is never sent.
Remediating alerts therefore keep firing for the longer of the two after their condition clears
(the rules' ``keep_firing_for``). Here the whole path is real: a tiny exporter (on a free port)
serves the squeeze score of a two-second burst of adversarial inputs; the Debian Prometheus
evaluates the rules robustloop renders; the Debian Alertmanager runs the config robustloop
renders (``group_wait`` 8 s, longer than the burst's condition holds); the receiver submits to
the Argo Server stand-in. The workflow must be submitted, although the squeeze condition held
for less than ``group_wait``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from alert_rules import render_rules
from alert_rules.render import render_alertmanager
from robustloop.config import RobustloopConfig, SignalAlert, duration_seconds
from tests.argo_standin import ArgoStandIn
from tests.conftest import ALERTMANAGER, free_port, running_alertmanager, running_prometheus
from tests.webhook_support import TOKEN, RunningReceiver, wait_for

WINDOW, BURST, GROUP_WAIT = 5.0, 2.0, "8s"
RATE = 20.0
ALERT = "AdversarialInputSuspected"
CONDITION = "model_version:robustloop_squeeze_score:mean5s > 0.25"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(ALERTMANAGER).exists(),
        reason="prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)",
    ),
]


class _BurstExporter(Collector):
    """The squeeze score of a model server: 0.05 per image, 1.05 during a burst."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = [model, version]
        self.start = time.time()
        self.burst: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def attack_for(self, seconds: float) -> float:
        with self._lock:
            now = time.time()
            self.burst = (now, now + seconds)
            return now

    def collect(self) -> Iterator[HistogramMetricFamily]:
        now = time.time()
        with self._lock:
            burst = self.burst
        bad = 0.0 if burst is None else max(0.0, min(now, burst[1]) - burst[0])
        total = now - self.start
        family = HistogramMetricFamily(
            "robustloop_squeeze_score", "squeeze", labels=["model", "version"]
        )
        family.add_metric(
            self.labels,
            buckets=[("+Inf", RATE * total)],
            sum_value=RATE * (0.05 * (total - bad) + 1.05 * bad),
        )
        yield family


def _alerts_config(cfg: RobustloopConfig) -> RobustloopConfig:
    """Only the squeeze alert (remediating), on a short window; Alertmanager waits 8 s."""
    cfg.alerts.canary_accuracy.enabled = False
    cfg.alerts.entropy.enabled = False
    cfg.alerts.squeeze = SignalAlert(
        threshold=0.25, window=f"{WINDOW:g}s", remediate=True, **{"for": "1s"}
    )
    cfg.alerts.health.enabled = False
    cfg.alerts.group_wait = GROUP_WAIT
    cfg.alerts.group_interval = GROUP_WAIT
    return cfg


def _alertmanager_config(folder: Path, cfg: RobustloopConfig, receiver_url: str) -> str:
    """robustloop's own Alertmanager config, delivering to ``receiver_url`` with the token."""
    token_file = folder / "am-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    return render_alertmanager(
        cfg, receiver_url=f"{receiver_url}/api/v1/alerts", credentials_file=str(token_file)
    )


def _prometheus_config(alertmanager_url: str, exporter_port: int) -> str:
    """Scrape the exporter and evaluate rules.yaml every second; alert to the Alertmanager."""
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": "serving",
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
    )


def _query(url: str, expr: str, **params: float) -> list[dict[str, object]]:
    path = "query_range" if params else "query"
    body = requests.get(f"{url}/api/v1/{path}", params={"query": expr, **params}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_an_attack_shorter_than_the_group_wait_reaches_the_receiver(
    tmp_path: Path,
    webhook_config: RobustloopConfig,
    start_receiver: Callable[..., RunningReceiver],
    argo: ArgoStandIn,
) -> None:
    cfg = _alerts_config(webhook_config)
    rules = render_rules(cfg)
    kept = [r for g in yaml.safe_load(rules)["groups"] for r in g["rules"] if r.get("alert")]
    assert [(r["alert"], r.get("keep_firing_for")) for r in kept] == [(ALERT, GROUP_WAIT)]

    receiver = start_receiver(cfg)
    am_config = _alertmanager_config(tmp_path, cfg, receiver.url)
    exporter = _BurstExporter(cfg.model.name, "v0001-00000000")
    registry = CollectorRegistry()
    registry.register(exporter)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    (tmp_path / "rules.yaml").write_text(rules, encoding="utf-8")
    try:
        with (
            running_alertmanager(tmp_path, am_config) as am,
            running_prometheus(tmp_path, _prometheus_config(am, exporter_port)) as url,
        ):
            # GIVEN clean traffic that fills the window, and no alert
            wait_for(
                lambda: _query(url, "model_version:robustloop_squeeze_score:rate5s > 10"),
                timeout=30,
                what="the recording rules to have values",
            )
            time.sleep(WINDOW + 1)
            assert requests.get(f"{url}/api/v1/alerts", timeout=2).json()["data"]["alerts"] == []

            # WHEN two seconds of adversarial inputs raise the squeeze score
            began = exporter.attack_for(BURST)

            # THEN the remediation starts, through Alertmanager's first notification
            wait_for(lambda: len(argo.created()) == 1, timeout=40, what="a submitted workflow")
            # ... although the squeeze condition held for less than group_wait: without
            # keep_firing_for the alert would have resolved before Alertmanager sent it
            end = time.time()
            (series,) = _query(url, CONDITION, start=began, end=end, step=1.0)
            held = len(series["values"])  # type: ignore[arg-type]
            assert 1 <= held < duration_seconds(GROUP_WAIT), held
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
