"""Hand remediations to the local executor (``robustloop workflow run-local``) on this machine.

The executor runs the same WorkflowTemplate's steps and records the run, shaped like an Argo
``Workflow`` object, at ``<runs_dir>/<name>/workflow.json``; it exits with code 3 when a run of
that name already exists, the local equivalent of Argo's 409. The receiver starts it as a
detached process (its own session), so that stopping the receiver does not stop a remediation,
and reads the state back from the record with :func:`workflows.contract.summarise_workflow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from webhook.submitters.base import RefusedSubmitError, Submitted, TransientSubmitError
from workflows.contract import PHASE_FAILED, PHASE_PENDING, RunSummary, summarise_workflow

EXIT_EXISTS = 3
"""Exit code of ``workflow run-local`` when a run of that name exists already."""
EXIT_USAGE = 2
"""Exit code of the robustloop CLI for a usage or configuration error (not worth a retry)."""
RECORD_NAME = "workflow.json"


def default_command(config_path: Path | None) -> list[str]:
    """``python -m robustloop [--config CFG] workflow run-local`` with this interpreter."""
    config = ["--config", str(config_path)] if config_path is not None else []
    return [sys.executable, "-m", "robustloop", *config, "workflow", "run-local"]


class LocalSubmitter:
    """Starts the local executor as a detached process and reads its run records.

    Args:
        runs_dir: ``submitter.runs_dir``, where the executor records runs.
        log_dir: where each run's stdout and stderr go (``<name>.log``).
        command: the executor's command line before ``--name``; default
            :func:`default_command`. Tests inject a small fake executor here.
        start_wait_seconds: how long a submission waits for an early exit (code 3: exists;
            2: refused; another code: failed, retried) before taking the run as started.
    """

    kind = "local"

    def __init__(
        self,
        runs_dir: Path,
        log_dir: Path,
        command: Sequence[str] | None = None,
        start_wait_seconds: float = 1.0,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.log_dir = Path(log_dir)
        self.command = list(command) if command is not None else default_command(None)
        self.start_wait_seconds = start_wait_seconds
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def record_path(self, name: str) -> Path:
        """Where the executor records run ``name``."""
        return self.runs_dir / name / RECORD_NAME

    def log_path(self, name: str) -> Path:
        """Where the output of run ``name``'s executor goes."""
        return self.log_dir / f"{name}.log"

    def submit(
        self, name: str, parameters: dict[str, str], labels: Mapping[str, str] | None = None
    ) -> Submitted:
        """Start the executor for run ``name``. See :class:`~webhook.submitters.base.Submitter`.

        ``labels`` are not kept: the local record carries the executor's own labels, and runs
        are found by name (``robustloop runs list``).
        """
        del labels
        if self.record_path(name).exists():
            return Submitted.EXISTS
        argv = [*self.command, "--name", name]
        for key, value in parameters.items():
            argv += ["--param", f"{key}={value}"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path(name).open("ab") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise RefusedSubmitError(
                f"cannot start the local executor {argv[0]!r}: {exc.strerror}; check "
                "submitter settings"
            ) from None
        with self._lock:
            self._procs[name] = proc
        try:
            code = proc.wait(timeout=self.start_wait_seconds)
        except subprocess.TimeoutExpired:
            return Submitted.CREATED
        if code == 0:
            return Submitted.CREATED
        if code == EXIT_EXISTS:
            return Submitted.EXISTS
        message = (
            f"the local executor exited with code {code} starting run {name}; "
            f"see {self.log_path(name)}"
        )
        if code == EXIT_USAGE:
            raise RefusedSubmitError(message)
        raise TransientSubmitError(message)

    def status(self, name: str) -> RunSummary | None:
        """The recorded run, a pending or failed summary from the process, or None if unknown."""
        with self._lock:
            proc = self._procs.get(name)
        code = None if proc is None else proc.poll()  # also reaps a finished executor
        record = self.record_path(name)
        if record.exists():
            try:
                summary = summarise_workflow(json.loads(record.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise TransientSubmitError(f"cannot read run record {record}: {exc}") from None
            if summary.finished and code is not None:
                with self._lock:
                    self._procs.pop(name, None)
            return summary
        if proc is None:
            return None
        if code is None:
            return RunSummary(name, PHASE_PENDING, None, None, "local executor starting")
        return RunSummary(
            name,
            PHASE_FAILED,
            None,
            None,
            f"local executor exited with code {code} without recording the run; "
            f"see {self.log_path(name)}",
        )

    def close(self) -> None:
        """Forget the processes (they go on: remediations outlive the receiver)."""
        with self._lock:
            self._procs.clear()


__all__ = ["EXIT_EXISTS", "EXIT_USAGE", "LocalSubmitter", "default_command"]
