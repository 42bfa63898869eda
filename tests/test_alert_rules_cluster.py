"""Publishing the calibrated rules to the PrometheusRule robustloop owns (alert_rules.cluster).

Against a stand-in for the Kubernetes API (tests/kube_standin.py: a real HTTP server that
answers get, create and replace as the API server answers them for a custom resource, checks
each object against the PrometheusRule CRD's schema, and collects the garbage of deleted owners)
and the Python kubernetes client, as the bootstrap Job and the workflow's steps run it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from alert_rules import FIXED_RULES_FILE, HEALTH_ALERT_NAMES, prometheus_rule_groups
from alert_rules.cluster import (
    API_ENV,
    ATTEMPTS,
    FIELD_MANAGER,
    LABELS_ENV,
    MANAGED_BY_LABEL,
    NAMESPACE_ENV,
    OWNER_ENV,
    RULE_ENV,
    PublishError,
    Target,
    api_client,
    calibrated_groups,
    publish_rules,
    target_from_env,
)
from robustloop.config import RobustloopConfig
from tests.kube_standin import API_VERSION, KubeStandIn, Request
from tests.support import load_crd_validators

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO_ROOT / "alert_rules" / "cluster"
NS, OWNER, NAME = "robustloop", "rl-robustloop", "rl-robustloop-calibrated"
SELECTED = {"release": "kube-prometheus-stack", "app.kubernetes.io/name": "robustloop"}
TARGET = Target(namespace=NS, name=NAME, owner=OWNER, labels=SELECTED)
RULES_PATH = f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/prometheusrules"


def _cluster_config(**alerts: Any) -> RobustloopConfig:
    """The config the chart's pods read: the committed cluster alerts section, with changes."""
    section = yaml.safe_load((CLUSTER_DIR / "robustloop.alerts.yaml").read_text())
    for key, value in alerts.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    return RobustloopConfig.model_validate({"alerts": section})


def _calibrated(version: str, entropy_shift: float = 0.05) -> RobustloopConfig:
    """A cluster config as a calibration for ``version`` leaves it."""
    return _cluster_config(
        calibrated_version=version,
        entropy={"mode": "relative", "baseline": 0.2, "threshold": entropy_shift},
    )


def _namespaced(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**rule["labels"], "namespace": NS}
    return groups


@pytest.fixture(scope="module")
def validator(schemas: Path) -> Any:
    """The PrometheusRule CRD's validator (loading the CRDs takes seconds: once)."""
    return load_crd_validators(schemas)[("monitoring.coreos.com/v1", "PrometheusRule")]


@pytest.fixture
def kube(validator: Any) -> Iterator[KubeStandIn]:
    """The API with the chart's PrometheusRule, as Helm created it from the fixed rules."""
    fixed = yaml.safe_load((CLUSTER_DIR / FIXED_RULES_FILE).read_text())["groups"]
    with KubeStandIn(validator) as standin:
        standin.add_rule(NS, OWNER, _namespaced(fixed), labels={"release": "rl"})
        yield standin


def _client(kube: KubeStandIn) -> Any:
    return api_client({API_ENV: kube.url})


def _writes(kube: KubeStandIn) -> list[Request]:
    return [r for r in kube.requests if r.method != "GET"]


