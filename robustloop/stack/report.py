"""The demo's report: ``timeline.jsonl``, ``timeline.png``, ``summary.json`` and ``summary.md``.

The timeline is what the scenario driver saw, once a second: the accuracy of the traffic the
client sent in that second (from the traffic log), the entropy and squeeze levels Prometheus
computed, the alerts firing, the workflow step; plus the events that mark the loop's stages
(attack start, alert firing, alert at the receiver, workflow start, gate decision, promotion,
hardened model serving). The summary reduces it to the figures that judge the loop — the live
counterpart of the paper's figures 4 and 5 (accuracy collapse under FGSM, recovery after
adversarial training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Event kinds, in the order the loop produces them.
ATTACK_START = "attack_start"
DRIFT_START = "drift_start"
ALERT_FIRING = "alert_firing"
ALERT_RECEIVED = "alert_received"
WORKFLOW_START = "workflow_start"
GATE_DECISION = "gate_decision"
PROMOTION = "promotion"
HARDENED_SERVING = "hardened_serving"
RECOVERED = "recovered"
TIMEOUT = "timeout"

EVENT_KINDS = (
    ATTACK_START,
    DRIFT_START,
    ALERT_FIRING,
    ALERT_RECEIVED,
    WORKFLOW_START,
    GATE_DECISION,
    PROMOTION,
    HARDENED_SERVING,
    RECOVERED,
    TIMEOUT,
)

SUMMARY_FIELDS = (
    "scenario",
    "eps",
    "accuracy_before",
    "accuracy_under_attack",
    "accuracy_after",
    "time_to_detect_s",
    "time_to_recover_s",
    "recovered",
    "remediation_started",
    "gate",
    "versions",
    "alerts",
    "workflow",
    "duration_s",
)


@dataclass
class Sample:
    """One second of the demo as the driver saw it.

    Attributes:
        t: seconds since the demo's start.
        phase: ``clean``, ``attack`` or ``drift``.
        version: model version that answered the traffic of this second (None: unknown).
        accuracy: accuracy of the traffic sent in this second (None: no labelled answer).
        n: images behind ``accuracy``.
        entropy: mean normalised softmax entropy over the rules' window (Prometheus).
        squeeze: mean feature-squeezing score over the window (Prometheus).
        alerts: names of the robustloop alerts firing.
        workflow_step: the remediation's running step (or its phase when finished).
    """

    t: float
    phase: str
    version: str | None = None
    accuracy: float | None = None
    n: int = 0
    entropy: float | None = None
    squeeze: float | None = None
    alerts: list[str] = field(default_factory=list)
    workflow_step: str | None = None


@dataclass
class Event:
    """A stage of the loop reached at ``t`` seconds since the demo's start."""

    t: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


class Timeline:
    """Samples and events, appended to ``timeline.jsonl`` as they happen (if a path is given).

    Writing as it goes means an interrupted demo still leaves its record behind.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.samples: list[Sample] = []
        self.events: list[Event] = []
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")

    def add_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        self._append({"type": "sample", **asdict(sample)})

    def add_event(self, kind: str, t: float, **detail: Any) -> Event:
        """Record an event (each kind once: the first occurrence is the one that counts).

        Raises:
            ValueError: ``kind`` is not one of :data:`EVENT_KINDS`.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        existing = self.first(kind)
        if existing is not None:
            return existing
        event = Event(t=t, kind=kind, detail=detail)
        self.events.append(event)
        self._append({"type": "event", **asdict(event)})
        return event

    def first(self, kind: str) -> Event | None:
        """The event of this kind, if it happened."""
        return next((e for e in self.events if e.kind == kind), None)

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Timeline:
        """Read a ``timeline.jsonl`` back (the report can be redrawn from it).

        Raises:
            ValueError: a line is not a sample or an event; the message gives the line number.
        """
        timeline = cls()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            kind = record.pop("type", None)
            if kind == "sample":
                timeline.samples.append(Sample(**record))
            elif kind == "event":
                timeline.events.append(Event(**record))
            else:
                raise ValueError(f"{path}:{number}: expected type sample or event, got {kind!r}")
        return timeline


def weighted_accuracy(samples: Iterable[Sample]) -> float | None:
    """Accuracy over samples, weighted by their image counts (unweighted where counts are 0)."""
    total = 0.0
    weight = 0.0
    for s in samples:
        if s.accuracy is None or math.isnan(s.accuracy):
            continue
        w = float(s.n) if s.n > 0 else 1.0
        total += s.accuracy * w
        weight += w
    return None if weight == 0 else round(total / weight, 4)


