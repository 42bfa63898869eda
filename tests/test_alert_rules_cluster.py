"""Publishing recalibrated rules to the cluster's PrometheusRule (alert_rules.cluster).

Against a stand-in for the Kubernetes API (tests/kube_standin.py: a real HTTP server that
applies the merge patch and validates the result against the PrometheusRule CRD schema) and
the Python kubernetes client, as the workflow's promote step runs it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alert_rules import RULES_FILE
from alert_rules.cluster import (
    API_ENV,
    MERGE_PATCH,
    NAMESPACE_ENV,
    RULE_ENV,
    PublishError,
    api_client,
    publish_rules,
    read_groups,
    target_from_env,
)
from tests.kube_standin import KubeStandIn
from tests.support import load_crd_validators

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_RULES = REPO_ROOT / "alert_rules" / RULES_FILE
NS, NAME = "robustloop", "rl-robustloop"


def _groups(threshold: str) -> list[dict[str, Any]]:
    """The committed rule groups with the entropy threshold replaced (a recalibration)."""
    text = COMMITTED_RULES.read_text(encoding="utf-8")
    assert "prediction_entropy:mean30s > 0.35" in text
    return yaml.safe_load(text.replace("entropy:mean30s > 0.35", f"entropy:mean30s > {threshold}"))[
        "groups"
    ]


def _namespaced(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups as published: every alert labelled with the rule's namespace, which the
    operator's default AlertmanagerConfig route matches on."""
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**rule["labels"], "namespace": NS}
    return groups


@pytest.fixture
def kube(schemas: Path) -> Iterator[KubeStandIn]:
    validator = load_crd_validators(schemas)[("monitoring.coreos.com/v1", "PrometheusRule")]
    with KubeStandIn(validator) as standin:
        standin.add_rule(NS, NAME, _groups("0.35"))
        yield standin


def _rules_file(tmp_path: Path, threshold: str) -> Path:
    path = tmp_path / RULES_FILE
    path.write_text(yaml.safe_dump({"groups": _groups(threshold)}), encoding="utf-8")
    return path


def _client(kube: KubeStandIn) -> Any:
    return api_client({API_ENV: kube.url})


def test_publish_replaces_the_groups_and_keeps_the_objects_metadata(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    publish_rules(_rules_file(tmp_path, "0.41"), namespace=NS, name=NAME, api=_client(kube))

    (request,) = kube.requests
    assert request.method == "PATCH" and request.content_type == MERGE_PATCH
    assert request.path == f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/prometheusrules/{NAME}"
    assert set(request.body) == {"spec"} and set(request.body["spec"]) == {"groups"}
    stored = kube.objects[(NS, NAME)]
    assert stored["spec"]["groups"] == _namespaced(_groups("0.41"))
    assert stored["metadata"]["labels"] == {"release": "rl"}  # a merge patch keeps the rest


def test_an_unknown_rule_is_a_clear_error_and_nothing_changes(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    with pytest.raises(PublishError, match=r"robustloop/missing: HTTP 404.*prometheusRule.enabled"):
        publish_rules(
            _rules_file(tmp_path, "0.41"), namespace=NS, name="missing", api=_client(kube)
        )
    assert kube.objects[(NS, NAME)]["spec"]["groups"] == _groups("0.35")


def test_a_forbidden_patch_names_the_role(schemas: Path, tmp_path: Path) -> None:
    validator = load_crd_validators(schemas)[("monitoring.coreos.com/v1", "PrometheusRule")]
    with KubeStandIn(validator, token="the-workflows-token") as kube:
        kube.add_rule(NS, NAME, _groups("0.35"))
        with pytest.raises(PublishError, match=r"HTTP 403.*workflow Role"):
            publish_rules(_rules_file(tmp_path, "0.41"), namespace=NS, name=NAME, api=_client(kube))
        assert kube.objects[(NS, NAME)]["spec"]["groups"] == _groups("0.35")


def test_a_rules_file_without_groups_is_refused_before_any_request(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("groups: []\n", encoding="utf-8")
    for path, message in (
        (empty, "has no rule groups"),
        (tmp_path / "absent.yaml", "cannot read"),
    ):
        with pytest.raises(PublishError, match=message):
            publish_rules(path, namespace=NS, name=NAME, api=_client(kube))
    broken = tmp_path / "broken.yaml"
    broken.write_text("groups: [\n", encoding="utf-8")
    with pytest.raises(PublishError, match="not valid YAML"):
        read_groups(broken)
    assert kube.requests == []


def test_an_unreachable_api_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = api_client({API_ENV: f"http://127.0.0.1:{port}"})
    with pytest.raises(PublishError, match="cannot reach the Kubernetes API"):
        publish_rules(_rules_file(tmp_path, "0.41"), namespace=NS, name=NAME, api=api)


def test_the_target_comes_from_both_variables_or_none() -> None:
    assert target_from_env({}) is None
    assert target_from_env({RULE_ENV: NAME, NAMESPACE_ENV: NS}) == (NS, NAME)
    with pytest.raises(PublishError, match=f"set both {RULE_ENV} and {NAMESPACE_ENV}"):
        target_from_env({RULE_ENV: NAME})


def test_outside_a_pod_without_an_address_it_says_so() -> None:
    with pytest.raises(PublishError, match=f"not in a Kubernetes pod and {API_ENV} is unset"):
        api_client({})
