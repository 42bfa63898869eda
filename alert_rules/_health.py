"""The loop's own alerts: the failures that would otherwise leave a model unguarded in silence.

The detection alerts (:mod:`alert_rules._spec`) judge the model's traffic; these judge the loop
that acts on them. Each is notification only (``remediation="none"``), carries the model it
guards as a static label (so Alertmanager groups it with that model's alerts), and has its own
hand-written promtool test (:func:`health_tests`): their inputs are single gauges and counters,
not the signal simulation the detection alerts need.

- RobustloopServedVersionUncalibrated: the served version is not the one the label-free
  thresholds were calibrated for;
- RobustloopModelReloadFailing: the server refused to load the production version;
- RobustloopRemediationRefused: the workflow engine refused a submission (401/403);
- RobustloopRemediationNotSubmitted: a decided remediation waits too long for the engine;
- RobustloopDispatcherStalled: the receiver's dispatcher has not completed a pass for too long;
- RobustloopReceiverMissing: Prometheus has no series of the receiver at all.
"""

from __future__ import annotations

import math
from typing import Any

from alert_rules._spec import Alert, num
from robustloop.config import RobustloopConfig, duration_seconds

HEALTH_GROUP = "robustloop.health"
HEALTH_ALERT_NAMES = (
    "RobustloopServedVersionUncalibrated",
    "RobustloopModelReloadFailing",
    "RobustloopRemediationRefused",
    "RobustloopRemediationNotSubmitted",
    "RobustloopDispatcherStalled",
    "RobustloopReceiverMissing",
)
CALIBRATED_HEALTH_ALERTS = ("RobustloopServedVersionUncalibrated",)
"""The health alerts whose rule names the calibrated version: they change with every
calibration, the others never do (a cluster publishes the two kinds in different objects)."""

MODEL_INFO = "robustloop_model_info"
RELOAD_FAILURES = "robustloop_model_reload_failures_total"
SUBMISSIONS = "robustloop_webhook_submissions_total"
INCIDENTS = "robustloop_webhook_incidents"
HEARTBEAT = "robustloop_webhook_dispatcher_heartbeat_timestamp_seconds"

_RECEIVER_ABSENT_FOR = "5m"
_REFUSED_WINDOW = "15m"
_RELOAD_WINDOW = "5m"


def _alert(
    model: str, name: str, expr: str, for_: str, severity: str, summary: str, text: str
) -> Alert:
    return Alert(
        name=name,
        group=HEALTH_GROUP,
        conditions=(),
        for_=for_,
        severity=severity,
        remediate=False,
        summary=summary.replace("{model}", model),  # the series may carry no model label
        description=(text + " Notification only (see the runbook).").replace("{model}", model),
        expr=expr,
        model_label=model,
    )


def health_alerts(cfg: RobustloopConfig) -> tuple[Alert, ...]:
    """The health alerts ``cfg`` asks for (none when ``alerts.health.enabled`` is false)."""
    health = cfg.alerts.health
    if not health.enabled:
        return ()
    model = cfg.model.name
    sel = f'model="{model}"'
    out: list[Alert] = []
    calibrated = cfg.alerts.calibrated_version
    if calibrated and cfg.alerts.label_free_enabled:
        out.append(
            _alert(
                model,
                "RobustloopServedVersionUncalibrated",
                f'max by (model, version) ({MODEL_INFO}{{{sel},version!="{calibrated}"}}) > 0',
                health.uncalibrated_for,
                "warning",
                "{model} serves version {version}, whose alert thresholds are not in force",
                "The label-free alerts (entropy, squeeze score) judge only version "
                f"{calibrated}, their calibrated version, yet {{model}} has served "
                f"{{version}} for {health.uncalibrated_for}: nothing but canary accuracy "
                "judges it. A promotion or rollback whose recalibration failed, or a pointer "
                "moved by hand. Run `robustloop calibrate --model {version}` and publish the "
                "rules.",
            )
        )
    out += [
        _alert(
            model,
            "RobustloopModelReloadFailing",
            f"increase({RELOAD_FAILURES}{{{sel}}}[{_RELOAD_WINDOW}]) > 0",
            "0s",
            "critical",
            "The server of {model} refuses to load its production version",
            "The model server failed to load the version the production pointer names (weights "
            "that do not match their manifest's sha256, or an unreadable version) within the "
            f"last {_RELOAD_WINDOW}; it keeps serving the version it had. The store may have "
            "been tampered with.",
        ),
        _alert(
            model,
            "RobustloopRemediationRefused",
            f'sum(increase({SUBMISSIONS}{{result="refused"}}[{_REFUSED_WINDOW}])) > 0',
            "0s",
            "critical",
            "The workflow engine refused a remediation of {model}",
            f"Within the last {_REFUSED_WINDOW} the receiver's submission was refused (a 4xx "
            "such as 401 or 403: its token or its RBAC; or a TLS or scheme mismatch: a "
            "certificate that does not verify, plain HTTP against TLS), so the incident ended "
            "`refused`. Fix the setting the receiver's log names; the next delivery of the "
            "still-firing alert decides it again.",
        ),
        _alert(
            model,
            "RobustloopRemediationNotSubmitted",
            f'max({INCIDENTS}{{state="submitting"}}) > 0',
            health.submission_pending_for,
            "critical",
            "A remediation of {model} waits for the workflow engine to accept it",
            "The receiver decided to remediate and has retried the submission for "
            f"{health.submission_pending_for} without an answer it accepts (the Argo Server "
            "unreachable, failing, or refusing its TLS). The incident waits in the outbox and "
            "is submitted once the engine answers.",
        ),
        _alert(
            model,
            "RobustloopDispatcherStalled",
            f"time() - max({HEARTBEAT}) > {num(duration_seconds(health.dispatcher_silent_for))}",
            "0s",
            "critical",
            "The receiver's dispatcher of {model} has stopped",
            "The receiver still answers Prometheus, but its dispatcher has not completed a pass "
            f"for over {health.dispatcher_silent_for}: alerts are recorded and nothing is "
            "decided or submitted. Restart the receiver; the outbox resumes where it stopped.",
        ),
        _alert(
            model,
            "RobustloopReceiverMissing",
            f"absent({HEARTBEAT})",
            _RECEIVER_ABSENT_FOR,
            "critical",
            "Prometheus sees no webhook receiver for {model}",
            f"No series of the receiver for {_RECEIVER_ABSENT_FOR}: it is down, or Prometheus "
            "does not scrape it (a missing ServiceMonitor or a label its selector wants). "
            "Alerts that remediate reach nobody.",
        ),
    ]
    return tuple(out)


