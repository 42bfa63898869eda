"""Publish recalibrated alert rules to the cluster's PrometheusRule (Prometheus Operator).

On one machine Prometheus reads its rules from a file that the recalibration rewrites. In a
cluster it evaluates the release's PrometheusRule object, which the Helm chart renders from the
thresholds known at build time. After a promotion the workflow's promote step recalibrates the
label-free thresholds for the new model and calls :func:`publish_rules`, which replaces the
object's ``spec.groups`` with the newly rendered groups (a JSON merge patch: the object's labels
and annotations stay); the Prometheus Operator then reloads Prometheus.

The chart tells the step which object is the release's through two environment variables,
:data:`RULE_ENV` and :data:`NAMESPACE_ENV`, and lets the workflow's service account patch that
one object and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

GROUP = "monitoring.coreos.com"
VERSION = "v1"
PLURAL = "prometheusrules"

RULE_ENV = "ROBUSTLOOP_PROMETHEUS_RULE"
"""Name of the release's PrometheusRule (set by the chart on the workflow's pods)."""

NAMESPACE_ENV = "ROBUSTLOOP_NAMESPACE"
"""Namespace of that PrometheusRule."""

API_ENV = "ROBUSTLOOP_KUBERNETES_API"
"""The API server's address for a step run outside a pod (for example ``kubectl proxy``'s
``http://127.0.0.1:8001``); unset, the pod's in-cluster config and service account token."""

MERGE_PATCH = "application/merge-patch+json"


class PublishError(Exception):
    """The rules could not be published; the message says why and what to check."""


def target_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(namespace, name) of the PrometheusRule to update, or None outside a chart's workflow.

    Raises:
        PublishError: only one of the two variables is set.
    """
    name, namespace = environ.get(RULE_ENV, ""), environ.get(NAMESPACE_ENV, "")
    if not name and not namespace:
        return None
    if not name or not namespace:
        raise PublishError(
            f"set both {RULE_ENV} and {NAMESPACE_ENV} (got {RULE_ENV}={name!r}, "
            f"{NAMESPACE_ENV}={namespace!r})"
        )
    return namespace, name


def read_groups(rules_file: Path) -> list[dict[str, Any]]:
    """The rule groups of a rendered rules file (``robustloop rules render``'s output).

    Raises:
        PublishError: the file is missing, is not YAML, or has no groups.
    """
    try:
        document = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PublishError(f"cannot read {rules_file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PublishError(f"{rules_file} is not valid YAML: {exc}") from None
    groups = document.get("groups") if isinstance(document, dict) else None
    if not isinstance(groups, list) or not groups:
        raise PublishError(f"{rules_file} has no rule groups; nothing to publish")
    return groups


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


def publish_rules(rules_file: Path, *, namespace: str, name: str, api: Any | None = None) -> None:
    """Replace ``spec.groups`` of PrometheusRule ``namespace/name`` with ``rules_file``'s groups.

    Args:
        rules_file: a rendered rules file (``groups:`` at the top).
        namespace: the PrometheusRule's namespace.
        name: its name.
        api: a ``kubernetes.client.ApiClient``; None for :func:`api_client`'s.

    Raises:
        PublishError: bad rules file, no API to talk to, the API unreachable, or the API
            refused (the message names the object and what to check).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    groups = read_groups(rules_file)
    for group in groups:  # as the chart renders them: the operator's route matches on namespace
        for rule in group.get("rules", []):
            if isinstance(rule, dict) and "alert" in rule:
                rule["labels"] = {**rule.get("labels", {}), "namespace": namespace}
    if api is None:
        api = api_client()
    target = f"PrometheusRule {namespace}/{name}"
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"groups": groups}},
            _content_type=MERGE_PATCH,
        )
    except ApiException as exc:
        hints = {
            403: "the workflow's service account may not patch it (the chart's workflow Role "
            "grants that when prometheusRule.enabled is true)",
            404: "it does not exist (is prometheusRule.enabled true in the release?)",
        }
        hint = hints.get(exc.status or 0, (exc.body or "")[:300])
        raise PublishError(
            f"cannot update {target}: HTTP {exc.status} {exc.reason}: {hint}"
        ) from None
    except HTTPError as exc:
        raise PublishError(f"cannot reach the Kubernetes API to update {target}: {exc}") from None
