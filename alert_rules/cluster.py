"""Publish the calibrated alert rules to a PrometheusRule robustloop owns (Prometheus Operator).

On one machine Prometheus reads its rules from a file that the recalibration rewrites. In a
cluster the rules are two PrometheusRule objects, so that no object has two writers:

- the Helm chart's, ``<release>-robustloop``, holds the rules that no calibration changes
  (``prometheus_rule_groups(cfg, "fixed")``: the loop's own health alerts). Helm, or the GitOps
  controller that renders the chart, alone writes it; robustloop only reads its ``uid``.
- ``<release>-robustloop-calibrated`` holds the others (``"calibrated"``): the detection group,
  whose label-free thresholds and version selector come from the calibration of the version in
  production, and the health alert that names that version. robustloop alone writes it, with
  :func:`publish_rules`: the chart's bootstrap Job after every install, upgrade and rollback of
  the release, and the workflow's promote and guard steps after a promotion or a rollback.

Helm never renders the second object, so ``helm upgrade`` (a server-side apply in Helm 4) has
no field of it to conflict over, and a GitOps controller has nothing of it to compare. Its
``ownerReferences`` name the chart's PrometheusRule (same namespace), so the garbage collector
deletes it with the release (``helm uninstall``, or an upgrade to ``prometheusRule.enabled:
false``). The two parts are complementary: every rule is in exactly one of them, and every alert
of both carries the release's ``namespace`` label, which the Prometheus Operator's default
AlertmanagerConfig route matches on.

How it is written: created (``POST``), or replaced (``PUT`` with the ``resourceVersion`` just
read), with ``fieldManager=robustloop``. A create that another writer beat (409 AlreadyExists)
or a replace after another writer's change (409 Conflict) is retried from a fresh read, so two
writers never interleave half of each; an object that already holds what would be written is
left alone. A replace rather than a patch: robustloop owns the whole object, and a replace sets
its labels, owner and groups to exactly what is rendered.

The chart names the objects with environment variables on the pods that publish
(:data:`RULE_ENV`, :data:`OWNER_ENV`, :data:`NAMESPACE_ENV`, :data:`LABELS_ENV`), and its Role
lets them get the owner, get and update the calibrated object, and create PrometheusRules in
the namespace (Kubernetes RBAC cannot restrict ``create`` to a name).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from alert_rules.render import prometheus_rule_groups
from robustloop.config import RobustloopConfig

GROUP = "monitoring.coreos.com"
VERSION = "v1"
PLURAL = "prometheusrules"
KIND = "PrometheusRule"
API_VERSION = f"{GROUP}/{VERSION}"

FIELD_MANAGER = "robustloop"
"""The field manager of robustloop's writes (``metadata.managedFields``), and the value of the
object's ``app.kubernetes.io/managed-by`` label."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

ATTEMPTS = 5
"""Reads and writes tried before giving up on an object that other writers keep changing."""

RULE_ENV = "ROBUSTLOOP_PROMETHEUS_RULE"
"""Name of the PrometheusRule that robustloop writes (set by the chart on the pods that publish)."""

OWNER_ENV = "ROBUSTLOOP_PROMETHEUS_RULE_OWNER"
"""Name of the chart's PrometheusRule, its owner: the garbage collector deletes both together."""

NAMESPACE_ENV = "ROBUSTLOOP_NAMESPACE"
"""Namespace of both."""

LABELS_ENV = "ROBUSTLOOP_PROMETHEUS_RULE_LABELS"
"""Labels of the written object, a JSON object: those the Prometheus' ruleSelector wants."""

API_ENV = "ROBUSTLOOP_KUBERNETES_API"
"""The API server's address for a step run outside a pod (for example ``kubectl proxy``'s
``http://127.0.0.1:8001``); unset, the pod's in-cluster config and service account token."""

Outcome = Literal["created", "replaced", "unchanged"]


class PublishError(Exception):
    """The rules could not be published; the message says why and what to check."""


@dataclass(frozen=True)
class Target:
    """The PrometheusRule robustloop writes, and the chart's PrometheusRule that owns it.

    Attributes:
        namespace: namespace of both.
        name: the object robustloop writes.
        owner: the chart's object, named in the written one's ``ownerReferences``.
        labels: labels of the written object (besides ``app.kubernetes.io/managed-by``).
    """

    namespace: str
    name: str
    owner: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{KIND} {self.namespace}/{self.name}"


def target_from_env(environ: Mapping[str, str] = os.environ) -> Target | None:
    """The :class:`Target` the chart names, or None outside a chart's pod (none of it set).

    Raises:
        PublishError: some of :data:`RULE_ENV`, :data:`OWNER_ENV` and :data:`NAMESPACE_ENV` are
            set and not all; the written object would be the owner; bad :data:`LABELS_ENV`.
    """
    names = {key: environ.get(key, "") for key in (RULE_ENV, OWNER_ENV, NAMESPACE_ENV)}
    if not any(names.values()):
        return None
    missing = [key for key, value in names.items() if not value]
    if missing:
        raise PublishError(
            f"set {', '.join(names)} together (missing: {', '.join(missing)}); the Helm "
            "chart sets them on its bootstrap Job and workflow steps"
        )
    if names[RULE_ENV] == names[OWNER_ENV]:
        raise PublishError(
            f"{RULE_ENV} and {OWNER_ENV} both name {names[RULE_ENV]!r}: robustloop writes its "
            "own PrometheusRule, never the one the chart renders"
        )
    return Target(
        namespace=names[NAMESPACE_ENV],
        name=names[RULE_ENV],
        owner=names[OWNER_ENV],
        labels=_labels(environ.get(LABELS_ENV, "")),
    )