def health_tests(cfg: RobustloopConfig) -> list[dict[str, Any]]:
    """promtool tests of the health alerts: each fires when its failure lasts, and not before."""
    alerts = {a.name: a for a in health_alerts(cfg)}
    model = cfg.model.name
    base_url = cfg.alerts.runbook_base_url
    tests: list[dict[str, Any]] = []

    def expect(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        alert = alerts[name]
        labels = {"model": model, **(labels or {})}
        return {
            "exp_labels": {**alert.labels(), **labels},
            "exp_annotations": alert.annotations(
                base_url, model=model, version=labels.get("version", "")
            ),
        }

    def check(name: str, seconds: float, fired: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eval_time": f"{int(seconds)}s", "alertname": name, "exp_alerts": fired}

    def steps(duration: str) -> int:
        return math.ceil(duration_seconds(duration) / 30)

    name = "RobustloopServedVersionUncalibrated"
    if name in alerts:
        calibrated = cfg.alerts.calibrated_version
        hold = steps(alerts[name].for_)
        info = f'{MODEL_INFO}{{model="{model}",sha256="a",version="{calibrated}"}}'
        other = f'{MODEL_INFO}{{model="{model}",sha256="b",version="not-{calibrated}"}}'
        tests.append(
            {
                "name": f"{name}: another version served for {alerts[name].for_}",
                "interval": "30s",
                "input_series": [
                    {"series": info, "values": "1x20 stale"},
                    {"series": other, "values": f"_x20 1x{hold + 10}"},
                ],
                "alert_rule_test": [
                    check(name, 300, []),
                    check(name, 600 + 30 * (hold - 1), []),
                    check(name, 600 + 30 * hold, [expect(name, {"version": f"not-{calibrated}"})]),
                ],
            }
        )
    name = "RobustloopModelReloadFailing"
    failures = f'{RELOAD_FAILURES}{{model="{model}"}}'
    tests.append(
        {
            "name": f"{name}: one failed reload, then none",
            "interval": "30s",
            "input_series": [{"series": failures, "values": "0x10 1x30"}],
            "alert_rule_test": [
                check(name, 300, []),
                check(name, 330, [expect(name)]),
                check(name, 330 + duration_seconds(_RELOAD_WINDOW) + 60, []),
            ],
        }
    )
    name = "RobustloopRemediationRefused"
    tests.append(
        {
            "name": f"{name}: one refusal among successes",
            "interval": "30s",
            "input_series": [
                {"series": f'{SUBMISSIONS}{{result="refused"}}', "values": "0x10 1x50"},
                {"series": f'{SUBMISSIONS}{{result="created"}}', "values": "0+1x60"},
            ],
            "alert_rule_test": [
                check(name, 300, []),
                check(name, 330, [expect(name)]),
                check(name, 330 + duration_seconds(_REFUSED_WINDOW) + 60, []),
            ],
        }
    )
    name = "RobustloopRemediationNotSubmitted"
    hold = steps(alerts[name].for_)
    tests.append(
        {
            "name": f"{name}: an incident waits in submitting",
            "interval": "30s",
            "input_series": [
                {"series": f'{INCIDENTS}{{state="submitting"}}', "values": f"0x10 1x{hold + 10}"},
                {"series": f'{INCIDENTS}{{state="running"}}', "values": f"1x{hold + 20}"},
            ],
            "alert_rule_test": [
                check(name, 330 + 30 * (hold - 1), []),
                check(name, 330 + 30 * hold, [expect(name)]),
            ],
        }
    )
    name = "RobustloopDispatcherStalled"
    silent = duration_seconds(cfg.alerts.health.dispatcher_silent_for)
    tests.append(
        {
            "name": f"{name}: the heartbeat stops advancing at 600 s",
            "interval": "30s",
            "input_series": [{"series": HEARTBEAT, "values": "0+30x20 600x20"}],
            "alert_rule_test": [
                check(name, 570, []),
                check(name, 600 + silent, []),
                check(name, 600 + 30 * (math.floor(silent / 30) + 1), [expect(name)]),
            ],
        }
    )
    name = "RobustloopReceiverMissing"
    hold = steps(_RECEIVER_ABSENT_FOR)
    tests.append(
        {
            "name": f"{name}: the receiver's series go stale at 300 s",
            "interval": "30s",
            "input_series": [{"series": HEARTBEAT, "values": "0+30x10 stale"}],
            "alert_rule_test": [
                check(name, 240, []),
                check(name, 330 + 30 * (hold - 1), []),
                check(name, 330 + 30 * hold, [expect(name)]),
            ],
        }
    )
    return tests


__all__ = [
    "CALIBRATED_HEALTH_ALERTS",
    "HEALTH_ALERT_NAMES",
    "HEALTH_GROUP",
    "health_alerts",
    "health_tests",
]
