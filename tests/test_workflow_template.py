"""The remediation WorkflowTemplate: golden YAML, Argo schema, Hera round trip, its contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hera.workflows.models import WorkflowTemplate as WorkflowTemplateModel

from robustloop.config import RobustloopConfig
from workflows.contract import GATE_TASK, PARAMETERS, PROMOTE_TASK, TEMPLATE_NAME
from workflows.remediation import (
    DESCRIPTION_ANNOTATION,
    GOLDEN_PATH,
    HEADER,
    INCIDENT_LABEL,
    MODEL_LABEL,
    STORE_CLAIM,
    TITLE_ANNOTATION,
    build_template,
    render_yaml,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return dict(yaml.safe_load(GOLDEN_PATH.read_text(encoding="utf-8")))


def _templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def test_golden_yaml_is_what_render_produces_for_the_default_config() -> None:
    # The golden file is generated; regenerate with `robustloop workflow render` (make generate).
    assert GOLDEN_PATH.read_text(encoding="utf-8") == render_yaml(RobustloopConfig())
    assert GOLDEN_PATH.read_text(encoding="utf-8").startswith(HEADER)
    assert "do not edit" in HEADER


def test_render_check_reports_a_stale_golden_file(tmp_path: Path) -> None:
    stale = tmp_path / "stale.yaml"
    stale.write_text("# old\n")
    cmd = [sys.executable, "-m", "robustloop", "workflow", "render", "--check", "--output"]
    done = subprocess.run([*cmd, str(stale)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert "stale" in done.stderr and "robustloop workflow render" in done.stderr
    assert stale.read_text() == "# old\n"  # --check changes nothing


def test_golden_yaml_validates_against_the_argo_schema(
    golden: dict[str, Any], schemas: Path
) -> None:
    full = json.loads((schemas / "argo-workflows" / "schema.json").read_text())
    schema = {
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate",
        "definitions": full["definitions"],
    }
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(golden)]
    assert errors == []
    # and a broken one does not (the validation can fail)
    broken = json.loads(json.dumps(golden))
    broken["spec"]["templates"][0]["dag"]["tasks"][0]["arguments"] = "not-an-object"
    assert list(validator.iter_errors(broken))


def test_golden_yaml_round_trips_through_heras_models(golden: dict[str, Any]) -> None:
    parsed = WorkflowTemplateModel.model_validate(golden)
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped == golden
    assert build_template().to_dict() == golden


def test_dag_is_harden_evaluate_gate_promote_guard_and_promote_needs_the_gate(
    golden: dict[str, Any],
) -> None:
    templates = _templates(golden)
    spec = golden["spec"]
    tasks = {t["name"]: t for t in templates[spec["entrypoint"]]["dag"]["tasks"]}
    assert list(tasks) == ["harden", "evaluate", GATE_TASK, PROMOTE_TASK, "guard"]
    assert "depends" not in tasks["harden"]
    assert tasks["evaluate"]["depends"] == "harden"
    assert tasks[GATE_TASK]["depends"] == "evaluate"
    assert tasks[PROMOTE_TASK]["depends"] == GATE_TASK
    passed = f"{{{{tasks.{GATE_TASK}.outputs.parameters.passed}}}} == true"
    assert tasks[PROMOTE_TASK]["when"] == passed
    assert tasks["guard"]["when"] == passed
    promote_args = {p["name"]: p["value"] for p in tasks[PROMOTE_TASK]["arguments"]["parameters"]}
    assert promote_args["incident-id"] == "{{workflow.parameters.incident-id}}"
    assert promote_args["workflow"] == "{{workflow.name}}"
    # the outputs the webhook reads
    outputs = {
        name: [p["name"] for p in templates[name]["outputs"]["parameters"]]
        for name in (GATE_TASK, PROMOTE_TASK)
    }
    assert "passed" in outputs[GATE_TASK] and outputs[PROMOTE_TASK] == ["version"]


def test_parameters_are_the_contracts_with_config_defaults() -> None:
    cfg = RobustloopConfig()
    cfg.model.name = "other-model"
    cfg.remediation.method = "pgd"
    cfg.remediation.eps = 0.2
    cfg.remediation.epochs = 5
    cfg.remediation.max_seconds = None
    doc = build_template(cfg).to_dict()
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert list(params) == list(PARAMETERS)
    assert params["model"] == "other-model"
    assert params["method"] == "pgd"
    assert params["eps"] == "0.2"
    assert params["epochs"] == "5"
    assert params["max-seconds"] == "0"
    assert params["base-version"] == "production"
    default = {
        p["name"]: p["value"] for p in build_template().to_dict()["spec"]["arguments"]["parameters"]
    }
    assert default == PARAMETERS


def test_operational_settings(golden: dict[str, Any]) -> None:
    spec = golden["spec"]
    assert golden["metadata"]["name"] == TEMPLATE_NAME
    assert spec["synchronization"]["mutexes"] == [
        {"name": "robustloop-{{workflow.parameters.model}}"}
    ]
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["podGC"]["strategy"] == "OnPodSuccess"
    assert spec["onExit"] == "exit-handler"
    exit_tasks = _templates(golden)["exit-handler"]["dag"]["tasks"]
    exit_args = {p["name"]: p["value"] for p in exit_tasks[0]["arguments"]["parameters"]}
    assert exit_args["status"] == "{{workflow.status}}"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == STORE_CLAIM


def test_each_run_is_labelled_and_titled_from_its_parameters(golden: dict[str, Any]) -> None:
    """GIVEN the golden template THEN every run it starts gets, from its own parameters, the
    labels robustloop.dev/model and robustloop.dev/incident (Argo labelsFrom expressions, which
    make any value a valid label value) and the title and description the Argo UI lists."""
    metadata = golden["spec"]["workflowMetadata"]
    expressions = {name: e["expression"] for name, e in metadata["labelsFrom"].items()}
    assert set(expressions) == {MODEL_LABEL, INCIDENT_LABEL}
    assert "workflow.parameters['model']" in expressions[MODEL_LABEL]
    assert "workflow.parameters['incident-id']" in expressions[INCIDENT_LABEL]
    for expression in expressions.values():
        assert "{{" not in expression, "labelsFrom takes a bare expression, not a {{template}}"
        assert "sprig.trunc(63," in expression, "a label value has at most 63 characters"
    assert "labels" not in metadata, "the run's labels come from its parameters alone"
    annotations = metadata["annotations"]
    assert set(annotations) == {TITLE_ANNOTATION, DESCRIPTION_ANNOTATION}
    title = annotations[TITLE_ANNOTATION]
    assert (
        title
        == "Harden {{workflow.parameters.model}} (incident {{workflow.parameters.incident-id}})"
    )
    for parameter in ("model", "method", "eps", "base-version"):
        assert f"{{{{workflow.parameters.{parameter}}}}}" in annotations[DESCRIPTION_ANNOTATION]
    # Every {{...}} names a parameter that the template declares.
    declared = {p["name"] for p in golden["spec"]["arguments"]["parameters"]}
    used = set(
        re.findall(
            r"\{\{workflow\.parameters\.([a-z-]+)\}\}", title + annotations[DESCRIPTION_ANNOTATION]
        )
    )
    assert used and used <= declared


def test_every_step_runs_project_code_through_heras_runner(golden: dict[str, Any]) -> None:
    scripts = [t for t in golden["spec"]["templates"] if "script" in t]
    assert {t["name"] for t in scripts} == {
        "harden",
        "evaluate",
        "gate",
        "promote",
        "guard",
        "record-outcome",
    }
    for template in scripts:
        script = template["script"]
        function = template["name"].replace("-", "_")
        assert script["command"] == ["python"]
        assert script["args"] == [
            "-m",
            "hera.workflows.runner",
            "-e",
            f"workflows.steps:{function}",
        ]
        assert script["source"] == "{{inputs.parameters}}"  # parameters only, no code
        assert script["image"] == "robustloop:latest"
        mounts = {m["name"] for m in script["volumeMounts"]}
        assert mounts == {"store", "config"}
        # retried on infrastructure errors only, never on a failing exit code
        assert template["retryStrategy"]["retryPolicy"] == "OnError"


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("eps=abc", "eps='abc' is not a number"),
        ("eps=2", "eps=2 is outside"),
        ("epochs=0", "epochs=0 is outside"),
        ("method=fgsm", "not one of pgd, fgsm-rs, fgsm-prior"),
        ("model=other", "this config serves"),
        ("colour=blue", "no such parameter"),
        ("no-equals-sign", "expected NAME=VALUE"),
    ],
)
def test_run_local_refuses_bad_parameters_and_creates_nothing(
    tmp_path: Path, param: str, message: str
) -> None:
    (tmp_path / "robustloop.yaml").write_text("submitter:\n  runs_dir: runs\n")
    cmd = [sys.executable, "-m", "robustloop", "workflow", "run-local", "--name", "r1"]
    done = subprocess.run([*cmd, "-p", param], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "r1").exists()