def _labels(text: str) -> dict[str, str]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PublishError(f"{LABELS_ENV} is not JSON ({exc}): {text[:100]!r}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PublishError(f"{LABELS_ENV} must be a JSON object of strings: {text[:100]!r}")
    return value


def calibrated_groups(cfg: RobustloopConfig, namespace: str) -> list[dict[str, Any]]:
    """The rule groups robustloop publishes for ``cfg``: those a calibration changes, every alert
    labelled ``namespace`` (as the chart labels the alerts of its own PrometheusRule)."""
    groups = prometheus_rule_groups(cfg, "calibrated")
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**rule.get("labels", {}), "namespace": namespace}
    return groups


def rule_object(cfg: RobustloopConfig, target: Target, owner_uid: str) -> dict[str, Any]:
    """The whole PrometheusRule written for ``cfg``: labels, owner and the calibrated groups."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": {**target.labels, MANAGED_BY_LABEL: FIELD_MANAGER},
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": KIND, "name": target.owner, "uid": owner_uid}
            ],
        },
        "spec": {"groups": calibrated_groups(cfg, target.namespace)},
    }


def api_client(environ: Mapping[str, str] = os.environ) -> Any:
    """A ``kubernetes.client.ApiClient`` for :data:`API_ENV`'s address, else the pod's own.

    Raises:
        PublishError: neither is available.
    """
    from kubernetes import client, config

    address = environ.get(API_ENV)
    if address:
        configuration = client.Configuration(host=address.rstrip("/"))
        configuration.retries = 1  # fail fast: the step reports, the user reruns
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException as exc:
        raise PublishError(f"not in a Kubernetes pod and {API_ENV} is unset ({exc})") from None
    return client.ApiClient()


def publish_rules(cfg: RobustloopConfig, target: Target, *, api: Any | None = None) -> Outcome:
    """Write the calibrated rule groups of ``cfg`` into ``target``, creating it if needed.

    Args:
        cfg: the config whose ``alerts`` section holds the calibration in force.
        target: the object to write and its owner.
        api: a ``kubernetes.client.ApiClient``; None for :func:`api_client`'s.

    Returns:
        ``created``, ``replaced``, or ``unchanged`` (it held these rules already).

    Raises:
        PublishError: no API to talk to, the API unreachable, the owner missing, the API
            refused (the message names the object and what to check), or the object kept
            changing under :data:`ATTEMPTS` writes.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if api is None:
        api = api_client()
    objects = client.CustomObjectsApi(api)
    owner = f"{KIND} {target.namespace}/{target.owner}"
    action = f"read {owner}"
    try:
        found = _get(objects, target.namespace, target.owner)
        if found is None:
            raise PublishError(
                f"{owner}, which owns {target}, does not exist: is prometheusRule.enabled true "
                "in the release?"
            )
        desired = rule_object(cfg, target, str(found["metadata"]["uid"]))
        for _ in range(ATTEMPTS):
            action = f"read {target}"
            live = _get(objects, target.namespace, target.name)
            try:
                if live is None:
                    action = f"create {target}"
                    objects.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        target.namespace,
                        PLURAL,
                        desired,
                        field_manager=FIELD_MANAGER,
                        field_validation="Strict",
                    )
                    return "created"
                if _holds(live, desired):
                    return "unchanged"
                action = f"replace {target}"
                body = copy.deepcopy(desired)
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                objects.replace_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    target.namespace,
                    PLURAL,
                    target.name,
                    body,
                    field_manager=FIELD_MANAGER,
                    field_validation="Strict",
                )
                return "replaced"
            except ApiException as exc:
                if exc.status != 409:  # AlreadyExists or Conflict: another writer; read again
                    raise
    except ApiException as exc:
        raise PublishError(_refusal(action, target, exc)) from None
    except HTTPError as exc:
        raise PublishError(f"cannot reach the Kubernetes API to {action}: {exc}") from None
    raise PublishError(
        f"{target} changed under each of {ATTEMPTS} attempts to write it (another writer); "
        "run again"
    )


def _get(objects: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when the API answers 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        found: dict[str, Any] = objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _holds(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether ``live`` has the labels, owners and groups that would be written."""
    keys = ("labels", "ownerReferences")
    meta, wanted = live.get("metadata", {}), desired["metadata"]
    return all(meta.get(k) == wanted[k] for k in keys) and live.get("spec") == desired["spec"]


def _refusal(action: str, target: Target, exc: Any) -> str:
    """One line for an API refusal: what was tried, the status, and what to check."""
    hints = {
        401: "the API did not accept the service account's token",
        403: f"the chart's Role (prometheusRule.enabled) grants get on {target.owner}, get and "
        f"update on {target.name}, and create on prometheusrules, to the workflow's and the "
        "bootstrap Job's service accounts",
        404: "the namespace or the PrometheusRule CRD is missing (is the Prometheus Operator "
        "installed?)",
    }
    try:
        message = str(json.loads(exc.body or "{}").get("message", "")).replace("\n", " ")
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    said = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    details = "; ".join(part for part in (message[:300], hints.get(exc.status or 0, "")) if part)
    return f"cannot {action}: {said}" + (f": {details}" if details else "")
