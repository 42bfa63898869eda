"""A stand-in for the Kubernetes API's PrometheusRule endpoints, for tests (no API server here).

A real HTTP server on 127.0.0.1 (a free port) that answers what :mod:`alert_rules.cluster`
calls, the way the API server answers a custom resource's requests:

* ``GET .../namespaces/{ns}/prometheusrules/{name}``: 200 and the object, or 404 with a
  ``Status`` of reason ``NotFound`` (``details``: name, group, kind).
* ``POST .../namespaces/{ns}/prometheusrules`` (create): 201 and the stored object, with
  ``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp`` and ``managedFields``
  set by the server; 409 ``AlreadyExists`` for a taken name; 400 ``BadRequest`` for another
  apiVersion or kind, or a namespace in the body other than the URL's; 422 ``Invalid`` for no
  name, an ``ownerReferences`` entry without ``apiVersion``, ``kind``, ``name`` or ``uid``, or
  an object the CRD's schema refuses (strict, from ``../shared/schemas/prometheus-operator``).
  Stricter than the API server, which prunes unknown fields with a warning unless asked for
  ``fieldValidation=Strict``; with ``Strict``, an unknown field is a 400 as it is there.
* ``PUT .../prometheusrules/{name}`` (replace): 200; 404 for an unknown object (a custom
  resource is never created by an update); 400 for a name or namespace in the body other than
  the URL's; 422 without ``metadata.resourceVersion`` (a custom resource allows no
  unconditional update); 409 ``Conflict`` when it is not the stored one (another writer came
  first) or the body's ``uid`` is another object's. ``uid`` and ``creationTimestamp`` are
  kept, ``resourceVersion`` moves on, ``generation`` too when the spec changed.
* ``fieldValidation`` other than ``Ignore``, ``Warn`` or ``Strict``: 400. ``fieldManager``
  names the writer in ``managedFields`` (the client's default, ``unknown`` here, otherwise).

Authentication and authorization as a service account's token meets them: with ``token`` set,
a request without that bearer token is 401 ``Unauthorized``; with ``rules`` (the PolicyRules of
the account's Role, as the chart renders them), a request no rule allows is 403 ``Forbidden``
with the API server's message. As in Kubernetes RBAC, ``resourceNames`` never allow a
``create``: the object has no name when the request is authorized.

:meth:`KubeStandIn.delete` removes an object as ``kubectl delete`` (or ``helm uninstall``)
would, and then, as the garbage collector does, every object left with no owner that exists.
Requests are recorded in :attr:`KubeStandIn.requests`; ``interfere``, when set, is called with
each request before it is handled (under the lock), to play another writer.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

from tests.http_standin import JSONHandler, StandInServer

GROUP = "monitoring.coreos.com"
API_VERSION = f"{GROUP}/v1"
KIND = "PrometheusRule"
RESOURCE = "prometheusrules"
_PATH = re.compile(
    rf"^/apis/monitoring\.coreos\.com/v1/namespaces/(?P<ns>[^/]+)/{RESOURCE}(?:/(?P<name>[^/]+))?$"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_FIELD_VALIDATION = {"", "Ignore", "Warn", "Strict"}
_OWNER_FIELDS = ("apiVersion", "kind", "name", "uid")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    authorization: str
    body: Any


class ApiError(Exception):
    """An answer other than success: the HTTP status and the ``Status`` object's fields."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            out["details"] = self.details
        return out


def _details(name: str) -> dict[str, Any]:
    return {"name": name, "group": GROUP, "kind": RESOURCE}


def _qualified(name: str) -> str:
    return f'{RESOURCE}.{GROUP} "{name}"'


