"""The receiver's dry run (``POST /api/v1/alerts?dry_run=true``): authenticated, validated and
decided as a delivery would be, answered with that decision, and nothing recorded or submitted.

A real receiver on a free port, its real outbox, and the Argo stand-in as the submitter: every
test reads the outbox and the stand-in's calls afterwards, and a later real delivery of the same
payload shows that the dry run left no trace (it is new) and predicted what happens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn
from tests.webhook_support import (
    TOKEN,
    RunningReceiver,
    firing_payload,
    metric,
    post,
    remediation,
    wait_for,
)
from webhook.models import incident_id
from workflows.contract import workflow_name_for

FINGERPRINT = "0123456789abcdef"
FIRST = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
MODEL = "fashion-cnn"
DRY = {"dry_run": "true"}


def _outbox_rows(running: RunningReceiver) -> tuple[int, int]:
    """(incidents, events) in the outbox file, read through a connection of its own."""
    with sqlite3.connect(running.config.webhook.db_path) as conn:
        incidents = conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return int(incidents), int(events)


def _after_a_dispatcher_pass(running: RunningReceiver) -> None:
    """Wait until the dispatcher completed a pass that began after this call."""
    name = "robustloop_webhook_dispatcher_heartbeat_timestamp_seconds"
    before = metric(running.registry, name)
    wait_for(lambda: metric(running.registry, name) > before, what="a dispatcher pass")
    again = metric(running.registry, name)
    wait_for(lambda: metric(running.registry, name) > again, what="a second dispatcher pass")


def _alerts_counted(running: RunningReceiver) -> float:
    return sum(
        metric(running.registry, "robustloop_webhook_alerts_total", status=s, outcome=o)
        for s in ("firing", "resolved")
        for o in ("new", "duplicate")
    )


def _dry(url: str, payload: dict[str, Any], token: str | None = TOKEN) -> Any:
    return post(url, payload, token=token, params=DRY)


def test_a_dry_run_decides_and_records_nothing_and_submits_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    # GIVEN a receiver with an empty outbox
    incident = incident_id(FINGERPRINT, FIRST)
    payload = firing_payload(FINGERPRINT, FIRST)
    assert _outbox_rows(receiver) == (0, 0)

    # WHEN an authenticated remediating alert is posted as a dry run
    response = _dry(receiver.url, payload)

    # THEN the answer is the decision a delivery would get: which model, submit, which workflow
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "dry-run" and body["recorded"] is False
    (decided,) = body["alerts"]
    assert decided["incident"] == incident
    assert decided["model"] == MODEL
    assert decided["decision"] == "submit"
    assert decided["state"] == "submitting"
    assert decided["workflow"] == workflow_name_for(incident, MODEL)
    assert decided["duplicate"] is False
    assert "submitting workflow" in decided["reason"]
    # ... and nothing is in the outbox, counted, or submitted, even after the dispatcher passed
    _after_a_dispatcher_pass(receiver)
    assert _outbox_rows(receiver) == (0, 0)
    assert argo.calls == []
    assert _alerts_counted(receiver) == 0
    assert metric(receiver.registry, "robustloop_webhook_requests_total", code="200") == 1

    # WHEN the same payload is then delivered for real
    real = post(receiver.url, payload)

    # THEN it is new (the dry run left no trace) and runs the workflow the dry run named
    assert real.status_code == 200
    assert real.json()["alerts"][0]["duplicate"] is False
    wait_for(lambda: argo.created(), what="the real submission")
    assert argo.created() == [decided["workflow"]]


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_dry_run_without_the_token_is_refused_and_changes_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn, token: str | None
) -> None:
    response = _dry(receiver.url, firing_payload(FINGERPRINT, FIRST), token=token)
    assert response.status_code == 401
    assert "bearer token" in response.json()["error"]
    assert "alerts" not in response.json()
    _after_a_dispatcher_pass(receiver)
    assert _outbox_rows(receiver) == (0, 0)
    assert argo.calls == []


@pytest.mark.parametrize("value", ["yes", "", "TRUE!"])
def test_a_dry_run_flag_that_is_not_true_or_false_is_a_400_and_records_nothing(
    receiver: RunningReceiver, value: str
) -> None:
    response = post(receiver.url, firing_payload(FINGERPRINT, FIRST), params={"dry_run": value})
    assert response.status_code == 400
    assert "dry_run must be true or false" in response.json()["error"]
    assert _outbox_rows(receiver) == (0, 0)


def test_dry_run_false_is_an_ordinary_delivery(receiver: RunningReceiver) -> None:
    response = post(receiver.url, firing_payload(FINGERPRINT, FIRST), params={"dry_run": "false"})
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    assert _outbox_rows(receiver)[0] == 1


def test_a_dry_run_validates_the_payload_as_a_delivery(receiver: RunningReceiver) -> None:
    payload = firing_payload(FINGERPRINT, FIRST)
    payload["alerts"][0]["fingerprint"] = "not hex"
    response = _dry(receiver.url, payload)
    assert response.status_code == 400
    assert "fingerprint" in response.json()["error"]
    assert _outbox_rows(receiver) == (0, 0)


def test_a_dry_run_says_why_an_alert_would_be_refused(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    """An alert outside webhook.allow_labels, one naming another model, a resolved one: each
    answered with the suppression it would get, and the reason."""
    notification = firing_payload(FINGERPRINT, FIRST, labels={"remediation": "none"})
    other_model = firing_payload("1111111111111111", FIRST, labels={"model": "other-model"})
    resolved = firing_payload("2222222222222222", FIRST, status="resolved")
    answers = [_dry(receiver.url, p).json()["alerts"][0] for p in (notification, other_model)]
    for answer in answers:
        assert (answer["decision"], answer["state"]) == ("not-allowed", "suppressed")
        assert answer["workflow"] is None
    assert "webhook.allow_labels" in answers[0]["reason"]
    assert "not this receiver's model" in answers[1]["reason"]
    assert answers[1]["model"] == "other-model"
    gone = _dry(receiver.url, resolved).json()["alerts"][0]
    assert (gone["decision"], gone["state"]) == ("resolved", "suppressed")
    assert _outbox_rows(receiver) == (0, 0)
    assert argo.calls == []


def test_a_dry_run_sees_the_outbox_as_it_is(receiver: RunningReceiver, argo: ArgoStandIn) -> None:
    """GIVEN a remediation of the model running WHEN a new incident and the running one are
    dry-run THEN the new one would wait (one at a time), the running one is a duplicate, and
    the outbox holds exactly what the real delivery wrote."""
    running_incident = incident_id(FINGERPRINT, FIRST)
    post(receiver.url, firing_payload(FINGERPRINT, FIRST))
    wait_for(
        lambda: remediation(receiver.url, running_incident)["state"] == "running",
        what="the real run",
    )
    before = _outbox_rows(receiver)

    later = firing_payload("fedcba9876543210", FIRST)
    waits = _dry(receiver.url, later).json()["alerts"][0]
    assert (waits["decision"], waits["state"]) == ("wait", "received")
    assert waits["workflow"] is None
    assert argo.created()[0] in waits["reason"], "the reason names the active remediation"

    again = _dry(receiver.url, firing_payload(FINGERPRINT, FIRST)).json()["alerts"][0]
    assert again["duplicate"] is True and again["decision"] == "duplicate"
    assert again["state"] == "running"
    assert again["workflow"] == argo.created()[0]

    assert _outbox_rows(receiver) == before
    assert remediation(receiver.url, running_incident)["deliveries"] == 1
    assert len(argo.created()) == 1


def test_a_dry_run_under_the_configured_dry_run_says_so(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    """webhook.dry_run (record and decide, submit nothing) is what a delivery would meet: the
    request's dry run reports it, and still records nothing."""
    webhook_config.webhook.dry_run = True
    running = start_receiver(webhook_config)
    answer = _dry(running.url, firing_payload(FINGERPRINT, FIRST)).json()["alerts"][0]
    assert (answer["decision"], answer["state"]) == ("dry-run", "suppressed")
    assert "webhook.dry_run is true" in answer["reason"]
    assert _outbox_rows(running) == (0, 0)
    assert argo.calls == []
