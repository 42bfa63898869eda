"""A stand-in for the Kubernetes API's PrometheusRule endpoint, for tests (no API server here).

A real HTTP server on 127.0.0.1 (a free port) that answers what :mod:`alert_rules.cluster`
calls, the way the API server does:

* ``PATCH /apis/monitoring.coreos.com/v1/namespaces/{namespace}/prometheusrules/{name}`` with
  ``Content-Type: application/merge-patch+json``: applies the JSON merge patch (RFC 7386) to the
  stored object, validates the result against the PrometheusRule CRD's schema (strict, from
  ``../shared/schemas/prometheus-operator``), stores it and answers it; 415 for any other patch
  type, 404 for an unknown object, 422 (and nothing stored) for a result the schema refuses,
  403 when a bearer token is required and the request lacks it.

Requests are recorded in :attr:`KubeStandIn.requests`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import jsonschema

from tests.http_standin import JSONHandler, StandInServer

_PATH = re.compile(
    r"^/apis/monitoring\.coreos\.com/v1/namespaces/(?P<ns>[^/]+)/prometheusrules/(?P<name>[^/?]+)$"
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    authorization: str
    body: Any


class KubeStandIn(StandInServer):
    """The stand-in server; use as a context manager, ``url`` is its base address."""

    def __init__(self, validator: jsonschema.protocols.Validator, token: str | None = None) -> None:
        self.validator = validator
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def add_rule(self, namespace: str, name: str, groups: list[dict[str, Any]]) -> None:
        """Store a PrometheusRule as the chart would have created it."""
        self.objects[(namespace, name)] = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": name, "namespace": namespace, "labels": {"release": "rl"}},
            "spec": {"groups": groups},
        }

    def _handler(self) -> type[JSONHandler]:
        standin = self

        class Handler(JSONHandler):
            def _status(self, code: int, reason: str, message: str) -> None:
                self.answer_json(
                    code,
                    {
                        "kind": "Status",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                request = Request(
                    "PATCH",
                    self.path,
                    content_type,
                    self.headers.get("Authorization") or "",
                    json.loads(raw or b"null"),
                )
                with standin._lock:
                    standin.requests.append(request)
                    if standin.token and request.authorization != f"Bearer {standin.token}":
                        self._status(403, "Forbidden", "prometheusrules is forbidden")
                        return
                    match = _PATH.match(self.path)
                    if match is None:
                        self._status(404, "NotFound", f"no route {self.path}")
                        return
                    key = (match["ns"], match["name"])
                    if content_type != "application/merge-patch+json":
                        self._status(415, "UnsupportedMediaType", content_type)
                        return
                    if key not in standin.objects:
                        self._status(404, "NotFound", f'prometheusrules "{key[1]}" not found')
                        return
                    result = merge_patch(standin.objects[key], request.body)
                    errors = [e.message for e in standin.validator.iter_errors(result)]
                    if errors:
                        self._status(422, "Invalid", "; ".join(errors)[:500])
                        return
                    standin.objects[key] = result
                    self.answer_json(200, result)

        return Handler
