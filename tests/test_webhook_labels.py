"""Labels on submitted runs: the model, the incident and the alert name, as valid Kubernetes
label values whatever the input (hypothesis, judged by the Argo stand-in's own check of
Kubernetes' rule), on the Workflow the receiver creates."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import assume, given
from hypothesis import strategies as st

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn, label_problems
from tests.webhook_support import RunningReceiver, firing_payload, post, remediation, wait_for
from webhook._labels import (
    ALERTNAME_LABEL,
    INCIDENT_LABEL,
    MAX_LABEL_VALUE,
    MODEL_LABEL,
    label_value,
)
from webhook.models import incident_id
from workflows.contract import TEMPLATE_NAME, workflow_name_for

# The whole of Unicode, surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=200)
valid_values = st.from_regex(
    re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"), fullmatch=True
)

STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)
NAME = workflow_name_for(INCIDENT, "fashion-cnn")


@given(any_text)
def test_any_text_becomes_a_valid_label_value(text: str) -> None:
    value = label_value(text)
    assert label_problems({MODEL_LABEL: value}) == []
    assert len(value) <= MAX_LABEL_VALUE
    assert label_value(value) == value, "a sanitised value is a fixed point"


@given(valid_values)
def test_a_valid_label_value_is_kept_as_it_is(value: str) -> None:
    assert label_problems({MODEL_LABEL: value}) == []
    assert label_value(value) == value


@given(st.text("ab", min_size=MAX_LABEL_VALUE, max_size=80), any_text, any_text)
def test_long_values_that_share_a_beginning_stay_distinct(stem: str, one: str, other: str) -> None:
    """Shortening is where distinct values could meet: the kept beginning is the same, the
    digest of the whole differs. (Sanitising alone is lossy: `a b` and `a-b` meet.)"""
    assume(one != other)
    long_one, long_other = "a" + stem + one, "a" + stem + other
    assert label_value(long_one) != label_value(long_other)
    assert label_value(long_one)[:20] == label_value(long_other)[:20]


def test_characters_outside_the_label_alphabet_become_dashes_at_the_edges_dropped() -> None:
    assert label_value("Adversarial attack: detected!") == "Adversarial-attack-detected"
    assert label_value("-_.fashion-cnn._-") == "fashion-cnn"
    assert label_value("") == ""
    assert label_value("ß∂ƒ") == ""


def test_the_workflow_carries_the_incidents_labels_for_filtering(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN an alert whose name is no label value as it stands
    running = start_receiver(webhook_config)
    payload = firing_payload(starts_at=STARTS, labels={"alertname": "Adversarial attack: now!"})

    # WHEN it starts a remediation
    post(running.url, payload)
    wait_for(lambda: remediation(running.url, INCIDENT)["state"] in ("submitted", "running"))

    # THEN the Workflow (accepted by the stand-in's label check) has the incident's labels,
    # sanitised, besides its own
    assert argo.invalid == []
    labels = argo.workflows[("robustloop", NAME)]["metadata"]["labels"]
    assert labels == {
        MODEL_LABEL: "fashion-cnn",
        INCIDENT_LABEL: INCIDENT,
        ALERTNAME_LABEL: "Adversarial-attack-now",
        "app.kubernetes.io/managed-by": "robustloop-webhook",
        "workflows.argoproj.io/workflow-template": TEMPLATE_NAME,
    }


def test_the_stand_ins_label_check_refuses_what_kubernetes_refuses() -> None:
    """The label check that judges the receiver can fail: the API server's rule."""
    assert label_problems({MODEL_LABEL: "fashion cnn"})
    assert label_problems({MODEL_LABEL: "x" * 64})
    assert label_problems({"robustloop.dev/": "a"})
    assert label_problems({MODEL_LABEL: "-a"})
    assert label_problems({MODEL_LABEL: "fashion-cnn", INCIDENT_LABEL: ""}) == []
