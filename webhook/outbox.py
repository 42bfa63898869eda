"""The durable outbox: one SQLite row per incident, written before the receiver answers.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk when ``COMMIT`` returns, so an
incident that was answered with a 2xx survives a crash, a ``kill -9`` or a power cut, and a
process killed in the middle of a write leaves the previous committed state (SQLite's journal
makes a transaction all or nothing). The dispatcher (:mod:`webhook.dispatcher`) takes the work
from here; after a restart it finds the pending rows and carries on.

States of an incident (its remediation)::

    received ──► submitting ──► submitted ──► running ──► succeeded | rejected | failed
     │    ▲            ├──────► refused (the submitter answered 4xx, e.g. 403: not retried)
     │    │            └──────► suppressed (reason stale: resolved long ago, never submitted)
     │    └─── refused, or suppressed by cooldown or budget: a firing re-delivery (not
     │         resolved since) decides it again
     └──► suppressed (reason: resolved, not-allowed, cooldown, budget, dry-run)

``received`` waits for a decision (also while another remediation of its model is active);
``submitting`` is a decided intent whose submission is retried with backoff until it is acked,
unless its alert resolved more than ``webhook.drop_resolved_after_seconds`` ago. A later delivery
of the still-firing alert puts a ``refused`` incident, or one suppressed by the cooldown or the
budget, back to ``received``, to be decided afresh (the token may be fixed, the cooldown over);
any other repeat only counts the delivery.

One receiver per outbox: opening it takes an exclusive ``flock`` on ``<outbox>.lock`` (a file of
its own, because closing any descriptor of the database file would drop SQLite's own POSIX
locks), held until :meth:`Outbox.close`; a second opening, in this process or another, raises
:class:`OutboxInUse`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webhook.errors import ConfigurationError, OutboxInUse

RECEIVED = "received"
SUPPRESSED = "suppressed"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
RUNNING = "running"
SUCCEEDED = "succeeded"
REJECTED = "rejected"
FAILED = "failed"
REFUSED = "refused"
STATES = (
    RECEIVED,
    SUPPRESSED,
    SUBMITTING,
    SUBMITTED,
    RUNNING,
    SUCCEEDED,
    REJECTED,
    FAILED,
    REFUSED,
)
ACTIVE_STATES = frozenset({SUBMITTING, SUBMITTED, RUNNING})
"""A remediation in one of these occupies its model: no second one starts."""
FINISHED_STATES = frozenset({SUCCEEDED, REJECTED, FAILED})
"""A remediation that ran to an end; the cooldown counts from its end."""
BUDGET_STATES = ACTIVE_STATES | FINISHED_STATES
"""Decisions to run that count against the daily budget."""

REASON_RESOLVED = "resolved"
REASON_NOT_ALLOWED = "not-allowed"
REASON_COOLDOWN = "cooldown"
REASON_BUDGET = "budget"
REASON_DRY_RUN = "dry-run"
REASON_STALE = "stale"
REASON_REFUSED = "refused"
RETRYABLE_REASONS = frozenset({REASON_COOLDOWN, REASON_BUDGET})
"""Suppressions that a later delivery of the still-firing alert may lift (decided afresh)."""
REDECIDED_STATES = frozenset({REFUSED})
"""States that a later delivery of the still-firing alert returns to ``received`` (decided
afresh): the cause of a refusal (a token, a permission) may have been fixed since."""

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    alertname TEXT NOT NULL,
    model TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    group_key TEXT NOT NULL,
    state TEXT NOT NULL,
    reason_code TEXT,
    reason TEXT,
    workflow TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    resolved_at REAL,
    decided_at REAL,
    submitted_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    polled_at REAL,
    phase TEXT,
    gate_passed INTEGER,
    promoted_version TEXT,
    message TEXT
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state);
CREATE INDEX IF NOT EXISTS incidents_model ON incidents (model, state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL REFERENCES incidents (id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_incident ON events (incident);
"""


