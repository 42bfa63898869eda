"""The Helm chart (helm/robustloop): lint, render every ci/ scenario, validate every object.

What a cluster would see is checked without a cluster: core kinds against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: an unknown field is an error, not silently pruned),
Prometheus Operator kinds against their CRD schemas and the WorkflowTemplate against the Argo
schema (both made strict here, since neither rejects unknown keys by itself) and Hera's models.
Then what the chart promises: least-privilege RBAC, the receiver's token wired from one Secret to
both the receiver and Alertmanager, the feedback token from its own Secret to the server alone,
the PrometheusRule and the WorkflowTemplate equal to the generated files, hardened pods,
NetworkPolicies that admit only Alertmanager and Prometheus to the receiver, and only Prometheus
and the listed clients to the model server (never everyone).

Helm comes from ``make helm`` (``.venv/bin/helm``) or PATH; without it these tests skip, unless
``ROBUSTLOOP_REQUIRE_SCHEMAS=1`` (CI), where they fail.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from alert_rules import REMEDIATION_LABEL, REMEDIATION_VALUE
from robustloop.config import RobustloopConfig
from tests.support import load_crd_validators
from workflows.contract import PARAMETERS, TEMPLATE_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "helm" / "robustloop"
SCENARIOS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "rl"
NAMESPACE = "robustloop"
FULLNAME = f"{RELEASE}-robustloop"
# The chart's kubeVersion floor and the newest Kubernetes that kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
CHART_COPIES = {
    "files/robustloop.fixed.rules.yaml": REPO_ROOT
    / "alert_rules"
    / "cluster"
    / "robustloop.fixed.rules.yaml",
    "files/robustloop.alerts.yaml": REPO_ROOT
    / "alert_rules"
    / "cluster"
    / "robustloop.alerts.yaml",
    "files/robustloop-remediate.yaml": REPO_ROOT / "workflows" / "robustloop-remediate.yaml",
}
# Where Argo places one step's pods (io.argoproj.workflow.v1alpha1.Template) or every step's
# (WorkflowSpec; a template's own field replaces it for that step), and what workflow.gpu places.
PLACEMENT = ("nodeSelector", "tolerations", "affinity")
GPU_STEP = "harden"
GPU_RESOURCE = "nvidia.com/gpu"

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# helm


def _find_helm() -> str | None:
    beside_python = Path(sys.executable).parent / "helm"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("helm")


def _run_helm(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args, str(chart)], capture_output=True, text=True, timeout=120, check=False
    )


def _template(helm: str, *args: str, chart: Path = CHART) -> list[Obj]:
    done = _run_helm(helm, "template", RELEASE, "--namespace", NAMESPACE, *args, chart=chart)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _values_file(scenario: str) -> str:
    return str(CHART / "ci" / f"{scenario}-values.yaml")


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[Obj]]:
    """Every ci/ scenario, rendered once: scenario name -> its objects."""
    return {s: _template(helm, "--values", _values_file(s)) for s in SCENARIOS}


def _one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(deployment: Obj, name: str) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _env(container: Obj, name: str) -> Obj:
    matches = [e for e in container.get("env", []) if e["name"] == name]
    assert len(matches) == 1, f"container {container['name']}: expected one env var {name}"
    return matches[0]


def _steps(workflow_template: Obj) -> list[Obj]:
    """The script or container of every template that runs a pod."""
    templates = workflow_template["spec"]["templates"]
    return [
        t.get("script") or t["container"] for t in templates if "script" in t or "container" in t
    ]


def _resources(template: Obj) -> Obj:
    """The resources of a template's script or container ({} for a DAG)."""
    step = template.get("script") or template.get("container") or {}
    return dict(step.get("resources", {}))


def _mentions(obj: Any, word: str, path: str = "") -> list[str]:
    """The paths in ``obj`` where ``word`` occurs, case-insensitively, in a key or a value."""
    if isinstance(obj, dict):
        return [
            hit
            for key, value in obj.items()
            for hit in ([f"{path}/{key}"] if word in str(key).lower() else [])
            + _mentions(value, word, f"{path}/{key}")
        ]
    if isinstance(obj, list):
        return [hit for i, item in enumerate(obj) for hit in _mentions(item, word, f"{path}/{i}")]
    return [path] if isinstance(obj, str) and word in obj.lower() else []


def _gpu_values(scenario: str) -> Obj:
    """``workflow.gpu`` as the chart sees it: the scenario's keys over the chart's defaults."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["workflow"]["gpu"]
    scenario_values = yaml.safe_load(Path(_values_file(scenario)).read_text()) or {}
    return defaults | scenario_values.get("workflow", {}).get("gpu", {})


# --------------------------------------------------------------------------------------------
# schemas


@pytest.fixture(scope="session")
def crd_validators(schemas: Path) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator of each Prometheus Operator CRD's served versions."""
    return load_crd_validators(schemas)


def _kube_problems(obj: Obj) -> list[str]:
    """What kubernetes-validate (strict) rejects in a core object, for every Kubernetes tested."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where} (Kubernetes {version}): {exc}")
    return problems


def _errors(validator: jsonschema.protocols.Validator, obj: Obj) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
        for e in validator.iter_errors(obj)
    ]


def _argo_problems(validator: jsonschema.protocols.Validator, workflow_template: Obj) -> list[str]:
    """What the Argo schema rejects, and whether Hera's models know every key (a dropped key
    would make the round trip differ)."""
    from hera.workflows.models import WorkflowTemplate

    problems = _errors(validator, workflow_template)
    model = WorkflowTemplate.model_validate(workflow_template)
    if model.model_dump(by_alias=True, exclude_none=True, mode="json") != workflow_template:
        problems.append("<root>: does not round-trip through Hera's models")
    return problems


# --------------------------------------------------------------------------------------------
# lint and render


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_lints_cleanly_for_every_scenario(helm: str, scenario: str) -> None:
    done = _run_helm(helm, "lint", "--strict", "--values", _values_file(scenario))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_there_are_the_four_ci_scenarios() -> None:
    assert set(SCENARIOS) >= {"default", "gpu", "existing-pvc", "external-argo"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid(
    rendered: dict[str, list[Obj]],
    scenario: str,
    crd_validators: dict[tuple[str, str], jsonschema.protocols.Validator],
    argo_validator: jsonschema.protocols.Validator,
) -> None:
    problems: list[str] = []
    kinds = set()
    for obj in rendered[scenario]:
        api, kind, name = obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
        kinds.add(kind)
        where = f"{kind}/{name}"
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{where} has no namespace"
        if api.startswith("monitoring.coreos.com/"):
            assert (api, kind) in crd_validators, f"{where}: no CRD for {api} {kind}"
            problems += [f"{where}: {e}" for e in _errors(crd_validators[(api, kind)], obj)]
        elif api.startswith("argoproj.io/"):
            assert kind == "WorkflowTemplate", f"{where}: unexpected Argo kind"
            problems += [f"{where}: {e}" for e in _argo_problems(argo_validator, obj)]
        else:
            problems += _kube_problems(obj)
    assert not problems, "\n".join(problems)
    expected = {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "PrometheusRule",
        "AlertmanagerConfig",
        "WorkflowTemplate",
    }
    assert expected <= kinds, f"{scenario}: missing {expected - kinds}"


def test_strict_schemas_catch_a_misspelt_field(
    rendered: dict[str, list[Obj]],
    crd_validators: dict[tuple[str, str], jsonschema.protocols.Validator],
    argo_validator: jsonschema.protocols.Validator,
) -> None:
    """The validation above can fail: a typo in a custom resource is reported, not pruned."""
    rule = copy.deepcopy(_one(rendered["default"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    assert _errors(crd_validators[("monitoring.coreos.com/v1", "PrometheusRule")], rule)
    template = copy.deepcopy(_one(rendered["default"], "WorkflowTemplate"))
    template["spec"]["serviceAcountName"] = "x"
    assert _errors(argo_validator, template)
    deployment = copy.deepcopy(_one(rendered["default"], "Deployment", f"{FULLNAME}-server"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------------------------
# generated content: the chart's copies and what is rendered from them


@pytest.mark.parametrize("copy_path", sorted(CHART_COPIES))
def test_chart_copies_equal_their_sources(copy_path: str) -> None:
    source = CHART_COPIES[copy_path]
    assert source.is_file(), f"{source} is missing: run `make generate`"
    assert (CHART / copy_path).read_bytes() == source.read_bytes(), (
        f"helm/robustloop/{copy_path} differs from {source.relative_to(REPO_ROOT)}: "
        "run `make chart-sync`"
    )


def _source_groups() -> list[Obj]:
    """The chart's part of the cluster's rules: those no calibration changes."""
    source = yaml.safe_load(CHART_COPIES["files/robustloop.fixed.rules.yaml"].read_text())
    return list(source["groups"])


def _all_source_groups() -> list[Obj]:
    """Every rule of the cluster, as generated (before any calibration)."""
    path = REPO_ROOT / "alert_rules" / "cluster" / "robustloop.rules.yaml"
    return list(yaml.safe_load(path.read_text())["groups"])


def _calibrated_groups(objects: list[Obj]) -> list[Obj]:
    """What robustloop publishes to its own PrometheusRule for the rendered config, before any
    calibration (alert_rules.cluster, as the bootstrap Job does without a production model)."""
    from alert_rules.cluster import calibrated_groups

    return calibrated_groups(_config(objects), NAMESPACE)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prometheus_rule_equals_the_generated_alert_rules(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """The generated fixed groups, unchanged but for the release's namespace on every alert."""
    expected = _source_groups()
    for group in expected:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**rule.get("labels", {}), "namespace": NAMESPACE}
    rule = _one(rendered[scenario], "PrometheusRule")
    assert rule["spec"] == {"groups": expected}


