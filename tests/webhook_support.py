"""Fixtures and helpers of the webhook receiver's tests (loaded by tests/conftest.py).

The receiver runs for real: its Flask app served by Werkzeug on 127.0.0.1 (a free port), its
dispatcher thread, its SQLite outbox under ``tmp_path``; the Argo Server is
:class:`tests.argo_standin.ArgoStandIn`. Payloads start from the ones captured from a real
Alertmanager (``tests/fixtures/alertmanager_*.json``, see ``test_webhook_alertmanager.py``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn, self_signed_certificate
from webhook import ReceiverServer, create_app
from webhook.app import receiver_of

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKEN = "test-token-5f1c9a"
ARGO_TOKEN = "argo-sa-token-77"


def load_fixture(name: str) -> dict[str, Any]:
    """A captured Alertmanager payload (a fresh copy)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def firing_payload(
    fingerprint: str = "a1b2c3d4e5f60718",
    starts_at: datetime | None = None,
    labels: dict[str, str] | None = None,
    status: str = "firing",
) -> dict[str, Any]:
    """The captured firing payload with one alert whose identity the test chooses."""
    payload = load_fixture("alertmanager_firing.json")
    alert = copy.deepcopy(payload["alerts"][0])
    start = starts_at or datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    alert["fingerprint"] = fingerprint
    alert["startsAt"] = start.isoformat().replace("+00:00", "Z")
    alert["status"] = status
    if status == "resolved":
        alert["endsAt"] = (start + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    else:
        alert["endsAt"] = "0001-01-01T00:00:00Z"
    if labels is not None:
        alert["labels"] = {**alert["labels"], **labels}
    payload["alerts"] = [alert]
    payload["status"] = status
    return payload


def post(url: str, payload: Any, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
    """POST a payload (a dict is sent as JSON, bytes as they are) to the alerts endpoint."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return requests.post(f"{url}/api/v1/alerts", data=data, headers=headers, timeout=10, **kwargs)


def get(url: str, path: str, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{url}{path}", headers=headers, timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def remediation(url: str, incident: str) -> dict[str, Any]:
    response = get(url, f"/api/v1/remediations/{incident}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


@pytest.fixture
def argo(schemas: Path) -> Iterator[ArgoStandIn]:
    """The Argo Server stand-in, validating against the shared Argo schema and Hera."""
    with ArgoStandIn(schemas / "argo-workflows" / "schema.json", token=ARGO_TOKEN) as standin:
        yield standin
    assert standin.invalid == [], "the receiver sent bodies Argo would reject"
    assert standin.errors == [], "the Argo stand-in failed"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM)."""
    try:
        return self_signed_certificate(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(f"cannot make a certificate: {exc}")


@pytest.fixture
def argo_tls(schemas: Path, certificate: tuple[Path, Path]) -> Iterator[ArgoStandIn]:
    """The Argo stand-in serving HTTPS with the self-signed certificate."""
    schema = schemas / "argo-workflows" / "schema.json"
    with ArgoStandIn(schema, token=ARGO_TOKEN, tls=certificate) as standin:
        yield standin
    assert standin.invalid == [], "the client sent requests Argo would reject"
    assert standin.errors == [], "the Argo stand-in failed"


@pytest.fixture
def webhook_config(
    small_config: RobustloopConfig, tmp_path: Path, argo: ArgoStandIn
) -> RobustloopConfig:
    """A config for a receiver with a token, submitting to the stand-in, with fast timings."""
    token_file = tmp_path / "webhook-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    argo_token = tmp_path / "argo-token"
    argo_token.write_text(ARGO_TOKEN, encoding="utf-8")
    cfg = small_config
    cfg.webhook.token_file = token_file
    cfg.webhook.poll_seconds = 0.05
    cfg.webhook.backoff_initial_seconds = 0.05
    cfg.webhook.backoff_max_seconds = 0.2
    cfg.webhook.submit_timeout_seconds = 1.0
    cfg.submitter.kind = "argo"
    cfg.submitter.argo.host = argo.url
    cfg.submitter.argo.token_file = argo_token
    cfg.submitter.argo.verify_tls = False
    return cfg


class RunningReceiver:
    """A receiver served for a test: its URL, its registry, its outbox."""

    def __init__(
        self,
        config: RobustloopConfig,
        start_dispatcher: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.app = create_app(
            config, registry=self.registry, start_dispatcher=start_dispatcher, clock=clock
        )
        self.server = ReceiverServer(self.app).start()
        self.url = self.server.url
        self.receiver = receiver_of(self.app)
        self.outbox = self.receiver.outbox

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def start_receiver() -> Iterator[Callable[..., RunningReceiver]]:
    """Start receivers from configs; every one is stopped after the test."""
    started: list[RunningReceiver] = []

    def start(
        config: RobustloopConfig,
        start_dispatcher: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> RunningReceiver:
        running = RunningReceiver(config, start_dispatcher, clock)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def receiver(
    webhook_config: RobustloopConfig, start_receiver: Callable[..., RunningReceiver]
) -> RunningReceiver:
    """A receiver on a free port, submitting to the Argo stand-in."""
    return start_receiver(webhook_config)