def iso_time(ts: float | None) -> str | None:
    """A time in seconds since the epoch as ISO 8601, UTC (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True)
class AlertRecord:
    """What the receiver records of one alert of a delivery."""

    incident_id: str
    fingerprint: str
    starts_at: str
    status: str
    alertname: str
    model: str
    labels: dict[str, str]
    annotations: dict[str, str]
    group_key: str
    not_allowed: str | None = None
    """Why the allowlist refuses this alert (None: allowed)."""


@dataclass(frozen=True)
class RecordResult:
    """How one alert of a delivery was taken: its incident, the state, and whether it was new."""

    incident_id: str
    state: str
    new: bool


@dataclass(frozen=True)
class Incident:
    """One row of the outbox."""

    id: str
    fingerprint: str
    starts_at: str
    alertname: str
    model: str
    labels: dict[str, str]
    annotations: dict[str, str]
    group_key: str
    state: str
    reason_code: str | None
    reason: str | None
    workflow: str | None
    received_at: float
    updated_at: float
    deliveries: int
    resolved_at: float | None
    decided_at: float | None
    submitted_at: float | None
    finished_at: float | None
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    polled_at: float | None
    phase: str | None
    gate_passed: bool | None
    promoted_version: str | None
    message: str | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Incident:
        data = dict(row)
        data["labels"] = json.loads(data["labels"])
        data["annotations"] = json.loads(data["annotations"])
        gate = data["gate_passed"]
        data["gate_passed"] = None if gate is None else bool(gate)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /api/v1/remediations[/{id}]`` (times as ISO 8601, UTC)."""
        return {
            "id": self.id,
            "state": self.state,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "model": self.model,
            "alertname": self.alertname,
            "fingerprint": self.fingerprint,
            "starts_at": self.starts_at,
            "workflow": self.workflow,
            "phase": self.phase,
            "gate_passed": self.gate_passed,
            "promoted_version": self.promoted_version,
            "message": self.message,
            "deliveries": self.deliveries,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "received_at": iso_time(self.received_at),
            "updated_at": iso_time(self.updated_at),
            "resolved_at": iso_time(self.resolved_at),
            "decided_at": iso_time(self.decided_at),
            "submitted_at": iso_time(self.submitted_at),
            "finished_at": iso_time(self.finished_at),
            "next_attempt_at": iso_time(self.next_attempt_at),
            "labels": self.labels,
            "annotations": self.annotations,
            "group_key": self.group_key,
            "events": self.events,
        }


def lock_path(path: Path) -> Path:
    """The file whose ``flock`` marks an outbox as held by a receiver: ``<outbox>.lock``."""
    return path.with_name(path.name + ".lock")


