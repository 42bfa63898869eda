"""The receiver's Flask app: ``create_app(config)``.

Routes (blueprint ``webhook``):

* ``POST /api/v1/alerts``: Alertmanager's webhook payload v4; bearer token; body size limit.
  Answers 200 once every alert is durably recorded (new or duplicate), 4xx for garbage (which
  Alertmanager does not retry), 503 only when the outbox could not record (a resend is wanted).
  With ``?dry_run=true`` the payload is authenticated, validated and decided as the dispatcher
  would decide it now, and the answer says so, alert by alert; nothing is recorded, nothing
  submitted (a smoke test of a deployment, ``robustloop smoke``).
* ``GET /api/v1/remediations`` (``?state=&limit=``), ``GET /api/v1/remediations/<id>``: the
  incidents with their states and history; bearer token too.
* ``GET /healthz`` (the process lives), ``GET /readyz`` (outbox open and dispatcher running),
  ``GET /metrics`` (Prometheus text format).

Errors are :mod:`webhook.errors`, mapped to ``{"error": message}`` in :func:`_register_errors`.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from robustloop.config import RobustloopConfig
from robustloop.jsonbody import BodyError, content_type_problem, parse_json_body
from webhook import errors
from webhook._auth import BearerToken, load_bearer
from webhook.dispatcher import Dispatcher
from webhook.metrics import WebhookMetrics
from webhook.models import Alert, WebhookPayload
from webhook.outbox import (
    REASON_NOT_ALLOWED,
    REASON_RESOLVED,
    REDECIDED_STATES,
    RETRYABLE_REASONS,
    STATES,
    SUPPRESSED,
    AlertRecord,
    Outbox,
)
from webhook.submitters import Submitter, build_submitter
from workflows.contract import RECIPE_LABEL, RECIPES

log = logging.getLogger(__name__)

EXTENSION = "robustloop.webhook"
MODEL_LABEL = "model"
"""The alert label naming the model to remediate (every robustloop series carries it)."""
_MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_PROBLEMS = 5
DRY_RUN_PARAMETER = "dry_run"
"""The query parameter of ``POST /api/v1/alerts`` that asks for a decision only."""

bp = Blueprint("webhook", __name__)


@dataclass
class Receiver:
    """Everything a running receiver holds; ``app.extensions["robustloop.webhook"]``."""

    config: RobustloopConfig
    token: BearerToken | None
    """The token deliveries must carry (re-read when its file changes); None: no auth."""
    outbox: Outbox
    submitter: Submitter
    dispatcher: Dispatcher
    metrics: WebhookMetrics

    def close(self) -> None:
        """Stop the dispatcher, close the submitter and the outbox (idempotent)."""
        self.dispatcher.stop()
        self.submitter.close()
        self.outbox.close()


def create_app(
    config: RobustloopConfig,
    *,
    submitter: Submitter | None = None,
    registry: CollectorRegistry | None = None,
    config_path: Path | None = None,
    start_dispatcher: bool = True,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the receiver: load the token, take and open the outbox, start the dispatcher.

    Args:
        config: the configuration (sections ``webhook``, ``submitter``, ``remediation``).
        submitter: where runs start; default :func:`webhook.submitters.build_submitter`.
        registry: Prometheus registry of the metrics (tests pass a fresh one); default a new
            registry served at ``/metrics``.
        config_path: the config file, handed to the local executor.
        start_dispatcher: False leaves the dispatcher stopped (``receiver_of(app).dispatcher``
            can be started or run pass by pass), for tests that look at the outbox alone.
        clock: the dispatcher's time source (tests pass their own).

    Raises:
        webhook.errors.ConfigurationError: no token while ``webhook.auth`` is ``bearer``.
        webhook.errors.OutboxInUse: another receiver holds the outbox (``webhook.db_path``);
            one receiver per outbox.
    """
    token = load_bearer(config.webhook)
    outbox = Outbox(config.webhook.db_path)
    try:
        submitter = submitter if submitter is not None else build_submitter(config, config_path)
        metrics = WebhookMetrics(registry if registry is not None else CollectorRegistry())
    except BaseException:
        outbox.close()
        raise
    dispatcher = Dispatcher(outbox, submitter, config, metrics, clock)
    receiver = Receiver(config, token, outbox, submitter, dispatcher, metrics)
    app = Flask(__name__)
    app.extensions[EXTENSION] = receiver
    app.register_blueprint(bp)
    _register_errors(app)
    if start_dispatcher:
        dispatcher.start()
    return app


