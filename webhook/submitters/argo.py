"""Submit remediations to the Argo Server with Hera's ``WorkflowsService``, and read them back.

Each incident becomes one ``Workflow`` that references the ``robustloop-remediate``
WorkflowTemplate (``spec.workflowTemplateRef``) with the incident's parameters, under the
deterministic name :func:`workflows.contract.workflow_name_for` gives: submitting it again is
a 409 from the Argo Server, taken as success, so retries and restarts never start a second run.

``robustloop runs list|show`` reads the runs through the same connection (address, token, TLS
policy, timeout): :meth:`ArgoSubmitter.list_runs` lists the workflows carrying robustloop's
labels (:func:`runs_selector`), :meth:`ArgoSubmitter.get_run` reads one. Both keep the
Argo Server's JSON as it is (``format_list``/``format_show`` of :mod:`workflows.runs` read it),
and every failure is one line naming the setting to change.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import requests
from hera.workflows import WorkflowsService
from hera.workflows.models import (
    Arguments,
    ObjectMeta,
    Parameter,
    Workflow,
    WorkflowCreateRequest,
    WorkflowSpec,
    WorkflowTemplateRef,
)

from webhook._labels import MODEL_LABEL, label_value
from webhook.submitters._connection import classify_connection_error
from webhook.submitters.base import (
    RefusedSubmitError,
    SubmitError,
    Submitted,
    TransientSubmitError,
    classify_status,
)
from workflows.contract import TEMPLATE_NAME, RunSummary, summarise_workflow

ARGO_TOKEN_ENV = "ARGO_TOKEN"
"""Environment variable read for the Argo Server token when no token file is configured."""

TEMPLATE_LABEL = "workflows.argoproj.io/workflow-template"
"""Label of a workflow started from a WorkflowTemplate (Argo sets it; so does the receiver)."""

LIST_FIELDS = ",".join(
    (
        "metadata",
        "items.metadata.name",
        "items.metadata.namespace",
        "items.metadata.creationTimestamp",
        "items.metadata.labels",
        "items.status.phase",
        "items.status.startedAt",
        "items.status.finishedAt",
        "items.status.message",
        "items.status.progress",
    )
)
"""The Argo Server's ``fields`` projection of a run listing: what the table shows, without the
step nodes (the bulk of a workflow)."""

_WORKFLOW_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_MAX_SERVER_MESSAGE = 200


def runs_selector(model: str | None = None) -> str:
    """The Kubernetes label selector of robustloop's remediation runs, of ``model`` when given.

    A run is a workflow of the ``robustloop-remediate`` WorkflowTemplate that carries the
    ``robustloop.dev/model`` label: the receiver's runs and those submitted by hand from the
    template (whose ``workflowMetadata`` labels them) alike; other workflows in the namespace
    are left out.
    """
    model_term = MODEL_LABEL if model is None else f"{MODEL_LABEL}={label_value(model)}"
    return f"{TEMPLATE_LABEL}={TEMPLATE_NAME},{model_term}"


def _server_message(response: requests.Response) -> str:
    """The Argo Server's own error message (``{"code": .., "message": ..}``), on one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = str(body.get("message", "")) if isinstance(body, dict) else response.text
    text = " ".join(text.split()) or response.reason or "no message"
    return text if len(text) <= _MAX_SERVER_MESSAGE else text[:_MAX_SERVER_MESSAGE] + "…"


