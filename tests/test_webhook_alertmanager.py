"""Must show 11: a real Alertmanager (the Debian binary) delivers a real alert to the receiver.

Alertmanager runs on free ports with clustering off and a private storage folder, configured
with a webhook receiver that reads the bearer token from ``credentials_file``. An alert posted to
its ``/api/v2/alerts`` reaches the receiver with the token, opens an incident and starts exactly
one workflow; resolving it delivers a resolved notification that starts nothing.

The payloads are compared with the fixtures under ``tests/fixtures/`` that the other tests use,
so that those stay what Alertmanager really sends. ``ROBUSTLOOP_CAPTURE_FIXTURES=1`` rewrites the
fixtures from this run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn
from tests.conftest import ALERTMANAGER, running_alertmanager
from tests.webhook_support import FIXTURES, TOKEN, remediation, wait_for
from webhook import ReceiverServer, create_app
from webhook.models import WebhookPayload

pytestmark = pytest.mark.skipif(
    not Path(ALERTMANAGER).exists(),
    reason="prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)",
)


class Capture:
    """WSGI middleware keeping a copy of every body and Authorization header it passes on."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.seen: list[tuple[str | None, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if environ.get("PATH_INFO") == "/api/v1/alerts":
            with self.lock:
                self.seen.append((environ.get("HTTP_AUTHORIZATION"), body))
        return self.app(environ, start_response)

    def payloads(self, status: str) -> list[tuple[str | None, dict[str, Any]]]:
        with self.lock:
            seen = list(self.seen)
        decoded = [(auth, json.loads(body)) for auth, body in seen]
        return [(auth, payload) for auth, payload in decoded if payload.get("status") == status]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start Alertmanager pointing at a receiver URL; returns its base URL. Always stopped."""
    with contextlib.ExitStack() as running:

        def start(receiver_url: str) -> str:
            token_file = tmp_path / "am-token"
            token_file.write_text(TOKEN + "\n", encoding="utf-8")
            config = {
                "route": {
                    "receiver": "robustloop",
                    "group_by": ["alertname", "model"],
                    "group_wait": "0s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "robustloop",
                        "webhook_configs": [
                            {
                                "url": f"{receiver_url}/api/v1/alerts",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials_file": str(token_file),
                                    }
                                },
                            }
                        ],
                    }
                ],
            }
            return running.enter_context(running_alertmanager(tmp_path, yaml.safe_dump(config)))

        yield start


def _shape(value: Any) -> Any:
    """The keys and value types of a JSON document (what must not drift), not its values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _check_fixture(name: str, live: dict[str, Any]) -> None:
    path = FIXTURES / name
    if os.environ.get("ROBUSTLOOP_CAPTURE_FIXTURES") == "1":
        path.write_text(json.dumps(live, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    stored = json.loads(path.read_text(encoding="utf-8"))
    top = {k for k in live if k not in ("alerts",)}
    assert _shape({k: live[k] for k in top}) == _shape({k: stored[k] for k in top})
    assert _shape(live["alerts"][0]) == _shape(stored["alerts"][0])
    assert sorted(live["alerts"][0]["labels"]) == sorted(stored["alerts"][0]["labels"])


def test_real_alertmanager_delivers_with_the_bearer_token(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    alertmanager: Callable[[str], str],
) -> None:
    # GIVEN a receiver (capturing what it is sent) and Alertmanager pointing at it
    app = create_app(webhook_config, registry=CollectorRegistry())
    capture = Capture(app.wsgi_app)
    app.wsgi_app = capture  # type: ignore[method-assign]
    server = ReceiverServer(app).start()
    try:
        am = alertmanager(server.url)
        starts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        alert = {
            "labels": {
                "alertname": "CanaryAccuracyLow",
                "model": "fashion-cnn",
                "version": "v0001",
                "severity": "critical",
                "remediation": "adversarial-training",
            },
            "annotations": {
                "summary": "Canary accuracy of fashion-cnn fell below 0.6",
                "description": "Labelled canary accuracy over 30s is 0.12.",
                "runbook_url": "https://example.invalid/RUNBOOK.md#canaryaccuracylow",
            },
            "startsAt": starts.isoformat().replace("+00:00", "Z"),
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=robustloop",
        }

        # WHEN an alert is posted to Alertmanager's API
        answer = requests.post(f"{am}/api/v2/alerts", json=[alert], timeout=10)
        assert answer.status_code == 200, answer.text

        # THEN Alertmanager delivers it with the bearer token, and it starts one workflow
        firing = wait_for(lambda: capture.payloads("firing"), what="a firing delivery")
        auth, payload = firing[0]
        assert auth == f"Bearer {TOKEN}"
        parsed = WebhookPayload.model_validate(payload)
        assert parsed.version == "4" and parsed.alerts[0].labels["alertname"] == "CanaryAccuracyLow"
        incident = parsed.alerts[0].incident_id
        wait_for(
            lambda: remediation(server.url, incident)["state"] == "submitted",
            what="the workflow to be submitted",
        )
        assert len(argo.created()) == 1
        _check_fixture("alertmanager_firing.json", payload)

        # WHEN the alert ends
        ended = {**alert, "endsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        answer = requests.post(f"{am}/api/v2/alerts", json=[ended], timeout=10)
        assert answer.status_code == 200, answer.text

        # THEN a resolved notification arrives, is recorded, and starts nothing
        resolved = wait_for(lambda: capture.payloads("resolved"), what="a resolved delivery")
        auth, payload = resolved[0]
        assert auth == f"Bearer {TOKEN}"
        assert WebhookPayload.model_validate(payload).alerts[0].incident_id == incident
        wait_for(lambda: remediation(server.url, incident)["resolved_at"] is not None)
        assert len(argo.created()) == 1
        _check_fixture("alertmanager_resolved.json", payload)
    finally:
        server.stop()