def _alerts(groups: list[Obj]) -> list[Obj]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def _operator_route_matches(route: Obj, namespace: str, labels: dict[str, str]) -> bool:
    """Whether Alertmanager sends an alert with ``labels`` down an AlertmanagerConfig's route
    as the Prometheus Operator renders it with its default matcher strategy, OnNamespace: the
    route's own matchers and, added by the operator, ``namespace="<the object's namespace>"``."""
    operator_added = {"name": "namespace", "value": namespace, "matchType": "="}
    for matcher in [*route.get("matchers", []), operator_added]:
        value, wanted = labels.get(matcher["name"], ""), matcher["value"]
        matched = {
            "=": value == wanted,
            "!=": value != wanted,
            "=~": re.fullmatch(wanted, value) is not None,
            "!~": re.fullmatch(wanted, value) is None,
        }[matcher.get("matchType", "=")]
        if not matched:
            return False
    return True


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_alert_carries_the_namespace_the_operators_route_matcher_wants(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """GIVEN the Prometheus Operator's default AlertmanagerConfig matcher strategy (OnNamespace),
    which adds namespace="<release namespace>" to the route, and rules that aggregate the
    namespace away THEN every alert, of the chart's PrometheusRule and of the one robustloop
    publishes, carries the release's namespace as a static label, so the remediating alerts
    reach the receiver, and the others do not."""
    objects = rendered[scenario]
    config = _one(objects, "AlertmanagerConfig")
    namespace = config["metadata"]["namespace"]
    chart_alerts = _alerts(_one(objects, "PrometheusRule")["spec"]["groups"])
    assert chart_alerts, "the PrometheusRule has no alerts"
    alerts = chart_alerts + _alerts(_calibrated_groups(objects))
    for alert in alerts:
        assert alert["labels"]["namespace"] == namespace == NAMESPACE, alert["alert"]
        routed = _operator_route_matches(config["spec"]["route"], namespace, alert["labels"])
        remediates = alert["labels"].get(REMEDIATION_LABEL) == REMEDIATION_VALUE
        assert routed == remediates, f"{alert['alert']}: routed={routed}"
    # The generated rules alone would never match: why the chart adds the label.
    for alert in _alerts(_all_source_groups()):
        assert not _operator_route_matches(config["spec"]["route"], namespace, alert["labels"])


def _prometheus_selected(objects: list[Obj]) -> dict[str, Obj]:
    kinds = {"PrometheusRule", "ServiceMonitor", "PodMonitor"}
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["labels"]
        for o in objects
        if o["kind"] in kinds
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kube_prometheus_stacks_default_selectors_pick_the_rule_and_monitors(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """kube-prometheus-stack's Prometheus selects, by default, the PrometheusRules,
    ServiceMonitors and PodMonitors labelled release=<its release name>: the chart's rule and
    both monitors carry release=kube-prometheus-stack (prometheusRelease)."""
    selected = _prometheus_selected(rendered[scenario])
    assert set(selected) == {
        f"PrometheusRule/{FULLNAME}",
        f"{'PodMonitor' if scenario == 'external-argo' else 'ServiceMonitor'}/{FULLNAME}-server",
        f"ServiceMonitor/{FULLNAME}-receiver",
    }
    for where, labels in selected.items():
        assert labels.get("release") == "kube-prometheus-stack", where


def test_the_release_label_follows_prometheus_release_and_each_objects_labels(helm: str) -> None:
    """prometheusRelease names another stack; an object's own `release` overrides it, "" drops
    it there; an empty prometheusRelease puts it nowhere."""
    objects = _template(
        helm,
        "--set",
        "prometheusRelease=monitoring",
        "--set",
        "prometheusRule.labels.release=rules-stack",
        "--set",
        "receiver.monitor.labels.release=",
        "--set",
        "server.monitor.labels.team=ml",
    )
    selected = _prometheus_selected(objects)
    assert selected[f"PrometheusRule/{FULLNAME}"]["release"] == "rules-stack"
    assert selected[f"ServiceMonitor/{FULLNAME}-server"]["release"] == "monitoring"
    assert selected[f"ServiceMonitor/{FULLNAME}-server"]["team"] == "ml"
    assert "release" not in selected[f"ServiceMonitor/{FULLNAME}-receiver"]

    objects = _template(helm, "--set", "prometheusRelease=")
    for where, labels in _prometheus_selected(objects).items():
        assert "release" not in labels, where


def test_prometheus_rule_alerts_are_routed_to_the_receiver(
    rendered: dict[str, list[Obj]],
) -> None:
    """Some alert robustloop publishes carries the label the AlertmanagerConfig routes on."""
    objects = rendered["default"]
    matchers = _one(objects, "AlertmanagerConfig")["spec"]["route"]["matchers"]
    assert matchers == [{"name": REMEDIATION_LABEL, "value": REMEDIATION_VALUE, "matchType": "="}]
    alerts = _alerts(_calibrated_groups(objects))
    assert alerts, "robustloop publishes no alerts"
    routed = [a for a in alerts if a.get("labels", {}).get(REMEDIATION_LABEL) == REMEDIATION_VALUE]
    assert routed, f"no alert carries {REMEDIATION_LABEL}={REMEDIATION_VALUE}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_workflow_template_is_the_golden_one_completed_for_the_release(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    golden = yaml.safe_load((REPO_ROOT / "workflows" / "robustloop-remediate.yaml").read_text())
    objects = rendered[scenario]
    template = _one(objects, "WorkflowTemplate")
    spec = template["spec"]
    assert template["metadata"]["name"] == TEMPLATE_NAME == golden["metadata"]["name"]
    assert spec["serviceAccountName"] == f"{FULLNAME}-workflow"
    assert _one(objects, "ServiceAccount", spec["serviceAccountName"])
    # The steps are the golden ones: same DAG, entry points, retries, mutex, exit handler.
    for key in set(golden["spec"]) - {"templates", "volumes", "arguments"}:
        assert spec.get(key) == golden["spec"][key], f"spec.{key} changed"
    assert [t["name"] for t in spec["templates"]] == [
        t["name"] for t in golden["spec"]["templates"]
    ]
    for ours, theirs in zip(spec["templates"], golden["spec"]["templates"], strict=True):
        for key in set(theirs) - {"script", "container"}:
            assert ours.get(key) == theirs[key], f"template {ours['name']}: {key} changed"
        ours_step = ours.get("script") or ours.get("container") or {}
        theirs_step = theirs.get("script") or theirs.get("container") or {}
        for key in ("command", "args", "source"):
            assert ours_step.get(key) == theirs_step.get(key), f"{ours['name']}: {key} changed"
        for variable in theirs_step.get("env", []):
            assert variable in ours_step["env"], f"{ours['name']}: env {variable['name']} lost"
    parameters = {p["name"]: p.get("value") for p in spec["arguments"]["parameters"]}
    assert set(parameters) == set(PARAMETERS)
    # Completed for the release: image; the server's store claim; the release's config.
    server = _one(objects, "Deployment", f"{FULLNAME}-server")
    image = _container(server, "server")["image"]
    steps = _steps(template)
    assert steps, "the WorkflowTemplate runs no pod"
    own_images = {
        name: step["image"]
        for name, step in _scenario_values(scenario).get("workflow", {}).get("steps", {}).items()
        if "image" in step
    }
    for template_ in spec["templates"]:
        step_ = template_.get("script") or template_.get("container")
        if step_ is not None and template_["name"] not in own_images:
            assert step_["image"] == image, f"{template_['name']} is not in the server's image"
    volumes = {v["name"]: v for v in spec["volumes"]}
    server_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in server["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    config = _config(objects)
    for step in steps:
        env = {e["name"]: e.get("value") for e in step["env"]}
        config_file = Path(str(env["ROBUSTLOOP_CONFIG"]))
        mounts = {m["mountPath"]: volumes[m["name"]] for m in step["volumeMounts"]}
        config_volume = mounts[str(config_file.parent)]
        assert config_volume["configMap"]["name"] == f"{FULLNAME}-config"
        store_mounts = [
            path
            for path, volume in mounts.items()
            if volume.get("persistentVolumeClaim", {}).get("claimName") in server_claims
        ]
        assert len(store_mounts) == 1, "every step mounts the server's model store once"
        assert config.store.path.is_relative_to(store_mounts[0]), (
            f"store.path {config.store.path} is not on the store volume ({store_mounts[0]})"
        )


def test_workflow_parameter_and_resource_overrides(rendered: dict[str, list[Obj]]) -> None:
    values = yaml.safe_load(Path(_values_file("gpu")).read_text())
    template = _one(rendered["gpu"], "WorkflowTemplate")
    parameters = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    for name, value in values["workflow"]["parameters"].items():
        assert parameters[name] == str(value)
    by_name = {t["name"]: t for t in template["spec"]["templates"]}
    for name, step in values["workflow"]["steps"].items():
        assert name in by_name, f"ci/gpu-values.yaml names a template {name} the workflow lacks"
        for section, quantities in step.get("resources", {}).items():
            got = _resources(by_name[name])[section]
            assert {k: got.get(k) for k in quantities} == {k: str(v) for k, v in quantities.items()}


def test_gpu_values_put_only_the_harden_step_on_a_gpu_node(rendered: dict[str, list[Obj]]) -> None:
    """GIVEN workflow.gpu enabled (ci/gpu-values.yaml) WHEN the chart renders THEN the harden
    template alone gets the GPU limit, the node selector and the tolerations; evaluate, gate,
    promote, guard, the exit handler and the Workflow spec (every step) get none of them."""
    gpu = _gpu_values("gpu")
    assert gpu["enabled"] is True
    assert gpu["nodeSelector"] and gpu["tolerations"], "the scenario must exercise both"
    spec = _one(rendered["gpu"], "WorkflowTemplate")["spec"]
    assert not [field for field in PLACEMENT if field in spec], "no placement for every step"
    others = {t["name"]: t for t in spec["templates"]}
    harden = others.pop(GPU_STEP)
    assert _resources(harden)["limits"][GPU_RESOURCE] == "1"
    assert harden["nodeSelector"] == gpu["nodeSelector"]
    assert harden["tolerations"] == gpu["tolerations"]
    assert "affinity" not in harden
    assert _mentions(harden, "gpu"), "the search below finds a GPU where there is one"
    exit_steps = {task["template"] for task in others[spec["onExit"]]["dag"]["tasks"]}
    assert {"evaluate", "gate", "promote", "guard", spec["onExit"], *exit_steps} <= set(others)
    for name, template in others.items():
        assert not [field for field in PLACEMENT if field in template], f"{name} is placed"
        assert not _mentions(template, "gpu"), f"{name} mentions a GPU"
    server = _one(rendered["gpu"], "Deployment", f"{FULLNAME}-server")["spec"]["template"]["spec"]
    assert not [field for field in PLACEMENT if field in server], "the server stays on CPU nodes"


def test_default_values_put_nothing_on_a_gpu(rendered: dict[str, list[Obj]]) -> None:
    assert _gpu_values("default")["enabled"] is False
    objects = rendered["default"]
    for word in ("gpu", "nvidia"):
        assert not _mentions(objects, word), f"the default render mentions {word}"
    template = _one(objects, "WorkflowTemplate")
    for field in ("nodeSelector", "tolerations", "nodeAffinity"):
        assert not _mentions(template, field.lower()), f"the default WorkflowTemplate sets {field}"
    # Its one placement: the steps join the server's node (the default store is ReadWriteOnce).
    assert template["spec"]["affinity"] == {"podAffinity": _store_affinity(objects)}
    assert not [t["name"] for t in template["spec"]["templates"] if "affinity" in t]


def test_a_steps_own_placement_joins_the_gpus_and_replaces_the_workflows(
    helm: str, argo_validator: jsonschema.protocols.Validator
) -> None:
    """workflow.steps places one step; on the harden step it adds to workflow.gpu's."""
    pool = {"nodeSelector": {"pool": "cpu"}}
    harden = {
        "nodeSelector": {"pool": "train"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "train"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": ["NVIDIA-A100-SXM4-80GB"],
                                }
                            ]
                        }
                    ]
                }
            }
        },
    }
    placement = {GPU_STEP: harden, "evaluate": pool}
    objects = _template(
        helm,
        "--values",
        _values_file("gpu"),
        "--set-json",
        f"workflow.steps={json.dumps(placement)}",
        "--set-json",
        f"workflow.nodeSelector={json.dumps({'pool': 'any'})}",
    )
    template = _one(objects, "WorkflowTemplate")
    problems = _argo_problems(argo_validator, template)
    assert not problems, "\n".join(problems)
    gpu = _gpu_values("gpu")
    by_name = {t["name"]: t for t in template["spec"]["templates"]}
    assert by_name[GPU_STEP]["nodeSelector"] == harden["nodeSelector"] | gpu["nodeSelector"]
    assert by_name[GPU_STEP]["tolerations"] == harden["tolerations"] + gpu["tolerations"]
    assert by_name[GPU_STEP]["affinity"] == harden["affinity"]
    assert _resources(by_name[GPU_STEP])["limits"][GPU_RESOURCE] == "1"
    assert by_name["evaluate"]["nodeSelector"] == pool["nodeSelector"]
    assert GPU_RESOURCE not in _resources(by_name["evaluate"]).get("limits", {})
    assert template["spec"]["nodeSelector"] == {"pool": "any"}, "the other steps keep this one"
    assert "nodeSelector" not in by_name["gate"]