def _no_answer_reason(exc: requests.RequestException, timeout: float) -> str:
    """Why a request got no HTTP answer, in a few words (``Connection refused``)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    match = _ERRNO.search(str(exc))
    return match.group(1).strip() if match else type(exc).__name__


class _TimeoutSession(requests.Session):
    """A requests session that puts a timeout and the TLS verification policy on every call,
    and remembers the last status.

    Hera's ``WorkflowsService`` takes a session but no timeout; without one a hung Argo Server
    would hang the dispatcher. Its ``verify_ssl`` is a bool, so a CA file is set here. The
    status is kept because Hera raises its base exception, which carries no status, for codes
    it does not map (503 among them).
    """

    def __init__(self, timeout: float, verify: bool | str) -> None:
        super().__init__()
        self.timeout = timeout
        self.verify_policy = verify
        self.last_status: int | None = None

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self.timeout
        kwargs["verify"] = self.verify_policy
        self.last_status = None
        response = super().request(method, url, *args, **kwargs)
        self.last_status = response.status_code
        return response


class ArgoSubmitter:
    """Submits to, and reads back from, the Argo Server.

    A certificate that does not verify and a scheme the server does not speak (plain HTTP
    against TLS or the reverse) are refusals whose message says what to set; a refused
    connection, a timeout and a 5xx are transient (:mod:`webhook.submitters._connection`).

    Args:
        host: Argo Server URL (``http://argo-workflows-server.argo.svc:2746``).
        namespace: namespace of the workflows (and of the WorkflowTemplate).
        token_file: file with the bearer token, read at every call (service-account tokens
            rotate); None: ``$ARGO_TOKEN``, else no token (Argo Server in ``server`` auth mode).
        verify_tls: verify the server's certificate (https:// only).
        ca_file: PEM file of the CA(s) to verify it against; None: the system's CA bundle.
        timeout: seconds for every HTTP call.
    """

    kind = "argo"

    def __init__(
        self,
        host: str,
        namespace: str,
        token_file: Path | None = None,
        verify_tls: bool = True,
        ca_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host.rstrip("/") + "/"
        self.namespace = namespace
        self.token_file = token_file
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.timeout = timeout
        verify: bool | str = str(ca_file) if (verify_tls and ca_file is not None) else verify_tls
        self._session = _TimeoutSession(timeout, verify)
        self._lock = threading.Lock()

    def _token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise TransientSubmitError(
                    f"cannot read the Argo token file {self.token_file}: {exc.strerror}"
                ) from None
        return os.environ.get(ARGO_TOKEN_ENV) or None

    def _check_ca_file(self, doing: str) -> None:
        if self.verify_tls and self.ca_file is not None and not self.ca_file.is_file():
            raise RefusedSubmitError(
                f"{doing}: submitter.argo.ca_file {self.ca_file} is not a file: mount "
                "the PEM file of the Argo Server's CA there (chart: argo.ca), or unset it"
            )

    def _no_answer(self, exc: requests.RequestException, doing: str) -> SubmitError:
        return classify_connection_error(
            exc, self.host.rstrip("/"), doing, self.ca_file, self.timeout
        )

    def _service(self) -> WorkflowsService:
        return WorkflowsService(
            host=self.host,
            token=self._token(),
            namespace=self.namespace,
            verify_ssl=self.verify_tls,
            session=self._session,
        )

    def workflow(
        self, name: str, parameters: dict[str, str], labels: Mapping[str, str] | None = None
    ) -> Workflow:
        """The Workflow object submitted for one incident (a reference to the template),
        labelled with ``labels`` (the incident's: model, incident, alert name) as well."""
        return Workflow(
            api_version="argoproj.io/v1alpha1",
            kind="Workflow",
            metadata=ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={
                    **(labels or {}),
                    "app.kubernetes.io/managed-by": "robustloop-webhook",
                    TEMPLATE_LABEL: TEMPLATE_NAME,
                },
                annotations={"robustloop.io/incident": parameters.get("incident-id", "")},
            ),
            spec=WorkflowSpec(
                workflow_template_ref=WorkflowTemplateRef(name=TEMPLATE_NAME),
                arguments=Arguments(
                    parameters=[Parameter(name=k, value=v) for k, v in parameters.items()]
                ),
            ),
        )

    def submit(
        self, name: str, parameters: dict[str, str], labels: Mapping[str, str] | None = None
    ) -> Submitted:
        """Create the workflow; a 409 (it exists) is success. See :class:`Submitter`."""
        request = WorkflowCreateRequest(
            namespace=self.namespace, workflow=self.workflow(name, parameters, labels)
        )
        doing = f"creating {name}"
        with self._lock:
            self._check_ca_file(doing)
            try:
                self._service().create_workflow(request, namespace=self.namespace)
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise self._no_answer(exc, doing) from None
            except Exception as exc:
                status = self._session.last_status
                if status == 409:
                    return Submitted.EXISTS
                if status is not None and 200 <= status < 300:
                    # Created; only Hera's parsing of the echoed object failed.
                    return Submitted.CREATED
                raise classify_status(
                    status, f"Argo Server answered {status} creating workflow {name}: {exc}"
                ) from None
        return Submitted.CREATED

    def status(self, name: str) -> RunSummary | None:
        """Read the workflow back (``get_workflow``); None on a 404. See :class:`Submitter`."""
        doing = f"reading {name}"
        with self._lock:
            try:
                self._check_ca_file(doing)
                workflow = self._service().get_workflow(name, namespace=self.namespace)
            except (requests.Timeout, requests.ConnectionError) as exc:
                # A read is never refused (the run exists): the same message, retried.
                raise TransientSubmitError(self._no_answer(exc, doing).message) from None
            except RefusedSubmitError as exc:
                raise TransientSubmitError(exc.message) from None
            except Exception as exc:
                status = self._session.last_status
                if status == 404:
                    return None
                raise TransientSubmitError(
                    f"Argo Server answered {status} reading workflow {name}: {exc}", status
                ) from None
        return summarise_workflow(
            workflow.model_dump(mode="json", by_alias=True, exclude_none=True)
        )

    def list_runs(self, model: str | None = None) -> list[dict[str, Any]]:
        """robustloop's remediation runs in the namespace (of ``model`` when given).

        Returns:
            The Argo Server's ``Workflow`` objects with the fields a listing shows
            (:data:`LIST_FIELDS`), in the server's order; empty when there are none (the server
            answers ``"items": null`` then).

        Raises:
            RefusedSubmitError: the server refused (401, 403, a certificate that does not verify,
                a scheme it does not speak, an answer that is no WorkflowList); the message says
                what to set.
            TransientSubmitError: no answer (refused connection, timeout) or a 5xx.
        """
        doing = "listing runs"
        body = self._read(
            f"api/v1/workflows/{quote(self.namespace, safe='')}",
            {"listOptions.labelSelector": runs_selector(model), "fields": LIST_FIELDS},
            doing,
        )
        items = body.get("items") if isinstance(body, dict) else ()
        if items is None:
            return []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise self._not_argo(doing, "something other than a WorkflowList")
        return [dict(item) for item in items]

    def get_run(self, name: str) -> dict[str, Any] | None:
        """The ``Workflow`` object of run ``name`` as the Argo Server holds it; None when the
        namespace has no workflow of that name, or one that is not robustloop's run
        (:func:`runs_selector`).

        Raises:
            RefusedSubmitError: ``name`` is no workflow name, or as :meth:`list_runs`.
            TransientSubmitError: as :meth:`list_runs`.
        """
        if not _WORKFLOW_NAME.fullmatch(name):
            raise RefusedSubmitError(
                f"{name!r} is not a workflow name (lower-case letters, digits, '-' and '.'; "
                "see `robustloop runs list`)"
            )
        doing = f"reading run {name}"
        path = f"api/v1/workflows/{quote(self.namespace, safe='')}/{name}"
        workflow = self._read(path, None, doing, missing_ok=True)
        if workflow is None:
            return None
        if not isinstance(workflow, dict) or not isinstance(workflow.get("metadata"), dict):
            raise self._not_argo(doing, "something other than a Workflow")
        labels = workflow["metadata"].get("labels") or {}
        if labels.get(TEMPLATE_LABEL) != TEMPLATE_NAME or MODEL_LABEL not in labels:
            return None
        return dict(workflow)

    def _not_argo(self, doing: str, what: str) -> RefusedSubmitError:
        return RefusedSubmitError(
            f"the server at {self.host.rstrip('/')} answered {doing} with {what}: set "
            "submitter.argo.host to the Argo Server's URL"
        )

    def _token_source(self) -> str:
        if self.token_file is not None:
            return f"the token in submitter.argo.token_file {self.token_file}"
        if os.environ.get(ARGO_TOKEN_ENV):
            return f"the token in ${ARGO_TOKEN_ENV}"
        return f"no token (neither submitter.argo.token_file nor ${ARGO_TOKEN_ENV} is set)"

    def _read(
        self, path: str, params: dict[str, str] | None, doing: str, missing_ok: bool = False
    ) -> Any:
        """GET ``path`` of the Argo Server as the submitter calls it (session, token, TLS);
        its JSON body, or None for a 404 when ``missing_ok``."""
        host = self.host.rstrip("/")
        with self._lock:
            self._check_ca_file(doing)
            token = self._service().token  # Hera's form of the header: "Bearer <token>"
            try:
                response = self._session.request(
                    "GET",
                    urljoin(self.host, path),
                    params=params,
                    headers={"Authorization": token} if token else {},
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                error = self._no_answer(exc, doing)
                if isinstance(error, RefusedSubmitError):
                    raise error from None
                raise TransientSubmitError(
                    f"the Argo Server at {host} did not answer {doing} "
                    f"({_no_answer_reason(exc, self.timeout)}): check submitter.argo.host "
                    "(from outside the cluster, port-forward the server's Service and use "
                    "its local address)"
                ) from None
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status in (401, 403):
            what = "not authenticated" if status == 401 else "forbidden"
            raise RefusedSubmitError(
                f"the Argo Server at {host} answered {status} {doing} ({what}: "
                f"{_server_message(response)}) with {self._token_source()}: set "
                "submitter.argo.token_file (or $ARGO_TOKEN) to a token of a service account "
                f"that may list and get workflows in namespace {self.namespace} "
                "(submitter.argo.namespace)",
                status,
            )
        if not 200 <= status < 300:
            raise classify_status(
                status,
                f"the Argo Server at {host} answered {status} {doing}: "
                f"{_server_message(response)} (check submitter.argo.host and "
                "submitter.argo.namespace)",
            )
        try:
            return response.json()
        except ValueError:
            raise self._not_argo(doing, "something other than JSON") from None

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


__all__ = ["ARGO_TOKEN_ENV", "LIST_FIELDS", "TEMPLATE_LABEL", "ArgoSubmitter", "runs_selector"]
