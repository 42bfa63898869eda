"""The chart's alert rules and robustloop's own, and where each workflow step runs.

Rules: Helm renders one PrometheusRule, the rules no calibration changes; robustloop writes a
second one, the rules calibrated for the production version, which Helm never renders, owned by
the first. The Roles the chart grants are run against the Kubernetes API stand-in
(tests/kube_standin.py) to show that publishing works with them and that nothing Helm renders
can be changed with them; the bootstrap Job's own commands and environment, as rendered, are
run here against a model store and that stand-in, as after an install and after an upgrade.

Steps: every step of the WorkflowTemplate takes workflow.* (image, resources, placement) unless
workflow.steps.<step> says otherwise; the workflow's image is the server's unless set; with a
ReadWriteOnce store a node pool named for pods that mount it is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from alert_rules.calibration import alerts_from_record, calibrate_alerts
from alert_rules.cluster import (
    API_ENV,
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    calibrated_groups,
    publish_rules,
    target_from_env,
)
from robustloop.cli import main
from robustloop.config import RobustloopConfig
from serving.signals import CleanSignals
from tests.kube_standin import KubeStandIn
from tests.support import load_crd_validators, register_model
from tests.test_helm import (
    FULLNAME,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    SCENARIOS,
    _argo_problems,
    _run_helm,
    _template,
    _values_file,
)
from training import ModelStore
from workflows.calibrate import ANNOTATION_KEY

Obj = dict[str, Any]
CALIBRATED = f"{FULLNAME}-calibrated"
JOB = f"{FULLNAME}-bootstrap"
TOKEN = "the-service-accounts-token"


def _refusal(helm: str, *args: str) -> str:
    """The one error line of a render that must fail (nothing rendered)."""
    done = _run_helm(helm, "template", RELEASE, *args)
    assert done.returncode != 0, f"rendered: {args}"
    assert "kind:" not in done.stdout
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    return line


@pytest.fixture(scope="module")
def scenarios(helm: str) -> dict[str, list[Obj]]:
    return {s: _template(helm, "--values", _values_file(s)) for s in SCENARIOS}


@pytest.fixture(scope="module")
def validator(schemas: Path) -> jsonschema.protocols.Validator:
    return load_crd_validators(schemas)[("monitoring.coreos.com/v1", "PrometheusRule")]


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _config(objects: list[Obj]) -> Obj:
    config_map = _one(objects, "ConfigMap", f"{FULLNAME}-config")
    config: Obj = yaml.safe_load(config_map["data"]["robustloop.yaml"])
    return config


def _env(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _templates(objects: list[Obj]) -> dict[str, Obj]:
    """The WorkflowTemplate's templates that run a pod, by name."""
    spec = _one(objects, "WorkflowTemplate", "robustloop-remediate")["spec"]
    return {t["name"]: t for t in spec["templates"] if "script" in t or "container" in t}


def _step(template: Obj) -> Obj:
    step: Obj = template.get("script") or template["container"]
    return step


def _job_pod(objects: list[Obj]) -> Obj:
    pod: Obj = _one(objects, "Job", JOB)["spec"]["template"]["spec"]
    return pod


def _chart_rule_in(kube: KubeStandIn, objects: list[Obj]) -> Obj:
    """The chart's PrometheusRule in the API, as Helm would have created it."""
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    meta = rule["metadata"]
    return kube.add_rule(meta["namespace"], meta["name"], rule["spec"]["groups"], meta["labels"])


