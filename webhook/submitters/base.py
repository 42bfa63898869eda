"""What a submitter does, and the two ways a submission can fail."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from workflows.contract import RunSummary


class Submitted(enum.Enum):
    """A submission that succeeded."""

    CREATED = "created"
    """A new run was created."""
    EXISTS = "exists"
    """A run of that name already existed (Argo's 409): an earlier attempt got through."""


class SubmitError(Exception):
    """A call to the submitter failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TransientSubmitError(SubmitError):
    """Worth retrying with backoff: a timeout, a refused connection, a 5xx or a 429."""


class RefusedSubmitError(SubmitError):
    """Not worth retrying: the submitter refused (401, 403, 400, 422...). Needs a human."""


class Submitter(Protocol):
    """Starts remediation runs under deterministic names and reads their state back."""

    kind: str
    """``argo`` or ``local``."""

    def submit(
        self, name: str, parameters: dict[str, str], labels: Mapping[str, str] | None = None
    ) -> Submitted:
        """Start the remediation workflow ``name`` with ``parameters``, labelled ``labels``
        (valid Kubernetes label values) where the submitter keeps labels.

        Raises:
            TransientSubmitError: the call may succeed later (the intent is kept).
            RefusedSubmitError: the submitter refused; retrying would not help.
        """
        ...

    def status(self, name: str) -> RunSummary | None:
        """The run's state, or None when no run of that name is known.

        Raises:
            TransientSubmitError: the state could not be read now.
        """
        ...

    def close(self) -> None:
        """Release connections; runs already started go on."""
        ...


def classify_status(status: int | None, what: str) -> SubmitError:
    """The error for an HTTP failure: 5xx, 408, 429 and no answer at all are transient."""
    if status is None or status >= 500 or status in (408, 429):
        return TransientSubmitError(what, status)
    return RefusedSubmitError(what, status)


__all__ = [
    "RefusedSubmitError",
    "SubmitError",
    "Submitted",
    "Submitter",
    "TransientSubmitError",
    "classify_status",
]