def receiver_of(app: Flask) -> Receiver:
    """The :class:`Receiver` of an app made by :func:`create_app`."""
    receiver: Receiver = app.extensions[EXTENSION]
    return receiver


def _receiver() -> Receiver:
    return receiver_of(current_app)


def _register_errors(app: Flask) -> None:
    """The one place where errors become HTTP answers."""

    @app.errorhandler(errors.WebhookError)
    def _webhook_error(exc: errors.WebhookError) -> tuple[Response, int, dict[str, str]]:
        headers = {"WWW-Authenticate": 'Bearer realm="robustloop"'} if exc.status == 401 else {}
        return jsonify(error=exc.message), exc.status, headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        mapped: dict[int, type[errors.WebhookError]] = {
            400: errors.BadPayload,
            404: errors.NotFound,
            405: errors.MethodNotAllowed,
            413: errors.PayloadTooLarge,
        }
        message = exc.description or exc.name
        if status in mapped:
            message = mapped[status](message).message
        return jsonify(error=message), status


def _authenticate(receiver: Receiver) -> None:
    if receiver.token is None:
        return
    if not receiver.token.matches(request.headers.get("Authorization")):
        raise errors.Unauthorized(
            "missing or wrong bearer token: send `Authorization: Bearer <token>` "
            "(Alertmanager: http_config.authorization.credentials_file)"
        )


def _read_body(limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise errors.PayloadTooLarge(
            f"body of {declared} bytes exceeds webhook.max_body_bytes ({limit}); lower the "
            "receiver's max_alerts in Alertmanager or raise the limit"
        )
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise errors.PayloadTooLarge(
            f"body exceeds webhook.max_body_bytes ({limit}); lower the receiver's max_alerts "
            "in Alertmanager or raise the limit"
        )
    return body


def _parse(body: bytes) -> WebhookPayload:
    if not body:
        raise errors.BadPayload("empty body: expected Alertmanager's webhook JSON (version 4)")
    try:
        raw: Any = parse_json_body(body)
    except BodyError as exc:
        raise errors.BadPayload(f"body is not JSON this receiver accepts: {exc}") from None
    if not isinstance(raw, dict):
        raise errors.BadPayload(
            f"expected a JSON object (Alertmanager's webhook payload), got {type(raw).__name__}"
        )
    if "version" in raw and raw["version"] != "4":
        raise errors.BadPayload(
            f"unsupported payload version {_short(raw['version'])}: this receiver speaks "
            'Alertmanager\'s webhook version "4"'
        )
    try:
        return WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(_short(p, quote=False) for p in err['loc']) or '(body)'}: {err['msg']}"
            for err in exc.errors()[:_MAX_PROBLEMS]
        ]
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise errors.BadPayload(
            "not Alertmanager's webhook payload v4: " + "; ".join(problems) + suffix
        ) from None
    except RecursionError:
        raise errors.BadPayload("payload nested too deep") from None