INSTANCE_ID_LABEL = "workflows.argoproj.io/controller-instanceid"
WEEK_SECONDS = 7 * 24 * 3600


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_runs_are_kept_a_week_and_failed_steps_keep_their_pods(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """GIVEN the default run lifetime WHEN the chart renders THEN Argo deletes each run a week
    after it finished (ttlStrategy), deletes a step's pod only once it succeeded (a failed
    step's pod, and its logs, stay with the run), and no controller instance is named."""
    template = _one(rendered[scenario], "WorkflowTemplate")
    assert template["spec"]["ttlStrategy"] == {"secondsAfterCompletion": WEEK_SECONDS}
    assert template["spec"]["podGC"] == {"strategy": "OnPodSuccess"}
    assert INSTANCE_ID_LABEL not in template["metadata"]["labels"]


def test_run_lifetime_and_controller_instance_from_values(
    helm: str, argo_validator: jsonschema.protocols.Validator
) -> None:
    """workflow.ttlStrategy and workflow.podGC become the template's; null fields, or no
    strategy, remove them; workflow.instanceID labels the template for the Argo Server of that
    instance (which labels the workflows it creates itself)."""
    ttl = {"secondsAfterSuccess": 3600, "secondsAfterFailure": 14 * 24 * 3600}
    pod_gc = {"strategy": "OnWorkflowCompletion", "deleteDelayDuration": "10m"}
    objects = _template(
        helm,
        "--set-json",
        f"workflow.ttlStrategy={json.dumps(ttl)}",
        "--set-json",
        f"workflow.podGC={json.dumps(pod_gc)}",
        "--set",
        "workflow.instanceID=team-a",
    )
    template = _one(objects, "WorkflowTemplate")
    problems = _argo_problems(argo_validator, template)
    assert not problems, "\n".join(problems)
    # helm merges the values over the chart's: the default secondsAfterCompletion stays.
    assert template["spec"]["ttlStrategy"] == {"secondsAfterCompletion": WEEK_SECONDS, **ttl}
    assert template["spec"]["podGC"] == pod_gc
    assert template["metadata"]["labels"][INSTANCE_ID_LABEL] == "team-a"
    assert INSTANCE_ID_LABEL not in template["spec"].get("workflowMetadata", {}).get(
        "labels", {}
    ), "a run labelled by the controller already running it would change hands"

    objects = _template(
        helm,
        "--set",
        "workflow.ttlStrategy.secondsAfterCompletion=null",
        "--set",
        "workflow.podGC.strategy=",
    )
    spec = _one(objects, "WorkflowTemplate")["spec"]
    assert "ttlStrategy" not in spec and "podGC" not in spec


# --------------------------------------------------------------------------------------------
# the model store: one node (ReadWriteOnce) or a shared filesystem (ReadWriteMany)

STORE_TOPOLOGY = "kubernetes.io/hostname"


def _store_affinity(objects: list[Obj]) -> Obj:
    """The podAffinity that puts a pod on the server's node: one required term, on the host,
    whose selector selects the server's pods (and no other Deployment's)."""
    server = _one(objects, "Deployment", f"{FULLNAME}-server")
    selector = server["spec"]["selector"]["matchLabels"]
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    receiver = _one(objects, "Deployment", f"{FULLNAME}-receiver")
    assert not selector.items() <= receiver["spec"]["template"]["metadata"]["labels"].items()
    term = {"labelSelector": {"matchLabels": selector}, "topologyKey": STORE_TOPOLOGY}
    return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}


