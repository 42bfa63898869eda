"""Generate ``promtool test rules`` unit tests for the rules that a config renders.

The thresholds, windows and ``for:`` durations come from the config, so the tests are generated
with the rules: for each alert, synthetic counters go from clean to bad and back, and the test
pins the evaluation at which the alert fires (silent one evaluation before, firing at it, with
every label and annotation), and the one at which it resolves. Further tests: no traffic at all
(no division by zero, no alert, no recorded mean), traffic below ``min_rate`` (no alert),
natural-drift series that move the entropy or the canary accuracy but not the squeeze score
(PredictionEntropyShift or CanaryAccuracyDegraded, never AdversarialInputSuspected nor
AdversarialAttackDetected), an attack that moves both the canary accuracy and the squeeze score
(AdversarialAttackDetected), feedback that is all wrong (the ``correct`` series never appears),
and, with ``calibrated_version`` set, bad traffic on another version (the label-free alerts stay
silent). With ``escalate_after`` set: canary accuracy down without the squeeze signature
(CanaryAccuracyEscalated at its ``for:`` boundary, with its ``recipe`` label), and down with the
signature for as long (AdversarialAttackDetected, never CanaryAccuracyEscalated).

The expected evaluation times come from :mod:`alert_rules._simulate`; promtool evaluates the
real rules, so a rule that disagrees with the intended semantics fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alert_rules import _yaml
from alert_rules._health import health_tests
from alert_rules._simulate import Phase, SeriesKey, Simulation, cumulative, first
from alert_rules._spec import (
    ENTROPY_METRIC,
    ESCALATED_ALERT,
    FEEDBACK_METRIC,
    SQUEEZE_METRIC,
    Alert,
    Condition,
    build,
    duration_seconds,
)
from alert_rules._yaml import generated_header
from robustloop.config import RobustloopConfig

_GRID = 64  # signal levels are multiples of 1/64: every counter value is exact in binary
_RANGE = {"canary_accuracy": (0.0, 1.0), "entropy": (0.0, 1.0), "squeeze": (0.0, 2.0)}
_METRIC = {"entropy": ENTROPY_METRIC, "squeeze": SQUEEZE_METRIC}


class GenerationError(Exception):
    """The config's thresholds leave no room for a test series (e.g. a threshold at 0)."""


@dataclass
class _Scenario:
    """One promtool test: series plus expectations."""

    name: str
    phases: list[Phase]
    alert_checks: list[dict[str, Any]] = field(default_factory=list)
    expr_checks: list[dict[str, Any]] = field(default_factory=list)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _series_text(values: list[float], phases: list[Phase], key: SeriesKey) -> str:
    """promtool's expanding notation: ``0 a+bxn ...``, one segment per phase."""
    parts = ["0"]
    t = 0
    for phase in phases:
        inc = phase.increments.get(key, 0.0)
        start = values[t + 1]
        parts.append(f"{_fmt(start)}+{_fmt(inc)}x{phase.seconds - 1}")
        t += phase.seconds
    return " ".join(parts)


def _series_name(key: SeriesKey, model: str) -> str:
    metric, version, outcome = key
    labels = f'model="{model}",version="{version}"'
    if outcome:
        labels += f',outcome="{outcome}"'
    return f"{metric}{{{labels}}}"


def _rate_for(min_rate: float) -> float:
    """A per-second sample rate comfortably above ``min_rate``: a power of two, at least 1."""
    return float(2 ** max(0, math.ceil(math.log2(max(2 * min_rate, 1.0)))))


def _increments(signal: str, version: str, rate: float, level: float) -> dict[SeriesKey, float]:
    if signal == "canary_accuracy":
        return {
            (FEEDBACK_METRIC, version, "correct"): rate * level,
            (FEEDBACK_METRIC, version, "wrong"): rate * (1 - level),
        }
    metric = _METRIC[signal]
    return {(f"{metric}_count", version, ""): rate, (f"{metric}_sum", version, ""): rate * level}


def _grid(value: float) -> float:
    return round(value * _GRID) / _GRID


