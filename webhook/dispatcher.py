"""The dispatcher: decides, submits and follows remediations, in one background thread.

All decisions are taken here, one at a time, so that parallel deliveries cannot race: the
request path only records incidents (:meth:`webhook.outbox.Outbox.record`). Each pass:

1. *follow*: read the state of submitted runs back from the submitter;
2. *decide*: for each ``received`` incident, oldest first: suppress it if its alert resolved,
   wait while another remediation of its model is active, suppress it within the cooldown after
   the last one ended or beyond the model's budget for the UTC day, record it only in dry-run
   mode, else turn it into a ``submitting`` intent with its deterministic workflow name;
3. *submit* the due intents, each call with a timeout; a transient failure is retried with
   exponential backoff, a refusal (4xx such as 403) ends in ``refused`` and is not retried (a
   later delivery of the still-firing alert has it decided again). An intent whose alert
   resolved more than ``webhook.drop_resolved_after_seconds`` ago is dropped unsubmitted
   (``suppressed``, reason ``stale``): after a long outage of the submitter, a remediation of an
   attack long over would only spend the budget.

Every step commits before the next, so a crash at any point leaves a state that the next pass
(after a restart) completes; a repeated submission is a 409, taken as success. Each completed
pass sets the heartbeat gauge (``robustloop_webhook_dispatcher_heartbeat_timestamp_seconds``);
an idle loop still passes every ``webhook.poll_seconds``, so a heartbeat that stops advancing
means a dead or hung dispatcher.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from robustloop.config import RobustloopConfig
from webhook import outbox as ob
from webhook._labels import run_labels
from webhook.metrics import WebhookMetrics
from webhook.outbox import Incident, Outbox, iso_time
from webhook.submitters.base import (
    RefusedSubmitError,
    SubmitError,
    Submitted,
    Submitter,
)
from workflows.contract import (
    PHASE_SUCCEEDED,
    RECIPE_LABEL,
    RunSummary,
    incident_parameters,
    workflow_name_for,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    """What the dispatcher would decide for an incident (:meth:`Dispatcher.preview`)."""

    decision: str
    """``submit``, ``wait`` (another remediation of the model is active) or the reason code of
    a suppression (``cooldown``, ``budget``, ``dry-run``)."""
    reason_code: str | None
    reason: str
    """The human reason the incident would carry."""
    state: str
    """The state the incident would be in after the decision."""
    workflow: str | None
    """The workflow that would be submitted (``submit`` only)."""


def workflow_parameters(incident: Incident) -> dict[str, str]:
    """The remediation workflow's parameters for an incident: what identifies it (model,
    incident id) and the recipe its alert selects (its ``recipe`` label, checked when the
    alert was recorded), so that every other parameter takes the WorkflowTemplate's default."""
    return incident_parameters(
        model=incident.model, incident_id=incident.id, recipe=incident.labels.get(RECIPE_LABEL)
    )


