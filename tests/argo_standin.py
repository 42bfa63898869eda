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
  Argo's shape (phase, nodes with ``displayName`` and output parameters), 404 if unknown.

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


def template_parameters() -> dict[str, str]:
    """The parameters the remediation WorkflowTemplate declares, with their defaults (its
    golden YAML, else the contract)."""
    if GOLDEN_TEMPLATE.exists():
        template = yaml.safe_load(GOLDEN_TEMPLATE.read_text(encoding="utf-8"))
        declared = template["spec"]["arguments"]["parameters"]
        return {param["name"]: str(param.get("value", "")) for param in declared}
    return dict(PARAMETERS)


@functools.cache
def _validators(schema_path: Path) -> tuple[Any, Any]:
    """Validators of Argo's ``WorkflowCreateRequest`` and ``Workflow`` (``$ref``\\ s resolved)."""
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
    )


@dataclass
class Fault:
    """What the stand-in does to the next matching call."""

    method: str
    """``POST`` (create) or ``GET`` (read)."""
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
        self._create_request, self._workflow = _validators(schema_path)
        self.token = token
        self.templates: dict[str, dict[str, str]] = {TEMPLATE_NAME: template_parameters()}
        """WorkflowTemplates in the namespace: name -> {parameter: default}. A test may change
        the defaults, as the chart's ``workflow.parameters`` do."""
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.run_status: dict[str, dict[str, Any]] = {}
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
            self.run_status[name] = _status(name, phase, gate_passed)

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
            stored = json.loads(json.dumps(workflow))
            stored["metadata"]["namespace"] = namespace
            stored["metadata"]["uid"] = f"uid-{len(self.workflows)}"
            self.workflows[(namespace, name)] = stored
        if fault is not None and fault.store_first:
            time.sleep(fault.delay)
        return 200, stored

    def _get(self, namespace: str, name: str) -> tuple[int, Any]:
        with self._lock:
            workflow = self.workflows.get((namespace, name))
            if workflow is None:
                return 404, {"code": 5, "message": f'workflows.argoproj.io "{name}" not found'}
            if name not in self.run_status and self.auto_finish is not None:
                self.run_status[name] = _status(name, *self.auto_finish)
            status = self.run_status.get(name) or _status(name, "Running", None)
            return 200, {**workflow, "status": status}

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
                parts = self.path.split("?")[0].strip("/").split("/")
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
                if route is None or route[1] is None:
                    return self._answer(404, {"code": 5, "message": "no such route"})
                if not self._authorised():
                    return self._answer(401, {"code": 16, "message": "token not valid"})
                fault = standin._take_fault("GET")
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    return self._answer(fault.status, {"code": 14, "message": "injected fault"})
                status, answer = standin._get(route[0], route[1])
                return self._answer(status, answer)

        return Handler


def _status(name: str, phase: str, gate_passed: bool | None) -> dict[str, Any]:
    """An Argo ``WorkflowStatus`` with a gate node (and a promote node when it passed)."""
    nodes: dict[str, Any] = {}
    if gate_passed is not None:
        nodes[f"{name}-1"] = {
            "id": f"{name}-1",
            "name": f"{name}.gate",
            "displayName": "gate",
            "type": "Pod",
            "phase": "Succeeded",
            "outputs": {"parameters": [{"name": "passed", "value": str(gate_passed).lower()}]},
        }
        if gate_passed:
            nodes[f"{name}-2"] = {
                "id": f"{name}-2",
                "name": f"{name}.promote",
                "displayName": "promote",
                "type": "Pod",
                "phase": "Succeeded",
                "outputs": {"parameters": [{"name": "version", "value": "v0002"}]},
            }
    return {"phase": phase, "nodes": nodes, "message": "" if phase != "Failed" else "step failed"}


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