def recovery_window(
    timeline: Timeline, hardened: str | None, seconds: float
) -> tuple[list[Sample], bool]:
    """The first ``seconds`` of attacked traffic that the hardened model answered, and whether
    that window is complete yet.

    One fixed window from the hardened model's first answer (after ``hardened_serving``; any
    version when ``hardened`` is None): the demo judges recovery on it once, and
    ``accuracy_after`` is its accuracy, so the figure is never the best of several windows.
    """
    serving = timeline.first(HARDENED_SERVING)
    if serving is None:
        return [], False
    answered = [
        s
        for s in timeline.samples
        if s.phase in ("attack", "drift")
        and s.t >= serving.t
        and (hardened is None or s.version == hardened)
        and s.accuracy is not None
    ]
    if not answered:
        return [], False
    end = answered[0].t + seconds
    return [s for s in answered if s.t <= end], answered[-1].t >= end


def summarise(
    timeline: Timeline,
    *,
    scenario: str,
    eps: float | None,
    recovery_window_s: float,
    versions: dict[str, str | None],
    gate: dict[str, Any] | None = None,
    workflow: dict[str, Any] | None = None,
    remediation_started: bool = False,
) -> dict[str, Any]:
    """Reduce a timeline to the figures that judge the loop.

    - ``accuracy_before``: the clean phase.
    - ``accuracy_under_attack``: the attack phase while the undefended model still serves
      (from attack start to the hardened model serving, or to the end).
    - ``accuracy_after``: the accuracy of :func:`recovery_window` (the attacker is adaptive: it
      attacks the hardened model), None if that model never served.
    - ``time_to_detect_s``: attack start to the first alert reaching the receiver.
    - ``time_to_recover_s``: attack start to the hardened model serving.
    """
    start = timeline.first(ATTACK_START) or timeline.first(DRIFT_START)
    serving = timeline.first(HARDENED_SERVING)
    received = timeline.first(ALERT_RECEIVED)
    hardened = versions.get("hardened")

    before = [s for s in timeline.samples if s.phase == "clean"]
    attacked = [s for s in timeline.samples if s.phase in ("attack", "drift")]
    under = [s for s in attacked if serving is None or s.t < serving.t]
    after, _complete = recovery_window(timeline, hardened, recovery_window_s)
    alerts = sorted({name for s in timeline.samples for name in s.alerts})
    firing = timeline.first(ALERT_FIRING)
    if firing is not None:
        alerts = sorted(set(alerts) | set(firing.detail.get("alerts", [])))

    def since_start(event: Any) -> float | None:
        if event is None or start is None:
            return None
        return round(event.t - start.t, 2)

    return {
        "scenario": scenario,
        "eps": eps,
        "accuracy_before": weighted_accuracy(before),
        "accuracy_under_attack": weighted_accuracy(under),
        "accuracy_after": weighted_accuracy(after),
        "time_to_detect_s": since_start(received),
        "time_to_recover_s": since_start(serving),
        "recovered": timeline.first(RECOVERED) is not None,
        "remediation_started": remediation_started,
        "gate": gate,
        "versions": versions,
        "alerts": alerts,
        "workflow": workflow,
        "duration_s": round(timeline.samples[-1].t, 1) if timeline.samples else 0.0,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render_markdown(summary: dict[str, Any], events: Sequence[Event]) -> str:
    """``summary.md``: the figures, the gate's decision, the versions and the stage times."""
    scenario = summary.get("scenario")
    lines = [f"# robustloop demo — scenario `{scenario}`", ""]
    lines += ["| figure | value |", "|---|---|"]
    rows = [
        ("attack eps", summary.get("eps")),
        ("accuracy before the attack", summary.get("accuracy_before")),
        ("accuracy under attack (undefended)", summary.get("accuracy_under_attack")),
        ("accuracy after recovery (adaptive attack)", summary.get("accuracy_after")),
        ("time to detect (s): attack start → alert at receiver", summary.get("time_to_detect_s")),
        ("time to recover (s): attack start → hardened serving", summary.get("time_to_recover_s")),
        ("recovered", summary.get("recovered")),
        ("remediation started", summary.get("remediation_started")),
        ("alerts", ", ".join(summary.get("alerts") or []) or None),
    ]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    gate = summary.get("gate") or {}
    if gate:
        lines += ["", "## Gate", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in gate.items()]
    versions = summary.get("versions") or {}
    if versions:
        lines += ["", "## Versions", ""]
        lines += [f"- {role}: `{_fmt(v)}`" for role, v in versions.items()]
    if events:
        lines += ["", "## Stages", "", "| t (s) | event | detail |", "|---|---|---|"]
        for e in events:
            detail = ", ".join(f"{k}={v}" for k, v in e.detail.items())
            lines.append(f"| {e.t:.1f} | {e.kind} | {detail} |")
    return "\n".join(lines) + "\n"


ROLLING_S = 5.0
"""Seconds of traffic behind the plot's smoothed accuracy line."""


def _rolling_accuracy(samples: Sequence[Sample], seconds: float) -> tuple[list[float], list[float]]:
    """Image-weighted accuracy over the trailing ``seconds`` at each sample (phase-local)."""
    xs: list[float] = []
    ys: list[float] = []
    for i, s in enumerate(samples):
        window = [
            w
            for w in samples[: i + 1]
            if w.t > s.t - seconds and w.phase == s.phase and w.accuracy is not None
        ]
        value = weighted_accuracy(window)
        if value is not None:
            xs.append(s.t)
            ys.append(value)
    return xs, ys


_MARK_STYLE = {
    ATTACK_START: ("tab:red", "attack"),
    DRIFT_START: ("tab:brown", "drift"),
    ALERT_FIRING: ("tab:orange", "alert"),
    WORKFLOW_START: ("tab:purple", "workflow"),
    GATE_DECISION: ("tab:olive", "gate"),
    PROMOTION: ("tab:green", "promotion"),
}


def render_plot(timeline: Timeline, path: Path, title: str = "robustloop demo") -> None:
    """``timeline.png``: accuracy (top), entropy and squeeze levels (bottom), stage marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(attr: str) -> tuple[list[float], list[float]]:
        pts = [(s.t, getattr(s, attr)) for s in timeline.samples if getattr(s, attr) is not None]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    try:
        xs, ys = series("accuracy")
        top.plot(xs, ys, color="tab:blue", lw=0.6, alpha=0.35, label="accuracy, each second")
        rx, ry = _rolling_accuracy(timeline.samples, ROLLING_S)
        top.plot(rx, ry, color="tab:blue", lw=1.8, label=f"accuracy, last {ROLLING_S:g} s")
        top.set_ylim(-0.02, 1.02)
        top.set_ylabel("accuracy")
        top.set_title(title)
        for attr, color in (("entropy", "tab:cyan"), ("squeeze", "tab:gray")):
            xs, ys = series(attr)
            bottom.plot(xs, ys, color=color, lw=1.2, label=f"{attr} level")
        bottom.set_ylabel("signal level")
        bottom.set_ylim(bottom=0)
        bottom.set_xlabel("seconds since start")
        marks = [e for e in timeline.events if e.kind in _MARK_STYLE]
        for i, event in enumerate(marks):
            color, label = _MARK_STYLE[event.kind]
            for ax in (top, bottom):
                ax.axvline(event.t, color=color, ls="--", lw=1)
            top.annotate(
                label,
                (event.t, 1.0 - 0.14 * (i % 2)),  # alternate heights: close marks stay legible
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
                color=color,
            )
        top.legend(loc="lower left", fontsize=8)
        bottom.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_report(report_dir: Path, timeline: Timeline, summary: dict[str, Any]) -> list[Path]:
    """Write the four report files into ``report_dir``; returns their paths.

    ``timeline.jsonl`` is rewritten from memory unless the timeline already streams to it.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    jsonl = report_dir / "timeline.jsonl"
    if timeline.path is None or timeline.path.resolve() != jsonl.resolve():
        records = [{"type": "sample", **asdict(s)} for s in timeline.samples]
        records += [{"type": "event", **asdict(e)} for e in timeline.events]
        jsonl.write_text(
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8"
        )
    png = report_dir / "timeline.png"
    render_plot(timeline, png, title=f"robustloop demo — {summary.get('scenario')}")
    summary_json = report_dir / "summary.json"
    summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    summary_md = report_dir / "summary.md"
    summary_md.write_text(render_markdown(summary, timeline.events), encoding="utf-8")
    return [jsonl, png, summary_json, summary_md]


__all__ = [
    "EVENT_KINDS",
    "SUMMARY_FIELDS",
    "Event",
    "Sample",
    "Timeline",
    "recovery_window",
    "render_markdown",
    "render_plot",
    "summarise",
    "weighted_accuracy",
    "write_report",
]