# --------------------------------------------------------------------------------------------
# the alert rules: one writer per object


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_renders_the_fixed_rules_and_never_robustloops_object(
    scenarios: dict[str, list[Obj]], scenario: str
) -> None:
    objects = scenarios[scenario]
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["name"] == FULLNAME
    assert not [o for o in objects if o["metadata"]["name"] == CALIBRATED]
    assert "version=" not in str(rule["spec"]), "no rule of the chart's names a model version"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_alert_is_lost_or_doubled_between_the_two_objects(
    scenarios: dict[str, list[Obj]], scenario: str
) -> None:
    """The chart's rules and those robustloop publishes for the rendered config are, together,
    the cluster's generated rules: each once, every alert with the release's namespace."""
    objects = scenarios[scenario]
    chart = next(o for o in objects if o["kind"] == "PrometheusRule")["spec"]["groups"]
    ours = calibrated_groups(RobustloopConfig.model_validate(_config(objects)), NAMESPACE)
    whole = yaml.safe_load(
        (REPO_ROOT / "alert_rules" / "cluster" / "robustloop.rules.yaml").read_text()
    )

    def names(groups: list[Obj]) -> list[str]:
        return [r.get("alert") or r["record"] for g in groups for r in g["rules"]]

    assert sorted(names(chart) + names(ours)) == sorted(names(whole["groups"]))
    assert not set(names(chart)) & set(names(ours))
    for group in chart + ours:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["namespace"] == NAMESPACE, rule["alert"]


def _written_names(objects: list[Obj], role: str) -> set[tuple[str, str]]:
    """(resource, name) of what a Role may change: every rule's write verbs by name; a write
    verb without resourceNames names every object of the resource ("*")."""
    writes = {"update", "patch", "delete", "deletecollection"}
    out: set[tuple[str, str]] = set()
    for rule in _one(objects, "Role", role)["rules"]:
        if not writes & set(rule["verbs"]):
            continue
        for resource in rule["resources"]:
            out |= {(resource, name) for name in rule.get("resourceNames", ["*"])}
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_role_may_change_an_object_helm_renders(
    scenarios: dict[str, list[Obj]], scenario: str
) -> None:
    """The workflow's and the bootstrap Job's Roles change robustloop's own PrometheusRule and
    Argo's task results, nothing else; neither is rendered by Helm. (`create` cannot change an
    existing object.)"""
    objects = scenarios[scenario]
    rendered = {o["metadata"]["name"] for o in objects}
    for role in (f"{FULLNAME}-workflow", f"{FULLNAME}-bootstrap"):
        changed = _written_names(objects, role)
        assert ("prometheusrules", CALIBRATED) in changed
        assert changed <= {("prometheusrules", CALIBRATED), ("workflowtaskresults", "*")}
        assert not {name for _, name in changed} & rendered


@pytest.mark.parametrize("account", ["workflow", "bootstrap"])
def test_the_granted_role_publishes_and_cannot_touch_the_charts_rule(
    scenarios: dict[str, list[Obj]],
    validator: jsonschema.protocols.Validator,
    account: str,
) -> None:
    """GIVEN the API authorizing only what the chart's Role grants, and the environment the
    chart gives the publishing pod (the promote step, the bootstrap Job's publish-rules
    container) WHEN the rules are published twice THEN robustloop's object is created, then
    replaced; and with the same Role the chart's PrometheusRule can be read but neither
    replaced, patched nor deleted."""
    objects = scenarios["default"]
    if account == "workflow":
        env = _env(_step(_templates(objects)["promote"]))
    else:
        (container,) = _job_pod(objects)["containers"]
        env = _env(container)
    role = _one(objects, "Role", f"{FULLNAME}-{account}")["rules"]
    cfg = RobustloopConfig.model_validate(_config(objects))
    with KubeStandIn(validator, token=TOKEN, rules=role) as kube:
        chart_rule = _chart_rule_in(kube, objects)
        target = target_from_env(env)
        assert target is not None and target.owner == FULLNAME and target.name == CALIBRATED
        configuration = client.Configuration(host=kube.url)
        configuration.api_key = {"BearerToken": TOKEN}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        api = client.ApiClient(configuration)
        assert publish_rules(cfg, target, api=api) == "created"
        recalibrated = cfg.model_copy(
            update={"alerts": cfg.alerts.model_copy(update={"calibrated_version": "v0002-a1b2"})}
        )
        assert publish_rules(recalibrated, target, api=api) == "replaced"
        objects_api = client.CustomObjectsApi(api)
        args = ("monitoring.coreos.com", "v1", NAMESPACE, "prometheusrules", FULLNAME)
        assert objects_api.get_namespaced_custom_object(*args)["metadata"]["uid"]
        for attempt in (
            lambda: objects_api.replace_namespaced_custom_object(*args, chart_rule),
            lambda: objects_api.patch_namespaced_custom_object(*args, {"spec": {"groups": []}}),
            lambda: objects_api.delete_namespaced_custom_object(*args),
        ):
            with pytest.raises(ApiException) as refused:
                attempt()
            assert refused.value.status == 403
        assert kube.objects[(NAMESPACE, FULLNAME)] == chart_rule
        assert "v0002-a1b2" in str(kube.objects[(NAMESPACE, CALIBRATED)]["spec"])


