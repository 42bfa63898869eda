"""The Grafana dashboard of a robustloop deployment, rendered from ``robustloop.yaml``.

One dashboard shows the loop at work: the signals the alert rules judge (canary accuracy,
softmax entropy, squeeze score; read from the rules' own recording rules, whose names carry the
configured windows, so the panels show what the alerts compare), the robustloop alerts
(``ALERTS``), the served model version and its changes (promotions, rollbacks, hot-reload
failures), the traffic, and the receiver's incidents, decisions and submissions.

Like the rules, it is a pure function of the config's ``alerts`` section (the windows name the
recording rules) and is written to a file with ``robustloop rules dashboard``; the Helm chart
ships the one rendered for a cluster (``make generate`` writes
``helm/robustloop/files/grafana-dashboard.json``) in a ConfigMap that Grafana's dashboard
sidecar loads. Every query goes through a ``datasource`` template variable of type prometheus;
``namespace`` and ``model`` variables select the release and the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from alert_rules._health import HEALTH_ALERT_NAMES
from alert_rules._spec import (
    ENTROPY_METRIC,
    GROUP,
    MAX_PROBABILITY_METRIC,
    SQUEEZE_METRIC,
    RuleSet,
    build,
)
from robustloop.config import RobustloopConfig

UID = "robustloop"
TITLE = "robustloop"
SCHEMA_VERSION = 39
"""Grafana's dashboard JSON schema version this dashboard is written in (Grafana 10.4 and
later read it, migrating it to their own)."""
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24
"""Grafana's grid is 24 columns wide."""

# The series the panels read besides the recording rules: names fixed in docs/ARCHITECTURE.md
# ("Metric names") and webhook/metrics.py; tests/test_dashboard.py checks each against the
# metrics the server and the receiver really register.
MODEL_INFO = "robustloop_model_info"
INFER_REQUESTS = "robustloop_inference_requests_total"
INFER_SAMPLES = "robustloop_inference_samples_total"
LATENCY_BUCKETS = "robustloop_request_duration_seconds_bucket"
RELOAD_FAILURES = "robustloop_model_reload_failures_total"
INCIDENTS = "robustloop_webhook_incidents"
DELIVERIES = "robustloop_webhook_requests_total"
ALERTS_RECEIVED = "robustloop_webhook_alerts_total"
DECISIONS = "robustloop_webhook_decisions_total"
SUBMISSIONS = "robustloop_webhook_submissions_total"
RUNS_FINISHED = "robustloop_webhook_runs_finished_total"
HEARTBEAT = "robustloop_webhook_dispatcher_heartbeat_timestamp_seconds"

SIGNAL_ALERT_NAMES = (
    "CanaryAccuracyDegraded",
    "AdversarialAttackDetected",
    "PredictionEntropyShift",
    "AdversarialInputSuspected",
)

_NS = 'namespace=~"$namespace"'
_MODEL = 'model="$model"'
_SERVER = f"{{{_NS},{_MODEL}}}"
_RECEIVER = f"{{{_NS}}}"


@dataclass(frozen=True)
class Signals:
    """The recording rules the signal panels read (their names carry the windows)."""

    accuracy: str
    feedback_rate: str
    entropy_mean: str
    entropy_rate: str
    max_probability_mean: str
    squeeze_mean: str
    squeeze_rate: str


def _record(spec: RuleSet, metric: str, operation: str) -> str:
    """The one recording rule of ``metric`` named ``model_version:<metric>:<operation><window>``."""
    prefix = f"model_version:{metric}:{operation}"
    names = [r.name for r in spec.records[GROUP] if r.name.startswith(prefix)]
    if len(names) != 1:
        raise ValueError(f"expected one recording rule {prefix}<window>, found {names}")
    return names[0]


def signals(cfg: RobustloopConfig) -> Signals:
    """The recording rules of ``cfg``'s alerts section that the signal panels read."""
    spec = build(cfg)
    feedback = "robustloop_feedback"
    return Signals(
        accuracy=_record(spec, feedback, "accuracy"),
        feedback_rate=_record(spec, feedback, "rate"),
        entropy_mean=_record(spec, ENTROPY_METRIC, "mean"),
        entropy_rate=_record(spec, ENTROPY_METRIC, "rate"),
        max_probability_mean=_record(spec, MAX_PROBABILITY_METRIC, "mean"),
        squeeze_mean=_record(spec, SQUEEZE_METRIC, "mean"),
        squeeze_rate=_record(spec, SQUEEZE_METRIC, "rate"),
    )