def _store_claim(objects: list[Obj]) -> str:
    server = _one(objects, "Deployment", f"{FULLNAME}-server")["spec"]["template"]["spec"]
    (claim,) = [
        v["persistentVolumeClaim"]["claimName"]
        for v in server["volumes"]
        if "persistentVolumeClaim" in v
    ]
    return str(claim)


def _pods_with_their_affinity(objects: list[Obj]) -> Iterator[tuple[str, bool, Obj]]:
    """Every pod the release starts: (where, whether it mounts the store, the affinity it is
    scheduled with). A step's own affinity replaces the workflow's (Argo's rule)."""
    claim = _store_claim(objects)
    for where, pod in _pod_specs(objects):
        claims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        yield where, claim in claims, pod.get("affinity", {})
    spec = _one(objects, "WorkflowTemplate")["spec"]
    store_volumes = {
        v["name"]
        for v in spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    for template in spec["templates"]:
        step = template.get("script") or template.get("container")
        if step is None:
            continue
        mounts = {m["name"] for m in step.get("volumeMounts", [])}
        affinity = template.get("affinity", spec.get("affinity", {}))
        yield f"WorkflowTemplate step {template['name']}", bool(mounts & store_volumes), affinity


def _modes(scenario: str) -> list[str]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["persistence"]["accessModes"]
    return list(_scenario_values(scenario).get("persistence", {}).get("accessModes", defaults))


def test_the_store_defaults_to_read_write_once(rendered: dict[str, list[Obj]]) -> None:
    """A claim that kind's local-path and most clouds' default storage classes can bind: with
    ReadWriteMany it stays Pending there, and the bootstrap hook with it until helm times out."""
    claim = _one(rendered["default"], "PersistentVolumeClaim", f"{FULLNAME}-store")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_with_a_one_node_store_every_pod_that_mounts_it_joins_the_servers_node(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """GIVEN a ReadWriteOnce store (every scenario but gpu) THEN the server (its rollouts), the
    bootstrap Job and every workflow step, the exit handler's included, require the node of the
    server's pods; pods that do not mount the store (the receiver) are free. GIVEN
    ReadWriteMany (gpu) THEN no pod is tied to the server's node."""
    objects = rendered[scenario]
    one_node = "ReadWriteMany" not in _modes(scenario)
    assert one_node == (scenario != "gpu")
    term = _store_affinity(objects)["requiredDuringSchedulingIgnoredDuringExecution"][0]
    pods = list(_pods_with_their_affinity(objects))
    assert {where for where, mounts, _ in pods if mounts} >= {
        f"Deployment/{FULLNAME}-server",
        *(
            f"WorkflowTemplate step {s}"
            for s in ("harden", "evaluate", "promote", "record-outcome")
        ),
    }
    for where, mounts, affinity in pods:
        required = affinity.get("podAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", []
        )
        assert (term in required) == (one_node and mounts), f"{where}: {affinity}"


def test_a_steps_own_affinity_keeps_the_store_term(
    helm: str, argo_validator: jsonschema.protocols.Validator
) -> None:
    """A step given its own affinity (workflow.steps) loses the workflow's, so the store's
    term is added to it; the bootstrap Job keeps it under its own placement too."""
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["batch"]}]}
                ]
            }
        }
    }
    objects = _template(
        helm,
        "--set-json",
        f"workflow.steps={json.dumps({'evaluate': {'affinity': zone}})}",
    )
    template = _one(objects, "WorkflowTemplate")
    problems = _argo_problems(argo_validator, template)
    assert not problems, "\n".join(problems)
    evaluate = next(t for t in template["spec"]["templates"] if t["name"] == "evaluate")
    assert evaluate["affinity"] == {**zone, "podAffinity": _store_affinity(objects)}
    assert template["spec"]["affinity"] == {"podAffinity": _store_affinity(objects)}


