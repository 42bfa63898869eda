"""A small replica of what Prometheus computes for our rules, second by second.

The promtool tests must pin each alert's ``for:`` boundary to the evaluation: silent one
evaluation before, firing at it. Where that evaluation lies depends on the thresholds in the
config, so the test generator works it out here: counters sampled every second, rules evaluated
every second, ``rate()`` with Prometheus's extrapolation (``extrapolatedRate`` in
promql/functions.go), ``and on``, ``unless on``, ``or`` and the pending -> firing state machine.
promtool then checks the real rules against these expectations; a disagreement fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from alert_rules._spec import (
    ENTROPY_METRIC,
    FEEDBACK_METRIC,
    SQUEEZE_METRIC,
    Alert,
    Condition,
    duration_seconds,
    num,
)

#: A series: metric name and the value of its ``version`` and ``outcome`` labels.
SeriesKey = tuple[str, str, str]


@dataclass(frozen=True)
class Phase:
    """``seconds`` of traffic; per-second counter increments of each series."""

    seconds: int
    increments: Mapping[SeriesKey, float]


def cumulative(phases: Sequence[Phase]) -> dict[SeriesKey, list[float]]:
    """Counter values at t = 0, 1, ..., sum(seconds); every counter starts at 0."""
    keys = sorted({k for p in phases for k in p.increments})
    values: dict[SeriesKey, list[float]] = {k: [0.0] for k in keys}
    for phase in phases:
        for key in keys:
            inc = phase.increments.get(key, 0.0)
            series = values[key]
            for _ in range(phase.seconds):
                series.append(series[-1] + inc)
    return values


def prom_rate(values: Sequence[float], t: int, window: float) -> float | None:
    """``rate(counter[window])`` at second ``t`` with samples at every whole second from 0.

    Mirrors Prometheus 2.x: samples in [t - window, t]; extrapolation to the window's edges when
    the gap is under 1.1 sample intervals, else by half an interval; never below zero for a
    counter.
    """
    lo = max(0, int(-(-(t - window) // 1)))
    if t - lo < 1:
        return None
    first, last = values[lo], values[t]
    delta = last - first
    sampled = float(t - lo)
    duration_to_start = lo - (t - window)
    if delta > 0 and first >= 0:
        duration_to_start = min(duration_to_start, sampled * (first / delta))
    interval = sampled + (duration_to_start if duration_to_start < 1.1 else 0.5)
    return delta * (interval / sampled) / window


class Simulation:
    """Recording-rule values and alert states over the whole series."""

    def __init__(self, series: dict[SeriesKey, list[float]], windows: Mapping[str, str]) -> None:
        self.series = series
        self.windows = {k: duration_seconds(v) for k, v in windows.items()}
        self.end = len(next(iter(series.values()))) - 1
        self.versions = sorted({k[1] for k in series})

    def _rate(self, metric: str, version: str, outcome: str, window: float, t: int) -> float | None:
        values = self.series.get((metric, version, outcome))
        return None if values is None else prom_rate(values, t, window)

    def signal(self, signal: str, version: str, t: int) -> tuple[float | None, float | None]:
        """(window value, traffic rate) of a signal as the recording rules give them."""
        w = self.windows[signal]
        if signal == "canary_accuracy":
            correct = self._rate(FEEDBACK_METRIC, version, "correct", w, t)
            wrong = self._rate(FEEDBACK_METRIC, version, "wrong", w, t)
            parts = [r for r in (correct, wrong) if r is not None]
            total = sum(parts) if parts else None
            if total is None:
                return None, None
            value = (correct or 0.0) / total if total > 0 else None
            return value, total
        metric = {"entropy": ENTROPY_METRIC, "squeeze": SQUEEZE_METRIC}[signal]
        count = self._rate(f"{metric}_count", version, "", w, t)
        total = self._rate(f"{metric}_sum", version, "", w, t)
        if count is None or total is None:
            return None, count
        return (total / count if count > 0 else None), count

    def condition(self, cond: Condition, version: str, t: int) -> float | None:
        """The condition's value where it holds at ``t``, else None."""
        if cond.version is not None and cond.version != version:
            return None
        value, rate = self.signal(cond.signal, version, t)
        if value is None or rate is None or rate < float(num(cond.min_rate)):
            return None
        threshold = float(num(cond.threshold))
        holds = value < threshold if cond.op == "<" else value > threshold
        return value if holds else None

    def firing(self, alert: Alert, version: str) -> list[float | None]:
        """For each second, the alert's ``$value`` where it fires, else None.

        Pending until the condition has held for ``for:``; once firing, it stays firing with
        its last value for ``keep_firing_for`` after the condition clears (a pending alert
        whose condition clears is dropped)."""
        hold = duration_seconds(alert.for_)
        keep = duration_seconds(alert.keep_firing_for) if alert.keep_firing_for else 0.0
        active_since: int | None = None
        kept: tuple[int, float] | None = None  # (when the condition cleared, the last value)
        out: list[float | None] = []
        for t in range(self.end + 1):
            values = [self.condition(c, version, t) for c in alert.conditions]
            silenced = bool(alert.unless) and all(
                self.condition(c, version, t) is not None for c in alert.unless
            )
            if all(v is not None for v in values) and not silenced:
                active_since = t if active_since is None else active_since
                kept = None
                out.append(values[0] if t - active_since >= hold else None)
                continue
            last = out[-1] if out else None
            if last is not None and kept is None and keep > 0:
                kept = (t, last)
            if kept is not None and t - kept[0] < keep:
                out.append(kept[1])
            else:
                active_since, kept = None, None
                out.append(None)
        return out


def first(
    seq: Sequence[float | None],
    start: int = 0,
    pred: Callable[[float | None], bool] = lambda v: v is not None,
) -> int | None:
    """Index of the first item from ``start`` for which ``pred`` holds (default: not None)."""
    for i in range(start, len(seq)):
        if pred(seq[i]):
            return i
    return None
