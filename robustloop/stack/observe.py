"""What the demo's driver reads from the running stack, once a second.

- the traffic log (``robustloop traffic --log``): accuracy and served version of each second;
- Prometheus's HTTP API (prometheus-api-client): the entropy and squeeze levels, alerts firing;
- the receiver's ``GET /api/v1/remediations``: when an alert reached it, and what it did;
- the local executor's run records (Argo-shaped ``workflow.json``), read with
  :func:`workflows.contract.summarise_workflow`, as the receiver reads them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from workflows.contract import RunSummary, summarise_workflow

log = logging.getLogger(__name__)


class TrafficTail:
    """Follows a JSON-lines log that another process appends to; yields whole new records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        """New complete records since the last call (a half-written last line waits)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping a line that is not JSON: %r", self.path, line[:80])
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


@dataclass(frozen=True)
class TrafficSecond:
    """The traffic log's records of one driver tick, merged."""

    accuracy: float | None
    n: int
    version: str | None


def merge_traffic(records: list[dict[str, Any]]) -> TrafficSecond:
    """Merge records into one accuracy (weighted by labelled images) and the latest version."""
    total = 0.0
    weight = 0
    version = None
    for rec in records:
        acc = rec.get("accuracy")
        n = rec.get("n", rec.get("samples", rec.get("images", 1)))
        n = int(n) if isinstance(n, int | float) and n > 0 else 1
        if isinstance(acc, int | float) and not math.isnan(acc):
            total += float(acc) * n
            weight += n
        if rec.get("version"):
            version = str(rec["version"])
    return TrafficSecond(None if weight == 0 else total / weight, weight, version)


def parse_time(value: Any) -> float | None:
    """A receiver timestamp (unix seconds or ISO 8601) as unix seconds."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Remediation:
    """One incident as the receiver reports it."""

    incident: str
    state: str
    received_at: float | None
    workflow: str | None
    raw: dict[str, Any]


class StackObserver:
    """Reads the running stack's state (see the module docstring).

    Args:
        prometheus_url: Prometheus of the stack.
        receiver_url: the receiver's base URL.
        token: the receiver's bearer token.
        runs_dir: the local executor's runs folder.
        model: the served model's name (selects series and alerts).
        window: PromQL range of the entropy and squeeze levels.
    """

    def __init__(
        self,
        prometheus_url: str,
        receiver_url: str,
        token: str,
        runs_dir: Path,
        model: str,
        window: str = "10s",
    ) -> None:
        from prometheus_api_client import PrometheusConnect

        self.prometheus = PrometheusConnect(url=prometheus_url, disable_ssl=True)
        self.receiver_url = receiver_url.rstrip("/")
        self.token = token
        self.runs_dir = runs_dir
        self.model = model
        self.window = window

    def _scalar(self, query: str) -> float | None:
        result = self.prometheus.custom_query(query)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def level(self, metric: str) -> float | None:
        """Mean of a histogram metric over the window: rate(sum) / rate(count)."""
        sel = f'{{model="{self.model}"}}'
        return self._scalar(
            f"sum(rate({metric}_sum{sel}[{self.window}])) / "
            f"sum(rate({metric}_count{sel}[{self.window}]))"
        )

    def firing_alerts(self) -> list[str]:
        """Names of the alerts firing now (Prometheus's ALERTS series)."""
        result = self.prometheus.custom_query('ALERTS{alertstate="firing"}')
        return sorted({r["metric"].get("alertname", "?") for r in result})

    def remediations(self) -> list[Remediation]:
        """Incidents the receiver recorded, oldest first.

        Raises:
            requests.HTTPError: the receiver answered with an error status.
        """
        resp = requests.get(
            f"{self.receiver_url}/api/v1/remediations",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=5,
        )
        resp.raise_for_status()
        body = resp.json()
        items = body.get("remediations", body.get("items", [])) if isinstance(body, dict) else body
        out = []
        for item in items or []:
            if not isinstance(item, dict):
                continue
            received = None
            for key in ("received_at", "created_at", "first_seen", "created"):
                received = parse_time(item.get(key))
                if received is not None:
                    break
            out.append(
                Remediation(
                    incident=str(item.get("incident_id", item.get("incident", item.get("id", "")))),
                    state=str(item.get("state", item.get("status", ""))),
                    received_at=received,
                    workflow=item.get("workflow_name", item.get("workflow")),
                    raw=item,
                )
            )
        out.sort(key=lambda r: r.received_at or 0.0)
        return out

    def runs(self) -> list[tuple[dict[str, Any], RunSummary]]:
        """The local executor's runs (workflow object, summary), oldest first."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for path in self.runs_dir.glob("*/workflow.json"):
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, FileNotFoundError):
                continue  # being rewritten right now; read it on the next tick
            found.append((path.stat().st_mtime, obj))
        found.sort(
            key=lambda pair: str((pair[1].get("metadata") or {}).get("creationTimestamp", pair[0]))
        )
        return [(obj, summarise_workflow(obj)) for _, obj in found]


def running_step(workflow: dict[str, Any]) -> str | None:
    """The step a workflow is in: its running node's name, else its phase."""
    status = workflow.get("status") or {}
    nodes = status.get("nodes") or {}
    running = [
        str(n.get("displayName"))
        for n in nodes.values()
        if n.get("phase") == "Running"
        and n.get("type") not in ("DAG", "Steps", "StepGroup")
        and n.get("displayName") != (workflow.get("metadata") or {}).get("name")
    ]
    if running:
        return ",".join(running)
    return str(status.get("phase") or "Pending")


def node_outputs(workflow: dict[str, Any], task: str) -> dict[str, str]:
    """Output parameters of one DAG task of a workflow (name -> value)."""
    nodes = (workflow.get("status") or {}).get("nodes") or {}
    for node in nodes.values():
        if node.get("displayName") == task:
            params = (node.get("outputs") or {}).get("parameters") or []
            return {str(p["name"]): str(p.get("value")) for p in params if "name" in p}
    return {}


def node_finished_at(workflow: dict[str, Any], task: str) -> float | None:
    """When one task of a workflow finished (unix seconds), if it did."""
    nodes = (workflow.get("status") or {}).get("nodes") or {}
    for node in nodes.values():
        if node.get("displayName") == task:
            return parse_time(node.get("finishedAt"))
    return None


def started_at(workflow: dict[str, Any]) -> float | None:
    """When a workflow started (unix seconds)."""
    status = workflow.get("status") or {}
    meta = workflow.get("metadata") or {}
    return parse_time(status.get("startedAt")) or parse_time(meta.get("creationTimestamp"))


__all__ = [
    "Remediation",
    "StackObserver",
    "TrafficSecond",
    "TrafficTail",
    "merge_traffic",
    "node_finished_at",
    "node_outputs",
    "parse_time",
    "running_step",
    "started_at",
]
