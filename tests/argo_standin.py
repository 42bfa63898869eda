"""A stand-in for the Argo Server's workflow API, for tests (the real one needs Kubernetes).

A real HTTP server on 127.0.0.1 (a free port) implementing what the receiver calls:

* ``POST /api/v1/workflows/{namespace}``: checks the body twice, against the Argo JSON schema
  (``../shared/schemas/argo-workflows/schema.json``: the ``WorkflowCreateRequest`` and its
  ``Workflow`` definitions, ``$ref``\\ s resolved with ``referencing``) and by parsing it with
  Hera's model (``hera.workflows.models.WorkflowCreateRequest``); checks that the workflow
  references a WorkflowTemplate it knows, with parameters that template declares, and that its
  labels are valid Kubernetes labels (the API server refuses others); answers
  409 for a name it already has, like Argo; :meth:`ArgoStandIn.effective_parameters` are the
  parameters a run gets, the template's defaults under the workflow's own, as Argo merges them;
* ``GET /api/v1/workflows/{namespace}/{name}``: the stored workflow with a ``status`` in
  Argo's shape (phase, times, the DAG's node with its steps inside its boundary, each step a
  ``Retry`` node over its pod, output parameters on both), 404 if unknown;
* ``GET /api/v1/workflows/{namespace}?listOptions.labelSelector=...&fields=...``: a
  ``WorkflowList`` of the namespace's workflows whose labels match the selector (Kubernetes
  equality-based semantics: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, terms joined by commas
  all hold; a selector it cannot parse is a 400, kept in :attr:`invalid`), with ``"items":
  null`` when none match, as the Argo Server answers; ``fields`` projects the answer as Argo's
  does (``a.b,c``: those paths and their parents only; ``-a.b,c``: all but those), arrays
  traversed without an index (``items.metadata.name``).

Workflows that no receiver created (another team's, or a run submitted by hand) are put in with
:meth:`ArgoStandIn.add_workflow`, checked against the schema's ``Workflow`` and Kubernetes'
label rules like a created one. Every workflow served, alone or in a list, is checked against
the schema's ``Workflow`` and ``WorkflowList`` before any projection; a failure is kept in
:attr:`errors` (a fault of the stand-in, not of the client).

With ``tls=(certificate, key)`` it serves HTTPS like the Argo Server in secure mode (Go's
``tls.NewListener`` under ``cmux``): a client that does not complete the handshake, plain HTTP
included, has its connection closed without an answer (kept in :attr:`tls_failures`).
:func:`self_signed_certificate` makes a certificate for 127.0.0.1.

Faults are injected per test: an HTTP status for the next N calls (503, 403...), a delay longer
than the client's timeout (optionally after storing the workflow, as when Argo created it but the
answer was lost). A body that fails validation is answered 400 and kept in :attr:`invalid`,
which tests assert to be empty.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import referencing
import yaml
from hera.workflows.models import WorkflowCreateRequest
from pydantic import ValidationError

from tests.http_standin import JSONHandler, StandInServer
from workflows.contract import PARAMETERS, TEMPLATE_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_TEMPLATE = REPO_ROOT / "workflows" / f"{TEMPLATE_NAME}.yaml"
_DEF = "io.argoproj.workflow.v1alpha1."
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SELECTOR_TERM = re.compile(
    r"\s*(?:(?P<absent>!)\s*(?P<nkey>[^\s=!,]+)"
    r"|(?P<key>[^\s=!,]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!,]*))?)\s*"
)
_STEPS = ("harden", "evaluate", "gate", "promote", "guard")
"""The remediation DAG's tasks, in order (each depends on the one before)."""


def label_problems(labels: dict[str, Any]) -> list[str]:
    """Why Kubernetes would refuse each of these metadata labels (empty when all are valid)."""
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if not (_LABEL_NAME.fullmatch(name) and len(name) <= 63) or (
            prefix and not (_DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253)
        ):
            problems.append(f"metadata.labels: Invalid value: {key!r}: not a qualified name")
        if not (isinstance(value, str) and _LABEL_VALUE.fullmatch(value) and len(value) <= 63):
            problems.append(f"metadata.labels: Invalid value: {value!r}: not a label value")
    return problems


