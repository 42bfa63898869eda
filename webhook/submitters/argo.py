"""Submit remediations to the Argo Server with Hera's ``WorkflowsService``.

Each incident becomes one ``Workflow`` that references the ``robustloop-remediate``
WorkflowTemplate (``spec.workflowTemplateRef``) with the incident's parameters, under the
deterministic name :func:`workflows.contract.workflow_name_for` gives: submitting it again is
a 409 from the Argo Server, taken as success, so retries and restarts never start a second run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
                    "workflows.argoproj.io/workflow-template": TEMPLATE_NAME,
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

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


__all__ = ["ARGO_TOKEN_ENV", "ArgoSubmitter"]