# -- panels --------------------------------------------------------------------------------------


@dataclass
class Panel:
    """A panel before layout: what it shows and how wide and high it is."""

    kind: str
    title: str
    description: str
    targets: list[tuple[str, str]]
    """(PromQL, legend format) per query."""
    width: int
    height: int = 8
    unit: str = "short"
    minimum: float | None = None
    maximum: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    instant: bool = False


def _timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    width: int = 8,
    *,
    unit: str = "short",
    minimum: float | None = None,
    maximum: float | None = None,
    bars: bool = False,
) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "fillOpacity": 10}
    if bars:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return Panel(
        "timeseries",
        title,
        description,
        targets,
        width,
        unit=unit,
        minimum=minimum,
        maximum=maximum,
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        defaults={"custom": custom},
    )


def _stat(
    title: str,
    description: str,
    expr: str,
    legend: str = "",
    *,
    unit: str = "short",
    text_mode: str = "value",
    width: int = 4,
) -> Panel:
    return Panel(
        "stat",
        title,
        description,
        [(expr, legend)],
        width,
        height=4,
        unit=unit,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
            "colorMode": "none",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        instant=True,
    )


def _state_timeline(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    mappings: dict[str, tuple[str, str]],
    width: int = WIDTH,
) -> Panel:
    """A state timeline whose values are mapped to words and colours (``mappings``)."""
    return Panel(
        "state-timeline",
        title,
        description,
        targets,
        width,
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        defaults={
            "color": {"mode": "fixed", "fixedColor": "transparent"},
            "mappings": [
                {
                    "type": "value",
                    "options": {
                        value: {"text": text, "color": color, "index": i}
                        for i, (value, (text, color)) in enumerate(mappings.items())
                    },
                }
            ],
        },
    )