def test_a_colocated_gpu_pool_keeps_the_one_node_store(
    helm: str, argo_validator: jsonschema.protocols.Validator
) -> None:
    """persistence.colocated=true: the operator says the server runs in the GPU pool, so the
    harden step may be placed there and still join the server's node."""
    objects = _template(
        helm,
        "--values",
        _values_file("gpu"),
        "--set",
        "persistence.accessModes={ReadWriteOnce}",
        "--set",
        "persistence.colocated=true",
    )
    template = _one(objects, "WorkflowTemplate")
    problems = _argo_problems(argo_validator, template)
    assert not problems, "\n".join(problems)
    pods = {where: affinity for where, mounts, affinity in _pods_with_their_affinity(objects)}
    store = {"podAffinity": _store_affinity(objects)}
    assert pods[f"WorkflowTemplate step {GPU_STEP}"] == store
    assert pods[f"Job/{FULLNAME}-bootstrap"] == store
    harden = next(t for t in template["spec"]["templates"] if t["name"] == GPU_STEP)
    assert harden["nodeSelector"] == _gpu_values("gpu")["nodeSelector"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "server.replicas=2"], ["server.replicas=2", "persistence.accessModes"]),
        (
            ["--values", _values_file("gpu"), "--set", "persistence.accessModes={ReadWriteOnce}"],
            ["workflow.gpu", "persistence.accessModes", "persistence.colocated=true"],
        ),
        (
            [
                "--set",
                "workflow.gpu.enabled=true",
                "--set",
                "workflow.steps.harden.nodeSelector.pool=gpu",
            ],
            ["workflow.steps.harden.nodeSelector", "persistence.colocated=true"],
        ),
        (
            ["--set", "bootstrap.nodeSelector.pool=gpu"],
            ["bootstrap.nodeSelector", "persistence.accessModes", "persistence.colocated=true"],
        ),
        (
            ["--set", "persistence.accessModes={ReadWriteOncePod}"],
            ["persistence.accessModes=[ReadWriteOncePod]", "ReadWriteMany"],
        ),
        (["--set", "persistence.accessModes={ReadOnlyMany}"], ["persistence.accessModes"]),
    ],
)
def test_store_placements_that_cannot_schedule_are_refused_in_one_line(
    helm: str, args: list[str], named: list[str]
) -> None:
    """GIVEN values whose pods could never all mount the store WHEN helm renders THEN it stops
    with one line that names the values and what to set instead, and renders nothing."""
    done = _run_helm(helm, "template", RELEASE, *args)
    assert done.returncode != 0
    assert "kind:" not in done.stdout
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    for value in named:
        assert value in line, f"{value!r} not named in: {line}"


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "server.replicas=3", "--set", "persistence.accessModes={ReadWriteMany}"],
        ["--set", "bootstrap.nodeSelector.pool=gpu", "--set", "persistence.colocated=true"],
        ["--set", "workflow.gpu.enabled=true"],  # the GPU limit alone: no node pool named
    ],
)
def test_store_placements_that_can_schedule_render(helm: str, args: list[str]) -> None:
    assert _template(helm, *args)


# --------------------------------------------------------------------------------------------
# security


def _rules(objects: list[Obj], name: str) -> list[Obj]:
    return _one(objects, "Role", name)["rules"]


# Publishing the calibrated rules: read the chart's PrometheusRule (its uid, for the owner
# reference) and robustloop's own, replace robustloop's own alone, and create (which RBAC cannot
# restrict to a name). Nothing may change the chart's object.
_RULE_PUBLISHER = [
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["prometheusrules"],
        "resourceNames": [FULLNAME, f"{FULLNAME}-calibrated"],
        "verbs": ["get"],
    },
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["prometheusrules"],
        "resourceNames": [f"{FULLNAME}-calibrated"],
        "verbs": ["update"],
    },
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["prometheusrules"], "verbs": ["create"]},
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_is_minimal_and_has_no_wildcards(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    objects = rendered[scenario]
    for obj in objects:
        assert obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}, "no cluster-wide RBAC"
        if obj["kind"] != "Role":
            continue
        for rule in obj["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"{obj['metadata']['name']}: {field} *"
    assert _rules(objects, f"{FULLNAME}-receiver") == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflows"],
            "verbs": ["create", "get"],  # no list: the receiver never lists
        },
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtemplates"], "verbs": ["get"]},
    ]
    assert _rules(objects, f"{FULLNAME}-workflow") == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtaskresults"],
            "verbs": ["create", "patch"],
        },
        *_RULE_PUBLISHER,
    ]
    assert _rules(objects, f"{FULLNAME}-bootstrap") == _RULE_PUBLISHER
    assert _rules(objects, f"{FULLNAME}-viewer") == [  # read-only: the Argo UI, `runs list`
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflows", "workflowtemplates"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
    ]
    viewer = _one(objects, "ServiceAccount", f"{FULLNAME}-viewer")
    assert viewer["automountServiceAccountToken"] is False, "no pod runs as the viewer"
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": binding["metadata"]["name"], "namespace": NAMESPACE}
        ]
    server = _one(objects, "Deployment", f"{FULLNAME}-server")["spec"]["template"]["spec"]
    assert server["automountServiceAccountToken"] is False, "the server needs no API access"


def test_workflow_steps_know_the_prometheus_rule_they_publish_to(
    helm: str, rendered: dict[str, list[Obj]]
) -> None:
    """The promote and guard steps publish recalibrated rules to robustloop's own PrometheusRule
    (alert_rules.cluster), owned by the chart's: both names and the namespace reach every step;
    without the chart's rule, neither the variables nor the permission exist."""
    from alert_rules.cluster import NAMESPACE_ENV, OWNER_ENV, RULE_ENV

    objects = rendered["default"]
    rule = _one(objects, "PrometheusRule")["metadata"]
    for step in _steps(_one(objects, "WorkflowTemplate")):
        assert _env(step, RULE_ENV)["value"] == f"{rule['name']}-calibrated"
        assert _env(step, OWNER_ENV)["value"] == rule["name"]
        assert _env(step, NAMESPACE_ENV)["value"] == rule["namespace"] == NAMESPACE

    without = _template(helm, "--set", "prometheusRule.enabled=false")
    assert not [o for o in without if o["kind"] == "PrometheusRule"]
    for step in _steps(_one(without, "WorkflowTemplate")):
        names = {variable["name"] for variable in step.get("env", [])}
        assert not names & {RULE_ENV, OWNER_ENV, NAMESPACE_ENV}
    assert all(
        "prometheusrules" not in rule.get("resources", [])
        for rule in _rules(without, f"{FULLNAME}-workflow")
    )
    assert not [o for o in without if o["kind"] == "Role" and "bootstrap" in o["metadata"]["name"]]


