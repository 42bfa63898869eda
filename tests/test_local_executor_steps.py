"""Steps of the tiny template ``test_local_executor.py`` runs (no tests here).

Kept apart so that the step subprocesses import only Hera, not pytest or jsonschema.
"""

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

from hera.workflows import DAG, Parameter, RunnerScriptConstructor, WorkflowTemplate, script
from hera.workflows import models as m

_RUNNER = RunnerScriptConstructor(outputs_directory="/tmp/hera-outputs")


@script(constructor=_RUNNER, image="robustloop:latest")
def produce(
    value: Annotated[str, Parameter(name="value")],
) -> Annotated[str, Parameter(name="out")]:
    """Double the input (a step with an output)."""
    if value == "fail":
        raise SystemExit("produce: refusing the value 'fail'")
    if value == "hang":
        Path(os.environ["TEST_MARKER"]).write_text(str(os.getpid()))
        time.sleep(120)
    return value * 2


@script(constructor=_RUNNER, image="robustloop:latest")
def judge(out: Annotated[str, Parameter(name="out")]) -> Annotated[str, Parameter(name="passed")]:
    """Pass only long outputs (a gate-like step)."""
    return "true" if len(out) >= 4 else "false"


@script(constructor=_RUNNER, image="robustloop:latest")
def act(out: Annotated[str, Parameter(name="out")]) -> Annotated[str, Parameter(name="done")]:
    """The step that runs only when the judge passed."""
    return f"acted on {out}"


@script(constructor=_RUNNER, image="robustloop:latest")
def record(
    status: Annotated[str, Parameter(name="status")],
    failures: Annotated[str, Parameter(name="failures")],
) -> None:
    """Exit handler: write what it was told to a file the test reads."""
    Path(os.environ["TEST_OUTCOME"]).write_text(
        json.dumps({"status": status, "failures": failures})
    )


def _template(deadline: int | None = None) -> dict[str, Any]:
    with WorkflowTemplate(
        name="tiny",
        entrypoint="main",
        arguments=[Parameter(name="value", value="ab"), Parameter(name="model", value="m1")],
        synchronization=m.Synchronization(
            mutexes=[m.Mutex(name="tiny-{{workflow.parameters.model}}")]
        ),
        active_deadline_seconds=deadline,
        on_exit="exit-handler",
    ) as wt:
        with DAG(name="main"):
            p = produce(name="produce", arguments={"value": "{{workflow.parameters.value}}"})
            j = judge(name="judge", arguments={"out": "{{tasks.produce.outputs.parameters.out}}"})
            a = act(
                name="act",
                when="{{tasks.judge.outputs.parameters.passed}} == true",
                arguments={"out": "{{tasks.produce.outputs.parameters.out}}"},
            )
            again = act(
                name="again",
                when="{{tasks.judge.outputs.parameters.passed}} == true",
                arguments={"out": "{{tasks.act.outputs.parameters.done}}"},
            )
            p >> j >> a >> again  # type: ignore[operator]
        with DAG(name="exit-handler"):
            record(
                name="record",
                arguments={"status": "{{workflow.status}}", "failures": "{{workflow.failures}}"},
            )
    return dict(wt.to_dict())