def _rows(cfg: RobustloopConfig) -> list[tuple[str, list[Panel]]]:
    s = signals(cfg)
    alert_names = "|".join((*SIGNAL_ALERT_NAMES, *HEALTH_ALERT_NAMES))
    alerts = f'ALERTS{{alertname=~"{alert_names}",{_MODEL}'
    per_version = f"{{{_MODEL}}}"
    window = cfg.alerts
    return [
        (
            "Model version",
            [
                _stat(
                    "Served version",
                    "The version the model server serves now (robustloop_model_info).",
                    f"max by (version) ({MODEL_INFO}{_SERVER})",
                    "{{version}}",
                    text_mode="name",
                    width=8,
                ),
                _stat(
                    "Versions served in range",
                    "Distinct versions served during the time range: 1 means no promotion "
                    "and no rollback.",
                    f"count(count by (version) (count_over_time({MODEL_INFO}{_SERVER}[$__range])))",
                ),
                _stat(
                    "Remediations that promoted",
                    "Remediation runs that ended succeeded (the gate passed and the candidate "
                    "was promoted) during the time range.",
                    f'sum(increase({RUNS_FINISHED}{{{_NS},outcome="succeeded"}}[$__range]))',
                ),
                _stat(
                    "Hot-reload failures",
                    "Production versions the server refused to load during the time range "
                    "(it kept serving the old one): see RobustloopModelReloadFailing.",
                    f"sum(increase({RELOAD_FAILURES}{_SERVER}[$__range]))",
                ),
                _stat(
                    "Dispatcher heartbeat age",
                    "Seconds since the receiver's dispatcher last completed a pass.",
                    f"time() - max({HEARTBEAT}{_RECEIVER})",
                    unit="s",
                ),
                _state_timeline(
                    "Served version over time",
                    "Which version served when: a new row is a promotion, a return to an "
                    "older one a rollback.",
                    [(f"max by (version) ({MODEL_INFO}{_SERVER})", "{{version}}")],
                    {"1": ("serving", "blue")},
                ),
            ],
        ),
        (
            "Signals (what the alert rules judge)",
            [
                _timeseries(
                    "Canary accuracy",
                    "Share of the fed-back predictions that were right, over "
                    f"{window.canary_accuracy.window} (recording rule {s.accuracy}): the "
                    "labelled signal of CanaryAccuracyDegraded and AdversarialAttackDetected. "
                    "The thresholds are in the PrometheusRule, recalibrated after a promotion.",
                    [(f"{s.accuracy}{per_version}", "{{version}}")],
                    unit="percentunit",
                    minimum=0,
                    maximum=1,
                ),
                _timeseries(
                    "Softmax entropy (mean, normalised)",
                    f"Mean softmax entropy / ln(K) over {window.entropy.window} (recording "
                    f"rule {s.entropy_mean}): the signal of PredictionEntropyShift.",
                    [(f"{s.entropy_mean}{per_version}", "{{version}}")],
                    minimum=0,
                    maximum=1,
                ),
                _timeseries(
                    "Squeeze score (mean)",
                    f"Mean feature-squeezing score over {window.squeeze.window} (recording "
                    f"rule {s.squeeze_mean}): the attack signature of AdversarialInputSuspected "
                    "and AdversarialAttackDetected.",
                    [(f"{s.squeeze_mean}{per_version}", "{{version}}")],
                    minimum=0,
                ),
                _timeseries(
                    "Top-class probability (mean)",
                    f"Mean top softmax probability over {window.entropy.window} (recording rule "
                    f"{s.max_probability_mean}).",
                    [(f"{s.max_probability_mean}{per_version}", "{{version}}")],
                    unit="percentunit",
                    minimum=0,
                    maximum=1,
                ),
                _timeseries(
                    "Traffic",
                    "Infer requests per second by version and HTTP status; images scored "
                    "for the squeeze signal and labels fed back (per second, the rules' "
                    "traffic guards).",
                    [
                        (
                            f"sum by (version, code) (rate({INFER_REQUESTS}{_SERVER}"
                            "[$__rate_interval]))",
                            "requests {{version}} {{code}}",
                        ),
                        (
                            f"sum by (version) (rate({INFER_SAMPLES}{_SERVER}[$__rate_interval]))",
                            "images {{version}}",
                        ),
                        (f"{s.squeeze_rate}{per_version}", "squeeze-scored {{version}}"),
                        (f"{s.entropy_rate}{per_version}", "entropy-scored {{version}}"),
                        (f"{s.feedback_rate}{per_version}", "feedback {{version}}"),
                    ],
                    unit="reqps",
                    minimum=0,
                ),
                _timeseries(
                    "Infer latency (p50, p99)",
                    "Infer request latency quantiles by version.",
                    [
                        (
                            f"histogram_quantile({q}, sum by (le, version) "
                            f"(rate({LATENCY_BUCKETS}{_SERVER}[$__rate_interval])))",
                            f"p{round(q * 100)} {{{{version}}}}",
                        )
                        for q in (0.5, 0.99)
                    ],
                    unit="s",
                    minimum=0,
                ),
            ],
        ),
        (
            "Alerts",
            [
                _state_timeline(
                    "robustloop alerts",
                    "The robustloop alerts of the model, pending or firing (ALERTS). "
                    "AdversarialAttackDetected and AdversarialInputSuspected start a "
                    "remediation; the others notify.",
                    [
                        (
                            f'max by (alertname) ({alerts},alertstate="firing"}})'
                            f' or max by (alertname) (0.5 * {alerts},alertstate="pending"}})',
                            "{{alertname}}",
                        )
                    ],
                    {"1": ("firing", "red"), "0.5": ("pending", "yellow")},
                ),
            ],
        ),
        (
            "Receiver: incidents and submissions",
            [
                _timeseries(
                    "Incidents by state",
                    "Incidents in the receiver's outbox, by state (read at scrape time).",
                    [(f"max by (state) ({INCIDENTS}{_RECEIVER})", "{{state}}")],
                    minimum=0,
                ),
                _timeseries(
                    "Decisions",
                    "The dispatcher's decisions: submit, or why an incident was suppressed.",
                    [
                        (
                            f"sum by (decision) (increase({DECISIONS}{_RECEIVER}"
                            "[$__rate_interval]))",
                            "{{decision}}",
                        )
                    ],
                    minimum=0,
                    bars=True,
                ),
                _timeseries(
                    "Submissions and finished runs",
                    "Calls to the workflow engine (created, exists, transient, refused) and "
                    "remediation runs that ended (succeeded, rejected by the gate, failed).",
                    [
                        (
                            f"sum by (result) (increase({SUBMISSIONS}{_RECEIVER}"
                            "[$__rate_interval]))",
                            "submission {{result}}",
                        ),
                        (
                            f"sum by (outcome) (increase({RUNS_FINISHED}{_RECEIVER}"
                            "[$__rate_interval]))",
                            "run {{outcome}}",
                        ),
                    ],
                    minimum=0,
                    bars=True,
                ),
                _timeseries(
                    "Deliveries from Alertmanager",
                    "Requests to the alerts endpoint by HTTP status, and the alerts they "
                    "carried (new incidents or repeats).",
                    [
                        (
                            f"sum by (code) (rate({DELIVERIES}{_RECEIVER}[$__rate_interval]))",
                            "HTTP {{code}}",
                        ),
                        (
                            f"sum by (status, outcome) (rate({ALERTS_RECEIVED}{_RECEIVER}"
                            "[$__rate_interval]))",
                            "alerts {{status}} {{outcome}}",
                        ),
                    ],
                    unit="reqps",
                    minimum=0,
                    width=WIDTH,
                ),
            ],
        ),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    if panel.maximum is not None:
        defaults["max"] = panel.maximum
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options,
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend or "__auto",
                "refId": chr(ord("A") + i),
                "range": not panel.instant,
                "instant": panel.instant,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def _layout(rows: list[tuple[str, list[Panel]]]) -> list[dict[str, Any]]:
    """Rows of panels, left to right, wrapping at the grid's width; ids from 1."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row_panels in rows:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel in row_panels:
            if x + panel.width > WIDTH:
                y, x, line_height = y + line_height, 0, 0
            panels.append(_panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _variable_query(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "multi": False,
        "current": {},
        "options": [],
        "regex": "",
    }


def render_dashboard(cfg: RobustloopConfig) -> dict[str, Any]:
    """The dashboard (Grafana's dashboard JSON model) for ``cfg``'s alerts section."""
    namespace = _variable_query("namespace", "Namespace", f"label_values({MODEL_INFO}, namespace)")
    namespace |= {"includeAll": True, "allValue": ".*"}
    model = _variable_query("model", "Model", f"label_values({MODEL_INFO}{{{_NS}}}, model)")
    model["includeAll"] = False
    version_changes = (
        f"max by (version) ({MODEL_INFO}{_SERVER}) unless on (version) "
        f"max by (version) ({MODEL_INFO}{_SERVER} offset 1m)"
    )
    return {
        "uid": UID,
        "title": TITLE,
        "description": "The robustloop loop: the signals the alert rules judge, the alerts, the "
        "served model version, and the receiver's incidents and submissions. GENERATED by "
        "`robustloop rules dashboard` from the alerts section of robustloop.yaml (renderer: "
        "alert_rules/dashboard.py); do not edit: regenerate (`make generate`).",
        "tags": ["robustloop"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "purple",
                    "name": "Version changes",
                    "expr": version_changes,
                    "step": "1m",
                    "titleFormat": "serving {{version}}",
                    "textFormat": "a promotion, a rollback or a restart onto this version",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "current": {},
                    "options": [],
                    "regex": "",
                },
                namespace,
                model,
            ]
        },
        "panels": _layout(_rows(cfg)),
    }


def dashboard_json(cfg: RobustloopConfig) -> str:
    """:func:`render_dashboard` as the file the chart ships (2-space JSON, newline-ended)."""
    return json.dumps(render_dashboard(cfg), indent=2, ensure_ascii=False) + "\n"


__all__ = ["SCHEMA_VERSION", "UID", "Signals", "dashboard_json", "render_dashboard", "signals"]