class Dispatcher:
    """Background thread turning recorded incidents into remediation runs.

    Args:
        outbox: the durable outbox.
        submitter: where runs start.
        config: webhook settings (cooldown, budget, dry run, backoff, polling).
        metrics: where decisions, submissions and the heartbeat are recorded.
        clock: the time source, seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        outbox: Outbox,
        submitter: Submitter,
        config: RobustloopConfig,
        metrics: WebhookMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.submitter = submitter
        self.config = config
        self.settings = config.webhook
        self.metrics = metrics
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (it first resumes whatever the outbox holds)."""
        if self._thread is not None:
            return
        self.resume()
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def resume(self, now: float | None = None) -> int:
        """Make every pending submission due now (after a restart: retry at once, not after
        the backoff the previous process chose); returns how many there are."""
        now = self.clock() if now is None else now
        pending = self.outbox.in_state(ob.SUBMITTING)
        with self.outbox.transaction() as conn:
            for incident in pending:
                self.outbox.update(
                    conn, incident.id, now, "resumed after a restart", next_attempt_at=now
                )
        if pending:
            log.info("resuming %d pending submissions", len(pending))
        return len(pending)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (a submission in flight finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Run a pass now (a delivery was recorded)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delay = self.run_once()
            except Exception:
                log.exception(
                    "dispatcher pass failed; retrying in %.1fs", self.settings.poll_seconds
                )
                self.metrics.dispatcher_errors.inc()
                delay = self.settings.poll_seconds
            self._wake.wait(delay)

    # -- one pass -----------------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> float:
        """Follow, decide and submit once, then beat the heartbeat; returns the seconds until
        the next pass is due (at most ``webhook.poll_seconds``, also when there is nothing to do).

        Args:
            now: the time the pass takes as now (default: the clock, read afresh at each step).
        """
        self._follow(self.clock() if now is None else now)
        self._decide(self.clock() if now is None else now)
        self._submit(self.clock() if now is None else now)
        delay = self._next_delay(self.clock() if now is None else now)
        self.metrics.dispatcher_heartbeat.set(self.clock())
        return delay

    def _next_delay(self, now: float) -> float:
        """Seconds until the next pass: the next due retry, at most ``webhook.poll_seconds``."""
        delay = self.settings.poll_seconds
        for incident in self.outbox.in_state(ob.SUBMITTING):
            due = (incident.next_attempt_at or now) - now
            delay = min(delay, max(due, 0.0))
        return delay

    def _follow(self, now: float) -> None:
        for incident in self.outbox.in_state(ob.SUBMITTED, ob.RUNNING):
            if self._stop.is_set():
                return
            if (
                incident.polled_at is not None
                and now - incident.polled_at < self.settings.poll_seconds
            ):
                continue
            assert incident.workflow is not None
            try:
                summary = self.submitter.status(incident.workflow)
            except SubmitError as exc:
                with self.outbox.transaction() as conn:
                    self.outbox.update(
                        conn, incident.id, now, polled_at=now, last_error=exc.message
                    )
                continue
            self._record_run_state(incident, summary, now)

    def _record_run_state(self, incident: Incident, summary: RunSummary | None, now: float) -> None:
        with self.outbox.transaction() as conn:
            if summary is None:
                since = incident.submitted_at or now
                if now - since < self.settings.lost_run_seconds:
                    self.outbox.update(conn, incident.id, now, polled_at=now)
                    return
                summary = RunSummary(
                    incident.workflow or "",
                    "Lost",
                    None,
                    None,
                    f"no run named {incident.workflow} exists any more at the submitter "
                    f"({self.submitter.kind})",
                )
                state = ob.FAILED
            elif not summary.finished:
                state = ob.RUNNING
            elif summary.gate_passed is False:
                state = ob.REJECTED
            elif summary.phase == PHASE_SUCCEEDED:
                state = ob.SUCCEEDED
            else:
                state = ob.FAILED
            fields: dict[str, object] = {
                "polled_at": now,
                "phase": summary.phase,
                "gate_passed": summary.gate_passed,
                "promoted_version": summary.promoted_version,
                "message": summary.message,
                "last_error": None,
            }
            detail = None
            if state != incident.state:
                fields["state"] = state
                detail = f"workflow {summary.name}: phase {summary.phase}"
                if state in ob.FINISHED_STATES:
                    fields["finished_at"] = now
                    fields["reason"] = _finished_reason(state, summary)
                    detail = fields["reason"]  # type: ignore[assignment]
            self.outbox.update(conn, incident.id, now, detail, **fields)
        if state != incident.state and state in ob.FINISHED_STATES:
            self.metrics.runs_finished.labels(outcome=state).inc()
            log.info("incident %s: %s", incident.id, fields.get("reason"))

    def _decide(self, now: float) -> None:
        for incident in self.outbox.in_state(ob.RECEIVED):
            with self.outbox.transaction() as conn:
                row = conn.execute(
                    "SELECT state, resolved_at FROM incidents WHERE id = ?", (incident.id,)
                ).fetchone()
                if row["state"] != ob.RECEIVED:
                    continue
                decision, code, reason, fields = self._decision(
                    conn, incident.id, incident.model, row["resolved_at"], now
                )
                if decision == "wait":
                    if reason != incident.reason:
                        self.outbox.update(conn, incident.id, now, reason=reason)
                    continue
                self.outbox.update(
                    conn, incident.id, now, reason, reason_code=code, reason=reason, **fields
                )
            self.metrics.decisions.labels(decision=decision).inc()
            log.info("incident %s (model %s): %s", incident.id, incident.model, reason)

    def preview(self, incident_id: str, model: str, now: float | None = None) -> Preview:
        """What the next pass would decide for a firing incident of ``model`` received now,
        from the outbox as it is, without recording anything (the receiver's dry run).

        The decision is :meth:`_decision`'s, read inside a transaction that writes nothing, so
        that a dry run and a real delivery are judged by the same rules.
        """
        now = self.clock() if now is None else now
        with self.outbox.transaction() as conn:
            decision, code, reason, fields = self._decision(conn, incident_id, model, None, now)
        workflow = workflow_name_for(incident_id, model)
        state = str(fields.get("state", ob.RECEIVED))
        return Preview(decision, code, reason, state, workflow if decision == "submit" else None)

    def _decision(
        self,
        conn: sqlite3.Connection,
        incident_id: str,
        model: str,
        resolved_at: float | None,
        now: float,
    ) -> tuple[str, str | None, str, dict[str, object]]:
        """(decision, reason code, reason, columns to set) for a received incident; reads only."""
        settings = self.settings
        suppressed: dict[str, object] = {"state": ob.SUPPRESSED, "decided_at": now}
        if resolved_at is not None:
            return (
                ob.REASON_RESOLVED,
                ob.REASON_RESOLVED,
                "the alert resolved before a remediation was decided",
                suppressed,
            )
        active = conn.execute(
            f"SELECT workflow, state FROM incidents WHERE model = ? AND state IN "
            f"({', '.join('?' for _ in ob.ACTIVE_STATES)}) ORDER BY rowid LIMIT 1",
            (model, *sorted(ob.ACTIVE_STATES)),
        ).fetchone()
        if active is not None:
            return (
                "wait",
                None,
                f"waiting: remediation {active['workflow']} of model {model} is "
                f"{active['state']} (one at a time)",
                {},
            )
        last_end = conn.execute(
            f"SELECT MAX(finished_at) FROM incidents WHERE model = ? AND state IN "
            f"({', '.join('?' for _ in ob.FINISHED_STATES)})",
            (model, *sorted(ob.FINISHED_STATES)),
        ).fetchone()[0]
        if last_end is not None and now - last_end < settings.cooldown_seconds:
            return (
                ob.REASON_COOLDOWN,
                ob.REASON_COOLDOWN,
                f"cooldown: the last remediation of model {model} ended {now - last_end:.0f}s "
                f"ago; webhook.cooldown_seconds is {settings.cooldown_seconds:g}",
                suppressed,
            )
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        used = conn.execute(
            f"SELECT COUNT(*) FROM incidents WHERE model = ? AND decided_at >= ? AND state IN "
            f"({', '.join('?' for _ in ob.BUDGET_STATES)})",
            (model, day.timestamp(), *sorted(ob.BUDGET_STATES)),
        ).fetchone()[0]
        if used >= settings.daily_budget:
            return (
                ob.REASON_BUDGET,
                ob.REASON_BUDGET,
                f"budget: {used} remediations of model {model} on {day:%Y-%m-%d} (UTC) already; "
                f"webhook.daily_budget is {settings.daily_budget}",
                suppressed,
            )
        name = workflow_name_for(incident_id, model)
        if settings.dry_run:
            return (
                ob.REASON_DRY_RUN,
                ob.REASON_DRY_RUN,
                f"dry run: would submit workflow {name} (webhook.dry_run is true)",
                suppressed,
            )
        return (
            "submit",
            None,
            f"decided: submitting workflow {name}",
            {
                "state": ob.SUBMITTING,
                "workflow": name,
                "decided_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            },
        )

    def _submit(self, now: float) -> None:
        for incident in self.outbox.in_state(ob.SUBMITTING):
            if self._stop.is_set():
                return
            if incident.next_attempt_at is not None and incident.next_attempt_at > now:
                continue
            assert incident.workflow is not None
            if self._stale(incident, now):
                continue
            attempts = incident.attempts + 1
            try:
                result = self.submitter.submit(
                    incident.workflow,
                    workflow_parameters(incident),
                    run_labels(
                        model=incident.model,
                        incident_id=incident.id,
                        alertname=incident.alertname,
                    ),
                )
            except RefusedSubmitError as exc:
                self._refused(incident, exc, attempts, self.clock())
                continue
            except SubmitError as exc:
                self._retry_later(incident, exc.message, attempts, self.clock())
                continue
            except Exception as exc:  # a submitter bug must not lose the intent
                log.exception("submitter raised unexpectedly for %s", incident.workflow)
                self._retry_later(incident, f"{type(exc).__name__}: {exc}", attempts, self.clock())
                continue
            if result is Submitted.EXISTS:
                reason = f"workflow {incident.workflow} already existed (409): taken as submitted"
            else:
                reason = f"workflow {incident.workflow} created ({self.submitter.kind})"
            self._submitted(incident, result, reason, attempts, self.clock())

    def _submitted(
        self, incident: Incident, result: Submitted, reason: str, attempts: int, now: float
    ) -> None:
        with self.outbox.transaction() as conn:
            self.outbox.update(
                conn,
                incident.id,
                now,
                reason,
                state=ob.SUBMITTED,
                reason=reason,
                submitted_at=now,
                attempts=attempts,
                next_attempt_at=None,
                last_error=None,
            )
        self.metrics.submissions.labels(result=result.value).inc()
        log.info("incident %s: %s", incident.id, reason)

    def _stale(self, incident: Incident, now: float) -> bool:
        """Drop a due intent whose alert resolved more than ``drop_resolved_after_seconds``
        ago; True when it was dropped or otherwise dealt with (nothing to submit now).

        An intent already tried may have created its run before the answer was lost: the
        submitter is asked first, and a run it knows is taken as submitted, not dropped.
        """
        limit = self.settings.drop_resolved_after_seconds
        current = self.outbox.get(incident.id, with_events=False)
        if current is None or current.state != ob.SUBMITTING:
            return True
        resolved_at = current.resolved_at
        if resolved_at is None or now - resolved_at <= limit:
            return False
        assert incident.workflow is not None
        if current.attempts:
            try:
                summary = self.submitter.status(incident.workflow)
            except SubmitError as exc:
                self._retry_later(
                    current,
                    f"cannot tell whether {incident.workflow} exists before dropping it as "
                    f"stale: {exc.message}",
                    current.attempts,
                    self.clock(),
                )
                return True
            if summary is not None:
                reason = (
                    f"workflow {incident.workflow} already existed (an earlier attempt created "
                    "it): taken as submitted"
                )
                self._submitted(current, Submitted.EXISTS, reason, current.attempts, self.clock())
                return True
        reason = (
            f"stale: the alert resolved at {iso_time(resolved_at)}, {now - resolved_at:.0f}s "
            f"ago, more than webhook.drop_resolved_after_seconds ({limit:g}); workflow "
            f"{incident.workflow} was never submitted"
        )
        with self.outbox.transaction() as conn:
            row = conn.execute(
                "SELECT state FROM incidents WHERE id = ?", (incident.id,)
            ).fetchone()
            if row["state"] != ob.SUBMITTING:
                return True
            self.outbox.update(
                conn,
                incident.id,
                now,
                reason,
                state=ob.SUPPRESSED,
                reason_code=ob.REASON_STALE,
                reason=reason,
                next_attempt_at=None,
            )
        self.metrics.decisions.labels(decision=ob.REASON_STALE).inc()
        log.warning("incident %s: %s", incident.id, reason)
        return True

    def _retry_later(self, incident: Incident, error: str, attempts: int, now: float) -> None:
        delay = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_initial_seconds * 2 ** (attempts - 1),
        )
        with self.outbox.transaction() as conn:
            self.outbox.update(
                conn,
                incident.id,
                now,
                f"attempt {attempts} failed, retrying in {delay:g}s: {error}",
                attempts=attempts,
                next_attempt_at=now + delay,
                last_error=error,
            )
        self.metrics.submissions.labels(result="transient").inc()
        log.warning("incident %s: submission failed (%s); retry in %gs", incident.id, error, delay)

    def _refused(
        self, incident: Incident, exc: RefusedSubmitError, attempts: int, now: float
    ) -> None:
        status = f" {exc.status}" if exc.status is not None else ""
        reason = (
            f"refused: the {self.submitter.kind} submitter answered{status} and will not be "
            "retried; fix its permissions or settings: the next delivery of the still-firing "
            f"alert decides it again ({exc.message})"
        )
        with self.outbox.transaction() as conn:
            self.outbox.update(
                conn,
                incident.id,
                now,
                reason,
                state=ob.REFUSED,
                reason_code=ob.REASON_REFUSED,
                reason=reason,
                attempts=attempts,
                next_attempt_at=None,
                last_error=exc.message,
            )
        self.metrics.submissions.labels(result="refused").inc()
        log.error("incident %s: %s", incident.id, reason)


def _finished_reason(state: str, summary: RunSummary) -> str:
    if state == ob.SUCCEEDED:
        version = (
            f", promoted version {summary.promoted_version}" if summary.promoted_version else ""
        )
        return f"workflow {summary.name} succeeded{version}"
    if state == ob.REJECTED:
        return f"workflow {summary.name}: the gate rejected the candidate"
    message = f": {summary.message}" if summary.message else ""
    return f"workflow {summary.name} ended {summary.phase}{message}"


__all__ = ["Dispatcher", "Preview", "workflow_parameters"]
