"""The receiver's Prometheus metrics, registered in the registry the app is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ALERT_OUTCOMES = ("new", "duplicate")
SUBMIT_RESULTS = ("created", "exists", "transient", "refused")
RUN_OUTCOMES = ("succeeded", "rejected", "failed")


class WebhookMetrics:
    """Every metric of the receiver; fixed label names, ``_total`` / ``_seconds`` suffixes.

    Args:
        registry: where to register (tests pass a fresh ``CollectorRegistry``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "robustloop_webhook_requests_total",
            "HTTP requests to the alerts endpoint, by status code.",
            ["code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "robustloop_webhook_request_duration_seconds",
            "Time to validate and durably record one delivery (alerts endpoint).",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.alerts = Counter(
            "robustloop_webhook_alerts_total",
            "Alerts received, by alert status and whether their incident was new.",
            ["status", "outcome"],
            registry=registry,
        )
        self.truncated_alerts = Counter(
            "robustloop_webhook_truncated_alerts_total",
            "Alerts Alertmanager left out of deliveries (truncatedAlerts; raise max_alerts).",
            registry=registry,
        )
        self.decisions = Counter(
            "robustloop_webhook_decisions_total",
            "Decisions on incidents: submit, or the reason it was suppressed.",
            ["decision"],
            registry=registry,
        )
        self.submissions = Counter(
            "robustloop_webhook_submissions_total",
            "Calls to the submitter: created, exists (409), transient (retried), refused "
            "(4xx such as 403: given up, needs a human).",
            ["result"],
            registry=registry,
        )
        self.runs_finished = Counter(
            "robustloop_webhook_runs_finished_total",
            "Remediation runs that ended, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.dispatcher_errors = Counter(
            "robustloop_webhook_dispatcher_errors_total",
            "Unexpected errors in the dispatcher loop (it carries on).",
            registry=registry,
        )
        self.dispatcher_heartbeat = Gauge(
            "robustloop_webhook_dispatcher_heartbeat_timestamp_seconds",
            "Unix time at which the dispatcher last completed a pass (it passes at least every "
            "webhook.poll_seconds, idle or not); a dead or hung dispatcher stops it.",
            registry=registry,
        )
        self.incidents = Gauge(
            "robustloop_webhook_incidents",
            "Incidents in the outbox, by state (read at scrape time).",
            ["state"],
            registry=registry,
        )
        for outcome in ALERT_OUTCOMES:
            for status in ("firing", "resolved"):
                self.alerts.labels(status=status, outcome=outcome)
        for result in SUBMIT_RESULTS:
            self.submissions.labels(result=result)
        for run_outcome in RUN_OUTCOMES:
            self.runs_finished.labels(outcome=run_outcome)


__all__ = ["WebhookMetrics"]
