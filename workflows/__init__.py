"""The remediation workflow: one Hera definition, run by Argo or by the local executor.

Only :mod:`workflows.contract` is imported here, so that the receiver can use the names and
parameters without Hera's step code or torch. The rest, imported where needed:

* :mod:`workflows.remediation`: ``build_template(cfg)``, ``render_yaml(cfg)``,
  ``validate_parameters(params, cfg)``; the golden file ``robustloop-remediate.yaml``.
* :mod:`workflows.steps`: the step functions pods run through Hera's runner.
* :mod:`workflows.gate`: ``evaluate_pair``, ``decide``, ``run_gate`` (paired tests).
* :mod:`workflows.guard`: ``watch``, ``judge``, ``canary_queries`` (post-rollout guard).
* :mod:`workflows.executor`: ``LocalExecutor``, ``run_local`` (the local engine).
* :mod:`workflows.runs`: ``list_runs``, ``load_run``, ``format_list``, ``format_show``.
"""

from workflows.contract import (
    PARAMETERS,
    TEMPLATE_NAME,
    RunSummary,
    summarise_workflow,
    workflow_name_for,
)

__all__ = ["PARAMETERS", "TEMPLATE_NAME", "RunSummary", "summarise_workflow", "workflow_name_for"]
