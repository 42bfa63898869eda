"""Must show 7: cooldown, daily budget, one remediation per model, dry run."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn
from tests.webhook_support import (
    RunningReceiver,
    firing_payload,
    get,
    metric,
    post,
    remediation,
    wait_for,
)
from webhook.models import incident_id

FINGERPRINT = "a1b2c3d4e5f60718"
FIRST = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SECOND = FIRST + timedelta(minutes=2)


def _state(url: str, incident: str) -> str:
    return str(remediation(url, incident)["state"])


def test_fire_resolve_fire_within_the_cooldown_runs_once(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    first, second = incident_id(FINGERPRINT, FIRST), incident_id(FINGERPRINT, SECOND)
    # GIVEN an alert fired and its remediation runs
    post(receiver.url, firing_payload(FINGERPRINT, FIRST))
    wait_for(lambda: _state(receiver.url, first) == "running", what="first run")

    # WHEN it resolves and fires again (a new incident) while the first run is still going
    post(receiver.url, firing_payload(FINGERPRINT, FIRST, status="resolved"))
    post(receiver.url, firing_payload(FINGERPRINT, SECOND))

    # THEN the new incident waits (one remediation per model at a time) ...
    wait_for(lambda: "waiting" in (remediation(receiver.url, second)["reason"] or ""))
    assert _state(receiver.url, second) == "received"

    # ... and once the first run ends, the cooldown suppresses it: one run in all
    argo.set_phase(argo.created()[0], "Succeeded", gate_passed=True)
    wait_for(lambda: _state(receiver.url, second) == "suppressed", what="cooldown decision")
    record = remediation(receiver.url, second)
    assert record["reason_code"] == "cooldown"
    assert "cooldown_seconds" in record["reason"]
    assert len(argo.created()) == 1
    assert _state(receiver.url, first) == "succeeded"


def test_a_still_firing_alert_is_decided_again_after_the_cooldown(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a receiver whose dispatcher passes the test drives, with a clock of its own
    argo.auto_finish = ("Succeeded", True)
    running = start_receiver(webhook_config, start_dispatcher=False)
    dispatcher = running.receiver.dispatcher
    cooldown = webhook_config.webhook.cooldown_seconds
    first, second = incident_id(FINGERPRINT, FIRST), incident_id(FINGERPRINT, SECOND)
    t = time.time()
    post(running.url, firing_payload(FINGERPRINT, FIRST))
    dispatcher.run_once(now=t)  # submits
    dispatcher.run_once(now=t + 1)  # reads it back: finished at t + 1
    assert _state(running.url, first) == "succeeded"
    post(running.url, firing_payload(FINGERPRINT, SECOND))
    dispatcher.run_once(now=t + 2)
    assert remediation(running.url, second)["reason_code"] == "cooldown"

    # WHEN Alertmanager re-sends the still-firing alert, within and then after the cooldown
    post(running.url, firing_payload(FINGERPRINT, SECOND))
    dispatcher.run_once(now=t + cooldown)
    assert remediation(running.url, second)["reason_code"] == "cooldown"
    assert len(argo.created()) == 1
    post(running.url, firing_payload(FINGERPRINT, SECOND))
    dispatcher.run_once(now=t + 1 + cooldown + 1)

    # THEN it is decided again, and runs
    assert _state(running.url, second) == "submitted"
    assert len(argo.created()) == 2


def test_fifty_incidents_are_capped_by_the_budget_and_all_recorded(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a budget of 3 a day, no cooldown, and runs that end as soon as they are read
    webhook_config.webhook.daily_budget = 3
    webhook_config.webhook.cooldown_seconds = 0
    argo.auto_finish = ("Succeeded", True)
    running = start_receiver(webhook_config)

    # WHEN 50 distinct incidents of one model arrive within a minute
    incidents = []
    for i in range(50):
        fingerprint = f"{i:016x}"
        starts = datetime.now(UTC) - timedelta(seconds=i)
        assert post(running.url, firing_payload(fingerprint, starts)).status_code == 200
        incidents.append(incident_id(fingerprint, starts))

    # THEN 3 run, the other 47 are recorded as suppressed by the budget: none is dropped
    def settled() -> dict[str, int] | None:
        counts: dict[str, int] = get(running.url, "/api/v1/remediations").json()["counts"]
        busy = sum(counts[s] for s in ("received", "submitting", "submitted", "running"))
        return None if busy else counts

    counts = wait_for(settled, timeout=60, what="all 50 decided")
    assert counts["succeeded"] == 3
    assert counts["suppressed"] == 47
    assert sum(counts.values()) == 50
    assert len(argo.created()) == 3
    listed = get(running.url, "/api/v1/remediations?limit=1000").json()["remediations"]
    assert sorted(r["id"] for r in listed) == sorted(incidents)
    budget = [r for r in listed if r["reason_code"] == "budget"]
    assert len(budget) == 47 and "daily_budget is 3" in budget[0]["reason"]
    assert metric(running.registry, "robustloop_webhook_decisions_total", decision="budget") == 47


def test_models_are_remediated_independently(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    webhook_config.webhook.models = ["fashion-cnn", "other-model"]
    receiver = start_receiver(webhook_config)
    for i, model in enumerate(("fashion-cnn", "other-model")):
        post(receiver.url, firing_payload(f"{i:016x}", FIRST, labels={"model": model}))
    wait_for(lambda: len(argo.created()) == 2, what="one run per model at the same time")
    params = [
        {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}["model"]
        for wf in argo.workflows.values()
    ]
    assert sorted(params) == ["fashion-cnn", "other-model"]


def test_dry_run_decides_and_records_but_submits_nothing(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    webhook_config.webhook.dry_run = True
    running = start_receiver(webhook_config)
    incident = incident_id(FINGERPRINT, FIRST)

    assert post(running.url, firing_payload(FINGERPRINT, FIRST)).status_code == 200

    wait_for(lambda: _state(running.url, incident) == "suppressed")
    record = remediation(running.url, incident)
    assert record["reason_code"] == "dry-run"
    assert "would submit workflow rl-fashion-cnn-" in record["reason"]
    assert argo.calls == []