def test_the_first_publication_creates_robustloops_own_rule_owned_by_the_charts(
    kube: KubeStandIn,
) -> None:
    """GIVEN the chart's PrometheusRule alone WHEN the rules are published THEN a second
    PrometheusRule holds the calibrated groups, every alert labelled with the namespace, is
    owned by the chart's (its uid), carries the labels Prometheus selects by, and was created
    by field manager robustloop; the chart's object is untouched."""
    chart_rule = dict(kube.objects[(NS, OWNER)])
    cfg = _calibrated("v0002-abcdef01")

    assert publish_rules(cfg, TARGET, api=_client(kube)) == "created"

    (create,) = _writes(kube)
    assert (create.method, create.path) == ("POST", RULES_PATH)
    assert create.query == {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
    written = kube.objects[(NS, NAME)]
    assert written["spec"]["groups"] == _namespaced(prometheus_rule_groups(cfg, "calibrated"))
    assert written["metadata"]["ownerReferences"] == [
        {
            "apiVersion": API_VERSION,
            "kind": "PrometheusRule",
            "name": OWNER,
            "uid": chart_rule["metadata"]["uid"],
        }
    ]
    assert written["metadata"]["labels"] == {**SELECTED, MANAGED_BY_LABEL: FIELD_MANAGER}
    assert written["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER
    assert kube.objects[(NS, OWNER)] == chart_rule


def test_a_new_calibration_replaces_it_with_the_resource_version_it_read(
    kube: KubeStandIn,
) -> None:
    api = _client(kube)
    publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=api)
    before = kube.objects[(NS, NAME)]["metadata"]
    chart_rule = dict(kube.objects[(NS, OWNER)])

    newer = _calibrated("v0003-12345678", entropy_shift=0.07)
    assert publish_rules(newer, TARGET, api=api) == "replaced"

    put = _writes(kube)[-1]
    assert (put.method, put.path) == ("PUT", f"{RULES_PATH}/{NAME}")
    assert put.body["metadata"]["resourceVersion"] == before["resourceVersion"]
    assert put.query["fieldManager"] == FIELD_MANAGER
    written = kube.objects[(NS, NAME)]
    assert written["spec"]["groups"] == _namespaced(prometheus_rule_groups(newer, "calibrated"))
    assert "v0003-12345678" in str(written["spec"]) and "v0002" not in str(written["spec"])
    assert written["metadata"]["uid"] == before["uid"]
    assert written["metadata"]["generation"] == before["generation"] + 1
    assert kube.objects[(NS, OWNER)] == chart_rule


def test_the_same_rules_again_write_nothing(kube: KubeStandIn) -> None:
    api = _client(kube)
    cfg = _calibrated("v0002-abcdef01")
    publish_rules(cfg, TARGET, api=api)
    version = kube.objects[(NS, NAME)]["metadata"]["resourceVersion"]
    assert publish_rules(cfg, TARGET, api=api) == "unchanged"
    assert len(_writes(kube)) == 1
    assert kube.objects[(NS, NAME)]["metadata"]["resourceVersion"] == version


def test_labels_or_an_owner_changed_by_hand_are_put_back(kube: KubeStandIn) -> None:
    """robustloop owns the whole object: a replace sets its labels and owner to what it renders."""
    api = _client(kube)
    cfg = _calibrated("v0002-abcdef01")
    publish_rules(cfg, TARGET, api=api)
    kube.objects[(NS, NAME)]["metadata"]["labels"] = {"release": "someone-else"}
    kube.objects[(NS, NAME)]["metadata"]["ownerReferences"] = []
    assert publish_rules(cfg, TARGET, api=api) == "replaced"
    meta = kube.objects[(NS, NAME)]["metadata"]
    assert meta["labels"]["release"] == "kube-prometheus-stack"
    assert meta["ownerReferences"][0]["uid"] == kube.objects[(NS, OWNER)]["metadata"]["uid"]


def test_a_replace_that_another_writer_beat_is_read_again_not_forced(kube: KubeStandIn) -> None:
    """GIVEN another writer that changes the object between our read and our replace THEN the
    API answers 409 Conflict, and the publisher reads it again and replaces what it read."""
    api = _client(kube)
    publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=api)
    beaten = []

    def another_writer(standin: KubeStandIn, request: Request) -> None:
        if request.method == "PUT" and not beaten:
            standin.touch(NS, NAME)
            beaten.append(standin.objects[(NS, NAME)]["metadata"]["resourceVersion"])

    kube.interfere = another_writer
    newer = _calibrated("v0003-12345678")
    assert publish_rules(newer, TARGET, api=api) == "replaced"
    first, second = [r for r in kube.requests if r.method == "PUT"]
    assert first.body["metadata"]["resourceVersion"] != beaten[0]
    assert second.body["metadata"]["resourceVersion"] == beaten[0]
    assert "v0003-12345678" in str(kube.objects[(NS, NAME)]["spec"])


def test_a_create_that_another_writer_beat_becomes_a_replace(kube: KubeStandIn) -> None:
    """Two publishers at once (the bootstrap Job and a promote step): the second create is
    refused 409 AlreadyExists; the publisher reads the object and replaces it."""
    first_cfg, second_cfg = _calibrated("v0002-abcdef01"), _calibrated("v0003-12345678")

    def another_publisher(standin: KubeStandIn, request: Request) -> None:
        if request.method == "POST" and (NS, NAME) not in standin.objects:
            body = {
                "apiVersion": API_VERSION,
                "kind": "PrometheusRule",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {"groups": calibrated_groups(first_cfg, NS)},
            }
            standin._create(NS, body, FIELD_MANAGER)

    kube.interfere = another_publisher
    assert publish_rules(second_cfg, TARGET, api=_client(kube)) == "replaced"
    assert [r.method for r in _writes(kube)] == ["POST", "PUT"]
    assert "v0003-12345678" in str(kube.objects[(NS, NAME)]["spec"])