def _pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_hardened(rendered: dict[str, list[Obj]], scenario: str) -> None:
    objects = rendered[scenario]
    containers: list[tuple[str, Obj, Obj]] = [
        (where, pod, c) for where, pod in _pod_specs(objects) for c in pod["containers"]
    ]
    template = _one(objects, "WorkflowTemplate")
    containers += [("WorkflowTemplate", template["spec"], s) for s in _steps(template)]
    assert containers
    for where, pod, container in containers:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert container["resources"].get("requests"), f"{where}: no resource requests"
        assert container["resources"].get("limits", {}).get("memory"), f"{where}: no memory limit"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_and_ports(rendered: dict[str, list[Obj]], scenario: str) -> None:
    objects = rendered[scenario]
    server = _container(_one(objects, "Deployment", f"{FULLNAME}-server"), "server")
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    receiver = _container(_one(objects, "Deployment", f"{FULLNAME}-receiver"), "receiver")
    assert receiver["ports"] == [{"name": "http", "containerPort": 9095, "protocol": "TCP"}]
    assert receiver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert receiver["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    monitor_kinds = {"ServiceMonitor", "PodMonitor"}
    monitors = [o for o in objects if o["kind"] in monitor_kinds]
    server_monitor = next(m for m in monitors if m["metadata"]["name"] == f"{FULLNAME}-server")
    endpoints = (
        server_monitor["spec"].get("endpoints") or server_monitor["spec"]["podMetricsEndpoints"]
    )
    assert endpoints[0]["path"] == "/metrics" and endpoints[0]["port"] == "http"


def _receiver_token(objects: list[Obj]) -> Obj:
    """The Secret key the receiver's token comes from (``name``, ``key``), after checking that
    the config's webhook.token_file is that key, mounted read-only as a file (no subPath, so
    that the kubelet's updates reach the running receiver) and not in the environment."""
    token_file = _config(objects).webhook.token_file
    assert token_file is not None, "the config must name webhook.token_file"
    deployment = _one(objects, "Deployment", f"{FULLNAME}-receiver")
    receiver = _container(deployment, "receiver")
    assert "ROBUSTLOOP_WEBHOOK_TOKEN" not in {e["name"] for e in receiver.get("env", [])}
    (mount,) = [m for m in receiver["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount
    secret = _secret_volumes(deployment["spec"]["template"]["spec"])[mount["name"]]
    (item,) = secret["items"]
    assert item["path"] == token_file.name
    assert secret["defaultMode"] & 0o007 == 0, "others may not read the token file"
    return {"name": secret["secretName"], "key": item["key"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_receiver_token_is_wired_from_one_secret(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """Alertmanager sends, and the receiver checks, the same Secret key; no token in plain text."""
    objects = rendered[scenario]
    ref = _receiver_token(objects)
    webhook = _one(objects, "AlertmanagerConfig")["spec"]["receivers"][0]["webhookConfigs"][0]
    credentials = webhook["httpConfig"]["authorization"]["credentials"]
    assert webhook["httpConfig"]["authorization"]["type"] == "Bearer"
    assert {"name": credentials["name"], "key": credentials["key"]} == {
        "name": ref["name"],
        "key": ref["key"],
    }
    secrets = [o for o in objects if o["kind"] == "Secret"]
    values = yaml.safe_load(Path(_values_file(scenario)).read_text()) or {}
    existing = values.get("receiver", {}).get("token", {}).get("existingSecret")
    if existing:
        assert ref["name"] == existing and not secrets, "an existing Secret must not be recreated"
    else:
        secret = _one(objects, "Secret", ref["name"])
        assert len(secret["data"][ref["key"]]) >= 40, "the generated token is too short"
    config = _config(objects)
    assert config.webhook.auth == "bearer"
    # Delivered to the receiver's Service, on the path the receiver serves.
    service = _one(objects, "Service", f"{FULLNAME}-receiver")
    port = service["spec"]["ports"][0]["port"]
    assert webhook["url"] == (f"http://{FULLNAME}-receiver.{NAMESPACE}.svc:{port}/api/v1/alerts")
    assert webhook["sendResolved"] is True


def test_network_policy_admits_only_alertmanager_and_prometheus(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["default"]
    policy = _one(objects, "NetworkPolicy", f"{FULLNAME}-receiver")["spec"]
    receiver = _one(objects, "Deployment", f"{FULLNAME}-receiver")
    assert policy["podSelector"]["matchLabels"] == receiver["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    selected = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ]
    assert selected == ["alertmanager", "prometheus"]
    for peer in rule["from"]:
        assert peer["namespaceSelector"]["matchLabels"], "an empty selector would admit all"


_SERVER = f"Deployment/{FULLNAME}-server"


def _scenario_values(scenario: str) -> Obj:
    return yaml.safe_load(Path(_values_file(scenario)).read_text()) or {}


def _secret_volumes(pod: Obj) -> dict[str, Obj]:
    """A pod spec's Secret volumes: volume name -> its ``secret`` source."""
    return {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}


def _feedback_token(objects: list[Obj], values: Obj) -> tuple[str, str, Path]:
    """Where the server's feedback token comes from and lands: (Secret name, key, file), after
    checking that the rendered config names the file the server mounts read-only, from that
    Secret's key; ``values`` are the values the objects were rendered with."""
    token_file = _config(objects).serving.feedback_token_file
    assert token_file is not None, "the config must name serving.feedback_token_file"
    deployment = _one(objects, "Deployment", f"{FULLNAME}-server")
    pod = deployment["spec"]["template"]["spec"]
    server = _container(deployment, "server")
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    assert mount.get("readOnly") is True, "the token is mounted read-only"
    assert "subPath" not in mount
    secret = _secret_volumes(pod)[mount["name"]]
    (item,) = secret["items"]
    assert item["path"] == token_file.name, f"the Secret's file is not {token_file.name}"
    assert secret["defaultMode"] & 0o007 == 0, "others may not read the token file"
    wanted = values.get("server", {}).get("feedbackToken", {})
    expected_name = wanted.get("existingSecret") or f"{FULLNAME}-feedback-token"
    assert secret["secretName"] == expected_name
    assert item["key"] == wanted.get("key", "token")
    return secret["secretName"], item["key"], token_file


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_feedback_token_reaches_the_server_alone_from_its_own_secret(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """GIVEN a scenario WHEN the chart renders THEN the server's config names a file that the
    server mounts read-only from the feedback Secret, a Secret of its own (not the receiver's),
    created by the chart unless feedbackToken.existingSecret names one, and mounted by no
    other pod."""
    objects = rendered[scenario]
    values = _scenario_values(scenario)
    name, key, _ = _feedback_token(objects, values)
    receiver_secret = _receiver_token(objects)
    assert name != receiver_secret["name"], "feedback and alerts need different credentials"
    created = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == name]
    if values.get("server", {}).get("feedbackToken", {}).get("existingSecret"):
        assert not created, "an existing Secret must not be recreated"
    else:
        (secret,) = created
        assert set(secret["data"]) == {key}
        token = base64.b64decode(secret["data"][key]).decode()
        assert len(token) >= 40, "the generated token is too short"
        config_text = _one(objects, "ConfigMap", f"{FULLNAME}-config")["data"]["robustloop.yaml"]
        assert token not in config_text, "the token itself never enters the config"
    others = [(where, pod) for where, pod in _pod_specs(objects) if where != _SERVER]
    template = _one(objects, "WorkflowTemplate")
    others.append(("WorkflowTemplate", template["spec"]))
    for where, pod in others:
        names = {s["secretName"] for s in _secret_volumes(pod).values()}
        assert name not in names, f"{where} mounts the feedback token"


def test_feedback_token_value_or_existing_secret_from_the_command_line(helm: str) -> None:
    """feedbackToken.value fills the created Secret; existingSecret and key replace it."""
    objects = _template(helm, "--set", "server.feedbackToken.value=labeller-s3cret")
    name, key, _ = _feedback_token(objects, {})
    secret = _one(objects, "Secret", name)
    assert base64.b64decode(secret["data"][key]).decode() == "labeller-s3cret"

    values = {"server": {"feedbackToken": {"existingSecret": "labelling-team", "key": "bearer"}}}
    objects = _template(
        helm,
        "--set",
        "server.feedbackToken.existingSecret=labelling-team",
        "--set",
        "server.feedbackToken.key=bearer",
    )
    name, key, token_file = _feedback_token(objects, values)
    assert (name, key, token_file.name) == ("labelling-team", "bearer", "token")
    assert not [o for o in objects if o["kind"] == "Secret" and "feedback" in o["metadata"]["name"]]


def _server_policy(objects: list[Obj]) -> Obj:
    policy = _one(objects, "NetworkPolicy", f"{FULLNAME}-server")
    deployment = _one(objects, "Deployment", f"{FULLNAME}-server")
    spec: Obj = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without peers would admit every pod"
        assert all(peer for peer in rule["from"]), "an empty peer is no restriction"
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    ports = {p["name"] for p in _container(deployment, "server")["ports"]}
    assert "http" in ports, "the policy's named port must be the server's"
    problems = _kube_problems(policy)
    assert not problems, "\n".join(problems)
    return spec


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_server_network_policy_admits_prometheus_and_the_listed_clients(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """The model server's port: Prometheus, which scrapes /metrics for the alert rules (the
    receiver policy's Prometheus peer), then exactly the peers of server.networkPolicy.from.
    The workflow's steps reach Prometheus and the store, never the server: not admitted."""
    objects = rendered[scenario]
    (rule,) = _server_policy(objects)["ingress"]
    receiver_policy = _one(objects, "NetworkPolicy", f"{FULLNAME}-receiver")["spec"]
    prometheus = next(
        peer
        for peer in receiver_policy["ingress"][0]["from"]
        if peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "prometheus"
    )
    clients = _scenario_values(scenario).get("server", {}).get("networkPolicy", {}).get("from", [])
    assert rule["from"] == [prometheus, *clients]
    assert prometheus["namespaceSelector"]["matchLabels"], "an empty selector would admit all"


def test_server_network_policy_without_peers_admits_nobody(helm: str) -> None:
    """No monitor and no clients: an empty ingress list (deny), never a rule that admits all;
    server.networkPolicy.prometheus replaces the receiver's peer; enabled=false drops it."""
    objects = _template(helm, "--set", "server.monitor.enabled=false")
    assert _server_policy(objects)["ingress"] == []
    monitors = [o for o in objects if o["kind"] in {"ServiceMonitor", "PodMonitor"}]
    assert f"{FULLNAME}-server" not in {m["metadata"]["name"] for m in monitors}

    own = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "podSelector": {"matchLabels": {"app": "prometheus-server"}},
    }
    objects = _template(helm, "--set-json", f"server.networkPolicy.prometheus={json.dumps(own)}")
    (rule,) = _server_policy(objects)["ingress"]
    assert rule["from"] == [own]

    objects = _template(helm, "--set", "server.networkPolicy.enabled=false", "--skip-tests")
    policies = [o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"]
    assert policies == [f"{FULLNAME}-receiver"]  # `helm test`'s own: tests/test_helm_smoke.py


# --------------------------------------------------------------------------------------------
# config and scenarios


def _config(objects: list[Obj]) -> RobustloopConfig:
    text = _one(objects, "ConfigMap", f"{FULLNAME}-config")["data"]["robustloop.yaml"]
    return RobustloopConfig.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_map_is_a_valid_robustloop_config(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    objects = rendered[scenario]
    config = _config(objects)
    assert config.submitter.kind == "argo"
    assert config.submitter.argo.namespace == NAMESPACE
    assert config.serving.port == 8080 and config.webhook.port == 9095
    server = _container(_one(objects, "Deployment", f"{FULLNAME}-server"), "server")
    store_mount = next(m for m in server["volumeMounts"] if m["name"] == "store")
    assert config.store.path.is_relative_to(store_mount["mountPath"])
    receiver = _container(_one(objects, "Deployment", f"{FULLNAME}-receiver"), "receiver")
    outbox = next(m for m in receiver["volumeMounts"] if m["name"] == "outbox")
    assert config.webhook.db_path.parent == Path(outbox["mountPath"])
    for container in (server, receiver):
        config_file = f"{container['workingDir']}/robustloop.yaml"
        assert _env(container, "ROBUSTLOOP_CONFIG")["value"] == config_file
        config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert config_mount["mountPath"] == container["workingDir"]
    assert receiver["args"][-2:] == ["--config", f"{receiver['workingDir']}/robustloop.yaml"]


def test_existing_claim_and_secret_are_used_not_created(rendered: dict[str, list[Obj]]) -> None:
    values = yaml.safe_load(Path(_values_file("existing-pvc")).read_text())
    objects = rendered["existing-pvc"]
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    job = _one(objects, "Job", f"{FULLNAME}-bootstrap")["spec"]["template"]["spec"]
    assert "initContainers" not in job, "bootstrap is off: the Job only publishes the rules"
    assert [c["name"] for c in job["containers"]] == ["publish-rules"]
    claim = values["persistence"]["existingClaim"]
    template = _one(objects, "WorkflowTemplate")
    assert claim in {
        v["persistentVolumeClaim"]["claimName"]
        for v in template["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    config = _config(objects)
    assert config.webhook.daily_budget == values["config"]["webhook"]["daily_budget"]


def test_external_argo_server_with_a_token_from_a_secret(rendered: dict[str, list[Obj]]) -> None:
    values = yaml.safe_load(Path(_values_file("external-argo")).read_text())
    objects = rendered["external-argo"]
    config = _config(objects)
    assert config.submitter.argo.host == values["argo"]["serverUrl"]
    deployment = _one(objects, "Deployment", f"{FULLNAME}-receiver")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    receiver = _container(deployment, "receiver")
    token_file = Path(str(config.submitter.argo.token_file))
    mount = next(m for m in receiver["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == values["argo"]["tokenSecret"]["name"]
    assert volume["secret"]["items"] == [{"key": "token", "path": token_file.name}]
    assert _one(objects, "PodMonitor", f"{FULLNAME}-server")


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "serverr.port=1"], "additional properties 'serverr' not allowed"),
        (["--set", "server.port=0"], "/server/port"),
        (["--set", "server.monitor.kind=Probe"], "/server/monitor/kind"),
        (["--set", "argo.serverUrl=argo:2746"], "/argo/serverUrl"),
        (["--set", "persistence.accessModes={ReadWriteSometimes}"], "/persistence/accessModes"),
        (["--set", "workflow.parameters.epsilon=0.2"], "workflow.parameters.epsilon"),
        (["--set", "workflow.steps.hardn.resources.limits.cpu=1"], "workflow.steps.hardn"),
        (
            ["--set", "workflow.steps.remediate.image.tag=x"],
            "workflow.steps.remediate: the WorkflowTemplate has no step",
        ),
        (["--set", "workflow.steps.harden.nodeSelectr.a=b"], "/workflow/steps/harden"),
        (["--set", "workflow.steps.harden.image.tagg=x"], "/workflow/steps/harden/image"),
        (["--set", "workflow.image.pullPolicy=Sometimes"], "/workflow/image/pullPolicy"),
        (
            ["--set", "workflow.templatePlacement.harden.nodeSelector.a=b"],
            "additional properties 'templatePlacement' not allowed",
        ),
        (["--set", "workflow.gpu.tolerations[0].operator=Maybe"], "/workflow/gpu/tolerations"),
        (["--set", "config.model.name=other-model"], "run `make generate`"),
        (["--set", "server.feedbackToken.key=a/b"], "/server/feedbackToken/key"),
        (["--set", "server.feedbackToken.existingSecret=Not_A_Name"], "/server/feedbackToken"),
        (
            ["--set", "server.networkPolicy.from[0].podSelectr.matchLabels.a=b"],
            "/server/networkPolicy/from/0",
        ),
        (["--set-json", "server.networkPolicy.from=[{}]"], "/server/networkPolicy/from/0"),
        (["--set", "workflow.podGC.strategy=Never"], "/workflow/podGC/strategy"),
        (["--set", "workflow.ttlStrategy.secondsAfterCompletion=-1"], "/workflow/ttlStrategy"),
        (["--set", "workflow.ttlStrategy.secondsAfterDeath=1"], "/workflow/ttlStrategy"),
        (["--set", "workflow.instanceID=team a"], "/workflow/instanceID"),
        (["--set", "prometheusRelease=kube prometheus"], "/prometheusRelease"),
    ],
)
def test_bad_values_are_rejected_with_the_offending_key(
    helm: str, args: list[str], message: str
) -> None:
    done = _run_helm(helm, "template", RELEASE, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "kind:" not in done.stdout, "nothing is rendered from bad values"


@pytest.mark.parametrize("copy_path", sorted(CHART_COPIES))
def test_a_chart_without_its_generated_copies_says_what_to_run(
    helm: str, tmp_path: Path, copy_path: str
) -> None:
    chart = tmp_path / "robustloop"
    shutil.copytree(CHART, chart)
    (chart / copy_path).unlink()
    done = _run_helm(helm, "template", RELEASE, chart=chart)
    assert done.returncode != 0
    assert "make chart-sync" in done.stderr


# --------------------------------------------------------------------------------------------
# receiver: the Argo Server's address and CA bundle


def test_the_default_argo_server_is_the_argo_workflows_chart_over_plain_http(
    rendered: dict[str, list[Obj]],
) -> None:
    """GIVEN default values THEN the receiver submits to the argo-workflows chart installed as
    release argo-workflows in namespace argo (Service argo-workflows-server, plain HTTP), with
    no CA bundle mounted."""
    objects = rendered["default"]
    argo = _config(objects).submitter.argo
    assert argo.host == "http://argo-workflows-server.argo.svc:2746"
    assert argo.ca_file is None
    pod = _one(objects, "Deployment", f"{FULLNAME}-receiver")["spec"]["template"]["spec"]
    assert "argo-ca" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize("source", ["secret", "configMap"])
def test_the_argo_ca_bundle_is_mounted_read_only_where_the_config_names_it(
    helm: str, source: str
) -> None:
    """GIVEN argo.ca naming a Secret's or a ConfigMap's key WHEN the chart renders THEN the
    receiver's config names submitter.argo.ca_file, the file the receiver mounts read-only from
    that key, and the Deployment is valid."""
    objects = _template(
        helm,
        "--set", "argo.serverUrl=https://argo-server.argo.svc:2746",
        "--set", f"argo.ca.{source}=argo-server-ca",
        "--set", "argo.ca.key=tls.crt",
    )  # fmt: skip
    config = _config(objects)
    ca_file = config.submitter.argo.ca_file
    assert ca_file is not None and ca_file.name == "tls.crt"
    assert config.submitter.argo.verify_tls is True
    deployment = _one(objects, "Deployment", f"{FULLNAME}-receiver")
    pod = deployment["spec"]["template"]["spec"]
    receiver = _container(deployment, "receiver")
    (mount,) = [m for m in receiver["volumeMounts"] if m["mountPath"] == str(ca_file.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    if source == "secret":
        assert volume["secret"]["secretName"] == "argo-server-ca"
        assert volume["secret"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}]
    else:
        assert volume["configMap"]["name"] == "argo-server-ca"
        assert volume["configMap"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}]
    assert _kube_problems(deployment) == []


def test_an_argo_ca_from_both_a_secret_and_a_config_map_is_rejected(helm: str) -> None:
    done = _run_helm(
        helm, "template", RELEASE, "--set", "argo.ca.secret=a", "--set", "argo.ca.configMap=b"
    )
    assert done.returncode != 0
    assert "argo.ca.secret or argo.ca.configMap, not both" in done.stderr


# --------------------------------------------------------------------------------------------
# receiver: its bearer token, a file that follows the Secret


def test_the_receiver_token_file_is_owned_by_the_chart(helm: str) -> None:
    """GIVEN config.webhook.token_file in values THEN the chart's mounted Secret file wins: the
    receiver never reads a token from a path nothing mounts."""
    objects = _template(helm, "--set", "config.webhook.token_file=/etc/elsewhere/token")
    ref = _receiver_token(objects)  # the config names the mounted Secret's file
    assert ref == {"name": f"{FULLNAME}-receiver-token", "key": "token"}
    assert str(_config(objects).webhook.token_file) != "/etc/elsewhere/token"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_config_carries_the_alerts_section_its_rules_were_rendered_from(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """The workflow recalibrates and republishes rules from the release's config: its alerts
    section (windows fitted to a 30 s scrape) must be the one the chart's rules came from, and
    it must load."""
    from robustloop.config import RobustloopConfig

    text = _one(rendered[scenario], "ConfigMap", f"{FULLNAME}-config")["data"]["robustloop.yaml"]
    cfg = RobustloopConfig.model_validate(yaml.safe_load(text))
    section = yaml.safe_load((CHART / "files" / "robustloop.alerts.yaml").read_text())
    assert cfg.alerts.model_dump(mode="json", by_alias=True) == section
    assert cfg.alerts.scrape_interval == "30s" and cfg.alerts.canary_accuracy.window == "120s"


@pytest.mark.parametrize(("interval", "ok"), [("15s", True), ("30s", True), ("1m", False)])
def test_a_scrape_interval_longer_than_the_rules_were_rendered_for_is_refused(
    helm: str, interval: str, ok: bool
) -> None:
    done = _run_helm(helm, "template", RELEASE, "--set", f"server.monitor.interval={interval}")
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert "longer than the 30s the chart's rules were rendered for" in done.stderr
        assert "--scrape-interval 1m" in done.stderr


@pytest.mark.parametrize(
    ("setting", "ok"),
    [
        ("groupWait=5s", True),
        ("groupInterval=1m", True),
        ("groupInterval=5m", False),
        ("groupWait=2m", False),
    ],
)
def test_alertmanager_waits_longer_than_the_alerts_keep_firing_are_refused(
    helm: str, setting: str, ok: bool
) -> None:
    """The chart's remediating alerts keep firing 1m after their condition clears: an
    AlertmanagerConfig that waits longer before notifying could drop a short attack."""
    done = _run_helm(helm, "template", RELEASE, "--set", f"alertmanagerConfig.{setting}")
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        (line,) = [ln for ln in done.stderr.splitlines() if "alertmanagerConfig." in ln]
        key = setting.split("=")[0]
        assert f"alertmanagerConfig.{key}" in line and "use at most 60s" in line