@pytest.mark.parametrize("labels", [{}, {"team": "ml", "release": "rules-stack"}])
def test_robustloops_rule_is_selected_by_the_same_labels_as_the_charts(
    helm: str, labels: dict[str, str]
) -> None:
    """Whatever labels Prometheus' ruleSelector wants (prometheusRelease, prometheusRule.labels)
    are on both objects; robustloop's says who manages it, and carries no
    app.kubernetes.io/instance, by which Argo CD's label tracking would take it for its own."""
    objects = _template(helm, "--set-json", f"prometheusRule.labels={json.dumps(labels)}")
    chart_labels = _one(objects, "PrometheusRule", FULLNAME)["metadata"]["labels"]
    (container,) = _job_pod(objects)["containers"]
    target = target_from_env(_env(container))
    assert target is not None
    selected = {"release": "kube-prometheus-stack", **labels}
    assert selected.items() <= chart_labels.items()
    assert selected.items() <= target.labels.items()
    assert "app.kubernetes.io/instance" not in target.labels
    assert MANAGED_BY_LABEL not in target.labels  # robustloop sets it, not the chart


# --------------------------------------------------------------------------------------------
# the bootstrap Job: after every install, upgrade and rollback


def test_the_bootstrap_job_trains_once_then_publishes_after_every_release_change(
    scenarios: dict[str, list[Obj]],
) -> None:
    objects = scenarios["default"]
    job = _one(objects, "Job", JOB)
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"post-install", "post-upgrade", "post-rollback"}
    pod = _job_pod(objects)
    assert pod["serviceAccountName"] == JOB and pod["automountServiceAccountToken"] is True
    (train,) = pod["initContainers"]
    (publish,) = pod["containers"]
    assert train["args"][:2] == ["train", "--unless-production"]
    assert publish["args"][:2] == ["rules", "publish"]
    promote = _step(_templates(objects)["promote"])
    assert target_from_env(_env(publish)) == target_from_env(_env(promote))
    assert target_from_env(_env(train)) is None, "training needs no API"


@pytest.mark.parametrize(
    ("args", "containers", "token"),
    [
        (["--values", _values_file("existing-pvc")], ["publish-rules"], True),
        (["--set", "prometheusRule.enabled=false"], ["train"], False),
        (["--set", "prometheusRule.enabled=false", "--set", "bootstrap.enabled=false"], [], False),
    ],
    ids=["no-training", "no-rules", "neither"],
)
def test_the_bootstrap_job_does_only_what_the_release_asks(
    helm: str, args: list[str], containers: list[str], token: bool
) -> None:
    objects = _template(helm, *args)
    jobs = [o for o in objects if o["kind"] == "Job"]
    if not containers:
        assert not jobs
        assert not [o for o in objects if o["metadata"]["name"] == JOB]
        return
    pod = _job_pod(objects)
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == containers
    assert pod["automountServiceAccountToken"] is token
    roles = {o["metadata"]["name"] for o in objects if o["kind"] == "Role"}
    assert (JOB in roles) is token


def test_bootstrap_args_that_would_train_at_every_upgrade_are_refused(helm: str) -> None:
    line = _refusal(helm, "--set-json", 'bootstrap.args=["train","--epochs","1"]')
    assert "bootstrap.args=[train --epochs 1]" in line and "--unless-production" in line
    objects = _template(
        helm, "--set-json", 'bootstrap.args=["train","--epochs","1","--unless-production"]'
    )
    (train,) = _job_pod(objects)["initContainers"]
    assert train["args"][:4] == ["train", "--epochs", "1", "--unless-production"]


