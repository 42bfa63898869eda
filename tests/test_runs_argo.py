"""``robustloop runs list|show`` on a cluster: the runs come from the Argo Server's API.

The runs are created through the receiver's own code (a real receiver fed a firing alert, and
its Argo submitter) in the Argo stand-in, next to workflows that are not robustloop's; the CLI
is run as a user runs it (its ``main``, and once in a process of its own) with a config file
whose ``submitter`` names the stand-in. The stand-in answers the list call as the Argo Server
does (label selectors, ``fields`` projection, ``"items": null`` when empty), over HTTPS with a
certificate made here where the test says so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from robustloop.cli import main
from robustloop.config import RobustloopConfig, dump_config
from tests.argo_standin import (
    ArgoStandIn,
    Fault,
    parse_selector,
    project,
    selector_matches,
)
from tests.conftest import REPO_ROOT
from tests.webhook_support import ARGO_TOKEN, RunningReceiver, firing_payload, post, wait_for
from webhook._labels import run_labels
from webhook.models import incident_id
from webhook.submitters import ArgoSubmitter, Submitted
from workflows.contract import TEMPLATE_NAME, incident_parameters, workflow_name_for

STARTS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
RECEIVED_NAME = workflow_name_for(incident_id("a1b2c3d4e5f60718", STARTS), "fashion-cnn")
FOREIGN = "etl-nightly-7f2k9"
HEADER = ["NAME", "STATUS", "AGE", "DURATION", "MESSAGE"]


def _foreign_workflow(name: str = FOREIGN, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Another team's workflow in the same namespace: its own template, its own labels."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": name,
            "labels": labels
            if labels is not None
            else {"workflows.argoproj.io/workflow-template": "etl-nightly", "team": "data"},
        },
        "spec": {"workflowTemplateRef": {"name": "etl-nightly"}},
    }


def _submit(config: RobustloopConfig, model: str, incident: str) -> str:
    """Create a run as the receiver's dispatcher does: its name, parameters and labels."""
    name = workflow_name_for(incident, model)
    section = config.submitter.argo
    submitter = ArgoSubmitter(
        section.host,
        section.namespace,
        token_file=section.token_file,
        verify_tls=section.verify_tls,
        ca_file=section.ca_file,
        timeout=config.webhook.submit_timeout_seconds,
    )
    try:
        result = submitter.submit(
            name,
            incident_parameters(model=model, incident_id=incident),
            run_labels(model=model, incident_id=incident, alertname="AdversarialAttackDetected"),
        )
    finally:
        submitter.close()
    assert result is Submitted.CREATED
    return name


def _write(config: RobustloopConfig, tmp_path: Path) -> Path:
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``robustloop ARGV`` run in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    """The error a failed command printed: exactly one line, returned."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("robustloop: error: "), err
    return lines[0]


def _rows(table: str) -> dict[str, list[str]]:
    """``runs list``'s table as {name: cells}, after checking its header."""
    lines = table.strip().splitlines()
    assert lines[0].split() == HEADER, table
    return {line.split()[0]: line.split() for line in lines[1:]}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the stand-in's list call holds to the Kubernetes and Argo contract --------------------------


def test_label_selectors_have_kubernetes_semantics() -> None:
    labels = {"robustloop.dev/model": "fashion-cnn", "workflows.argoproj.io/workflow-template": "t"}
    assert selector_matches(parse_selector(""), labels)
    assert selector_matches(parse_selector("robustloop.dev/model=fashion-cnn"), labels)
    assert selector_matches(parse_selector("robustloop.dev/model==fashion-cnn"), labels)
    assert not selector_matches(parse_selector("robustloop.dev/model=other"), labels)
    assert selector_matches(parse_selector("robustloop.dev/model"), labels)
    assert not selector_matches(parse_selector("robustloop.dev/incident"), labels)
    assert selector_matches(parse_selector("!robustloop.dev/incident"), labels)
    assert not selector_matches(parse_selector("!robustloop.dev/model"), labels)
    assert selector_matches(parse_selector("team!=data"), labels)  # absent: != holds
    assert not selector_matches(parse_selector("robustloop.dev/model!=fashion-cnn"), labels)
    both = "workflows.argoproj.io/workflow-template=t, robustloop.dev/model"
    assert selector_matches(parse_selector(both), labels)
    assert not selector_matches(parse_selector(both + ",team"), labels)
    for bad in ("a=b=c", "model in (a,b)", "=v", "bad key=v", "k=not a value"):
        with pytest.raises(ValueError, match="unable to parse"):
            parse_selector(bad)


