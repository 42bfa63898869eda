"""Where remediations run: the Argo Server (``argo``) or the local executor (``local``)."""

from __future__ import annotations

from pathlib import Path

from robustloop.config import RobustloopConfig
from webhook.submitters.argo import ArgoSubmitter
from webhook.submitters.base import (
    RefusedSubmitError,
    SubmitError,
    Submitted,
    Submitter,
    TransientSubmitError,
)
from webhook.submitters.local import LocalSubmitter, default_command


def build_argo_submitter(config: RobustloopConfig) -> ArgoSubmitter:
    """An Argo submitter set up from ``submitter.argo`` (whatever ``submitter.kind`` says):
    the receiver's, and the one ``robustloop runs --source argo`` reads runs with."""
    section = config.submitter.argo
    return ArgoSubmitter(
        host=section.host,
        namespace=section.namespace,
        token_file=section.token_file,
        verify_tls=section.verify_tls,
        ca_file=section.ca_file,
        timeout=config.webhook.submit_timeout_seconds,
    )


def build_submitter(config: RobustloopConfig, config_path: Path | None = None) -> Submitter:
    """The submitter ``submitter.kind`` selects, set up from the config.

    Args:
        config: the loaded configuration.
        config_path: the file it came from, passed to the local executor (``--config``) so
            that the run sees the same configuration as the receiver.
    """
    if config.submitter.kind == "argo":
        return build_argo_submitter(config)
    return LocalSubmitter(
        runs_dir=config.submitter.runs_dir,
        log_dir=config.webhook.db_path.parent / "webhook-runs",
        command=default_command(config_path),
    )


__all__ = [
    "ArgoSubmitter",
    "LocalSubmitter",
    "RefusedSubmitError",
    "SubmitError",
    "Submitted",
    "Submitter",
    "TransientSubmitError",
    "build_argo_submitter",
    "build_submitter",
]
