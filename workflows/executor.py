"""The local executor: runs the Hera-defined template on one machine, as Argo would.

It takes the SAME object Argo gets (:func:`workflows.remediation.build_template`, built to its
Argo form), walks the entrypoint DAG in dependency order (``depends``), evaluates ``when``,
resolves ``{{...}}`` parameters and task outputs, and runs each script template as a subprocess
through the entry point a pod uses: the template's ``command`` and ``args`` (``python -m
hera.workflows.runner -e workflows.steps:<function>``) followed by a file holding the resolved
``source`` (``{{inputs.parameters}}``: the JSON list of ``{"name", "value"}`` Argo writes), with
``hera__outputs_directory`` pointing at the node's outputs folder, from which the output
parameters are read back (``valueFrom.path``). It then runs the exit handler with
``{{workflow.status}}`` and ``{{workflow.failures}}``.

Every run is recorded as an Argo-shaped ``Workflow`` object in ``<runs_dir>/<name>/workflow.json``
(written atomically after every change of state) with one log per step under ``logs/``, so that
``robustloop runs`` and the webhook read local runs exactly as they read Argo's.

Local stand-ins for what a cluster provides: the ``synchronization`` mutex is a file lock under
``<runs_dir>/.locks``; ``activeDeadlineSeconds`` kills the running step; ``retryStrategy`` with
``retryPolicy: OnError`` retries a step that could not be started (an infrastructure error), never
one that exited non-zero; the step's ``ROBUSTLOOP_CONFIG`` is the executor's config file (the
pod's mounted ConfigMap) and the store is the config's ``store.path`` (the pod's PVC); ``python``
is the executor's own interpreter.

Creating ``<runs_dir>/<name>`` is the run's atomic claim: if it exists the executor exits 3 and
changes nothing, so that a re-submission of the same incident is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from robustloop.atomic import atomic_write_json
from workflows._argo import (
    ExpressionError,
    depends_tasks,
    evaluate_depends,
    evaluate_when,
    substitute,
)
from workflows.contract import (
    FINISHED_PHASES,
    PHASE_ERROR,
    PHASE_FAILED,
    PHASE_PENDING,
    PHASE_RUNNING,
    PHASE_SUCCEEDED,
    TEMPLATE_NAME,
)

log = logging.getLogger(__name__)

EXIT_EXISTS = 3
"""Exit status of ``run-local`` when a run of that name exists already (nothing is done)."""
RECORD = "workflow.json"
NAMESPACE = "local"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SKIPPED = "Skipped"
_OMITTED = "Omitted"


class ExecutorError(Exception):
    """The run cannot start (bad name or parameter): nothing was created."""


class RunExists(ExecutorError):
    """A run of this name exists already (re-submission): nothing was done."""


class _Terminated(Exception):
    """The executor was asked to stop (SIGTERM/SIGINT)."""


def now() -> str:
    """Argo's timestamp format: RFC 3339, UTC, seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str = TEMPLATE_NAME) -> str:
    """A fresh name like Argo's ``generateName``: ``<prefix>-<5 random characters>``."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(5))


def parse_params(pairs: list[str], known: Mapping[str, str]) -> dict[str, str]:
    """Parse ``k=v`` strings against the template's parameters.

    Raises:
        ExecutorError: a pair has no ``=`` or names a parameter the template does not have.
    """
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ExecutorError(f"--param {pair!r}: expected NAME=VALUE")
        if key not in known:
            raise ExecutorError(
                f"--param {key}: the template has no such parameter; "
                f"known: {', '.join(sorted(known))}"
            )
        values[key] = value
    return values


class LocalExecutor:
    """Runs a built WorkflowTemplate (its Argo dict) and records the run under ``runs_dir``.

    Args:
        template: the template as Argo receives it (``build_template(cfg).to_dict()``).
        runs_dir: where runs are recorded (``submitter.runs_dir``).
        env: environment overrides for the steps (e.g. ``ROBUSTLOOP_CONFIG``).
        python: the interpreter that stands for the image's ``python``.
    """

    def __init__(
        self,
        template: dict[str, Any],
        runs_dir: Path,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.template = template
        self.spec: dict[str, Any] = template["spec"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.runs_dir = Path(runs_dir)
        self.env = dict(env or {})
        self.python = python
        self._child: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- parameters and the record

    def defaults(self) -> dict[str, str]:
        """The template's parameters and their default values."""
        return {
            p["name"]: str(p.get("value", ""))
            for p in (self.spec.get("arguments") or {}).get("parameters") or []
        }

    def _claim(self, name: str) -> Path:
        if not _NAME.match(name) or len(name) > 63:
            raise ExecutorError(
                f"workflow name {name!r} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)"
            )
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        run_dir = self.runs_dir / name
        try:
            run_dir.mkdir()
        except FileExistsError:
            raise RunExists(f"run {name} exists already in {self.runs_dir}; nothing done") from None
        return run_dir

    def _save(self) -> None:
        atomic_write_json(self.run_dir / RECORD, self.workflow)

    def _node_id(self, path: str) -> str:
        if path == self.name:
            return self.name
        return f"{self.name}-{zlib.crc32(path.encode()):010d}"

    def _add_node(
        self, path: str, display: str, template: str, kind: str, parent: str | None
    ) -> dict[str, Any]:
        node_id = self._node_id(path)
        node: dict[str, Any] = {
            "id": node_id,
            "name": path,
            "displayName": display,
            "type": kind,
            "templateName": template,
            "phase": PHASE_PENDING,
            "startedAt": now(),
        }
        nodes = self.workflow["status"]["nodes"]
        nodes[node_id] = node
        if parent is not None:
            node["boundaryID"] = parent
            nodes[parent].setdefault("children", []).append(node_id)
        self._save()
        return node

    def _finish(self, node: dict[str, Any], phase: str, message: str = "") -> None:
        node["phase"] = phase
        node["finishedAt"] = now()
        if message:
            node["message"] = message
        self._save()

    # ---------------------------------------------------------------------------- running

    def run(self, name: str | None = None, params: Mapping[str, str] | None = None) -> str:
        """Run the workflow; return its final phase.

        Raises:
            ExecutorError: a parameter is unknown or the name is invalid (nothing created).
            RunExists: a run of this name exists (nothing done).
        """
        known = self.defaults()
        unknown = sorted(set(params or {}) - set(known))
        if unknown:
            raise ExecutorError(
                f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        self.params = {**known, **(params or {})}
        self.name = name or generate_name()
        self.run_dir = self._claim(self.name)
        (self.run_dir / "logs").mkdir()
        self.started = time.monotonic()
        self.workflow: dict[str, Any] = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {
                "name": self.name,
                "namespace": NAMESPACE,
                "creationTimestamp": now(),
                "labels": {
                    "workflows.argoproj.io/workflow-template": self.template["metadata"]["name"],
                    "workflows.argoproj.io/phase": PHASE_PENDING,
                    "robustloop/executor": "local",
                },
            },
            "spec": {
                "workflowTemplateRef": {"name": self.template["metadata"]["name"]},
                "arguments": {
                    "parameters": [{"name": k, "value": v} for k, v in self.params.items()]
                },
            },
            "status": {"phase": PHASE_PENDING, "startedAt": now(), "nodes": {}},
        }
        self._save()
        self.scope: dict[str, str] = {
            "workflow.name": self.name,
            "workflow.namespace": NAMESPACE,
            **{f"workflow.parameters.{k}": v for k, v in self.params.items()},
        }
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            previous = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
            }
        try:
            with self._mutex():
                phase, message = self._run_main()
        except _Terminated:
            phase, message = PHASE_FAILED, "Stopped with strategy 'Terminate'"
            self._set_phase(phase, message)
            return phase
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return phase

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self._child is not None and self._child.poll() is None:
            self._child.kill()  # reaped in _spawn: wait() here could deadlock on Popen's lock
        raise _Terminated(signal.Signals(signum).name)

    def _set_phase(self, phase: str, message: str = "") -> None:
        status = self.workflow["status"]
        status["phase"] = phase
        self.workflow["metadata"]["labels"]["workflows.argoproj.io/phase"] = phase
        if message:
            status["message"] = message
        else:
            status.pop("message", None)
        if phase in FINISHED_PHASES:
            status["finishedAt"] = now()
            for node in status["nodes"].values():
                if node["phase"] in (PHASE_PENDING, PHASE_RUNNING):
                    self._finish(node, PHASE_FAILED, message or "workflow ended")
        pods = [n for n in status["nodes"].values() if n["type"] == "Pod"]
        done = [n for n in pods if n["phase"] in FINISHED_PHASES]
        status["progress"] = f"{len(done)}/{len(pods)}"
        self._save()

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        mutexes = (self.spec.get("synchronization") or {}).get("mutexes") or []
        handles = []
        try:
            for mutex in mutexes:
                lock_name = substitute(str(mutex["name"]), self.scope)
                locks = self.runs_dir / ".locks"
                locks.mkdir(exist_ok=True)
                handle = open(locks / f"{lock_name}.lock", "a+")  # noqa: SIM115 (held open)
                handles.append(handle)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._set_phase(
                        PHASE_PENDING, f"Waiting for {NAMESPACE}/Mutex/{lock_name} lock."
                    )
                    fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            for handle in handles:
                handle.close()

    def _deadline_left(self) -> float | None:
        limit = self.spec.get("activeDeadlineSeconds")
        if limit is None:
            return None
        return float(limit) - (time.monotonic() - self.started)

    def _run_main(self) -> tuple[str, str]:
        self._set_phase(PHASE_RUNNING)
        root = self._add_node(self.name, self.name, self.spec["entrypoint"], "DAG", None)
        root["phase"] = PHASE_RUNNING
        self._save()
        try:
            phase, message = self._run_dag(self.spec["entrypoint"], self.name, root, deadline=True)
        except ExpressionError as exc:
            phase, message = PHASE_ERROR, str(exc)
        self._finish(root, phase, message)
        self.scope["workflow.status"] = phase
        self.scope["workflow.failures"] = json.dumps(self._failures())
        on_exit = self.spec.get("onExit")
        if on_exit:
            exit_path = f"{self.name}.onExit"
            exit_node = self._add_node(exit_path, exit_path, on_exit, "DAG", None)
            try:
                exit_phase, exit_message = self._run_dag(on_exit, exit_path, exit_node, False)
            except ExpressionError as exc:
                exit_phase, exit_message = PHASE_ERROR, str(exc)
            self._finish(exit_node, exit_phase, exit_message)
            if phase == PHASE_SUCCEEDED and exit_phase != PHASE_SUCCEEDED:
                phase, message = exit_phase, f"exit handler: {exit_message}"
        self._set_phase(phase, message)
        return phase, message

    def _failures(self) -> list[dict[str, Any]] | None:
        failed = [
            {
                "displayName": n["displayName"],
                "message": n.get("message", ""),
                "templateName": n["templateName"],
                "phase": n["phase"],
                "podName": n["id"],
                "finishedAt": n.get("finishedAt"),
            }
            for n in self.workflow["status"]["nodes"].values()
            if n["type"] == "Pod" and n["phase"] in (PHASE_FAILED, PHASE_ERROR)
        ]
        return failed or None

    def _run_dag(
        self, template_name: str, path: str, parent: dict[str, Any], deadline: bool
    ) -> tuple[str, str]:
        tasks: list[dict[str, Any]] = self.templates[template_name]["dag"]["tasks"]
        phases: dict[str, str] = {}
        pending = list(tasks)
        while pending:
            for task in pending:
                depends = task.get("depends") or " && ".join(task.get("dependencies") or [])
                needed = depends_tasks(depends) if depends else []
                if any(
                    phases.get(dep) not in FINISHED_PHASES | {_SKIPPED, _OMITTED} for dep in needed
                ):
                    continue
                pending.remove(task)
                node_path = f"{path}.{task['name']}"
                if depends and not evaluate_depends(depends, phases):
                    node = self._add_node(
                        node_path, task["name"], task["template"], "Skipped", parent["id"]
                    )
                    self._finish(node, _OMITTED, f"omitted: depends condition not met ({depends})")
                    phases[task["name"]] = _OMITTED
                else:
                    phases[task["name"]] = self._run_task(task, node_path, parent, deadline)
                break
            else:
                raise ExpressionError(f"DAG {template_name}: unsatisfiable or cyclic dependencies")
        failed = [name for name, phase in phases.items() if phase in (PHASE_FAILED, PHASE_ERROR)]
        if failed:
            return PHASE_FAILED, f"child '{failed[0]}' failed"
        return PHASE_SUCCEEDED, ""

    def _run_task(
        self, task: dict[str, Any], path: str, parent: dict[str, Any], deadline: bool
    ) -> str:
        template = self.templates[task["template"]]
        when = task.get("when")
        if when and not evaluate_when(substitute(when, self.scope)):
            # Argo resolves a skipped task's arguments never (they may name skipped outputs).
            node = self._add_node(path, task["name"], task["template"], "Skipped", parent["id"])
            self._finish(node, _SKIPPED, f"when '{substitute(when, self.scope)}' evaluated false")
            return _SKIPPED
        arguments = {
            p["name"]: substitute(str(p.get("value", "")), self.scope)
            for p in (task.get("arguments") or {}).get("parameters") or []
        }
        node = self._add_node(path, task["name"], task["template"], "Pod", parent["id"])
        phase = self._run_script(node, template, arguments, deadline)
        for output in (node.get("outputs") or {}).get("parameters") or []:
            key = f"tasks.{task['name']}.outputs.parameters.{output['name']}"
            self.scope[key] = output["value"]
        self.scope[f"tasks.{task['name']}.status"] = phase
        return phase

    def _run_script(
        self,
        node: dict[str, Any],
        template: dict[str, Any],
        arguments: dict[str, str],
        deadline: bool,
    ) -> str:
        inputs = []
        for param in (template.get("inputs") or {}).get("parameters") or []:
            name = param["name"]
            if name in arguments:
                value = arguments[name]
            elif "value" in param:
                value = str(param["value"])
            elif "default" in param:
                value = str(param["default"])
            else:
                self._finish(node, PHASE_ERROR, f"inputs.parameters.{name} was not supplied")
                return PHASE_ERROR
            inputs.append({"name": name, "value": value})
        node["inputs"] = {"parameters": inputs}
        script = template["script"]
        scope = {
            "inputs.parameters": json.dumps(inputs),
            **{f"inputs.parameters.{p['name']}": p["value"] for p in inputs},
        }
        step_dir = self.run_dir / "steps" / node["name"].removeprefix(f"{self.name}.")
        outputs_dir = step_dir / "outputs"
        outputs_dir.mkdir(parents=True)
        source = step_dir / "script"
        source.write_text(substitute(script.get("source", ""), scope), encoding="utf-8")
        env = dict(os.environ)
        pod_outputs = "/tmp/hera-outputs"
        for var in script.get("env") or []:
            if var["name"] == "hera__outputs_directory":
                pod_outputs = var["value"]
            env[var["name"]] = substitute(str(var.get("value", "")), scope)
        env.update(self.env)
        env["hera__outputs_directory"] = os.fspath(outputs_dir)
        command = [self.python if c == "python" else c for c in script.get("command") or []]
        argv = [*command, *(script.get("args") or []), os.fspath(source)]
        log_path = self.run_dir / "logs" / f"{node['name'].removeprefix(self.name + '.')}.log"

        retry = template.get("retryStrategy") or {}
        attempts = 1 + int(retry.get("limit", 0)) if retry.get("retryPolicy") == "OnError" else 1
        phase, message, code = PHASE_ERROR, "", None
        for attempt in range(attempts):
            node["phase"] = PHASE_RUNNING
            self._save()
            phase, message, code = self._spawn(argv, env, log_path, deadline)
            if phase != PHASE_ERROR:
                break
            log.warning(
                "step %s: %s (attempt %d/%d)", node["displayName"], message, attempt + 1, attempts
            )
        outputs: dict[str, Any] = {}
        if code is not None:
            outputs["exitCode"] = str(code)
        if phase == PHASE_SUCCEEDED:
            params = []
            for param in (template.get("outputs") or {}).get("parameters") or []:
                path = str((param.get("valueFrom") or {}).get("path", ""))
                local = Path(path)
                if path.startswith(pod_outputs.rstrip("/") + "/"):
                    local = outputs_dir / path[len(pod_outputs.rstrip("/")) + 1 :]
                try:
                    params.append({"name": param["name"], "value": local.read_text("utf-8")})
                except OSError:
                    phase = PHASE_ERROR
                    message = f"cannot save parameter {path}: the step did not write it"
                    break
            else:
                outputs["parameters"] = params
        if outputs:
            node["outputs"] = outputs
        self._finish(node, phase, message)
        return phase

    def _spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path, deadline: bool
    ) -> tuple[str, str, int | None]:
        timeout = self._deadline_left() if deadline else None
        if timeout is not None and timeout <= 0:
            return PHASE_FAILED, "Step exceeded its deadline", None
        with open(log_path, "ab") as log_file:
            try:
                self._child = subprocess.Popen(
                    argv,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            except OSError as exc:
                return PHASE_ERROR, f"cannot start {argv[0]}: {exc.strerror}", None
            try:
                code = self._child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
                return PHASE_FAILED, "Step exceeded its deadline", None
            except _Terminated:
                self._child.kill()
                self._child.wait()
                raise
            finally:
                self._child = None
        if code == 0:
            return PHASE_SUCCEEDED, "", 0
        if code < 0:
            name = signal.Signals(-code).name
            return PHASE_FAILED, f"killed by signal {name} (exit code {128 - code})", 128 - code
        return PHASE_FAILED, f"Error (exit code {code}): {_last_line(log_path)}", code


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln.strip() for ln in handle.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


def run_local(
    cfg: Any,
    *,
    config_path: Path | None,
    name: str | None = None,
    params: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Build the template for ``cfg`` and run it locally; return (name, final phase).

    Args:
        cfg: the loaded :class:`~robustloop.config.RobustloopConfig`.
        config_path: the config file the steps read (None: the steps use the defaults, written
            to the run folder so that they see exactly ``cfg``).
        name: the workflow name (default: generated like Argo's ``generateName``).
        params: workflow parameters overriding the template's defaults.
    """
    from robustloop.config import dump_config
    from workflows.remediation import build_template
    from workflows.steps import CONFIG_ENV

    executor = LocalExecutor(build_template(cfg).to_dict(), Path(cfg.submitter.runs_dir))
    if config_path is None:
        # The steps must see the same config as the executor: write it beside the runs.
        runs = Path(cfg.submitter.runs_dir)
        runs.mkdir(parents=True, exist_ok=True)
        config_path = runs / ".robustloop.yaml"
        config_path.write_text(dump_config(cfg), encoding="utf-8")
    executor.env[CONFIG_ENV] = os.fspath(Path(config_path).resolve())
    phase = executor.run(name, params)
    return executor.name, phase


__all__ = [
    "EXIT_EXISTS",
    "RECORD",
    "ExecutorError",
    "LocalExecutor",
    "RunExists",
    "generate_name",
    "parse_params",
    "run_local",
]