def test_fields_project_like_the_argo_server() -> None:
    answer = {
        "metadata": {"resourceVersion": "7"},
        "items": [{"metadata": {"name": "a", "uid": "u"}, "status": {"phase": "Running"}}],
    }
    assert project(answer, "items.metadata.name") == {"items": [{"metadata": {"name": "a"}}]}
    assert project(answer, "metadata,items.status") == {
        "metadata": {"resourceVersion": "7"},
        "items": [{"status": {"phase": "Running"}}],
    }
    assert project(answer, "-items.metadata.uid,metadata") == {
        "items": [{"metadata": {"name": "a"}, "status": {"phase": "Running"}}]
    }
    assert project({"metadata": {}, "items": None}, "items.metadata.name") == {"items": None}


def test_an_empty_list_is_items_null_and_a_bad_selector_is_a_400(argo: ArgoStandIn) -> None:
    url = f"{argo.url}/api/v1/workflows/robustloop"
    headers = {"Authorization": f"Bearer {ARGO_TOKEN}"}
    answer = requests.get(url, headers=headers, timeout=5)
    assert answer.status_code == 200 and answer.json()["items"] is None
    argo.add_workflow(_foreign_workflow())
    found = requests.get(url, params={"listOptions.labelSelector": "team=data"}, headers=headers)
    assert [w["metadata"]["name"] for w in found.json()["items"]] == [FOREIGN]
    bad = requests.get(url, params={"listOptions.labelSelector": "team in (data)"}, headers=headers)
    assert bad.status_code == 400
    assert argo.invalid and "team in (data)" in argo.invalid[0]
    argo.invalid.clear()
    with pytest.raises(ValueError, match="not a label value"):
        argo.add_workflow(_foreign_workflow("bad-labels", {"team": "data science"}))


# -- robustloop runs list ------------------------------------------------------------------------