def _short(value: object, quote: bool = True, limit: int = 60) -> str:
    """A value for an error message, cut short: garbage may be a megabyte long."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _not_allowed(alert: Alert, allow: dict[str, str], models: set[str]) -> str | None:
    for name, wanted in sorted(allow.items()):
        got = alert.labels.get(name)
        if got != wanted:
            shown = "missing" if got is None else f"{got!r}"
            return (
                f"not allowed: label {name} is {shown}; webhook.allow_labels wants {wanted!r} "
                "before an alert may start a remediation"
            )
    recipe = alert.labels.get(RECIPE_LABEL)
    if recipe is not None and recipe not in RECIPES:
        return (
            f"not allowed: label {RECIPE_LABEL} is {_short(recipe)}; a remediation's recipe is "
            f"one of {', '.join(RECIPES)}"
        )
    model = alert.labels.get(MODEL_LABEL)
    if model is not None and not _MODEL_NAME.match(model):
        return f"not allowed: label model {model!r} is not a model name ([a-z0-9-])"
    if model is not None and model not in models:
        # Each model has its own one-at-a-time slot and daily budget: an alert naming any
        # other model must not open a fresh one.
        return (
            f"not allowed: label model {model!r} is not this receiver's model "
            f"({', '.join(sorted(models))}; webhook.models)"
        )
    return None


def _records(receiver: Receiver, payload: WebhookPayload) -> list[AlertRecord]:
    allow = receiver.config.webhook.allow_labels
    default_model = receiver.config.model.name
    models = set(receiver.config.webhook.models or [default_model])
    return [
        AlertRecord(
            incident_id=alert.incident_id,
            fingerprint=alert.fingerprint,
            starts_at=alert.starts_at.isoformat(),
            status=alert.status,
            alertname=alert.labels.get("alertname", ""),
            model=alert.labels.get(MODEL_LABEL) or default_model,
            labels=alert.labels,
            annotations=alert.annotations,
            group_key=payload.group_key,
            not_allowed=_not_allowed(alert, allow, models),
        )
        for alert in payload.alerts
    ]


def _dry_run_requested() -> bool:
    """Whether the request asks for a dry run (``?dry_run=true``); anything but true or false
    is refused, so that a typo never records what was meant as a test."""
    raw = request.args.get(DRY_RUN_PARAMETER)
    if raw is None or raw.lower() in ("false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise errors.BadPayload(
        f"query parameter {DRY_RUN_PARAMETER} must be true or false, got {_short(raw)}"
    )


def _preview(receiver: Receiver, alert: AlertRecord) -> dict[str, Any]:
    """What a delivery of ``alert`` would do now: the decision the outbox and the dispatcher
    would take, worked out from the outbox as it is, with nothing written."""
    shown: dict[str, Any] = {
        "incident": alert.incident_id,
        "model": alert.model,
        "alertname": alert.alertname,
        "status": alert.status,
        "duplicate": False,
        "workflow": None,
    }
    known = receiver.outbox.get(alert.incident_id, with_events=False)
    if known is not None:
        shown["duplicate"] = True
        decided_again = (
            alert.status == "firing"
            and known.resolved_at is None
            and (
                known.state in REDECIDED_STATES
                or (known.state == SUPPRESSED and known.reason_code in RETRYABLE_REASONS)
            )
        )
        if not decided_again:
            resolves = alert.status == "resolved" and known.resolved_at is None
            return shown | {
                "decision": "duplicate",
                "state": known.state,
                "workflow": known.workflow,
                "reason": f"incident already recorded ({known.state}): a delivery would "
                + ("record the resolution" if resolves else "only count the delivery"),
            }
    elif alert.status == "resolved":
        return shown | {
            "decision": REASON_RESOLVED,
            "state": SUPPRESSED,
            "reason": "resolved before it was seen firing",
        }
    elif alert.not_allowed is not None:
        return shown | {
            "decision": REASON_NOT_ALLOWED,
            "state": SUPPRESSED,
            "reason": alert.not_allowed,
        }
    preview = receiver.dispatcher.preview(alert.incident_id, alert.model)
    return shown | {
        "decision": preview.decision,
        "state": preview.state,
        "workflow": preview.workflow,
        "reason": preview.reason,
    }


@bp.post("/api/v1/alerts")
def post_alerts() -> tuple[Response, int]:
    """Record one Alertmanager delivery; 200 once it is on disk. With ``?dry_run=true``: the
    decisions it would lead to, and nothing recorded."""
    receiver = _receiver()
    started = time.perf_counter()
    status = 500
    dry_run = False
    try:
        _authenticate(receiver)
        dry_run = _dry_run_requested()
        problem = content_type_problem(request.headers.get("Content-Type"))
        if problem is not None:
            raise errors.UnsupportedMediaType(problem)
        payload = _parse(_read_body(receiver.config.webhook.max_body_bytes))
        records = _records(receiver, payload)
        try:
            if dry_run:
                previews = [_preview(receiver, record) for record in records]
            else:
                results = receiver.outbox.record(records)
        except sqlite3.Error as exc:
            if dry_run:
                log.error("cannot read the outbox for a dry run: %s", exc)
                raise errors.StorageUnavailable(
                    f"cannot read the outbox now ({exc}); nothing was decided"
                ) from None
            log.error("cannot record a delivery: %s", exc)
            raise errors.StorageUnavailable(
                f"cannot record the alerts now ({exc}); Alertmanager will resend"
            ) from None
        status = 200
    except errors.WebhookError as exc:
        status = exc.status
        raise
    finally:
        receiver.metrics.requests.labels(code=str(status)).inc()
    if dry_run:
        body: dict[str, Any] = {
            "status": "dry-run",
            "recorded": False,
            "alerts": previews,
            "truncated_alerts": payload.truncated_alerts,
        }
        return jsonify(body), 200
    receiver.metrics.request_seconds.observe(time.perf_counter() - started)
    for alert, result in zip(payload.alerts, results, strict=True):
        outcome = "new" if result.new else "duplicate"
        receiver.metrics.alerts.labels(status=alert.status, outcome=outcome).inc()
        if result.new and result.state != "received" and alert.status == "firing":
            receiver.metrics.decisions.labels(decision="not-allowed").inc()
    if payload.truncated_alerts:
        receiver.metrics.truncated_alerts.inc(payload.truncated_alerts)
        log.warning(
            "delivery %s left out %d alerts (truncatedAlerts): raise max_alerts",
            payload.group_key,
            payload.truncated_alerts,
        )
    receiver.dispatcher.wake()
    body = {
        "status": "accepted",
        "alerts": [
            {"incident": r.incident_id, "state": r.state, "duplicate": not r.new} for r in results
        ],
        "truncated_alerts": payload.truncated_alerts,
    }
    return jsonify(body), 200


@bp.get("/api/v1/remediations")
def list_remediations() -> Response:
    """The newest incidents (``?state=<state>``, ``?limit=<1..1000>``, default 100)."""
    receiver = _receiver()
    _authenticate(receiver)
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise errors.BadPayload(f"unknown state {state!r}; one of {', '.join(STATES)}")
    raw_limit = request.args.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit) or not 1 <= int(raw_limit) <= 1000:
        raise errors.BadPayload(f"limit must be an integer from 1 to 1000, got {raw_limit!r}")
    incidents = receiver.outbox.list(state=state, limit=int(raw_limit))
    return jsonify(
        remediations=[incident.to_dict() for incident in incidents],
        counts=receiver.outbox.count_by_state(),
    )


@bp.get("/api/v1/remediations/<incident_id>")
def get_remediation(incident_id: str) -> Response:
    """One incident with its history."""
    receiver = _receiver()
    _authenticate(receiver)
    incident = receiver.outbox.get(incident_id)
    if incident is None:
        raise errors.NotFound(f"no remediation with id {incident_id!r}")
    return jsonify(incident.to_dict())


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when the outbox answers and the dispatcher runs."""
    receiver = _receiver()
    problems = []
    if not receiver.dispatcher.alive:
        problems.append("dispatcher not running")
    try:
        receiver.outbox.count_by_state()
    except sqlite3.Error as exc:
        problems.append(f"outbox unavailable: {exc}")
    if problems:
        return jsonify(status="not ready", problems=problems), 503
    return jsonify(status="ready", submitter=receiver.submitter.kind), 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; the incident gauge is read from the outbox now."""
    receiver = _receiver()
    for state, count in receiver.outbox.count_by_state().items():
        receiver.metrics.incidents.labels(state=state).set(count)
    return Response(generate_latest(receiver.metrics.registry), mimetype=CONTENT_TYPE_LATEST)


__all__ = ["DRY_RUN_PARAMETER", "Receiver", "create_app", "receiver_of"]
