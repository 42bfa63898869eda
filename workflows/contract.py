"""What the outside world knows about the remediation workflow: names, parameters, run state.

This module is the only part of :mod:`workflows` that the webhook imports, so it must stay light:
standard library only (no Hera, no torch). The Hera definition (``workflows/remediation.py``)
builds its parameters from :data:`PARAMETERS`, and the local executor records each run in the
shape of an Argo ``Workflow`` object, so one reader (:func:`summarise_workflow`) serves both.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module stays standard-library-only at run time
    from robustloop.config import RobustloopConfig

TEMPLATE_NAME = "robustloop-remediate"
"""Name of the WorkflowTemplate (and prefix of every workflow's name)."""

PARAMETERS: dict[str, str] = {
    "model": "fashion-cnn",
    "base-version": "production",
    "method": "fgsm-prior",
    "eps": "0.1",
    "steps": "7",
    "epochs": "3",
    "max-seconds": "60",
    "recipe": "standard",
    "incident-id": "manual",
}
"""Workflow parameters and their defaults (all strings, as Argo passes them).

The defaults here are the ones of a default ``robustloop.yaml``; ``robustloop workflow render``
writes the configured ones into the golden YAML.
"""


INCIDENT_PARAMETERS: tuple[str, ...] = ("model", "incident-id")
"""The parameters an alert-triggered run is submitted with: what identifies its incident.

Every other parameter (the recipe: ``base-version``, ``method``, ``eps``, ``steps``,
``epochs``, ``max-seconds``, ``recipe``) is left out, so that the WorkflowTemplate's default
applies: on Argo, the template in the cluster (the chart's ``workflow.parameters`` over the
golden defaults); locally, the template the executor builds from the receiver's
``robustloop.yaml``. The one exception: an alert that selects a recipe (:data:`RECIPE_LABEL`)
sets ``recipe``. The alert's name is no parameter: it travels as a label of the run.
"""

RECIPE_PARAMETER = "recipe"
"""The workflow parameter naming what the remediation fine-tunes on (:data:`RECIPES`)."""
RECIPES: tuple[str, ...] = ("standard", "captured")
"""The recipes by name, as ``remediation.recipe`` names them (``training.RECIPES`` gives them
their meaning)."""
RECIPE_LABEL = "recipe"
"""An alert label that selects the run's recipe: an alert carrying it (CanaryAccuracyEscalated:
``recipe="captured"``) is submitted with the ``recipe`` parameter set to its value; an alert
without it gets the template's default. The rules name it ``alert_rules._spec.RECIPE_LABEL``."""


def incident_parameters(
    *, model: str, incident_id: str, recipe: str | None = None
) -> dict[str, str]:
    """The parameters of an alert-triggered run (:data:`INCIDENT_PARAMETERS`), and ``recipe``
    where the alert selects one (:data:`RECIPE_LABEL`)."""
    params = {"model": model, "incident-id": incident_id}
    if recipe is not None:
        params[RECIPE_PARAMETER] = recipe
    return params


def format_number(value: float | None) -> str:
    """A number as Argo users type it: 0.1, 120 (not 120.0); None (no limit) as 0."""
    if value is None:
        return "0"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parameters_for(cfg: RobustloopConfig, *, model: str, incident_id: str) -> dict[str, str]:
    """The workflow's parameters for ``cfg``'s remediation recipe, one model and one incident.

    The one mapping from config to parameters: the rendered template's defaults come from
    here (the receiver submits only :func:`incident_parameters` and lets them apply).
    """
    rem = cfg.remediation
    return {
        "model": model,
        "base-version": "production",
        "method": rem.method,
        "eps": format_number(rem.eps),
        "steps": format_number(rem.steps),
        "epochs": format_number(rem.epochs),
        "max-seconds": format_number(rem.max_seconds),
        "recipe": rem.recipe,
        "incident-id": incident_id,
    }


_DNS_UNSAFE = re.compile(r"[^a-z0-9-]+")


def workflow_name_for(incident_id: str, model: str) -> str:
    """Deterministic workflow name for an incident: a repeat submission is a 409, not a rerun.

    Kubernetes names are at most 63 characters of ``[a-z0-9-]``; the hash keeps distinct
    incidents distinct after truncation.
    """
    digest = hashlib.sha256(f"{model}\0{incident_id}".encode()).hexdigest()[:12]
    stem = _DNS_UNSAFE.sub("-", model.lower()).strip("-")[:30] or "model"
    return f"rl-{stem}-{digest}"


# Argo's workflow phases.
PHASE_PENDING = "Pending"
PHASE_RUNNING = "Running"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
PHASE_ERROR = "Error"
FINISHED_PHASES = frozenset({PHASE_SUCCEEDED, PHASE_FAILED, PHASE_ERROR})

GATE_TASK = "gate"
"""DAG task whose output parameter ``passed`` ("true"/"false") is the gate's decision."""
PROMOTE_TASK = "promote"
"""DAG task whose output parameter ``version`` is the promoted version."""


@dataclass(frozen=True)
class RunSummary:
    """What the receiver needs to know about a workflow run."""

    name: str
    phase: str
    gate_passed: bool | None
    promoted_version: str | None
    message: str

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


def _node_output(nodes: dict[str, Any], task: str, parameter: str) -> str | None:
    for node in nodes.values():
        if node.get("displayName") != task:
            continue
        for param in (node.get("outputs") or {}).get("parameters") or []:
            if param.get("name") == parameter and "value" in param:
                return str(param["value"])
    return None


def _first_failure(nodes: dict[str, Any]) -> str | None:
    """``"<step>: <message>"`` of the earliest failed pod, the step that says why a run failed
    (Argo's own workflow message only names it: ``child '<id>' failed``)."""
    failed = [
        node
        for node in nodes.values()
        if node.get("type") == "Pod"
        and node.get("phase") in (PHASE_FAILED, PHASE_ERROR)
        and node.get("message")
    ]
    if not failed:
        return None
    first = min(failed, key=lambda node: str(node.get("startedAt") or ""))
    return f"{first.get('displayName', first.get('name', '?'))}: {first['message']}"


def summarise_workflow(workflow: dict[str, Any]) -> RunSummary:
    """Summarise an Argo ``Workflow`` object (from the Argo Server or a local run record).

    The message of a failed run ends with its first failed step's own message, so the
    incident's record says why.
    """
    status = workflow.get("status") or {}
    nodes = status.get("nodes") or {}
    passed = _node_output(nodes, GATE_TASK, "passed")
    message = str(status.get("message") or "")
    failure = _first_failure(nodes)
    if failure is not None and failure not in message:
        message = f"{message}; {failure}" if message else failure
    return RunSummary(
        name=str((workflow.get("metadata") or {}).get("name", "")),
        phase=str(status.get("phase") or PHASE_PENDING),
        gate_passed=None if passed is None else passed.strip().lower() == "true",
        promoted_version=_node_output(nodes, PROMOTE_TASK, "version"),
        message=message,
    )