def _levels(cond: Condition) -> tuple[float, float]:
    """A clean level and a bad level of the condition's signal, on the grid, either side."""
    lo, hi = _RANGE[cond.signal]
    thr = cond.threshold
    if cond.op == ">":
        clean, bad = _grid(lo + (thr - lo) / 2), _grid(thr + (hi - thr) / 2)
        ok = clean < thr < bad
    else:
        clean, bad = _grid(thr + (hi - thr) / 2), _grid(lo + (thr - lo) / 2)
        ok = bad < thr < clean
    if not ok:
        raise GenerationError(
            f"{cond.signal}: threshold {thr} leaves no room between {lo} and {hi} for a clean "
            "and a bad test series; choose a threshold inside the signal's range"
        )
    return clean, bad


class _Builder:
    def __init__(self, cfg: RobustloopConfig) -> None:
        self.cfg = cfg
        self.model = cfg.model.name
        self.spec = build(cfg)
        self.version = cfg.alerts.calibrated_version or "v1"
        a = cfg.alerts
        self.windows = {
            "canary_accuracy": a.canary_accuracy.window,
            "entropy": a.entropy.window,
            "squeeze": a.squeeze.window,
        }
        self.signal_cfg = {"canary_accuracy": a.canary_accuracy, "entropy": a.entropy}
        self.signal_cfg["squeeze"] = a.squeeze
        self.alerts = {al.name: al for al in self.spec.alerts}
        self.span = max(math.ceil(duration_seconds(w)) for w in self.windows.values())

    def rate(self, signal: str) -> float:
        return _rate_for(self.signal_cfg[signal].min_rate)

    def simulate(self, phases: list[Phase]) -> Simulation:
        return Simulation(cumulative(phases), self.windows)

    def expected(self, alert: Alert, value: float) -> dict[str, Any]:
        labels = {**alert.labels(), "model": self.model, "version": self.version}
        annotations = alert.annotations(
            self.cfg.alerts.runbook_base_url,
            model=self.model,
            version=self.version,
            value=f"{value:.3f}",
        )
        return {"exp_labels": labels, "exp_annotations": annotations}

    def episode(
        self, alert: Alert, changed: Mapping[str, float], clean: Mapping[str, float]
    ) -> list[Phase]:
        """Clean traffic, then ``changed`` levels, then clean again (every signal at its rate)."""
        hold = math.ceil(duration_seconds(alert.for_))
        keep = math.ceil(duration_seconds(alert.keep_firing_for or "0s"))
        return [
            self.phase(self.span + 5, clean),
            self.phase(self.span + hold + 10, {**clean, **changed}),
            self.phase(self.span + keep + 10, clean),
        ]

    def phase(self, seconds: int, levels: Mapping[str, float]) -> Phase:
        """``seconds`` of traffic with each signal at its level and rate."""
        inc: dict[SeriesKey, float] = {}
        for signal, level in levels.items():
            inc.update(_increments(signal, self.version, self.rate(signal), level))
        return Phase(seconds, inc)

    def boundary(self, name: str, alert: Alert, phases: list[Phase]) -> _Scenario:
        """Fire at the ``for:`` boundary, resolve after the bad traffic stops."""
        sim = self.simulate(phases)
        states = sim.firing(alert, self.version)
        fire = first(states)
        if fire is None:
            raise GenerationError(f"{alert.name}: the generated series never fire (a bug)")
        resolve = first(states, fire, lambda v: v is None)
        if resolve is None:
            raise GenerationError(f"{alert.name}: the generated series never resolve (a bug)")
        fired_value, last_value = states[fire], states[resolve - 1]
        assert fired_value is not None and last_value is not None
        return _Scenario(
            name,
            phases,
            alert_checks=[
                self.check(alert.name, fire - 1, []),
                self.check(alert.name, fire, [self.expected(alert, fired_value)]),
                self.check(alert.name, resolve - 1, [self.expected(alert, last_value)]),
                self.check(alert.name, resolve, []),
            ],
        )

    @staticmethod
    def check(alertname: str, t: int, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eval_time": f"{t}s", "alertname": alertname, "exp_alerts": alerts}


def _safe_levels(
    builder: _Builder,
    alert: Alert,
    cond: Condition,
    others_bad: Mapping[str, float] | None = None,
    others_clean: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Levels whose window values never sit on the threshold nor on a %.3f rounding tie.

    ``others_bad`` and ``others_clean`` set the levels of the alert's other conditions'
    signals in the episode (an alert of several conditions fires only when all hold).
    """
    clean, bad = _levels(cond)
    step = 1 / _GRID
    for shift in (0, 1, -1, 2, -2, 3, -3):
        candidate = bad + shift * step * (1 if cond.op == ">" else -1)
        lo, hi = _RANGE[cond.signal]
        if not lo <= candidate <= hi:
            continue
        phases = builder.episode(
            alert,
            {**(others_bad or {}), cond.signal: candidate},
            {**(others_clean or {}), cond.signal: clean},
        )
        sim = builder.simulate(phases)
        if _well_separated(sim, alert, cond, builder.version):
            return clean, candidate
    raise GenerationError(f"{cond.signal}: no test level avoids the threshold {cond.threshold}")


def _well_separated(sim: Simulation, alert: Alert, cond: Condition, version: str) -> bool:
    """No window value sits on the threshold; no checked ``$value`` sits on a %.3f tie."""
    for t in range(sim.end + 1):
        value, _ = sim.signal(cond.signal, version, t)
        if value is not None and abs(value - cond.threshold) < 1e-9:
            return False
    states = sim.firing(alert, version)
    fire = first(states)
    resolve = first(states, fire, lambda v: v is None) if fire is not None else None
    if fire is None or resolve is None:
        return False
    for value in (states[fire], states[resolve - 1]):
        assert value is not None
        scaled = value * 1000
        if abs(scaled - math.floor(scaled) - 0.5) < 1e-6:
            return False
    return True


def _also_silent(b: _Builder, scenario: _Scenario, alert: Alert | None) -> None:
    """Check that ``alert`` (if rendered) is silent at every time the scenario checks."""
    if alert is None:
        return
    for t in sorted({int(c["eval_time"][:-1]) for c in scenario.alert_checks}):
        scenario.alert_checks.append(b.check(alert.name, t, []))


def _scenarios(b: _Builder) -> list[_Scenario]:
    out: list[_Scenario] = []
    canary = b.alerts.get("CanaryAccuracyDegraded")
    entropy = b.alerts.get("PredictionEntropyShift")
    squeeze = b.alerts.get("AdversarialInputSuspected")
    attack = b.alerts.get("AdversarialAttackDetected")

    squeeze_clean = {"squeeze": _levels(squeeze.conditions[0])[0]} if squeeze else {}
    if canary is not None:
        cond = canary.conditions[0]
        clean, bad = _safe_levels(b, canary, cond, squeeze_clean, squeeze_clean)
        phases = b.episode(canary, {cond.signal: bad}, {cond.signal: clean, **squeeze_clean})
        scenario = b.boundary(
            "Canary accuracy falls, squeeze score unchanged (natural drift): "
            "CanaryAccuracyDegraded at its for boundary, never AdversarialAttackDetected",
            canary,
            phases,
        )
        _also_silent(b, scenario, attack)
        out.append(scenario)
        # All feedback wrong: the outcome="correct" series never exists; accuracy is 0, not absent.
        wrong_only = [
            Phase(b.span + 5, {(FEEDBACK_METRIC, b.version, "wrong"): b.rate(cond.signal)}),
            Phase(b.span + 20, {(FEEDBACK_METRIC, b.version, "wrong"): b.rate(cond.signal)}),
        ]
        sim = b.simulate(wrong_only)
        fire = first(sim.firing(canary, b.version))
        assert fire is not None
        out.append(
            _Scenario(
                "CanaryAccuracyDegraded: every answer wrong (no outcome=correct series)",
                wrong_only,
                alert_checks=[
                    b.check(canary.name, fire - 1, []),
                    b.check(canary.name, fire, [b.expected(canary, 0.0)]),
                ],
            )
        )

    out += _escalation(b, squeeze_clean)

    entropy_levels = squeeze_levels = None
    if entropy is not None:
        entropy_levels = _safe_levels(b, entropy, entropy.conditions[0])
    if squeeze is not None:
        squeeze_levels = _safe_levels(b, squeeze, squeeze.conditions[0])

    if entropy is not None and entropy_levels is not None:
        clean_levels = {"entropy": entropy_levels[0]}
        if squeeze_levels is not None:
            clean_levels["squeeze"] = squeeze_levels[0]
        phases = b.episode(entropy, {"entropy": entropy_levels[1]}, clean_levels)
        scenario = b.boundary(
            "Natural drift (entropy up, squeeze score unchanged): PredictionEntropyShift at its "
            "for boundary, never AdversarialInputSuspected nor AdversarialAttackDetected",
            entropy,
            phases,
        )
        _also_silent(b, scenario, squeeze)
        _also_silent(b, scenario, attack)
        out.append(scenario)

    if squeeze is not None and squeeze_levels is not None:
        clean_levels = {"squeeze": squeeze_levels[0]}
        changed = {"squeeze": squeeze_levels[1]}
        if entropy_levels is not None:
            clean_levels["entropy"] = entropy_levels[0]
        out.append(
            b.boundary(
                "Evasion attack (squeeze score up): AdversarialInputSuspected at its for "
                "boundary, then recovery",
                squeeze,
                b.episode(squeeze, changed, clean_levels),
            )
        )

    if attack is not None:
        accuracy_cond, squeeze_cond = attack.conditions
        squeeze_bad = {"squeeze": _levels(squeeze_cond)[1]}
        clean, bad = _safe_levels(b, attack, accuracy_cond, squeeze_bad, squeeze_clean)
        phases = b.episode(
            attack,
            {accuracy_cond.signal: bad, **squeeze_bad},
            {accuracy_cond.signal: clean, **squeeze_clean},
        )
        out.append(
            b.boundary(
                "Evasion attack (canary accuracy down, squeeze score up): "
                "AdversarialAttackDetected at its for boundary, then recovery",
                attack,
                phases,
            )
        )
        # Drift first, then an attack on top: the squeeze crossing alone sets the boundary,
        # which pins the squeeze threshold of this alert.
        before, during, after = phases
        drift = b.phase(during.seconds, {accuracy_cond.signal: bad, **squeeze_clean})
        out.append(
            b.boundary(
                "Drift (canary accuracy down), then an attack (squeeze score up): "
                "AdversarialAttackDetected only after the squeeze crossing",
                attack,
                [before, drift, during, after],
            )
        )
        # Too few scored images to judge the squeeze score: the canary alone cannot remediate.
        squeeze_min = b.signal_cfg["squeeze"].min_rate
        if squeeze_min > 0:
            sparse = _increments("canary_accuracy", b.version, b.rate("canary_accuracy"), bad)
            sparse.update(
                _increments("squeeze", b.version, squeeze_min / 2, squeeze_bad["squeeze"])
            )
            seconds = 3 * b.span + 30
            scenario = _Scenario(
                "Canary accuracy down, squeeze score up but below its min_rate: no "
                "AdversarialAttackDetected",
                [Phase(seconds, sparse)],
            )
            scenario.alert_checks += [b.check(attack.name, t, []) for t in (2 * b.span, seconds)]
            out.append(scenario)

    alerts = [a for a in (canary, entropy, squeeze, attack) if a is not None]
    bad_levels: dict[str, float] = {}
    if canary is not None:
        bad_levels["canary_accuracy"] = _levels(canary.conditions[0])[1]
    if entropy_levels is not None:
        bad_levels["entropy"] = entropy_levels[1]
    if squeeze_levels is not None:
        bad_levels["squeeze"] = squeeze_levels[1]

    # No traffic at all: counters exist but stand still.
    flat: dict[SeriesKey, float] = {}
    for signal in _RANGE:
        flat.update({k: 0.0 for k in _increments(signal, b.version, 1.0, 0.5)})
    total = 3 * b.span + 30
    idle = [Phase(total, flat)]
    scenario = _Scenario("No traffic at all: no division by zero, no alert", idle)
    for t in (b.span, 2 * b.span, total):
        scenario.alert_checks += [b.check(a.name, t, []) for a in alerts]
    spec = b.spec
    for group_records in spec.records.values():
        for record in group_records:
            is_rate = ":rate" in record.name
            samples = (
                [
                    {
                        "labels": f'{record.name}{{model="{b.model}",version="{b.version}"}}',
                        "value": 0,
                    }
                ]
                if is_rate
                else []
            )
            scenario.expr_checks.append(
                {"expr": record.name, "eval_time": f"{total}s", "exp_samples": samples}
            )
    out.append(scenario)

    # Bad values, but below each signal's min_rate: the signals say nothing.
    low: dict[SeriesKey, float] = {}
    for signal, level in bad_levels.items():
        min_rate = b.signal_cfg[signal].min_rate
        if min_rate > 0:
            low.update(_increments(signal, b.version, min_rate / 2, level))
    if low:
        scenario = _Scenario("Traffic below min_rate: no alert", [Phase(total, low)])
        for t in (2 * b.span, total):
            scenario.alert_checks += [
                b.check(a.name, t, [])
                for a in alerts
                if b.signal_cfg[a.conditions[0].signal].min_rate > 0
            ]
        out.append(scenario)

    # Thresholds calibrated for one version judge that version only.
    calibrated = b.cfg.alerts.calibrated_version
    label_free = [a for a in (entropy, squeeze) if a is not None]
    if calibrated and label_free:
        other: dict[SeriesKey, float] = {}
        for signal in ("entropy", "squeeze"):
            if signal in bad_levels:
                other.update(
                    _increments(signal, f"not-{calibrated}", b.rate(signal), bad_levels[signal])
                )
        scenario = _Scenario(
            f"Bad label-free signals on another version than {calibrated}: no alert",
            [Phase(total, other)],
        )
        scenario.alert_checks += [b.check(a.name, total, []) for a in label_free]
        out.append(scenario)
    return out


def _escalation(b: _Builder, squeeze_clean: Mapping[str, float]) -> list[_Scenario]:
    """CanaryAccuracyEscalated: fires at its ``for:`` (``escalate_after``) under drift, with the
    recipe label; an attack with the squeeze signature for as long fires
    AdversarialAttackDetected instead, never the escalation."""
    escalated = b.alerts.get(ESCALATED_ALERT)
    if escalated is None:
        return []
    attack = b.alerts.get("AdversarialAttackDetected")
    cond = escalated.conditions[0]
    clean, bad = _safe_levels(b, escalated, cond, squeeze_clean, squeeze_clean)
    phases = b.episode(escalated, {cond.signal: bad}, {cond.signal: clean, **squeeze_clean})
    drift = b.boundary(
        "Canary accuracy stays down, squeeze score unchanged (natural drift or a stealthy "
        f"attack): {ESCALATED_ALERT} at its for boundary (escalate_after), never "
        "AdversarialAttackDetected",
        escalated,
        phases,
    )
    _also_silent(b, drift, attack)
    out = [drift]
    if attack is not None:
        squeeze_bad = {"squeeze": _levels(attack.conditions[1])[1]}
        with_signature = b.episode(
            escalated,
            {cond.signal: bad, **squeeze_bad},
            {cond.signal: clean, **squeeze_clean},
        )
        states = b.simulate(with_signature).firing(attack, b.version)
        fire = first(states)
        if fire is None:
            raise GenerationError(f"{attack.name}: the generated series never fire (a bug)")
        value = states[fire]
        assert value is not None
        scenario = _Scenario(
            "Canary accuracy down with the squeeze signature as long as escalate_after: "
            f"AdversarialAttackDetected, never {ESCALATED_ALERT}",
            with_signature,
            alert_checks=[
                b.check(attack.name, fire - 1, []),
                b.check(attack.name, fire, [b.expected(attack, value)]),
            ],
        )
        end_of_bad = with_signature[0].seconds + with_signature[1].seconds
        times = sorted({*(int(c["eval_time"][:-1]) for c in drift.alert_checks), end_of_bad})
        scenario.alert_checks += [b.check(escalated.name, t, []) for t in times]
        out.append(scenario)
    return out


def _at_scrape_interval(b: _Builder) -> list[dict[str, Any]]:
    """With a scrape interval over a second, one more test whose samples arrive at that
    interval, as a cluster's Prometheus sees them: an attack (canary accuracy down, squeeze
    score up) must fire its alerts, which it cannot when a window holds too few scrapes."""
    interval = duration_seconds(b.cfg.alerts.scrape_interval)
    canary = b.alerts.get("CanaryAccuracyDegraded")
    squeeze = b.alerts.get("AdversarialInputSuspected")
    if interval <= 1 or canary is None or squeeze is None:
        return []
    attack = b.alerts.get("AdversarialAttackDetected")
    conds = {"canary_accuracy": canary.conditions[0], "squeeze": squeeze.conditions[0]}
    levels = {signal: _levels(cond) for signal, cond in conds.items()}
    step = int(interval)
    widest = max(duration_seconds(w) for w in b.windows.values())
    clean_samples = math.ceil((widest + 2 * step) / step)
    active_from = clean_samples * step + widest  # every window holds attack samples only
    longest_for = max(duration_seconds(a.for_) for a in (canary, squeeze))
    check_at = math.ceil((active_from + longest_for) / step) * step + 2 * step
    attack_samples = math.ceil((check_at - clean_samples * step) / step) + 2

    series = []
    for signal, (clean, bad) in levels.items():
        rate = b.rate(signal) * step
        for key, clean_inc in _increments(signal, b.version, rate, clean).items():
            bad_inc = _increments(signal, b.version, rate, bad)[key]
            start = clean_inc * clean_samples
            values = (
                f"0+{_fmt(clean_inc)}x{clean_samples} "
                f"{_fmt(start + bad_inc)}+{_fmt(bad_inc)}x{attack_samples - 1}"
            )
            series.append({"series": _series_name(key, b.model), "values": values})
    bad_accuracy, bad_squeeze = levels["canary_accuracy"][1], levels["squeeze"][1]
    firing = [(canary, bad_accuracy), (squeeze, bad_squeeze)]
    if attack is not None:
        firing.append((attack, bad_accuracy))
    checks = []
    for alert, value in firing:
        checks.append(b.check(alert.name, clean_samples * step, []))
        checks.append(b.check(alert.name, check_at, [b.expected(alert, value)]))
    return [
        {
            "name": f"An attack scraped every {b.cfg.alerts.scrape_interval}: its alerts fire",
            "interval": f"{step}s",
            "input_series": series,
            "alert_rule_test": checks,
        }
    ]


def render_promtool_tests(
    cfg: RobustloopConfig, *, rules_path: str = "robustloop.rules.yaml"
) -> str:
    """The promtool unit-test file for the rules that ``cfg`` renders.

    Args:
        cfg: the configuration the rules were rendered from.
        rules_path: the rules file, relative to the test file's folder (promtool resolves it so).

    Raises:
        GenerationError: a threshold leaves no room for a test series inside the signal's range.
    """
    builder = _Builder(cfg)
    tests: list[dict[str, Any]] = []
    for scenario in _scenarios(builder):
        values = cumulative(scenario.phases)
        test: dict[str, Any] = {
            "name": scenario.name,
            "interval": "1s",
            "input_series": [
                {
                    "series": _series_name(key, builder.model),
                    "values": _series_text(series, scenario.phases, key),
                }
                for key, series in values.items()
            ],
        }
        if scenario.alert_checks:
            test["alert_rule_test"] = scenario.alert_checks
        if scenario.expr_checks:
            test["promql_expr_test"] = scenario.expr_checks
        tests.append(test)
    tests += _at_scrape_interval(builder)
    tests += health_tests(cfg)
    header = generated_header(f"promtool unit tests of the rules of model {cfg.model.name}.")
    document = {"rule_files": [rules_path], "evaluation_interval": "1s", "tests": tests}
    return header + _yaml.dump(document)