class KubeStandIn(StandInServer):
    """The stand-in server; use as a context manager, ``url`` is its base address.

    Args:
        validator: the PrometheusRule CRD's schema validator.
        token: the bearer token required of every request (None: none required).
        rules: PolicyRules that authorize requests (None: everything is allowed).
        user: the user named in a 403's message.
    """

    def __init__(
        self,
        validator: jsonschema.protocols.Validator,
        token: str | None = None,
        rules: list[dict[str, Any]] | None = None,
        user: str = "system:serviceaccount:robustloop:rl-robustloop-workflow",
    ) -> None:
        self.validator = validator
        self.token = token
        self.rules = rules
        self.user = user
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.interfere: Callable[[KubeStandIn, Request], None] | None = None
        self._versions = itertools.count(1000)
        self._lock = threading.Lock()
        super().__init__(self._handler())

    # -- the store, as tests and the garbage collector see it --------------------------------

    def add_rule(
        self,
        namespace: str,
        name: str,
        groups: list[dict[str, Any]],
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Store a PrometheusRule as Helm would have created it; returns it."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"groups": groups},
        }
        with self._lock:
            return copy.deepcopy(self._create(namespace, body, "helm"))

    def touch(self, namespace: str, name: str) -> None:
        """Another writer's update: the object's resourceVersion moves on (call under the lock,
        from ``interfere``)."""
        self.objects[(namespace, name)]["metadata"]["resourceVersion"] = str(next(self._versions))

    def delete(self, namespace: str, name: str) -> None:
        """Delete an object, then collect the garbage: every object none of whose owners exists
        any more goes too (background propagation, repeated until nothing changes)."""
        with self._lock:
            del self.objects[(namespace, name)]
            while True:
                uids = {o["metadata"]["uid"] for o in self.objects.values()}
                orphans = [
                    key
                    for key, obj in self.objects.items()
                    if obj["metadata"].get("ownerReferences")
                    and not {r["uid"] for r in obj["metadata"]["ownerReferences"]} & uids
                ]
                if not orphans:
                    return
                for key in orphans:
                    del self.objects[key]

    # -- the API -------------------------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any], manager: str) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self._versions))
        meta["managedFields"] = [
            {
                "manager": manager,
                "operation": "Update",
                "apiVersion": API_VERSION,
                "time": now,
                "fieldsType": "FieldsV1",
                "fieldsV1": {},
            }
        ]
        meta.setdefault("creationTimestamp", now)

    def _validate(self, obj: dict[str, Any], name: str, strict: bool) -> None:
        if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({API_VERSION}), or the kind is not {KIND}",
            )
        problems = []
        for i, owner in enumerate(obj["metadata"].get("ownerReferences") or []):
            for field in _OWNER_FIELDS:
                if not owner.get(field):
                    problems.append(
                        f'metadata.ownerReferences[{i}].{field}: Invalid value: "": '
                        f"{field} must not be empty"
                    )
        unknown = []
        for error in self.validator.iter_errors(obj):
            where = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "additionalProperties":
                unknown.append(f"{where}: {error.message}")
            else:
                problems.append(f"{where}: {error.message}")
        if unknown and strict:
            raise ApiError(400, "BadRequest", "strict decoding error: " + "; ".join(unknown))
        problems += unknown
        if problems:
            raise ApiError(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "{name}" is invalid: ' + "; ".join(problems)[:800],
                _details(name),
            )

    def _create(self, namespace: str, body: Any, manager: str, strict: bool = False) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body is not an object with metadata")
        meta = body["metadata"]
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        name = meta.get("name")
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f"{KIND}.{GROUP} is invalid: metadata.name: Required value: name or "
                "generateName is required",
            )
        if (namespace, name) in self.objects:
            raise ApiError(
                409, "AlreadyExists", f"{_qualified(name)} already exists", _details(name)
            )
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = namespace
        self._validate(obj, name, strict)
        obj["metadata"]["uid"] = str(uuid.uuid4())
        obj["metadata"]["generation"] = 1
        self._stamp(obj, manager)
        self.objects[(namespace, name)] = obj
        return obj

    def _replace(
        self, namespace: str, name: str, body: Any, manager: str, strict: bool = False
    ) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body is not an object with metadata")
        meta = body["metadata"]
        if meta.get("name") != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})",
            )
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise ApiError(404, "NotFound", f"{_qualified(name)} not found", _details(name))
        if not meta.get("resourceVersion"):
            raise ApiError(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "{name}" is invalid: metadata.resourceVersion: Invalid '
                "value: 0x0: must be specified for an update",
                _details(name),
            )
        old = stored["metadata"]
        if meta.get("uid") and meta["uid"] != old["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {_qualified(name)}: Precondition failed: "
                f"UID in precondition: {meta['uid']}, UID in object meta: {old['uid']}",
                _details(name),
            )
        if meta["resourceVersion"] != old["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {_qualified(name)}: the object has been "
                "modified; please apply your changes to the latest version and try again",
                _details(name),
            )
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = namespace
        self._validate(obj, name, strict)
        obj["metadata"]["uid"] = old["uid"]
        obj["metadata"]["creationTimestamp"] = old["creationTimestamp"]
        changed = obj.get("spec") != stored.get("spec")
        obj["metadata"]["generation"] = old["generation"] + (1 if changed else 0)
        self._stamp(obj, manager)
        self.objects[(namespace, name)] = obj
        return obj

    def _authorize(self, verb: str, namespace: str, name: str | None) -> None:
        if self.rules is None:
            return
        for rule in self.rules:
            names = rule.get("resourceNames") or []
            if (
                GROUP in rule.get("apiGroups", [])
                and RESOURCE in rule.get("resources", [])
                and verb in rule.get("verbs", [])
                and (not names or (name is not None and name in names))
            ):
                return
        what = _qualified(name) if name else f"{RESOURCE}.{GROUP}"
        raise ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{RESOURCE}" in '
            f'API group "{GROUP}" in the namespace "{namespace}"',
            {"name": name, "group": GROUP, "kind": RESOURCE} if name else {"group": GROUP},
        )

    def _answer(self, request: Request) -> tuple[int, Any]:
        if self.token and request.authorization != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(request.path)
        if match is None or request.method not in _VERBS:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match["ns"], match["name"]
        verb = _VERBS[request.method]
        if (name is None) != (verb == "create"):
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")
        self._authorize(verb, namespace, name)
        validation = request.query.get("fieldValidation", "")
        if validation not in _FIELD_VALIDATION:
            raise ApiError(400, "BadRequest", f"invalid fieldValidation directive: {validation!r}")
        strict = validation == "Strict"
        manager = request.query.get("fieldManager") or "unknown"
        if verb == "get":
            assert name is not None
            found = self.objects.get((namespace, name))
            if found is None:
                raise ApiError(404, "NotFound", f"{_qualified(name)} not found", _details(name))
            return 200, found
        if verb == "create":
            return 201, self._create(namespace, request.body, manager, strict)
        if verb == "update":
            assert name is not None
            return 200, self._replace(namespace, name, request.body, manager, strict)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _handler(self) -> type[JSONHandler]:
        standin = self

        class Handler(JSONHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                url = urlsplit(self.path)
                request = Request(
                    self.command,
                    url.path,
                    {k: v[-1] for k, v in parse_qs(url.query).items()},
                    (self.headers.get("Content-Type") or "").split(";")[0].strip(),
                    self.headers.get("Authorization") or "",
                    json.loads(raw) if raw else None,
                )
                with standin._lock:
                    standin.requests.append(request)
                    if standin.interfere is not None:
                        standin.interfere(standin, request)
                    try:
                        code, body = standin._answer(request)
                    except ApiError as exc:
                        code, body = exc.code, exc.status()
                    body = copy.deepcopy(body)
                self.answer_json(code, body)

            do_GET = _serve
            do_POST = _serve
            do_PUT = _serve
            do_PATCH = _serve
            do_DELETE = _serve

        return Handler
