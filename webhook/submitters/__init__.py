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


def build_submitter(config: RobustloopConfig, config_path: Path | None = None) -> Submitter:
    """The submitter ``submitter.kind`` selects, set up from the config.

    Args:
        config: the loaded configuration.
        config_path: the file it came from, passed to the local executor (``--config``) so
            that the run sees the same configuration as the receiver.
    """
    section = config.submitter
    if section.kind == "argo":
        return ArgoSubmitter(
            host=section.argo.host,
            namespace=section.argo.namespace,
            token_file=section.argo.token_file,
            verify_tls=section.argo.verify_tls,
            ca_file=section.argo.ca_file,
            timeout=config.webhook.submit_timeout_seconds,
        )
    return LocalSubmitter(
        runs_dir=section.runs_dir,
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
    "build_submitter",
]