def test_an_object_that_keeps_changing_is_given_up_with_a_clear_error(kube: KubeStandIn) -> None:
    api = _client(kube)
    publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=api)

    def always(standin: KubeStandIn, request: Request) -> None:
        if request.method == "PUT":
            standin.touch(NS, NAME)

    kube.interfere = always
    with pytest.raises(PublishError, match=f"changed under each of {ATTEMPTS} attempts"):
        publish_rules(_calibrated("v0003-12345678"), TARGET, api=api)
    assert "v0002-abcdef01" in str(kube.objects[(NS, NAME)]["spec"])


def test_without_the_charts_rule_nothing_is_created(validator: Any) -> None:
    """No owner, no object: one that nothing owns would outlive the release."""
    with KubeStandIn(validator) as kube:
        with pytest.raises(PublishError, match=r"rl-robustloop, which owns .* does not exist"):
            publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=_client(kube))
        assert kube.objects == {} and _writes(kube) == []


def test_deleting_the_charts_rule_collects_robustloops(kube: KubeStandIn) -> None:
    """`helm uninstall` deletes the chart's PrometheusRule; the garbage collector then deletes
    the one it owns (the ownerReference names its uid)."""
    publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=_client(kube))
    kube.add_rule(NS, "someone-elses", [], labels={})
    kube.delete(NS, OWNER)
    assert set(kube.objects) == {(NS, "someone-elses")}


@pytest.mark.parametrize(
    "cfg",
    [
        _cluster_config(),
        _calibrated("v0002-abcdef01"),
        _cluster_config(health={"enabled": False}),
        _cluster_config(entropy={"enabled": False}, attack_signature=False),
    ],
    ids=["build-time", "calibrated", "no-health-alerts", "fewer-detection-alerts"],
)
def test_every_rule_is_in_exactly_one_of_the_two_objects(cfg: RobustloopConfig) -> None:
    """The chart's part and robustloop's hold every rule of the rendered rules once: no alert
    lost, none doubled; every alert of both carries the namespace; only robustloop's part
    names a version or a calibrated threshold, and it holds every alert that remediates."""
    fixed = _namespaced(prometheus_rule_groups(cfg, "fixed"))
    calibrated = calibrated_groups(cfg, NS)
    whole = prometheus_rule_groups(cfg)

    def rules(groups: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(g["name"], r.get("alert") or r["record"]) for g in groups for r in g["rules"]]

    assert sorted(rules(fixed) + rules(calibrated)) == sorted(rules(whole))
    assert not set(rules(fixed)) & set(rules(calibrated))
    for group in fixed + calibrated:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["namespace"] == NS, rule["alert"]
    fixed_alerts = {name for _, name in rules(fixed)}
    assert fixed_alerts <= set(HEALTH_ALERT_NAMES)
    assert "version=" not in str(fixed), "the chart's rules name no version"
    remediating = [
        r["alert"]
        for g in whole
        for r in g["rules"]
        if r.get("labels", {}).get("remediation") == "adversarial-training"
    ]
    assert remediating and set(remediating) <= {name for _, name in rules(calibrated)}


def test_the_committed_fixed_rules_are_the_fixed_part_of_the_cluster_rules() -> None:
    whole = yaml.safe_load((CLUSTER_DIR / "robustloop.rules.yaml").read_text())["groups"]
    fixed = yaml.safe_load((CLUSTER_DIR / FIXED_RULES_FILE).read_text())["groups"]
    assert fixed == prometheus_rule_groups(_cluster_config(), "fixed")
    assert whole == prometheus_rule_groups(_cluster_config())


