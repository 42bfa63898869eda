"""The escalation end to end: captured traffic, an escalated alert, the captured recipe's run.

A real model server (capture on) classifies traffic and gets its ground truth back; then the
receiver gets CanaryAccuracyEscalated, as Alertmanager delivers it, and hands the remediation
to the local executor, which runs the real steps in subprocesses: the harden step fine-tunes on
the captured set, the evaluation and the gate judge the candidate also on its held-out part.
The gate here demands a robust gain no model reaches (``gate.min_robust_gain: 1``), so that the
run ends at the gate and the test stays short; the gate's decisions are tested on their own in
``tests/test_captured_recipe.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

import training
from robustloop.config import RobustloopConfig, dump_config
from serving import RunningServer, get_state
from serving import create_app as create_server
from tests.support import register_model
from tests.webhook_support import TOKEN, firing_payload, post, remediation, wait_for
from training import ModelStore, load_captured
from webhook import ReceiverServer, create_app
from webhook.models import incident_id

pytestmark = pytest.mark.slow

MODEL = "fashion-cnn"
STARTS = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
FINGERPRINT = "e5ca1a7edc0ffee1"
INCIDENT = incident_id(FINGERPRINT, STARTS)


def _config(cfg: RobustloopConfig, root: Path) -> RobustloopConfig:
    cfg.data.eval_size = 100
    cfg.data.traffic_size = 200
    cfg.data.train_limit = 500
    cfg.training.threads = 1
    cfg.remediation.max_seconds = 1
    cfg.remediation.check_size = 32
    cfg.gate.n = 100
    cfg.gate.min_robust_gain = 1.0
    cfg.rollout.watch_seconds = 0
    cfg.capture.enabled = True
    cfg.capture.path = root / "captured"
    cfg.capture.chunk_examples = 50
    cfg.capture.min_examples = 40
    cfg.capture.min_holdout = 5
    cfg.alerts.canary_accuracy.escalate_after = "10m"
    token = root / "token"
    token.write_text(TOKEN, encoding="utf-8")
    cfg.webhook.token_file = token
    cfg.webhook.poll_seconds = 0.2
    return cfg


def _serve_and_label(cfg: RobustloopConfig, count: int) -> None:
    """Classify ``count`` traffic images on a real server and feed back their truth."""
    images, truth = training.make_splits(cfg.data).traffic.tensors
    app = create_server(cfg, registry=CollectorRegistry())
    state = get_state(app)
    try:
        with RunningServer(app) as server:
            for start in range(0, count, 50):
                x = images[start : start + 50]
                body = {"inputs": [{"name": "images", "shape": list(x.shape),
                                    "datatype": "FP32", "data": x.tolist()}]}  # fmt: skip
                answer = requests.post(
                    f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=60
                )
                assert answer.status_code == 200, answer.text
                ids = next(o["data"] for o in answer.json()["outputs"] if o["name"] == "sample_ids")
                labels = truth[start : start + 50].tolist()
                fed = requests.post(
                    f"{server.url}/v2/models/{MODEL}/feedback",
                    json={"ids": ids, "labels": labels},
                    timeout=60,
                )
                assert fed.status_code == 200 and fed.json()["unknown"] == 0, fed.text
    finally:
        state.close()


def test_an_escalated_alert_remediates_with_the_captured_recipe(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    # GIVEN a production model whose server captured 150 labelled requests
    cfg = _config(small_config, tmp_path)
    config_file = tmp_path / "robustloop.yaml"
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    store = ModelStore(cfg.store.path)
    production = register_model(store)
    store.promote(production)
    _serve_and_label(cfg, 150)
    train_part, holdout = load_captured(cfg.capture).split(cfg.capture.holdout_fraction)
    assert len(train_part) + len(holdout) == 150

    # WHEN Alertmanager delivers CanaryAccuracyEscalated to the receiver (local executor)
    labels = {
        "alertname": "CanaryAccuracyEscalated",
        "remediation": "adversarial-training",
        "recipe": "captured",
        "version": production,
    }
    app = create_app(cfg, registry=CollectorRegistry(), config_path=config_file)
    with ReceiverServer(app) as receiver:
        payload = firing_payload(FINGERPRINT, STARTS, labels)
        assert post(receiver.url, payload).status_code == 200
        record = wait_for(
            lambda: (
                (r := remediation(receiver.url, INCIDENT))["state"]
                in ("rejected", "succeeded", "failed")
                and r
            ),
            timeout=600,
            what="the remediation's end",
        )

    # THEN the run had the captured recipe, and its harden step trained on the captured set...
    run = json.loads((cfg.submitter.runs_dir / record["workflow"] / "workflow.json").read_text())
    parameters = {p["name"]: p["value"] for p in run["spec"]["arguments"]["parameters"]}
    assert parameters["recipe"] == "captured" and parameters["incident-id"] == INCIDENT
    nodes = {n["displayName"]: n for n in run["status"]["nodes"].values()}
    assert nodes["harden"]["phase"] == "Succeeded", nodes["harden"].get("message")
    candidate = next(
        p["value"] for p in nodes["harden"]["outputs"]["parameters"] if p["name"] == "version"
    )
    recipe = store.manifest(candidate).recipe
    assert recipe["recipe"] == "captured"
    assert recipe["captured"]["train_examples"] == len(train_part)
    assert recipe["captured"]["holdout_examples"] == len(holdout)
    # ...and the gate judged it on the held-out part too (and, as set up, rejected it)
    decision = json.loads(
        next(p["value"] for p in nodes["gate"]["outputs"]["parameters"] if p["name"] == "decision")
    )
    assert any(
        r.startswith(f"captured held-out accuracy (n={len(holdout)})") for r in decision["reasons"]
    )
    assert decision["metrics"]["captured"]["baseline_accuracy"] is not None
    assert record["state"] == "rejected", record
    assert store.production() == production