def _pod_run(
    container: Obj, config_file: Path, kube_url: str, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The container's `robustloop` arguments, run here with its environment: only the config
    file's place and the API's address are changed."""
    assert container["command"] == ["robustloop"]
    args = list(container["args"])
    assert args[-2] == "--config"
    args[-1] = str(config_file)
    for name, value in {**_env(container), "ROBUSTLOOP_CONFIG": str(config_file)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(API_ENV, kube_url)
    return args


def _signals() -> CleanSignals:
    values = [0.05 + 0.3 * ((i * 7919) % 101) / 101 for i in range(300)]
    return CleanSignals(entropy=values, squeeze=[v / 2 for v in values], accuracy=0.83)


def test_the_bootstrap_jobs_commands_publish_for_production_after_install_and_upgrade(
    scenarios: dict[str, list[Obj]],
    validator: jsonschema.protocols.Validator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a store whose production version has a recorded calibration, and the API with the
    chart's PrometheusRule WHEN the bootstrap Job's two commands run (as rendered, with the
    release's config) THEN nothing is trained and robustloop's object is created with the
    rules of that calibration; after an upgrade that changes an alert setting (a severity) the
    same Job replaces them, the thresholds still the recorded ones; with nothing changed it
    writes nothing."""
    objects = scenarios["default"]
    config = _config(objects)
    mount = Path(_job_pod(objects)["containers"][0]["volumeMounts"][-1]["mountPath"])
    config["store"]["path"] = str(
        tmp_path / "claim" / Path(config["store"]["path"]).relative_to(mount)
    )
    config_file = tmp_path / "robustloop.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    cfg = RobustloopConfig.model_validate(config)
    store = ModelStore(cfg.store.path)
    version = register_model(store)
    alerts, record = calibrate_alerts(cfg, _signals(), version)
    store.annotate(version, ANNOTATION_KEY, record)
    pod = _job_pod(objects)
    (train,) = pod["initContainers"]
    (publish,) = pod["containers"]
    role = _one(objects, "Role", JOB)["rules"]

    with KubeStandIn(validator, rules=role) as kube:
        _chart_rule_in(kube, objects)
        assert main(_pod_run(train, config_file, kube.url, monkeypatch)) == 0
        assert capsys.readouterr().out.strip() == version
        assert [m.version for m in store.list()] == [version], "nothing trained"

        assert main(_pod_run(publish, config_file, kube.url, monkeypatch)) == 0
        said = capsys.readouterr().out
        assert f"created PrometheusRule {NAMESPACE}/{CALIBRATED}" in said
        assert f"for {version}, from its recorded calibration" in said
        written = kube.objects[(NAMESPACE, CALIBRATED)]
        assert written["spec"]["groups"] == calibrated_groups(
            cfg.model_copy(update={"alerts": alerts}), NAMESPACE
        )
        assert written["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER

        # `helm upgrade` with another alert setting: a new ConfigMap, the Job again.
        config["alerts"]["entropy"]["severity"] = "warning"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        assert main(_pod_run(publish, config_file, kube.url, monkeypatch)) == 0
        assert "replaced" in capsys.readouterr().out
        upgraded = RobustloopConfig.model_validate(config)
        kept = alerts_from_record(upgraded, record)
        assert kept is not None and kept.entropy.severity == "warning"
        assert kept.entropy.baseline == alerts.entropy.baseline
        assert kube.objects[(NAMESPACE, CALIBRATED)]["spec"]["groups"] == calibrated_groups(
            upgraded.model_copy(update={"alerts": kept}), NAMESPACE
        )

        assert main(_pod_run(publish, config_file, kube.url, monkeypatch)) == 0
        assert "unchanged" in capsys.readouterr().out


def test_on_an_empty_store_the_publication_has_the_configs_thresholds(
    scenarios: dict[str, list[Obj]],
    validator: jsonschema.protocols.Validator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No production version (bootstrap.enabled=false on an empty claim): the detection rules
    are published all the same, from the release's alerts section, so that none is missing."""
    objects = scenarios["existing-pvc"]
    config = _config(objects)
    config["store"]["path"] = str(tmp_path / "empty-store")
    config_file = tmp_path / "robustloop.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    (publish,) = _job_pod(objects)["containers"]
    with KubeStandIn(validator) as kube:
        _chart_rule_in(kube, objects)
        assert main(_pod_run(publish, config_file, kube.url, monkeypatch)) == 0
        assert "no production version yet, from the config's thresholds" in capsys.readouterr().out
        written = kube.objects[(NAMESPACE, CALIBRATED)]["spec"]["groups"]
    assert written == calibrated_groups(RobustloopConfig.model_validate(config), NAMESPACE)


def test_rules_publish_outside_a_chart_says_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "ROBUSTLOOP_PROMETHEUS_RULE",
        "ROBUSTLOOP_PROMETHEUS_RULE_OWNER",
        "ROBUSTLOOP_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "robustloop.yaml"
    config_file.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "store")}}))
    assert main(["rules", "publish", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "no PrometheusRule to publish to: set ROBUSTLOOP_PROMETHEUS_RULE" in err
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------------------------
# each step: image, resources, placement


def test_each_step_takes_its_own_values_over_the_workflows(
    helm: str, argo_validator: jsonschema.protocols.Validator
) -> None:
    """workflow.* is every step's; workflow.steps.<step> replaces its placement fields and
    image fields, and is merged over its resources; the server keeps its own image."""
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    spot = [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    steps = {
        "evaluate": {
            "image": {"repository": "registry.example/eval", "tag": "2"},
            "resources": {"requests": {"cpu": "3"}},
            "nodeSelector": {"pool": "batch"},
            "tolerations": spot,
            "affinity": zone,
        },
        "gate": {"image": {"tag": "9", "pullPolicy": "Always"}},
    }  # fmt: skip
    objects = _template(
        helm,
        "--set", "persistence.accessModes={ReadWriteMany}",
        "--set", "workflow.image.repository=registry.example/steps",
        "--set-json", f"workflow.steps={json.dumps(steps)}",
        "--set-json", 'workflow.nodeSelector={"pool":"cpu"}',
        "--set-json", f"workflow.affinity={json.dumps(zone)}",
    )  # fmt: skip
    template = _one(objects, "WorkflowTemplate", "robustloop-remediate")
    problems = _argo_problems(argo_validator, template)
    assert not problems, "\n".join(problems)
    spec = template["spec"]
    assert spec["nodeSelector"] == {"pool": "cpu"} and spec["affinity"] == zone
    by_name = _templates(objects)
    version = _one(objects, "Deployment", f"{FULLNAME}-server")["spec"]["template"]["spec"][
        "containers"][0]["image"].split(":")[-1]  # fmt: skip
    evaluate, gate = _step(by_name["evaluate"]), _step(by_name["gate"])
    assert evaluate["image"] == "registry.example/eval:2"
    assert gate["image"] == "registry.example/steps:9" and gate["imagePullPolicy"] == "Always"
    assert evaluate["resources"]["requests"]["cpu"] == "3"
    assert evaluate["resources"]["limits"]["memory"] == "8Gi", "workflow.resources stays"
    assert by_name["evaluate"]["nodeSelector"] == {"pool": "batch"}
    assert by_name["evaluate"]["tolerations"] == spot
    assert by_name["evaluate"]["affinity"] == zone
    for name in set(by_name) - {"evaluate", "gate"}:
        step = _step(by_name[name])
        assert step["image"] == f"registry.example/steps:{version}", name
        assert step["imagePullPolicy"] == "IfNotPresent", name
        assert not {"nodeSelector", "tolerations", "affinity"} & set(by_name[name]), name
    server = _one(objects, "Deployment", f"{FULLNAME}-server")["spec"]["template"]["spec"]
    assert server["containers"][0]["image"].startswith("ghcr.io/robustloop/robustloop:")


def _images(objects: list[Obj]) -> dict[str, str]:
    """Every container's image: Deployment and Job containers, and each workflow step."""
    out = {}
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            pod = obj["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                out[f"{obj['metadata']['name']}/{container['name']}"] = container["image"]
    for name, template in _templates(objects).items():
        out[f"step/{name}"] = _step(template)["image"]
    return out


def test_the_workflows_image_is_the_servers_unless_it_is_set(helm: str) -> None:
    """A tag suffix given to the server (image.tag) is every step's too, until workflow.image
    says otherwise; then the server keeps its own."""
    same = _images(_template(helm, "--set", "image.tag=1.2.3"))
    assert set(same.values()) - {"ghcr.io/robustloop/robustloop-webhook:0.1.0"} == {
        "ghcr.io/robustloop/robustloop:1.2.3"
    }
    apart = _images(
        _template(helm, "--set", "image.tag=1.2.3-debug", "--set", "workflow.image.tag=1.2.3")
    )
    assert apart[f"{FULLNAME}-server/server"] == "ghcr.io/robustloop/robustloop:1.2.3-debug"
    steps = {k: v for k, v in apart.items() if k.startswith("step/")}
    assert set(steps.values()) == {"ghcr.io/robustloop/robustloop:1.2.3"}


def test_the_gpu_scenario_puts_the_harden_step_alone_in_the_gpu_image(
    scenarios: dict[str, list[Obj]],
) -> None:
    """ci/gpu-values.yaml: the harden step runs the CUDA build on a GPU node; every other step,
    the bootstrap Job and the server run the CPU image on CPU nodes."""
    objects = scenarios["gpu"]
    images = _images(objects)
    assert images.pop("step/harden").endswith("-cuda")
    assert not [where for where, image in images.items() if "cuda" in image]
    harden = _templates(objects)["harden"]
    assert harden["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nvidia.com/gpu" in _step(harden)["resources"]["limits"]
    pod = _job_pod(objects)
    assert not {"nodeSelector", "tolerations"} & set(pod)
    assert "gpu" not in json.dumps(pod).lower(), "the bootstrap Job stays on CPU nodes"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--set", "workflow.steps.evaluate.nodeSelector.pool=batch"],
            ["workflow.steps.evaluate.nodeSelector"],
        ),
        (["--set", "workflow.nodeSelector.pool=batch"], ["workflow.nodeSelector"]),
        (
            [
                "--set",
                "workflow.steps.gate.nodeSelector.pool=a",
                "--set",
                "bootstrap.nodeSelector.pool=b",
            ],
            ["workflow.steps.gate.nodeSelector", "bootstrap.nodeSelector"],
        ),
    ],
)
def test_a_node_pool_for_pods_that_mount_a_one_node_store_is_refused_in_one_line(
    helm: str, args: list[str], named: list[str]
) -> None:
    line = _refusal(helm, *args)
    for value in [
        *named,
        "persistence.accessModes=[ReadWriteOnce]",
        "persistence.colocated=true",
        "ReadWriteMany",
    ]:
        assert value in line, f"{value!r} not named in: {line}"


@pytest.mark.parametrize(
    "args",
    [
        [
            "--set",
            "workflow.steps.evaluate.nodeSelector.pool=batch",
            "--set",
            "persistence.colocated=true",
        ],
        [
            "--set",
            "workflow.steps.evaluate.nodeSelector.pool=batch",
            "--set",
            "persistence.accessModes={ReadWriteMany}",
        ],
        [
            "--set-json",
            'workflow.steps={"evaluate":{"tolerations":[{"key":"spot","operator":"Exists"}]}}',
        ],
    ],
    ids=["colocated", "shared-filesystem", "tolerations-only"],
)
def test_placements_that_keep_the_store_reachable_template(helm: str, args: list[str]) -> None:
    objects = _template(helm, *args)
    assert _templates(objects)["evaluate"]
