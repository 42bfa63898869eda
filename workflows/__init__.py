"""The remediation workflow: one Hera definition, run by Argo or by the local executor.

Only :mod:`workflows.contract` is imported here, so that the receiver can use the names and
parameters without Hera's step code or torch.
"""

from workflows.contract import (
    PARAMETERS,
    TEMPLATE_NAME,
    RunSummary,
    summarise_workflow,
    workflow_name_for,
)

__all__ = ["PARAMETERS", "TEMPLATE_NAME", "RunSummary", "summarise_workflow", "workflow_name_for"]