def test_list_shows_the_receivers_runs_and_leaves_other_workflows_out(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a run the receiver started for a firing alert, a run of another model...
    running = start_receiver(webhook_config)
    assert post(running.url, firing_payload(starts_at=STARTS)).status_code == 200
    wait_for(lambda: RECEIVED_NAME in argo.created(), what="the receiver's run")
    running.stop()
    other = _submit(webhook_config, "mnist-cnn", "inc-7")
    argo.set_phase(other, "Succeeded", gate_passed=True)
    # ...another team's workflow in the same namespace, one that only looks like robustloop's
    # (its template's label, no model label), and a run in another namespace
    argo.add_workflow(_foreign_workflow())
    template_only = {"workflows.argoproj.io/workflow-template": TEMPLATE_NAME}
    argo.add_workflow(_foreign_workflow("hand-made-1", template_only))
    argo.add_workflow(
        _foreign_workflow("elsewhere-1", {**template_only, "robustloop.dev/model": "fashion-cnn"}),
        namespace="staging",
    )
    config = _write(webhook_config, tmp_path)

    # WHEN the user lists the runs (submitter.kind argo: the default source)
    code, out, err = _cli(capsys, "runs", "list", "--config", str(config))

    # THEN exactly robustloop's runs in the configured namespace are listed, as `argo list` does
    assert code == 0, err
    rows = _rows(out)
    assert set(rows) == {RECEIVED_NAME, other}
    assert rows[other][1] == "Succeeded" and rows[RECEIVED_NAME][1] == "Running"
    listed = [path for method, path in argo.received if method == "GET"]
    assert len(listed) == 1 and "listOptions.labelSelector=" in listed[0]

    # WHEN narrowed to one model THEN only its runs; --json prints the listed Workflow objects
    code, out, err = _cli(capsys, "runs", "list", "--model", "mnist-cnn", "--config", str(config))
    assert code == 0, err
    assert set(_rows(out)) == {other}
    code, out, err = _cli(capsys, "runs", "list", "--json", "--config", str(config))
    assert code == 0, err
    workflows = json.loads(out)
    assert {w["metadata"]["name"] for w in workflows} == {RECEIVED_NAME, other}
    assert all(w["metadata"]["labels"]["robustloop.dev/model"] for w in workflows)
    assert all("nodes" not in w["status"] for w in workflows)  # the listing's projection

    # WHEN a model has no runs THEN it says where it looked
    code, out, err = _cli(capsys, "runs", "list", "--model", "nobody", "--config", str(config))
    assert code == 0, err
    assert out.strip() == (
        f"no runs of model nobody in namespace robustloop of the Argo Server {argo.url}"
    )


def test_the_source_flag_overrides_the_submitter_kind(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    on_argo = _submit(webhook_config, "fashion-cnn", "inc-1")
    local = webhook_config.submitter.runs_dir / "rl-local-1"
    local.mkdir(parents=True)
    (local / "workflow.json").write_text(
        json.dumps(
            {
                "metadata": {"name": "rl-local-1"},
                "spec": {"arguments": {"parameters": [{"name": "model", "value": "mnist-cnn"}]}},
                "status": {"phase": "Succeeded", "startedAt": "2026-01-02T03:04:05Z"},
            }
        ),
        encoding="utf-8",
    )

    argo_config = _write(webhook_config, tmp_path)
    code, out, err = _cli(capsys, "runs", "list", "--source", "local", "--config", str(argo_config))
    assert code == 0, err
    assert set(_rows(out)) == {"rl-local-1"}
    code, out, err = _cli(
        capsys, "runs", "list", "--source", "local", "--model", "fashion-cnn",
        "--config", str(argo_config),
    )  # fmt: skip
    assert code == 0 and out.startswith("no runs of model fashion-cnn in "), err

    webhook_config.submitter.kind = "local"
    local_config = _write(webhook_config, tmp_path)
    code, out, err = _cli(capsys, "runs", "list", "--config", str(local_config))
    assert code == 0 and set(_rows(out)) == {"rl-local-1"}, err
    code, out, err = _cli(capsys, "runs", "list", "--source", "argo", "--config", str(local_config))
    assert code == 0 and set(_rows(out)) == {on_argo}, err


# -- robustloop runs show ------------------------------------------------------------------------


def test_show_prints_the_run_and_its_step_tree(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a run whose gate passed and which promoted
    name = _submit(webhook_config, "fashion-cnn", "inc-42")
    argo.set_phase(name, "Succeeded", gate_passed=True)
    config = _write(webhook_config, tmp_path)

    # WHEN the user shows it
    code, out, err = _cli(capsys, "runs", "show", name, "--config", str(config))

    # THEN the header, the parameters, the DAG's steps under it with each attempt under its
    # step, and the outputs, as `argo get` shows them
    assert code == 0, err
    lines = out.splitlines()
    assert f"Name:                {name}" in lines
    assert "Namespace:           robustloop" in lines
    assert "Status:              Succeeded" in lines
    assert "  model: fashion-cnn" in lines and "  incident-id: inc-42" in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("STEP"))
    end = lines.index("", start)
    assert lines[start + 1].startswith(f"✔ {name} remediate ")  # a long name keeps a space
    steps = [line[:26].rstrip() for line in lines[start + 2 : end]]
    for task in ("harden", "evaluate", "gate", "promote"):
        assert steps.index(f"  └─✔ {task}") + 1 == steps.index(f"    └─✔ {task}({0})")
    assert steps.index("  └─✔ harden") < steps.index("  └─✔ gate") < steps.index("  └─✔ promote")
    assert "  gate.passed: true" in lines and "  promote.version: v0002" in lines
    assert not any(line.startswith("  gate(0).") for line in lines)  # no attempt's copy

    # WHEN --json THEN the Workflow object as the Argo Server holds it
    code, out, err = _cli(capsys, "runs", "show", name, "--json", "--config", str(config))
    assert code == 0, err
    assert json.loads(out)["status"]["nodes"][name]["type"] == "DAG"


def test_show_of_a_run_that_is_not_there_is_one_line_and_exit_2(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argo.add_workflow(_foreign_workflow())
    config = _write(webhook_config, tmp_path)
    for name in ("rl-fashion-cnn-000000000000", FOREIGN):
        code, out, err = _cli(capsys, "runs", "show", name, "--config", str(config))
        assert code == 2 and out == ""
        line = _one_line_error(err)
        assert f"no run named {name!r} in namespace robustloop of the Argo Server" in line
    code, out, err = _cli(capsys, "runs", "show", "../secrets", "--config", str(config))
    assert code == 2 and "is not a workflow name" in _one_line_error(err)
    code, out, err = _cli(capsys, "runs", "show", FOREIGN, "--logs", "--config", str(config))
    assert code == 2 and "argo -n robustloop logs" in _one_line_error(err)
    assert [path for _, path in argo.received if "secrets" in path] == []


# -- errors: one line, exit 2, the setting to change ---------------------------------------------


def test_https_with_the_ca_file_works_and_without_it_fails_naming_the_setting(
    webhook_config: RobustloopConfig,
    argo_tls: ArgoStandIn,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN an Argo Server serving TLS with a self-signed certificate, and a run there
    webhook_config.submitter.argo.host = argo_tls.url
    webhook_config.submitter.argo.verify_tls = True
    webhook_config.submitter.argo.ca_file = certificate[0]
    name = _submit(webhook_config, "fashion-cnn", "inc-tls")

    # WHEN the CLI verifies against the CA file THEN it lists and shows the run
    with_ca = _write(webhook_config, tmp_path)
    code, out, err = _cli(capsys, "runs", "list", "--config", str(with_ca))
    assert code == 0 and set(_rows(out)) == {name}, err
    code, out, err = _cli(capsys, "runs", "show", name, "--config", str(with_ca))
    assert code == 0 and "Status:              Running" in out, err

    # WHEN it verifies against the system's CAs THEN one line naming the CA option, exit 2
    webhook_config.submitter.argo.ca_file = None
    without_ca = _write(webhook_config, tmp_path)
    reads = len(argo_tls.received)
    code, out, err = _cli(capsys, "runs", "list", "--config", str(without_ca))
    assert code == 2 and out == ""
    line = _one_line_error(err)
    assert "self-signed certificate" in line and "submitter.argo.ca_file" in line
    assert len(argo_tls.received) == reads  # nothing reached the API


def test_a_rejected_token_is_one_line_naming_the_token_setting(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("expired-token", encoding="utf-8")
    webhook_config.submitter.argo.token_file = wrong
    config = _write(webhook_config, tmp_path)
    for argv in (("runs", "list"), ("runs", "show", "rl-fashion-cnn-000000000000")):
        code, out, err = _cli(capsys, *argv, "--config", str(config))
        assert code == 2 and out == ""
        line = _one_line_error(err)
        assert "answered 401" in line and "token not valid" in line
        assert f"submitter.argo.token_file {wrong}" in line


def test_a_forbidden_namespace_is_one_line_naming_the_namespace(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argo.inject(Fault("GET", status=403))
    code, out, err = _cli(capsys, "runs", "list", "--config", str(_write(webhook_config, tmp_path)))
    assert code == 2 and out == ""
    line = _one_line_error(err)
    assert "answered 403" in line and "namespace robustloop (submitter.argo.namespace)" in line


def test_an_unreachable_server_is_one_line_naming_the_host_setting(
    webhook_config: RobustloopConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    webhook_config.submitter.argo.host = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = _cli(capsys, "runs", "list", "--config", str(_write(webhook_config, tmp_path)))
    assert code == 2 and out == ""
    line = _one_line_error(err)
    assert "did not answer listing runs (Connection refused)" in line
    assert "check submitter.argo.host" in line


def test_the_command_lists_from_a_process_of_its_own_without_torch(
    webhook_config: RobustloopConfig, argo: ArgoStandIn, tmp_path: Path
) -> None:
    """As on the receiver's image (no torch): ``robustloop runs list`` in a fresh process."""
    name = _submit(webhook_config, "fashion-cnn", "inc-9")
    config = _write(webhook_config, tmp_path)
    code = (
        "import sys\n"
        "from robustloop.cli import main\n"
        f"code = main(['runs', 'list', '--config', {str(config)!r}])\n"
        "print('TORCH', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'training')))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH []" in result.stdout, result.stdout
    assert set(_rows(result.stdout.split("TORCH")[0])) == {name}