def _hold(path: Path) -> int:
    """Take the exclusive ``flock`` of an outbox (never waiting); the descriptor holding it.

    Raises:
        OutboxInUse: another receiver holds it.
        ConfigurationError: the lock file cannot be opened.
    """
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by child processes
    except OSError as exc:
        raise ConfigurationError(
            f"cannot open the outbox's lock file {lock}: {exc.strerror}; webhook.db_path must "
            "be in a folder this receiver may write"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise OutboxInUse(
            f"outbox {path} is in use by another receiver{by}, which holds {lock}: one receiver "
            "per outbox; stop the other one, or give this one its own webhook.db_path"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


class Outbox:
    """The SQLite outbox. Thread-safe: one connection, one lock, short transactions.

    Opening it takes the outbox for this receiver alone (an exclusive ``flock`` on
    ``<path>.lock``, released by :meth:`close` or when the process ends).

    Args:
        path: database file; its folder is created.
        busy_timeout_seconds: how long a write waits for another process's lock.

    Raises:
        webhook.errors.OutboxInUse: another receiver, in this process or another, holds it.
    """

    def __init__(self, path: Path, busy_timeout_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._held: int | None = _hold(self.path)
        try:
            self._conn = self._connect(busy_timeout_seconds)
        except BaseException:
            self._release()
            raise

    def _connect(self, busy_timeout_seconds: float) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path),
            timeout=busy_timeout_seconds,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); put webhook.db_path "
                    "on a local file system"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _release(self) -> None:
        if self._held is not None:
            os.close(self._held)  # closing the descriptor drops the flock
            self._held = None

    def close(self) -> None:
        """Close the connection (committed data is already on disk) and give the outbox up
        (idempotent)."""
        with self._lock:
            try:
                self._conn.close()
            finally:
                self._release()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- the request path ---------------------------------------------------------------------

    def record(self, alerts: Sequence[AlertRecord], now: float | None = None) -> list[RecordResult]:
        """Record the alerts of one delivery in one transaction; duplicates change no decision.

        * a firing alert with a new incident id: a ``received`` incident (``suppressed`` with
          reason ``not-allowed`` when the allowlist refuses it);
        * a resolved alert with no incident: a ``suppressed`` incident, reason ``resolved``;
        * a known incident: its delivery count, and for a resolved alert the resolution time.
          A running remediation is left alone. A firing re-delivery of an incident suppressed
          by the cooldown or the budget, or refused by the submitter, not resolved since, goes
          back to ``received`` so that the dispatcher decides again (the alert still fires;
          the cooldown may be over, the submitter's token fixed).
        """
        now = time.time() if now is None else now
        results: list[RecordResult] = []
        with self.transaction() as conn:
            for alert in alerts:
                row = conn.execute(
                    "SELECT state, reason_code, resolved_at FROM incidents WHERE id = ?",
                    (alert.incident_id,),
                ).fetchone()
                if row is None:
                    results.append(self._insert(conn, alert, now))
                    continue
                state = row["state"]
                if alert.status == "resolved":
                    conn.execute(
                        "UPDATE incidents SET deliveries = deliveries + 1, updated_at = ?, "
                        "resolved_at = COALESCE(resolved_at, ?) WHERE id = ?",
                        (now, now, alert.incident_id),
                    )
                    if row["resolved_at"] is None:
                        self._event(conn, alert.incident_id, now, state, "alert resolved")
                elif row["resolved_at"] is None and (
                    state in REDECIDED_STATES
                    or (state == SUPPRESSED and row["reason_code"] in RETRYABLE_REASONS)
                ):
                    detail = f"re-delivered while firing after {row['reason_code'] or state}"
                    state = RECEIVED
                    conn.execute(
                        "UPDATE incidents SET deliveries = deliveries + 1, updated_at = ?, "
                        "state = ?, reason_code = NULL, reason = ? WHERE id = ?",
                        (now, state, "still firing: to be decided again", alert.incident_id),
                    )
                    self._event(conn, alert.incident_id, now, state, detail)
                else:
                    conn.execute(
                        "UPDATE incidents SET deliveries = deliveries + 1, updated_at = ? "
                        "WHERE id = ?",
                        (now, alert.incident_id),
                    )
                results.append(RecordResult(alert.incident_id, state, new=False))
        return results

    def _insert(self, conn: sqlite3.Connection, alert: AlertRecord, now: float) -> RecordResult:
        if alert.status == "resolved":
            state, code, reason = SUPPRESSED, REASON_RESOLVED, "resolved before it was seen firing"
        elif alert.not_allowed is not None:
            state, code, reason = SUPPRESSED, REASON_NOT_ALLOWED, alert.not_allowed
        else:
            state, code, reason = RECEIVED, None, "waiting for the dispatcher"
        conn.execute(
            "INSERT INTO incidents (id, fingerprint, starts_at, alertname, model, labels, "
            "annotations, group_key, state, reason_code, reason, received_at, updated_at, "
            "resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.incident_id,
                alert.fingerprint,
                alert.starts_at,
                alert.alertname,
                alert.model,
                json.dumps(alert.labels, sort_keys=True),
                json.dumps(alert.annotations, sort_keys=True),
                alert.group_key,
                state,
                code,
                reason,
                now,
                now,
                now if alert.status == "resolved" else None,
            ),
        )
        self._event(conn, alert.incident_id, now, state, reason)
        return RecordResult(alert.incident_id, state, new=True)

    @staticmethod
    def _event(conn: sqlite3.Connection, incident: str, at: float, state: str, detail: str) -> None:
        conn.execute(
            "INSERT INTO events (incident, at, state, detail) VALUES (?, ?, ?, ?)",
            (incident, at, state, detail),
        )

    # -- the dispatcher -----------------------------------------------------------------------

    def update(
        self,
        conn: sqlite3.Connection,
        incident_id: str,
        now: float,
        detail: str | None = None,
        **fields: Any,
    ) -> None:
        """Set columns of an incident inside ``conn``'s transaction; a state change is an event."""
        fields["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in fields)
        conn.execute(
            f"UPDATE incidents SET {assignments} WHERE id = ?",
            (*fields.values(), incident_id),
        )
        if "state" in fields or detail is not None:
            state = fields.get("state")
            if state is None:
                state = conn.execute(
                    "SELECT state FROM incidents WHERE id = ?", (incident_id,)
                ).fetchone()[0]
            self._event(conn, incident_id, now, state, detail or "")

    def in_state(self, *states: str) -> list[Incident]:
        """Incidents in any of these states, oldest first."""
        marks = ", ".join("?" for _ in states)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM incidents WHERE state IN ({marks}) ORDER BY rowid", states
            ).fetchall()
        return [Incident.from_row(row) for row in rows]

    # -- reading ------------------------------------------------------------------------------

    def get(self, incident_id: str, with_events: bool = True) -> Incident | None:
        """One incident with its history, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
            if row is None:
                return None
            events = (
                self._conn.execute(
                    "SELECT at, state, detail FROM events WHERE incident = ? ORDER BY seq",
                    (incident_id,),
                ).fetchall()
                if with_events
                else []
            )
        incident = Incident.from_row(row)
        history = [
            {"at": iso_time(event["at"]), "state": event["state"], "detail": event["detail"]}
            for event in events
        ]
        return Incident(**{**incident.__dict__, "events": history})

    def list(self, state: str | None = None, limit: int = 100) -> list[Incident]:
        """The newest incidents first, optionally of one state."""
        with self._lock:
            if state is None:
                rows = self._conn.execute(
                    "SELECT * FROM incidents ORDER BY rowid DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM incidents WHERE state = ? ORDER BY rowid DESC LIMIT ?",
                    (state, limit),
                ).fetchall()
        return [Incident.from_row(row) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        """Number of incidents in each state (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        with self._lock:
            for row in self._conn.execute(
                "SELECT state, COUNT(*) AS n FROM incidents GROUP BY state"
            ):
                counts[row["state"]] = int(row["n"])
        return counts

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``ok`` when the file is sound)."""
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])


__all__ = [
    "ACTIVE_STATES",
    "BUDGET_STATES",
    "FINISHED_STATES",
    "REDECIDED_STATES",
    "RETRYABLE_REASONS",
    "STATES",
    "AlertRecord",
    "Incident",
    "Outbox",
    "OutboxInUse",
    "RecordResult",
    "iso_time",
    "lock_path",
]
