"""The ``local`` submitter: the local executor as a detached process, its run record read back.

A tiny fake executor stands in for ``robustloop workflow run-local`` (whose real runs train a
model): it honours the same contract (claim ``<runs_dir>/<name>``, exit 3 if it exists, record
an Argo-shaped ``workflow.json``). The real command line is checked against the real parser.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from robustloop.cli import build_parser, main
from robustloop.config import RobustloopConfig, dump_config
from tests.webhook_support import TOKEN, firing_payload, post, remediation, wait_for
from webhook import ReceiverServer, create_app
from webhook.models import incident_id
from webhook.submitters import (
    LocalSubmitter,
    RefusedSubmitError,
    Submitted,
    TransientSubmitError,
    build_submitter,
)
from workflows.contract import INCIDENT_PARAMETERS, incident_parameters, workflow_name_for

FAKE_EXECUTOR = """
import argparse, json, os, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--runs-dir", required=True)
parser.add_argument("--exit", type=int, default=None)
parser.add_argument("--gate", default="true")
parser.add_argument("--name", required=True)
parser.add_argument("--param", action="append", default=[])
args = parser.parse_args()
if args.exit is not None:
    sys.exit(args.exit)
run = Path(args.runs_dir) / args.name
try:
    run.mkdir(parents=True)
except FileExistsError:
    sys.exit(3)
params = [dict(zip(("name", "value"), p.split("=", 1))) for p in args.param]

def record(phase, nodes):
    workflow = {"metadata": {"name": args.name}, "spec": {"arguments": {"parameters": params}},
                "status": {"phase": phase, "nodes": nodes}}
    tmp = run / "workflow.json.tmp"
    tmp.write_text(json.dumps(workflow))
    os.replace(tmp, run / "workflow.json")

record("Running", {})
time.sleep(0.3)
gate = {"displayName": "gate", "phase": "Succeeded",
        "outputs": {"parameters": [{"name": "passed", "value": args.gate}]}}
record("Succeeded", {"n1": gate})
"""

STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., LocalSubmitter]:
    script = tmp_path / "fake_executor.py"
    script.write_text(FAKE_EXECUTOR, encoding="utf-8")

    def make(*extra: str) -> LocalSubmitter:
        return LocalSubmitter(
            runs_dir=tmp_path / "runs",
            log_dir=tmp_path / "logs",
            command=[sys.executable, str(script), "--runs-dir", str(tmp_path / "runs"), *extra],
            start_wait_seconds=5.0,
        )

    return make


def test_receiver_runs_a_remediation_with_the_local_executor(
    small_config: RobustloopConfig, tmp_path: Path, fake: Callable[..., LocalSubmitter]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    small_config.webhook.token_file = token_file
    small_config.webhook.poll_seconds = 0.05
    submitter = fake("--gate", "false")
    app = create_app(small_config, submitter=submitter, registry=CollectorRegistry())
    with ReceiverServer(app) as server:
        assert post(server.url, firing_payload(starts_at=STARTS)).status_code == 200
        wait_for(lambda: remediation(server.url, INCIDENT)["state"] == "rejected", timeout=30)
        record = remediation(server.url, INCIDENT)
    name = workflow_name_for(INCIDENT, "fashion-cnn")
    assert record["workflow"] == name
    assert "gate rejected" in record["reason"]
    stored = json.loads(submitter.record_path(name).read_text(encoding="utf-8"))
    params = {p["name"]: p["value"] for p in stored["spec"]["arguments"]["parameters"]}
    assert params == {"model": "fashion-cnn", "incident-id": INCIDENT}
    assert tuple(params) == INCIDENT_PARAMETERS


def test_a_second_submission_of_a_name_is_exists(fake: Callable[..., LocalSubmitter]) -> None:
    submitter = fake()
    assert submitter.submit("rl-a", {"model": "m"}) is Submitted.CREATED
    wait_for(lambda: (s := submitter.status("rl-a")) is not None and s.finished)
    assert submitter.submit("rl-a", {"model": "m"}) is Submitted.EXISTS  # record exists
    (submitter.runs_dir / "rl-b").mkdir()  # claimed, not recorded yet: the executor exits 3
    assert submitter.submit("rl-b", {"model": "m"}) is Submitted.EXISTS


def test_executor_failures_are_classified(
    fake: Callable[..., LocalSubmitter], tmp_path: Path
) -> None:
    with pytest.raises(RefusedSubmitError, match="code 2"):
        fake("--exit", "2").submit("rl-c", {})
    with pytest.raises(TransientSubmitError, match="code 1"):
        fake("--exit", "1").submit("rl-d", {})
    missing = LocalSubmitter(tmp_path / "runs", tmp_path / "logs", [str(tmp_path / "nothing")])
    with pytest.raises(RefusedSubmitError, match="cannot start"):
        missing.submit("rl-e", {})


def test_a_run_that_dies_without_a_record_is_failed(
    fake: Callable[..., LocalSubmitter], tmp_path: Path
) -> None:
    submitter = fake("--exit", "0")
    assert submitter.submit("rl-f", {}) is Submitted.CREATED
    summary = submitter.status("rl-f")
    assert summary is not None and summary.phase == "Failed"
    assert "without recording" in summary.message
    assert fake().status("rl-never") is None


def test_default_command_is_what_the_real_cli_accepts(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    submitter = build_submitter(small_config, tmp_path / "robustloop.yaml")
    assert isinstance(submitter, LocalSubmitter)
    assert submitter.command[:3] == [sys.executable, "-m", "robustloop"]
    argv = [*submitter.command[3:], "--name", "rl-x", "--param", "model=fashion-cnn"]
    args = build_parser().parse_args(argv)
    assert (args.command, args.config, args.name, args.param) == (
        "workflow",
        tmp_path / "robustloop.yaml",
        "rl-x",
        ["model=fashion-cnn"],
    )


def test_the_local_executor_fills_in_the_recipe_of_the_receivers_config(
    small_config: RobustloopConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver submits only the incident's parameters; the executor's command, run by the
    real CLI, records the run with the rest filled in from the template it builds from the same
    config file: the defaults the chart's WorkflowTemplate has for that config."""
    from workflows.executor import LocalExecutor
    from workflows.remediation import parameter_defaults

    # GIVEN a receiver whose robustloop.yaml names a recipe other than the defaults
    small_config.remediation.method = "pgd"
    small_config.remediation.epochs = 5
    config_file = tmp_path / "robustloop.yaml"
    config_file.write_text(dump_config(small_config), encoding="utf-8")
    # (the steps, which would train a model, are not run)
    monkeypatch.setattr(LocalExecutor, "_run_main", lambda self: ("Succeeded", ""))

    # WHEN the local submitter's command runs with the incident's parameters
    submitter = build_submitter(small_config, config_file)
    assert isinstance(submitter, LocalSubmitter)
    params = incident_parameters(model="fashion-cnn", incident_id=INCIDENT)
    argv = [*submitter.command[3:], "--name", "rl-x"]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    assert main(argv) == 0

    # THEN the recorded run has the config's recipe and the incident's identity
    stored = json.loads(submitter.record_path("rl-x").read_text(encoding="utf-8"))
    recorded = {p["name"]: p["value"] for p in stored["spec"]["arguments"]["parameters"]}
    assert recorded == {**parameter_defaults(small_config), **params}
    assert (recorded["method"], recorded["epochs"]) == ("pgd", "5")
