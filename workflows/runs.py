"""Reading recorded local runs, and showing runs the way ``argo list``/``argo get`` do.

Standard library only: a run is a ``Workflow`` object, the Argo-shaped JSON the local executor
writes to ``<runs_dir>/<name>/workflow.json`` or the Argo Server's own (read by
:class:`webhook.submitters.ArgoSubmitter`); :func:`format_list` and :func:`format_show` print
both alike. In a run's step tree, the steps of a DAG are the nodes whose ``boundaryID`` is the
DAG's node, listed under it, and a step Argo retried lists its attempts under it, as
``argo get`` shows them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from workflows.contract import PHASE_PENDING

RECORD = "workflow.json"
_ICONS = {
    "Succeeded": "✔",
    "Failed": "✖",
    "Error": "⚠",
    "Running": "●",
    "Pending": "◷",
    "Skipped": "○",
    "Omitted": "○",
}


class RunNotFound(LookupError):
    """No run of that name; the message lists where it looked."""


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _duration(start: str | None, end: str | None, now: dt.datetime) -> str:
    begin = _parse_time(start)
    if begin is None:
        return "-"
    finish = _parse_time(end) or now
    return _human(finish - begin)


def _human(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds % 60 else f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"


def load_run(runs_dir: Path, name: str) -> dict[str, Any]:
    """The recorded ``Workflow`` object of run ``name``.

    A run whose folder exists but whose record is not written yet reads as ``Pending``.

    Raises:
        RunNotFound: no such run under ``runs_dir``.
    """
    run_dir = Path(runs_dir) / name
    if "/" in name or name.startswith(".") or not run_dir.is_dir():
        raise RunNotFound(f"no run named {name!r} in {runs_dir} (see `robustloop runs list`)")
    try:
        return dict(json.loads((run_dir / RECORD).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {"metadata": {"name": name}, "status": {"phase": PHASE_PENDING, "nodes": {}}}


def run_model(wf: dict[str, Any]) -> str | None:
    """The model a run remediates: its ``model`` parameter (None when it has none)."""
    for param in ((wf.get("spec") or {}).get("arguments") or {}).get("parameters") or []:
        if param.get("name") == "model":
            return str(param.get("value", ""))
    return None


def newest_first(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` by start, newest first; runs not started yet (no ``startedAt``) lead."""
    return sorted(
        runs, key=lambda w: (w.get("status") or {}).get("startedAt") or "9999", reverse=True
    )


def list_runs(runs_dir: Path, model: str | None = None) -> list[dict[str, Any]]:
    """All recorded runs (of ``model`` when given, by its ``model`` parameter), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [
        load_run(root, child.name)
        for child in root.iterdir()
        if child.is_dir() and not child.name.startswith(".")
    ]
    return newest_first([wf for wf in runs if model is None or run_model(wf) == model])


def format_list(runs: list[dict[str, Any]], now: dt.datetime | None = None) -> str:
    """A table like ``argo list``: NAME STATUS AGE DURATION MESSAGE."""
    now = now or dt.datetime.now(dt.UTC)
    rows = [("NAME", "STATUS", "AGE", "DURATION", "MESSAGE")]
    for wf in runs:
        status = wf.get("status") or {}
        start = status.get("startedAt")
        begin = _parse_time(start)
        rows.append(
            (
                str((wf.get("metadata") or {}).get("name", "")),
                str(status.get("phase") or PHASE_PENDING),
                _human(now - begin) if begin else "-",
                _duration(start, status.get("finishedAt"), now),
                str(status.get("message") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ).rstrip()


def format_show(wf: dict[str, Any], now: dt.datetime | None = None) -> str:
    """A report like ``argo get``: the run's header, parameters and its step tree."""
    now = now or dt.datetime.now(dt.UTC)
    meta = wf.get("metadata") or {}
    status = wf.get("status") or {}
    spec = wf.get("spec") or {}
    lines = [
        f"Name:                {meta.get('name', '')}",
        f"Namespace:           {meta.get('namespace', '')}",
        f"Status:              {status.get('phase') or PHASE_PENDING}",
    ]
    if status.get("message"):
        lines.append(f"Message:             {status['message']}")
    lines += [
        f"Started:             {status.get('startedAt', '-')}",
        f"Finished:            {status.get('finishedAt', '-')}",
        f"Duration:            {_duration(status.get('startedAt'), status.get('finishedAt'), now)}",
    ]
    if status.get("progress"):
        lines.append(f"Progress:            {status['progress']}")
    params = (spec.get("arguments") or {}).get("parameters") or []
    if params:
        lines.append("Parameters:")
        lines += [f"  {p['name']}: {p.get('value', '')}" for p in params]
    nodes: dict[str, Any] = status.get("nodes") or {}
    if nodes:
        lines += ["", "STEP                      TEMPLATE        DURATION  MESSAGE"]
        attempts = _attempts(nodes)
        roots = [n for n in nodes.values() if "boundaryID" not in n]
        for root in roots:
            _tree(root, nodes, 0, lines, now)
        outputs = [
            (n.get("displayName", ""), p["name"], p.get("value", ""))
            for key, n in nodes.items()
            if key not in attempts  # a retried step carries its last attempt's outputs
            for p in (n.get("outputs") or {}).get("parameters") or []
        ]
        if outputs:
            lines += ["", "OUTPUTS"]
            for step, name, value in outputs:
                text = str(value).replace("\n", " ")
                lines.append(f"  {step}.{name}: {text[:120]}{'…' if len(text) > 120 else ''}")
    return "\n".join(lines)


def _attempts(nodes: dict[str, Any]) -> set[str]:
    """Ids of the nodes that are attempts of a retried step (children of a ``Retry`` node)."""
    return {
        child
        for node in nodes.values()
        if node.get("type") == "Retry"
        for child in node.get("children") or []
    }


def _shown_children(node: dict[str, Any], nodes: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes shown under ``node`` in the step tree.

    Under a DAG (or steps) node: every node inside its boundary but the attempts of retried
    steps, in the order of its ``children``, then by start. Under a ``Retry`` node: its attempts.
    Other nodes show nothing under them: their ``children`` are the next steps of the DAG,
    shown under the DAG already.
    """
    node_id = node.get("id")
    inside = [
        n
        for n in nodes.values()
        if node_id is not None and n.get("boundaryID") == node_id and n is not node
    ]
    if inside:
        attempts = _attempts(nodes)
        order = {child: i for i, child in enumerate(node.get("children") or [])}
        steps = [n for n in inside if n.get("id") not in attempts]
        return sorted(
            steps,
            key=lambda n: (order.get(n.get("id"), len(order)), n.get("startedAt") or "9999"),
        )
    if node.get("type") == "Retry" or "boundaryID" not in node:
        return [nodes[child] for child in node.get("children") or [] if child in nodes]
    return []


def _tree(
    node: dict[str, Any], nodes: dict[str, Any], depth: int, lines: list[str], now: dt.datetime
) -> None:
    icon = _ICONS.get(str(node.get("phase")), "?")
    label = "  " * depth + ("└─" if depth else "") + f"{icon} {node.get('displayName', '')}"
    duration = _duration(node.get("startedAt"), node.get("finishedAt"), now)
    template = node.get("templateName", "")
    lines.append(f"{label:<25} {template:<15} {duration:<9} {node.get('message', '')}".rstrip())
    for child in _shown_children(node, nodes):
        _tree(child, nodes, depth + 1, lines, now)


__all__ = [
    "RunNotFound",
    "format_list",
    "format_show",
    "list_runs",
    "load_run",
    "newest_first",
    "run_model",
]
