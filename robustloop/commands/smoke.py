"""``robustloop smoke``: check a deployed model server and receiver end to end, changing nothing.

Two requests, each of which a deployment must answer:

1. the model server: its metadata (``GET /v2/models/{name}``, the Open Inference Protocol's,
   which gives the input shape), then one inference of a blank image of that shape;
2. the receiver: one Alertmanager payload, authenticated with the receiver's bearer token, as a
   dry run (``POST /api/v1/alerts?dry_run=true``): validated and decided as a delivery would be,
   recorded nowhere and submitted nowhere (docs/webhook.md, "Dry run of one delivery").

Both are tried; what passed is printed, and any failure ends the command with one line naming
what failed and why (exit 2). No torch: it runs in the slim receiver image, as the chart's
``helm test`` Pod (``helm/robustloop/templates/tests/``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from robustloop.commands.base import CommandError
from robustloop.config import RobustloopConfig

SMOKE_ALERTNAME = "RobustloopSmokeTest"
"""The ``alertname`` of the dry-run alert: recognisable in the receiver's log."""
TOKEN_ENV = "ROBUSTLOOP_WEBHOOK_TOKEN"
_MAX_SHOWN = 300


def register(sub: Any) -> None:
    """Add ``robustloop smoke`` to the robustloop parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "smoke",
        help="check a running server and receiver: one inference, one dry-run alert",
        description="Check a deployment end to end without changing it: read the model's "
        "input shape from the server's OIP v2 metadata (GET /v2/models/<name>) and classify "
        "one blank image, then send the receiver one authenticated Alertmanager payload as a "
        "dry run (?dry_run=true: decided, recorded nowhere, submitted nowhere). Prints what "
        "passed; exits 2 with one line when either fails. Needs no torch (the chart's "
        "`helm test` runs it in the receiver image).",
    )
    parser.add_argument(
        "--server",
        default=None,
        help="model server base URL (default: http://serving.host:serving.port)",
    )
    parser.add_argument(
        "--receiver",
        default=None,
        help="receiver base URL (default: http://webhook.host:webhook.port)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the receiver's bearer token (default: webhook.token_file, else "
        f"${TOKEN_ENV})",
    )
    parser.add_argument("--model", default=None, help="model name (default: model.name)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds each request may take (default 10)",
    )
    parser.set_defaults(handler=_smoke)


@dataclass(frozen=True)
class Passed:
    """One check that passed, and what it saw."""

    what: str
    detail: str


class CheckFailed(Exception):
    """One check failed; the message says which and why, on one line."""


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_SHOWN else flat[:_MAX_SHOWN] + "..."


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def _connection_reason(exc: requests.ConnectionError) -> str:
    """The operating system's words for a failed connection (``[Errno 111] Connection
    refused``, a name that does not resolve), without urllib3's wrapping."""
    found = re.findall(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
    return found[-1].strip() if found else _one_line(str(exc))


def _request(method: str, url: str, what: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout:
        raise CheckFailed(f"{what}: no answer from {url} within {timeout:g}s") from None
    except requests.ConnectionError as exc:
        raise CheckFailed(
            f"{what}: cannot connect to {url} ({_connection_reason(exc)}); is it running, and "
            "may this pod reach it?"
        ) from None
    except requests.RequestException as exc:
        raise CheckFailed(f"{what}: {url}: {_one_line(str(exc))}") from None


def _error_of(response: requests.Response) -> str:
    """The ``error`` of a JSON error body, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or "(empty body)"
    if isinstance(body, dict) and "error" in body:
        return _one_line(str(body["error"]))
    return _one_line(response.text)


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise CheckFailed(
            f"{what}: {response.url} answered non-JSON: {_error_of(response)}"
        ) from None
    if not isinstance(body, dict):
        raise CheckFailed(f"{what}: {response.url} answered {type(body).__name__}, not an object")
    return body


def input_shape(metadata: dict[str, Any]) -> tuple[str, list[int]]:
    """The first input's name and the shape of one instance of it, from OIP v2 model metadata
    (``inputs[0].shape`` with -1 for the batch dimension).

    Raises:
        CheckFailed: the metadata declares no usable FP32 input.
    """
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise CheckFailed("server: the model metadata declares no inputs")
    first = inputs[0]
    shape = first.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not all(d > 0 for d in shape[1:])
    ):
        raise CheckFailed(f"server: the model metadata's input shape {shape!r} is not [-1, ...]")
    if first.get("datatype") != "FP32":
        raise CheckFailed(
            f"server: the model's input datatype is {first.get('datatype')!r}, not FP32"
        )
    return str(first.get("name", "input")), [1, *shape[1:]]


def check_server(url: str, model: str, timeout: float) -> Passed:
    """Read the model's input shape from its metadata and classify one blank image."""
    base = url.rstrip("/")
    what = "server"
    metadata_url = f"{base}/v2/models/{model}"
    response = _request("GET", metadata_url, what, timeout)
    if response.status_code != 200:
        raise CheckFailed(
            f"{what}: GET {metadata_url} answered {response.status_code}: {_error_of(response)}"
        )
    name, shape = input_shape(_json(response, what))
    infer_url = f"{metadata_url}/infer"
    body = {
        "inputs": [
            {"name": name, "shape": shape, "datatype": "FP32", "data": [0.0] * math.prod(shape)}
        ]
    }
    response = _request("POST", infer_url, what, timeout, json=body)
    if response.status_code != 200:
        raise CheckFailed(
            f"{what}: POST {infer_url} answered {response.status_code}: {_error_of(response)}"
        )
    answer = _json(response, what)
    outputs = {o.get("name"): o for o in answer.get("outputs", []) if isinstance(o, dict)}
    if not outputs:
        raise CheckFailed(f"{what}: POST {infer_url} answered no outputs")
    label = outputs.get("predicted_label", outputs.get("predicted_class", {})).get("data", ["?"])
    version = answer.get("model_version", "?")
    shown = label[0] if isinstance(label, list) and label else label
    return Passed(
        what,
        f"model {model} version {version} classified one blank {shape} input as {shown!r}",
    )


def smoke_payload(model: str, now: datetime | None = None) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4) with one firing alert that asks to
    remediate ``model``: what a real attack alert looks like to the receiver, with a fresh
    fingerprint, so that it is decided as a new incident."""
    from alert_rules import REMEDIATION_LABEL, REMEDIATION_VALUE

    started = (now or datetime.now(UTC)).astimezone(UTC)
    labels = {
        "alertname": SMOKE_ALERTNAME,
        "model": model,
        REMEDIATION_LABEL: REMEDIATION_VALUE,
        "severity": "none",
    }
    annotations = {"summary": "robustloop smoke: a dry run of one delivery, recorded nowhere"}
    return {
        "version": "4",
        "groupKey": f"robustloop-smoke:{model}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "robustloop-smoke",
        "groupLabels": {"alertname": SMOKE_ALERTNAME},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": started.isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": secrets.token_hex(8),
            }
        ],
    }


def check_receiver(url: str, token: str | None, model: str, timeout: float) -> Passed:
    """Send one authenticated dry-run delivery and read the decision it would get."""
    what = "receiver"
    alerts_url = f"{url.rstrip('/')}/api/v1/alerts"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = _request(
        "POST",
        alerts_url,
        what,
        timeout,
        params={"dry_run": "true"},
        json=smoke_payload(model),
        headers=headers,
    )
    if response.status_code == 401:
        sent = "no token was sent" if token is None else "the token sent is not the receiver's"
        raise CheckFailed(f"{what}: POST {alerts_url} answered 401 ({sent}): {_error_of(response)}")
    if response.status_code != 200:
        raise CheckFailed(
            f"{what}: POST {alerts_url}?dry_run=true answered {response.status_code}: "
            f"{_error_of(response)}"
        )
    body = _json(response, what)
    if body.get("status") != "dry-run" or body.get("recorded") is not False:
        raise CheckFailed(
            f"{what}: {alerts_url} did not answer as a dry run (status {body.get('status')!r}): "
            "a receiver older than this command may have recorded the smoke alert; see its "
            "remediations"
        )
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or len(alerts) != 1 or not isinstance(alerts[0], dict):
        raise CheckFailed(f"{what}: the dry run's answer holds no decision")
    decided = alerts[0]
    return Passed(
        what,
        f"dry run of one {SMOKE_ALERTNAME} alert for model {decided.get('model')}: decision "
        f"{decided.get('decision')} ({_one_line(str(decided.get('reason')))}); nothing recorded",
    )


def receiver_token(token_file: Path | None, cfg: RobustloopConfig) -> str | None:
    """The receiver's token: ``--token-file``, else ``webhook.token_file``, else
    ``$ROBUSTLOOP_WEBHOOK_TOKEN``; None when there is none (a receiver with ``auth: none``).

    Raises:
        CommandError: the file named cannot be read or is empty.
    """
    from robustloop.tokens import TokenFileError, read_token_file

    path = token_file if token_file is not None else cfg.webhook.token_file
    if path is not None:
        what = "--token-file" if token_file is not None else "webhook.token_file"
        try:
            return read_token_file(path, what)
        except TokenFileError as exc:
            raise CommandError(str(exc)) from None
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    return from_env or None


def _smoke(args: argparse.Namespace) -> int:
    cfg: RobustloopConfig = args.cfg
    if not args.timeout > 0:
        raise CommandError(f"--timeout must be positive (got {args.timeout:g})")
    model = args.model or cfg.model.name
    server = args.server or _base_url(cfg.serving.host, cfg.serving.port)
    receiver = args.receiver or _base_url(cfg.webhook.host, cfg.webhook.port)
    token = receiver_token(args.token_file, cfg)
    failures: list[str] = []
    for check in (
        lambda: check_server(server, model, args.timeout),
        lambda: check_receiver(receiver, token, model, args.timeout),
    ):
        try:
            passed = check()
        except CheckFailed as exc:
            failures.append(str(exc))
            continue
        print(f"{passed.what} ok: {passed.detail}", flush=True)
    if failures:
        raise CommandError("smoke test failed: " + "; ".join(failures))
    print("smoke test passed: the server classifies and the receiver decides", flush=True)
    return 0


__all__ = [
    "SMOKE_ALERTNAME",
    "CheckFailed",
    "Passed",
    "check_receiver",
    "check_server",
    "input_shape",
    "receiver_token",
    "register",
    "smoke_payload",
]
