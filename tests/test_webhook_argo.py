"""Must show 8: the Argo Server failing, timing out, refusing; the intent is kept or given up."""

from __future__ import annotations

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
from workflows.contract import workflow_name_for

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
