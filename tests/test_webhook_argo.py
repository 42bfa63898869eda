"""Must show 8: the Argo Server failing, timing out, refusing; the intent is kept or given up,
a refused incident is decided again when its alert is re-delivered, and an intent whose alert
resolved long ago is dropped unsubmitted."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn, Fault
from tests.webhook_support import (
    ARGO_TOKEN,
    RunningReceiver,
    firing_payload,
    metric,
    post,
    remediation,
    wait_for,
)
from webhook.models import incident_id
from webhook.submitters import ArgoSubmitter, RefusedSubmitError, Submitted, TransientSubmitError
from workflows.contract import INCIDENT_PARAMETERS, TEMPLATE_NAME, workflow_name_for

STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)
NAME = workflow_name_for(INCIDENT, "fashion-cnn")


def _submitter(argo: ArgoStandIn, tmp_path: Path, timeout: float = 1.0) -> ArgoSubmitter:
    token = tmp_path / "argo-token"
    token.write_text(ARGO_TOKEN, encoding="utf-8")
    return ArgoSubmitter(argo.url, "robustloop", token_file=token, timeout=timeout)


def test_argo_503_keeps_the_intent_and_one_workflow_follows_recovery(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    # GIVEN Argo answers 503 to the next three creates
    argo.inject(Fault("POST", status=503), times=3)

    post(receiver.url, firing_payload(starts_at=STARTS))

    # THEN the intent is kept and retried with backoff, and one workflow exists after recovery
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "submitted", timeout=30)
    assert argo.creates() == [503, 503, 503, 200]
    assert argo.created() == [NAME]
    record = remediation(receiver.url, INCIDENT)
    assert record["attempts"] == 4
    assert any("503" in event["detail"] for event in record["events"])
    assert (
        metric(receiver.registry, "robustloop_webhook_submissions_total", result="transient") == 3
    )


def test_intent_waits_in_submitting_while_argo_is_down(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    argo.inject(Fault("POST", status=503), times=1000)
    running = start_receiver(webhook_config)
    post(running.url, firing_payload(starts_at=STARTS))

    record = wait_for(
        lambda: (r := remediation(running.url, INCIDENT))["attempts"] >= 3 and r,
        what="three failed attempts",
    )
    assert record["state"] == "submitting"
    assert "503" in record["last_error"]
    assert record["next_attempt_at"] is not None

    argo.clear_faults()
    wait_for(lambda: remediation(running.url, INCIDENT)["state"] == "submitted", timeout=30)
    assert argo.created() == [NAME]


def test_argo_timing_out_after_creating_gives_one_workflow(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    # GIVEN Argo creates the workflow but answers after the client's timeout (1 s), twice
    argo.inject(Fault("POST", delay=2.0, store_first=True), times=1)
    argo.inject(Fault("POST", delay=2.0), times=1)

    post(receiver.url, firing_payload(starts_at=STARTS))

    # THEN the retry meets a 409, taken as success: one workflow
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "submitted", timeout=30)
    assert argo.created() == [NAME]
    assert argo.creates()[-1] == 409
    events = remediation(receiver.url, INCIDENT)["events"]
    assert any("did not answer" in event["detail"] for event in events)


def test_argo_403_is_a_clear_state_and_metric_without_endless_retry(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    argo.inject(Fault("POST", status=403), times=1000)

    post(receiver.url, firing_payload(starts_at=STARTS))

    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "refused")
    record = remediation(receiver.url, INCIDENT)
    assert "403" in record["reason"] and "will not be retried" in record["reason"]
    for _ in range(3):
        receiver.receiver.dispatcher.run_once()
    assert argo.creates() == [403]
    assert metric(receiver.registry, "robustloop_webhook_submissions_total", result="refused") == 1
    assert argo.created() == []


def test_a_refused_incident_is_decided_again_when_the_firing_alert_is_re_delivered(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    # GIVEN Argo refused the incident's workflow (403: the service account lacked a permission)
    argo.inject(Fault("POST", status=403), times=1)
    post(receiver.url, firing_payload(starts_at=STARTS))
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "refused")
    assert "next delivery" in remediation(receiver.url, INCIDENT)["reason"]

    # WHEN the cause is fixed (Argo now creates) and Alertmanager re-sends the still-firing alert
    again = post(receiver.url, firing_payload(starts_at=STARTS))

    # THEN the delivery is a duplicate that puts the incident back to be decided, and it runs
    assert again.json()["alerts"] == [
        {"incident": INCIDENT, "state": "received", "duplicate": True}
    ]
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] in ("submitted", "running"))
    assert argo.creates() == [403, 200]
    assert argo.created() == [NAME]
    record = remediation(receiver.url, INCIDENT)
    assert [e["state"] for e in record["events"]][:6] == [
        "received",
        "submitting",
        "refused",
        "received",
        "submitting",
        "submitted",
    ]
    assert record["events"][3]["detail"] == "re-delivered while firing after refused"
    assert metric(receiver.registry, "robustloop_webhook_submissions_total", result="refused") == 1
    assert metric(receiver.registry, "robustloop_webhook_submissions_total", result="created") == 1

    # AND ordinary repeats of the submitted incident stay duplicates: no second workflow
    repeat = post(receiver.url, firing_payload(starts_at=STARTS)).json()["alerts"][0]
    assert repeat["duplicate"] is True
    assert repeat["state"] in ("submitted", "running")
    receiver.receiver.dispatcher.wake()
    wait_for(lambda: remediation(receiver.url, INCIDENT)["deliveries"] == 3)
    assert argo.creates() == [403, 200]


def test_a_refused_incident_whose_alert_resolved_stays_refused(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a refused incident whose alert then resolved
    argo.inject(Fault("POST", status=403), times=1)
    running = start_receiver(webhook_config, start_dispatcher=False)
    dispatcher = running.receiver.dispatcher
    post(running.url, firing_payload(starts_at=STARTS))
    dispatcher.run_once()
    post(running.url, firing_payload(starts_at=STARTS, status="resolved"))

    # WHEN a late firing delivery of it arrives (an HA peer, out of order)
    late = post(running.url, firing_payload(starts_at=STARTS))
    dispatcher.run_once()

    # THEN it changes no decision: the incident stays refused and nothing more is submitted
    assert late.json()["alerts"][0]["state"] == "refused"
    assert remediation(running.url, INCIDENT)["state"] == "refused"
    assert argo.creates() == [403]


@pytest.mark.parametrize("outage", ["short", "long"])
def test_an_intent_whose_alert_resolved_long_ago_is_dropped_unsubmitted(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
    outage: str,
) -> None:
    # GIVEN an intent kept in submitting while Argo answers 503, then its alert resolved
    argo.inject(Fault("POST", status=503), times=1000)
    running = start_receiver(webhook_config, start_dispatcher=False)
    dispatcher = running.receiver.dispatcher
    post(running.url, firing_payload(starts_at=STARTS))
    dispatcher.run_once()
    assert remediation(running.url, INCIDENT)["state"] == "submitting"
    post(running.url, firing_payload(starts_at=STARTS, status="resolved"))
    resolved_at = remediation(running.url, INCIDENT)["resolved_at"]
    assert resolved_at is not None

    # WHEN Argo is back, shortly after the resolution or after drop_resolved_after_seconds
    argo.clear_faults()
    limit = webhook_config.webhook.drop_resolved_after_seconds
    later = time.time() + (limit + 60 if outage == "long" else 0)
    dispatcher.run_once(now=later)
    dispatcher.run_once(now=later + 1)

    record = remediation(running.url, INCIDENT)
    stale = metric(running.registry, "robustloop_webhook_decisions_total", decision="stale")
    if outage == "short":
        # THEN a remediation decided while the alert fired still runs after it resolves (the
        # second pass already follows it)
        assert record["state"] in ("submitted", "running")
        assert argo.created() == [NAME]
        assert stale == 0
    else:
        # THEN the stale intent is never submitted: suppressed, saying when the alert resolved
        assert (record["state"], record["reason_code"]) == ("suppressed", "stale")
        assert resolved_at in record["reason"]
        assert "drop_resolved_after_seconds" in record["reason"]
        assert record["next_attempt_at"] is None
        assert argo.creates() == [503]
        assert argo.created() == []
        assert stale == 1


def test_a_stale_intent_whose_run_was_created_is_followed_not_dropped(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN Argo created the workflow but its answer was lost (the client timed out), and the
    # alert resolved while the intent waited for its retry
    argo.inject(Fault("POST", delay=2.0, store_first=True), times=1)
    running = start_receiver(webhook_config, start_dispatcher=False)
    dispatcher = running.receiver.dispatcher
    post(running.url, firing_payload(starts_at=STARTS))
    dispatcher.run_once()
    assert remediation(running.url, INCIDENT)["state"] == "submitting"
    post(running.url, firing_payload(starts_at=STARTS, status="resolved"))

    # WHEN the retry is due long after the resolution
    limit = webhook_config.webhook.drop_resolved_after_seconds
    dispatcher.run_once(now=time.time() + limit + 60)

    # THEN the run that exists is taken as submitted (and followed), and no second create is sent
    record = remediation(running.url, INCIDENT)
    assert record["state"] == "submitted"
    assert "already existed" in record["reason"]
    assert argo.created() == [NAME]
    assert len([call for call in argo.received if call[0] == "POST"]) == 1
    assert metric(running.registry, "robustloop_webhook_decisions_total", decision="stale") == 0


def test_submitter_sends_the_token_and_reads_state_back(argo: ArgoStandIn, tmp_path: Path) -> None:
    submitter = _submitter(argo, tmp_path)
    params = {"model": "fashion-cnn", "incident-id": INCIDENT}

    assert submitter.submit(NAME, params) is Submitted.CREATED
    assert submitter.submit(NAME, params) is Submitted.EXISTS
    assert submitter.status(NAME).phase == "Running"  # type: ignore[union-attr]
    argo.set_phase(NAME, "Succeeded", gate_passed=False)
    summary = submitter.status(NAME)
    assert summary is not None and summary.finished and summary.gate_passed is False
    assert submitter.status("rl-unknown") is None


def test_submitter_classifies_failures(argo: ArgoStandIn, tmp_path: Path) -> None:
    submitter = _submitter(argo, tmp_path, timeout=0.5)
    params = {"model": "fashion-cnn"}
    for status, error in ((503, TransientSubmitError), (429, TransientSubmitError)):
        argo.inject(Fault("POST", status=status))
        with pytest.raises(error) as caught:
            submitter.submit(NAME, params)
        assert caught.value.status == status
    argo.inject(Fault("POST", delay=1.5))
    with pytest.raises(TransientSubmitError, match="did not answer"):
        submitter.submit(NAME, params)
    argo.inject(Fault("GET", status=500))
    with pytest.raises(TransientSubmitError):
        submitter.status(NAME)

    wrong = tmp_path / "wrong-token"
    wrong.write_text("nope", encoding="utf-8")
    unauthorised = ArgoSubmitter(argo.url, "robustloop", token_file=wrong, timeout=1.0)
    with pytest.raises(RefusedSubmitError) as refused:
        unauthorised.submit("rl-other", params)
    assert refused.value.status == 401


def test_a_run_gets_the_templates_defaults_and_only_the_incident_from_the_receiver(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN the template in the cluster overrides the recipe (the chart's workflow.parameters),
    # and the receiver's own config names another one
    argo.templates[TEMPLATE_NAME].update({"method": "pgd", "epochs": "5", "eps": "0.2"})
    webhook_config.remediation.method = "fgsm-rs"
    webhook_config.remediation.epochs = 2
    running = start_receiver(webhook_config)

    # WHEN an alert starts a remediation
    post(running.url, firing_payload(starts_at=STARTS))
    wait_for(lambda: remediation(running.url, INCIDENT)["state"] in ("submitted", "running"))

    # THEN the Workflow (valid for Argo) carries only what identifies the incident...
    assert argo.invalid == []
    workflow = argo.workflows[("robustloop", NAME)]
    given = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert given == {"model": "fashion-cnn", "incident-id": INCIDENT}
    assert tuple(given) == INCIDENT_PARAMETERS
    # ...so the run gets the template's recipe, not the receiver's
    effective = argo.effective_parameters(NAME)
    assert (effective["method"], effective["epochs"], effective["eps"]) == ("pgd", "5", "0.2")
    assert effective["incident-id"] == INCIDENT


def test_an_escalated_alert_runs_the_captured_recipe_and_others_the_templates(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    """CanaryAccuracyEscalated carries recipe="captured": its run is submitted with that
    parameter (which the template declares); every other parameter keeps the template's
    default, and an alert without the label leaves the recipe to the template."""
    argo.templates[TEMPLATE_NAME].update({"method": "pgd"})
    running = start_receiver(webhook_config)
    labels = {"alertname": "CanaryAccuracyEscalated", "recipe": "captured"}

    post(running.url, firing_payload(starts_at=STARTS, labels=labels))
    wait_for(lambda: remediation(running.url, INCIDENT)["state"] in ("submitted", "running"))

    assert argo.invalid == []
    workflow = argo.workflows[("robustloop", NAME)]
    given = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert given == {"model": "fashion-cnn", "incident-id": INCIDENT, "recipe": "captured"}
    effective = argo.effective_parameters(NAME)
    assert (effective["recipe"], effective["method"]) == ("captured", "pgd")
    labels_of_run = workflow["metadata"]["labels"]
    assert labels_of_run["robustloop.dev/alertname"] == "CanaryAccuracyEscalated"
