"""The local executor runs a Hera template as Argo would: order, ``when``, parameters, exit handler.

These tests use a tiny template of their own (steps defined below, run through Hera's runner in
subprocesses exactly like the remediation steps), so they need no torch and run in seconds; the
remediation template itself is exercised end to end in ``test_workflow_e2e.py``.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.test_local_executor_steps import _template
from workflows import summarise_workflow
from workflows._argo import (
    ExpressionError,
    depends_tasks,
    evaluate_depends,
    evaluate_when,
    substitute,
)
from workflows.executor import ExecutorError, LocalExecutor, RunExists
from workflows.runs import format_list, format_show, list_runs, load_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def executor(tmp_path: Path) -> LocalExecutor:
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TEST_OUTCOME": str(tmp_path / "outcome.json"),
        "TEST_MARKER": str(tmp_path / "marker"),
    }
    return LocalExecutor(_template(), tmp_path / "runs", env=env)


def _nodes(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in wf["status"]["nodes"].values()}


def _workflow_schema(schemas: Path) -> dict[str, Any]:
    full = json.loads((schemas / "argo-workflows" / "schema.json").read_text())
    return {
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow",
        "definitions": full["definitions"],
    }


def test_run_walks_the_dag_passes_outputs_and_runs_the_exit_handler(
    executor: LocalExecutor, tmp_path: Path, schemas: Path
) -> None:
    # GIVEN the default value "ab" WHEN the run goes through
    phase = executor.run("run-1", {})
    wf = load_run(tmp_path / "runs", "run-1")
    nodes = _nodes(wf)

    # THEN every step ran in order, outputs flowed, and `act` ran because the judge passed
    assert phase == "Succeeded" == wf["status"]["phase"]
    assert nodes["produce"]["outputs"]["parameters"] == [{"name": "out", "value": "abab"}]
    assert nodes["produce"]["inputs"]["parameters"] == [{"name": "value", "value": "ab"}]
    assert nodes["act"]["phase"] == "Succeeded"
    assert nodes["act"]["outputs"]["parameters"][0]["value"] == "acted on abab"
    order = [
        nodes[k]["startedAt"] <= nodes[v]["startedAt"]
        for k, v in (("produce", "judge"), ("judge", "act"))
    ]
    assert all(order)
    # the exit handler saw the final status, and the record is an Argo Workflow
    assert json.loads((tmp_path / "outcome.json").read_text())["status"] == "Succeeded"
    assert nodes["run-1.onExit"]["phase"] == "Succeeded"
    jsonschema.Draft7Validator(_workflow_schema(schemas)).validate(wf)
    assert wf["status"]["finishedAt"] >= wf["status"]["startedAt"]
    assert (tmp_path / "runs" / "run-1" / "logs" / "produce.log").exists()
    assert summarise_workflow(wf).phase == "Succeeded"
    # and `robustloop runs list/show` present it as `argo list/get` would
    table = format_list(list_runs(tmp_path / "runs"))
    assert table.splitlines()[0].split() == ["NAME", "STATUS", "AGE", "DURATION", "MESSAGE"]
    assert table.splitlines()[1].split()[:2] == ["run-1", "Succeeded"]
    shown = format_show(wf)
    assert "Status:              Succeeded" in shown
    assert "value: ab" in shown
    assert "act.done: acted on abab" in shown
    for step in ("produce", "judge", "act", "again"):
        assert f"✔ {step}" in shown


def test_when_false_skips_the_step_and_the_run_still_succeeds(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    phase = executor.run("short", {"value": "a"})  # "aa" is too short: judge says false
    nodes = _nodes(load_run(tmp_path / "runs", "short"))
    assert phase == "Succeeded"
    assert nodes["judge"]["outputs"]["parameters"] == [{"name": "passed", "value": "false"}]
    assert nodes["act"]["phase"] == "Skipped"
    assert "outputs" not in nodes["act"]
    # a skipped task's arguments may name outputs that never existed: not an error
    assert nodes["again"]["phase"] == "Skipped"


def test_a_failing_step_fails_the_run_omits_the_rest_and_reports_to_the_exit_handler(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    phase = executor.run("bad", {"value": "fail"})
    wf = load_run(tmp_path / "runs", "bad")
    nodes = _nodes(wf)
    assert phase == "Failed" == wf["status"]["phase"]
    assert nodes["produce"]["phase"] == "Failed"
    assert "refusing the value 'fail'" in nodes["produce"]["message"]
    assert nodes["judge"]["phase"] == "Omitted"
    assert nodes["act"]["phase"] == "Omitted"
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["status"] == "Failed"
    assert json.loads(outcome["failures"])[0]["displayName"] == "produce"
    assert "produce" in wf["status"]["message"]


def test_an_existing_run_name_is_refused_and_left_untouched(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "workflow.json").write_text('{"sentinel": 1}')
    with pytest.raises(RunExists, match="exists already"):
        executor.run("taken", {})
    assert json.loads((tmp_path / "runs" / "taken" / "workflow.json").read_text()) == {
        "sentinel": 1
    }


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ok-name", {"no-such": "1"}, "unknown parameter"),
        ("Bad_Name", {}, "DNS-1123"),
    ],
)
def test_bad_input_creates_nothing(
    executor: LocalExecutor, tmp_path: Path, name: str, params: dict[str, str], message: str
) -> None:
    with pytest.raises(ExecutorError, match=message):
        executor.run(name, params)
    assert not (tmp_path / "runs" / name).exists()


def test_a_step_killed_midway_fails_the_run_and_is_recorded(tmp_path: Path) -> None:
    # GIVEN a run whose first step hangs, executed by the CLI-like subprocess
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_local_executor_steps import _template;"
        "from workflows.executor import LocalExecutor;"
        "import os;"
        "ex = LocalExecutor(_template(), sys.argv[2], env=json.loads(sys.argv[3]));"
        "print(ex.run('hung', {'value': 'hang'}))"
    )
    env = {
        "PYTHONPATH": str(REPO),
        "TEST_OUTCOME": str(tmp_path / "outcome.json"),
        "TEST_MARKER": str(tmp_path / "marker"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(tmp_path / "runs"), json.dumps(env)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        marker = tmp_path / "marker"
        for _ in range(600):
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        # WHEN the step's process is killed
        os.kill(int(marker.read_text()), signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # THEN the step and the run are Failed with the reason, and the exit handler ran
    wf = load_run(tmp_path / "runs", "hung")
    nodes = _nodes(wf)
    assert out.strip() == "Failed"
    assert nodes["produce"]["phase"] == "Failed"
    assert "SIGKILL" in nodes["produce"]["message"]
    assert nodes["judge"]["phase"] == "Omitted"
    assert json.loads((tmp_path / "outcome.json").read_text())["status"] == "Failed"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("true == true", True),
        ("false == true", False),
        ("'a' != 'b'", True),
        ("0.4 > 0.3 && !(1 == 2)", True),
        ("false || true == true", True),
    ],
)
def test_when_expressions(expression: str, expected: bool) -> None:
    assert evaluate_when(expression) is expected


def test_depends_expressions() -> None:
    phases = {"a": "Succeeded", "b": "Skipped", "c": "Failed"}
    assert evaluate_depends("a && b", phases)
    assert not evaluate_depends("c", phases)
    assert evaluate_depends("c.Failed || a.Failed", phases)
    assert depends_tasks("(a.Succeeded || b) && !c") == ["a", "b", "c"]


def test_unresolvable_variables_and_garbage_expressions_are_errors() -> None:
    with pytest.raises(ExpressionError, match="unable to resolve"):
        substitute("{{tasks.x.outputs.parameters.y}}", {})
    with pytest.raises(ExpressionError):
        evaluate_when("maybe")
    with pytest.raises(ExpressionError):
        evaluate_depends("a.Sometimes", {"a": "Succeeded"})


def test_a_second_run_of_the_same_model_waits_for_the_mutex(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    # GIVEN another remediation of model m1 holds the mutex
    locks = tmp_path / "runs" / ".locks"
    locks.mkdir(parents=True)
    holder = open(locks / "tiny-m1.lock", "a+")  # noqa: SIM115 (held across the test)
    fcntl.flock(holder, fcntl.LOCK_EX)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(executor.run("queued", {})))
    thread.start()
    try:
        record = tmp_path / "runs" / "queued" / "workflow.json"
        for _ in range(300):
            if record.exists() and "Waiting for" in json.loads(record.read_text())["status"].get(
                "message", ""
            ):
                break
            time.sleep(0.1)
        # THEN the run waits, Pending, and has run no step
        wf = json.loads(record.read_text())
        assert wf["status"]["phase"] == "Pending"
        assert "local/Mutex/tiny-m1" in wf["status"]["message"]
        assert wf["status"]["nodes"] == {}
    finally:
        holder.close()  # WHEN the other run ends
        thread.join(timeout=120)
    # THEN this one runs to the end
    assert result == ["Succeeded"]


def test_stopping_the_executor_kills_its_step_and_records_the_stop(tmp_path: Path) -> None:
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_local_executor_steps import _template;"
        "from workflows.executor import LocalExecutor;"
        "ex = LocalExecutor(_template(), sys.argv[2], env=json.loads(sys.argv[3]));"
        "print(ex.run('stopped', {'value': 'hang'}))"
    )
    env = {"PYTHONPATH": str(REPO), "TEST_MARKER": str(tmp_path / "marker")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(tmp_path / "runs"), json.dumps(env)],
        stdout=subprocess.PIPE,
        text=True,
    )
    marker = tmp_path / "marker"
    try:
        for _ in range(600):
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        step_pid = int(marker.read_text())
        # WHEN the executor is asked to stop (as a supervisor would)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # THEN its running step is gone and the run is recorded as stopped
    assert out.strip() == "Failed"
    wf = load_run(tmp_path / "runs", "stopped")
    assert wf["status"]["phase"] == "Failed"
    assert "Terminate" in wf["status"]["message"]
    assert _nodes(wf)["produce"]["phase"] == "Failed"
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the killed step may take a moment to be reaped
            os.kill(step_pid, 0)
            time.sleep(0.1)