@pytest.mark.parametrize(
    ("rules", "verb"),
    [
        ([], "get"),
        ([{"apiGroups": ["monitoring.coreos.com"], "resources": ["prometheusrules"],
           "verbs": ["get"]}], "create"),
        ([{"apiGroups": ["monitoring.coreos.com"], "resources": ["prometheusrules"],
           "verbs": ["get", "create"], "resourceNames": [OWNER, NAME]}], "create"),
    ],
    ids=["nothing", "no-create", "create-by-name"],
)  # fmt: skip
def test_a_forbidden_request_names_the_verb_and_the_role(
    validator: Any, rules: list[dict[str, Any]], verb: str
) -> None:
    """A Role that lacks a verb the publication needs: HTTP 403, the verb and what the chart's
    Role grants. resourceNames cannot allow a create (the third case), as in Kubernetes."""
    with KubeStandIn(validator, rules=rules) as kube:
        kube.add_rule(NS, OWNER, [])
        with pytest.raises(PublishError) as caught:
            publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=_client(kube))
        assert (NS, NAME) not in kube.objects
    message = str(caught.value)
    assert "HTTP 403 Forbidden" in message and f"cannot {verb} resource" in message
    assert "chart's Role" in message and "\n" not in message


def test_a_refused_token_is_a_clear_error(validator: Any) -> None:
    with KubeStandIn(validator, token="the-workflows-token") as kube:
        kube.add_rule(NS, OWNER, [])
        with pytest.raises(PublishError, match=r"HTTP 401 Unauthorized.*token"):
            publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=_client(kube))
        assert (NS, NAME) not in kube.objects


def test_an_unreachable_api_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = api_client({API_ENV: f"http://127.0.0.1:{port}"})
    with pytest.raises(PublishError, match="cannot reach the Kubernetes API to read"):
        publish_rules(_calibrated("v0002-abcdef01"), TARGET, api=api)


def test_the_target_comes_from_the_three_variables_or_none() -> None:
    env = {RULE_ENV: NAME, OWNER_ENV: OWNER, NAMESPACE_ENV: NS}
    assert target_from_env({}) is None
    assert target_from_env(env) == Target(NS, NAME, OWNER, {})
    labelled = target_from_env({**env, LABELS_ENV: '{"release": "kps"}'})
    assert labelled is not None and labelled.labels == {"release": "kps"}
    for missing in env:
        partial = {k: v for k, v in env.items() if k != missing}
        with pytest.raises(PublishError, match=f"missing: {missing}"):
            target_from_env(partial)
    with pytest.raises(PublishError, match="never the one the chart renders"):
        target_from_env({**env, RULE_ENV: OWNER})
    for bad in ("{", '["release"]', '{"release": 1}'):
        with pytest.raises(PublishError, match=LABELS_ENV):
            target_from_env({**env, LABELS_ENV: bad})


def test_outside_a_pod_without_an_address_it_says_so() -> None:
    with pytest.raises(PublishError, match=f"not in a Kubernetes pod and {API_ENV} is unset"):
        api_client({})


# -- the stand-in keeps the API server's contract for these calls -----------------------------


def test_the_standin_answers_as_the_api_server_does(kube: KubeStandIn) -> None:
    """What the publisher relies on, checked on the stand-in with the client alone: a missing
    object is a 404 Status; a second create a 409 AlreadyExists; a replace without
    resourceVersion a 422, with a stale one a 409 Conflict; an unknown field, under
    fieldValidation=Strict, a 400."""
    api = client.CustomObjectsApi(_client(kube))
    args = ("monitoring.coreos.com", "v1", NS, "prometheusrules")

    def refused(call: Any, *more: Any, **kwargs: Any) -> tuple[int, str]:
        with pytest.raises(ApiException) as caught:
            call(*args, *more, **kwargs)
        status = yaml.safe_load(caught.value.body)
        assert status["kind"] == "Status" and status["code"] == caught.value.status
        return int(caught.value.status), str(status["reason"])

    assert refused(api.get_namespaced_custom_object, NAME) == (404, "NotFound")
    body = {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": {"name": NAME},
        "spec": {"groups": []},
    }
    created = api.create_namespaced_custom_object(*args, body)
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    assert refused(api.create_namespaced_custom_object, body) == (409, "AlreadyExists")
    assert refused(api.replace_namespaced_custom_object, NAME, body) == (422, "Invalid")
    stale = {**body, "metadata": {"name": NAME, "resourceVersion": "1"}}
    assert refused(api.replace_namespaced_custom_object, NAME, stale) == (409, "Conflict")
    typo = {**body, "metadata": {"name": "typo"}, "spec": {"groupz": []}}
    strict = {"field_validation": "Strict"}
    assert refused(api.create_namespaced_custom_object, typo, **strict) == (400, "BadRequest")
    ownerless = {**body, "metadata": {"name": "x", "ownerReferences": [{"name": OWNER}]}}
    assert refused(api.create_namespaced_custom_object, ownerless) == (422, "Invalid")