Requirement = tuple[str, str, str]
"""One term of a label selector: (operator, key, value); operators ``=``, ``!=``, ``exists``,
``!exists``."""


def parse_selector(text: str) -> list[Requirement]:
    """The terms of a Kubernetes equality-based label selector; every one must hold.

    Raises:
        ValueError: a term is neither ``k=v``, ``k==v``, ``k!=v``, ``k`` nor ``!k``, or a key or
            value is no valid label key or value (the API server answers 400 then). Set-based
            terms (``k in (a,b)``) are not served: a client relying on them learns here.
    """
    requirements: list[Requirement] = []
    if not text.strip():
        return requirements
    for term in text.split(","):
        match = _SELECTOR_TERM.fullmatch(term)
        if match is None:
            raise ValueError(f"unable to parse requirement: {term!r}")
        if match["absent"]:
            key, op, value = match["nkey"], "!exists", ""
        elif match["op"] is None:
            key, op, value = match["key"], "exists", ""
        else:
            key, op, value = match["key"], "!=" if match["op"] == "!=" else "=", match["value"]
        problems = label_problems({key: value})
        if problems:
            raise ValueError(f"unable to parse requirement {term!r}: {'; '.join(problems)}")
        requirements.append((op, key, value))
    return requirements


def selector_matches(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy every requirement (``k!=v`` holds where ``k`` is absent)."""
    for op, key, value in requirements:
        held = {
            "=": key in labels and labels[key] == value,
            "!=": labels.get(key) != value,
            "exists": key in labels,
            "!exists": key not in labels,
        }[op]
        if not held:
            return False
    return True


def project(document: Any, fields: str) -> Any:
    """``document`` cut down by the Argo Server's ``fields`` parameter.

    ``a.b,c`` keeps those paths, their parents and everything under them; ``-a.b,c`` (one
    leading ``-``) keeps everything but those paths. Lists are traversed without an index.
    """
    if not fields:
        return document
    exclude = fields.startswith("-")
    paths = {path for path in fields.removeprefix("-").split(",") if path}

    def keep(path: str) -> bool:
        listed = path in paths or any(path.startswith(p + ".") for p in paths)
        if exclude:
            return not listed
        return listed or any(p.startswith(path + ".") for p in paths)

    def walk(value: Any, prefix: str) -> Any:
        if isinstance(value, list):
            return [walk(item, prefix) for item in value]
        if not isinstance(value, dict):
            return value
        kept = {}
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else key
            if keep(path):
                kept[key] = walk(child, path)
        return kept

    return walk(document, "")


def template_parameters() -> dict[str, str]:
    """The parameters the remediation WorkflowTemplate declares, with their defaults (its
    golden YAML, else the contract)."""
    if GOLDEN_TEMPLATE.exists():
        template = yaml.safe_load(GOLDEN_TEMPLATE.read_text(encoding="utf-8"))
        declared = template["spec"]["arguments"]["parameters"]
        return {param["name"]: str(param.get("value", "")) for param in declared}
    return dict(PARAMETERS)


@functools.cache
def _validators(schema_path: Path) -> tuple[Any, Any, Any]:
    """Validators of Argo's ``WorkflowCreateRequest``, ``Workflow`` and ``WorkflowList``
    (``$ref``\\ s resolved)."""
    document = json.loads(schema_path.read_text(encoding="utf-8"))
    base = document.get("$id", "urn:argo-workflows-schema")
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        base, referencing.Resource.from_contents(document)
    )
    validator_class = jsonschema.validators.validator_for(document)
    return (
        validator_class(
            {"$ref": f"{base}#/definitions/{_DEF}WorkflowCreateRequest"}, registry=registry
        ),
        validator_class({"$ref": f"{base}#/definitions/{_DEF}Workflow"}, registry=registry),
        validator_class({"$ref": f"{base}#/definitions/{_DEF}WorkflowList"}, registry=registry),
    )


@dataclass
class Fault:
    """What the stand-in does to the next matching call."""

    method: str
    """``POST`` (create) or ``GET`` (read one, or list)."""
    status: int | None = None
    """Answer with this HTTP status (after the delay, if any) and do nothing else."""
    delay: float = 0.0
    """Sleep this long before answering."""
    store_first: bool = False
    """With a delay: store the workflow first, as when Argo created it but the answer was lost."""


class ArgoStandIn(StandInServer):
    """The fake Argo Server. Use as a context manager; :attr:`url` is its base URL.

    Args:
        schema_path: the Argo JSON schema (``schemas / "argo-workflows" / "schema.json"``).
        token: when set, requests must carry ``Authorization: Bearer <token>`` (else 401).
        tls: (certificate, key) PEM files: serve HTTPS with them; None: plain HTTP.
    """

    def __init__(
        self, schema_path: Path, token: str | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self._create_request, self._workflow, self._workflow_list = _validators(schema_path)
        self.token = token
        self.templates: dict[str, dict[str, str]] = {TEMPLATE_NAME: template_parameters()}
        """WorkflowTemplates in the namespace: name -> {parameter: default}. A test may change
        the defaults, as the chart's ``workflow.parameters`` do."""
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.run_status: dict[str, tuple[str, bool | None]] = {}
        """Workflow name -> (phase, gate passed) it reports; absent: ``Running``."""
        self.auto_finish: tuple[str, bool] | None = None
        """(phase, gate passed) every workflow reports from its first read on; None: Running."""
        self.received: list[tuple[str, str]] = []
        """(method, path) of every call as it arrives (before any answer)."""
        self.calls: list[tuple[str, str, int]] = []
        """(method, path, status) of every call, in order."""
        self.invalid: list[str] = []
        """Why each rejected body was invalid; a correct client leaves this empty."""
        self.tls_failures: list[str] = []
        """Why each TLS handshake failed (a plain-HTTP client, a client refusing the cert)."""
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        super().__init__(self._handler_class())
        self._tls = tls is not None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            # The handshake happens in the handler's thread (Handler.setup), not in accept().
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_port}"

    # -- control ------------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` calls of its method."""
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_phase(self, name: str, phase: str, gate_passed: bool | None = None) -> None:
        """Make workflow ``name`` report ``phase`` (and the gate's output) from now on."""
        with self._lock:
            self.run_status[name] = (phase, gate_passed)

    def add_workflow(
        self,
        workflow: dict[str, Any],
        namespace: str = "robustloop",
        phase: str = "Running",
        gate_passed: bool | None = None,
    ) -> None:
        """Put ``workflow`` in ``namespace`` as if someone had created it (another team's
        workflow, a run submitted by hand), reporting ``phase`` (and the gate's output).

        Raises:
            ValueError: Argo would refuse it (schema, labels) or the name is taken.
        """
        problems = [
            f"schema (Workflow): {error.message} at {list(error.absolute_path)}"
            for error in self._workflow.iter_errors(workflow)
        ]
        problems += label_problems((workflow.get("metadata") or {}).get("labels") or {})
        name = (workflow.get("metadata") or {}).get("name")
        if not name:
            problems.append("metadata.name is empty")
        if problems:
            raise ValueError("; ".join(problems))
        with self._lock:
            if (namespace, name) in self.workflows:
                raise ValueError(f'workflows.argoproj.io "{name}" already exists')
            self.workflows[(namespace, name)] = self._stored(workflow, namespace)
            self.run_status[name] = (phase, gate_passed)

    def created(self) -> list[str]:
        """Names of the workflows created, in any namespace."""
        with self._lock:
            return [name for (_, name) in self.workflows]

    def effective_parameters(self, name: str, namespace: str = "robustloop") -> dict[str, str]:
        """The parameters run ``name`` gets: its template's defaults, overridden by the values
        the workflow itself gives (Argo's merge for ``workflowTemplateRef``)."""
        with self._lock:
            spec = self.workflows[(namespace, name)]["spec"]
            defaults = dict(self.templates[spec["workflowTemplateRef"]["name"]])
        given = (spec.get("arguments") or {}).get("parameters") or []
        return {**defaults, **{p["name"]: str(p["value"]) for p in given}}

    def creates(self) -> list[int]:
        """Statuses answered to every create call."""
        with self._lock:
            return [status for method, _, status in self.calls if method == "POST"]

    # -- the API ------------------------------------------------------------------------------

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method:
                    self._faults.remove(fault)
                    return fault
        return None

    def validate(self, body: Any) -> list[str]:
        """Every problem of a create request body (empty when Argo would accept it)."""
        problems = [
            f"schema (WorkflowCreateRequest): {error.message} at {list(error.absolute_path)}"
            for error in self._create_request.iter_errors(body)
        ]
        if not isinstance(body, dict) or "workflow" not in body:
            return [*problems, "no `workflow` in the create request"]
        problems += [
            f"schema (Workflow): {error.message} at {list(error.absolute_path)}"
            for error in self._workflow.iter_errors(body["workflow"])
        ]
        try:
            WorkflowCreateRequest.model_validate(body)
        except ValidationError as exc:
            problems.append(f"Hera's WorkflowCreateRequest: {exc}")
        spec = body["workflow"].get("spec") or {}
        ref = (spec.get("workflowTemplateRef") or {}).get("name")
        if ref not in self.templates:
            problems.append(f"workflowtemplates.argoproj.io {ref!r} not found")
        else:
            given = {p.get("name") for p in (spec.get("arguments") or {}).get("parameters") or []}
            unknown = given - set(self.templates[ref])
            if unknown:
                problems.append(f"parameters {sorted(unknown)} not declared by template {ref}")
        problems += label_problems((body["workflow"].get("metadata") or {}).get("labels") or {})
        if not (body["workflow"].get("metadata") or {}).get("name"):
            problems.append("metadata.name is empty (the receiver must choose the name)")
        return problems

    def _create(self, namespace: str, body: Any, fault: Fault | None) -> tuple[int, Any]:
        problems = self.validate(body)
        if problems:
            with self._lock:
                self.invalid.extend(problems)
            return 400, {"code": 3, "message": "; ".join(problems)}
        workflow = body["workflow"]
        name = workflow["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.workflows:
                return 409, {
                    "code": 6,
                    "message": f'workflows.argoproj.io "{name}" already exists',
                }
            stored = self._stored(workflow, namespace)
            self.workflows[(namespace, name)] = stored
        if fault is not None and fault.store_first:
            time.sleep(fault.delay)
        return 200, stored

    def _stored(self, workflow: dict[str, Any], namespace: str) -> dict[str, Any]:
        """A copy of ``workflow`` as the API server stores it (namespace, uid, creation time).
        Called under the lock."""
        stored: dict[str, Any] = json.loads(json.dumps(workflow))
        stored["metadata"]["namespace"] = namespace
        stored["metadata"]["uid"] = f"uid-{len(self.workflows)}"
        stored["metadata"]["creationTimestamp"] = _now()
        return stored

    def _served(self, name: str, workflow: dict[str, Any]) -> dict[str, Any]:
        """The stored workflow with its status, as Argo serves it. Called under the lock."""
        if name not in self.run_status and self.auto_finish is not None:
            self.run_status[name] = self.auto_finish
        phase, gate_passed = self.run_status.get(name, ("Running", None))
        started = workflow["metadata"]["creationTimestamp"]
        served = {**workflow, "status": _status(name, phase, gate_passed, started)}
        self._check_served(self._workflow, served, f"workflow {name}")
        return served

    def _check_served(self, validator: Any, document: Any, what: str) -> None:
        """Keep in :attr:`errors` each way a served document breaks Argo's schema."""
        self.errors.extend(
            f"the stand-in served {what} that breaks the schema: {error.message} "
            f"at {list(error.absolute_path)}"
            for error in validator.iter_errors(document)
        )

    def _get(self, namespace: str, name: str) -> tuple[int, Any]:
        with self._lock:
            workflow = self.workflows.get((namespace, name))
            if workflow is None:
                return 404, {"code": 5, "message": f'workflows.argoproj.io "{name}" not found'}
            return 200, self._served(name, workflow)

    def _list(self, namespace: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        selector = (query.get("listOptions.labelSelector") or [""])[0]
        try:
            requirements = parse_selector(selector)
        except ValueError as exc:
            with self._lock:
                self.invalid.append(f"label selector {selector!r}: {exc}")
            return 400, {"code": 3, "message": str(exc)}
        with self._lock:
            items = [
                self._served(name, workflow)
                for (ns, name), workflow in self.workflows.items()
                if ns == namespace
                and selector_matches(requirements, workflow["metadata"].get("labels") or {})
            ]
            resource_version = str(len(self.workflows))
        items.sort(key=lambda w: w["metadata"]["creationTimestamp"], reverse=True)
        answer = {"metadata": {"resourceVersion": resource_version}, "items": items or None}
        if items:  # the schema says "array"; the Argo Server answers null for none (Go's nil)
            with self._lock:
                self._check_served(self._workflow_list, answer, "a WorkflowList")
        return 200, project(answer, (query.get("fields") or [""])[0])

    def _handler_class(self) -> type[JSONHandler]:
        standin = self

        class Handler(JSONHandler):
            tls_failed = False

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(5)
                    try:
                        self.request.do_handshake()
                    except OSError as exc:  # ssl.SSLError is one
                        self.tls_failed = True
                        with standin._lock:
                            standin.tls_failures.append(f"{type(exc).__name__}: {exc}")
                super().setup()

            def handle(self) -> None:
                if not self.tls_failed:  # else close without a word, as the Argo Server does
                    super().handle()

            def _answer(self, status: int, body: Any) -> None:
                self.answer_json(status, body)
                with standin._lock:
                    standin.calls.append((self.command, self.path, status))

            def _route(self) -> tuple[str, str | None] | None:
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts[:3] != ["api", "v1", "workflows"] or len(parts) not in (4, 5):
                    return None
                return parts[3], parts[4] if len(parts) == 5 else None

            def _authorised(self) -> bool:
                if standin.token is None:
                    return True
                return self.headers.get("Authorization") == f"Bearer {standin.token}"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                route = self._route()
                if route is None or route[1] is not None:
                    return self._answer(404, {"code": 5, "message": "no such route"})
                if not self._authorised():
                    return self._answer(401, {"code": 16, "message": "token not valid"})
                with standin._lock:
                    standin.received.append((self.command, self.path))
                fault = standin._take_fault("POST")
                if fault is not None and fault.delay and not fault.store_first:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    return self._answer(fault.status, {"code": 14, "message": "injected fault"})
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    with standin._lock:
                        standin.invalid.append(f"body is not JSON: {exc}")
                    return self._answer(400, {"code": 3, "message": "body is not JSON"})
                status, answer = standin._create(route[0], body, fault)
                return self._answer(status, answer)

            def do_GET(self) -> None:
                route = self._route()
                if route is None:
                    return self._answer(404, {"code": 5, "message": "no such route"})
                if not self._authorised():
                    return self._answer(401, {"code": 16, "message": "token not valid"})
                fault = standin._take_fault("GET")
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    return self._answer(fault.status, {"code": 14, "message": "injected fault"})
                with standin._lock:
                    standin.received.append((self.command, self.path))
                if route[1] is None:
                    query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                    status, answer = standin._list(route[0], query)
                else:
                    status, answer = standin._get(route[0], route[1])
                return self._answer(status, answer)

        return Handler


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(name: str, phase: str, gate_passed: bool | None, started: str) -> dict[str, Any]:
    """An Argo ``WorkflowStatus`` of the remediation DAG, as the controller records it.

    The DAG's node (the entrypoint, ``remediate``) is the root; each task is a ``Retry`` node
    (the template's ``retryStrategy``) inside the DAG's boundary, whose child is its pod
    ``<task>(0)``; the pod's children are the next task's node. Outputs are on the pod and copied
    to its ``Retry`` node. A run whose gate has not decided has ``harden`` running; a decided
    gate has run harden, evaluate and gate (``passed``), and promote (``version``) when it passed.
    """
    finished = phase in ("Succeeded", "Failed", "Error")
    if gate_passed is None:
        done: list[tuple[str, str, list[dict[str, str]]]] = []
        if not finished:
            done.append(("harden", "Running", []))
    else:
        done = [
            ("harden", "Succeeded", []),
            ("evaluate", "Succeeded", []),
            ("gate", "Succeeded", [{"name": "passed", "value": str(gate_passed).lower()}]),
        ]
        if gate_passed:
            done.append(("promote", "Succeeded", [{"name": "version", "value": "v0002"}]))
    nodes: dict[str, Any] = {}
    root: dict[str, Any] = {
        "id": name,
        "name": name,
        "displayName": name,
        "type": "DAG",
        "templateName": "remediate",
        "templateScope": "local/",
        "phase": phase,
        "startedAt": started,
        "children": [],
    }
    nodes[name] = root
    previous = root
    for index, (task, task_phase, outputs) in enumerate(done):
        step_id, pod_id = f"{name}-{2 * index + 1}", f"{name}-{2 * index + 2}"
        common = {
            "templateName": task,
            "templateScope": "local/",
            "boundaryID": name,
            "phase": task_phase,
            "startedAt": started,
        }
        if task_phase == "Succeeded":
            common["finishedAt"] = started
        step = {"id": step_id, "name": f"{name}.{task}", "displayName": task, "type": "Retry"}
        pod = {"id": pod_id, "name": f"{name}.{task}(0)", "displayName": f"{task}(0)"}
        nodes[step_id] = {**step, **common, "children": [pod_id]}
        nodes[pod_id] = {**pod, **common, "type": "Pod"}
        if outputs:
            nodes[step_id]["outputs"] = nodes[pod_id]["outputs"] = {"parameters": outputs}
        previous.setdefault("children", []).append(step_id)
        previous = nodes[pod_id]
    pods = [node for node in nodes.values() if node["type"] == "Pod"]
    succeeded = sum(node["phase"] == "Succeeded" for node in pods)
    status: dict[str, Any] = {
        "phase": phase,
        "startedAt": started,
        "nodes": nodes,
        "message": "" if phase != "Failed" else "step failed",
        "progress": f"{succeeded}/{max(1, len(pods))}",
    }
    if finished:
        status["finishedAt"] = started
        root["finishedAt"] = started
    return status


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (an IP address) and its key, as PEM files in
    ``folder``: with the ``cryptography`` package where installed, else the ``openssl`` CLI.

    Raises:
        FileNotFoundError: neither is available.
    """
    certificate, key = folder / "argo-server.crt", folder / "argo-server.key"
    try:
        _self_signed_with_cryptography(certificate, key, host)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FileNotFoundError(
                "neither the cryptography package nor the openssl CLI is installed"
            ) from None
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=argo-server", "-keyout", str(key),
             "-out", str(certificate), "-addext", f"subjectAltName=IP:{host}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return certificate, key


def _self_signed_with_cryptography(certificate: Path, key: Path, host: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "argo-server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
        )
        .sign(private, hashes.SHA256())
    )
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
