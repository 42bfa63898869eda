"""The rules as data: recording rules, alert conditions and their texts, built from the config.

One description serves three outputs: the Prometheus rules file, the Helm chart's PrometheusRule
groups and the promtool unit tests (which need the same thresholds and annotation texts with the
template variables filled in).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from robustloop.config import RobustloopConfig, SignalAlert
from robustloop.config import duration_seconds as duration_seconds

#: The one rule group: recording rules first, then the alerts. A group evaluates its rules in
#: order, at one timestamp, so every alert sees the values recorded in the same evaluation; an
#: alert that combines the labelled and the label-free signals (AdversarialAttackDetected) needs
#: them all in one group, since separate groups are evaluated independently.
GROUP = "robustloop.rules"

REMEDIATION_LABEL = "remediation"
REMEDIATION_VALUE = "adversarial-training"
NO_REMEDIATION_VALUE = "none"
RECIPE_LABEL = "recipe"
"""An alert label naming the recipe of the remediation it starts; the receiver passes it to the
workflow's ``recipe`` parameter (``workflows.contract.RECIPE_LABEL``)."""
CAPTURED_RECIPE = "captured"
"""The recipe that fine-tunes on the traffic the model server captured."""
ESCALATED_ALERT = "CanaryAccuracyEscalated"
"""Canary accuracy down without the attack signature for ``escalate_after``: remediates with
the captured recipe."""

ENTROPY_METRIC = "robustloop_prediction_entropy"
MAX_PROBABILITY_METRIC = "robustloop_max_probability"
SQUEEZE_METRIC = "robustloop_squeeze_score"
FEEDBACK_METRIC = "robustloop_feedback_total"

# Go template fragments of the annotations; the promtool tests substitute concrete values.
_MODEL = "{{ $labels.model }}"
_VERSION = "{{ $labels.version }}"
_VALUE = '{{ $value | printf "%.3f" }}'


def num(value: float) -> str:
    """A threshold as PromQL and the annotations print it (6 significant digits)."""
    return f"{value:.6g}"


@dataclass(frozen=True)
class Record:
    """A recording rule."""

    name: str
    expr: str


@dataclass(frozen=True)
class Condition:
    """``value_record op threshold`` while ``rate_record >= min_rate`` (the traffic guard)."""

    signal: str
    value_record: str
    rate_record: str
    op: str
    threshold: float
    min_rate: float
    version: str | None

    def promql(self) -> str:
        selector = f'{{version="{self.version}"}}' if self.version else ""
        return (
            f"{self.value_record}{selector} {self.op} {num(self.threshold)}\n"
            f"and on (model, version)\n"
            f"{self.rate_record}{selector} >= {num(self.min_rate)}"
        )


@dataclass(frozen=True)
class Alert:
    """An alerting rule; ``$value`` is the first condition's value."""

    name: str
    group: str
    conditions: tuple[Condition, ...]
    for_: str
    severity: str
    remediate: bool
    summary: str
    description: str
    expr: str = ""
    """The alert's PromQL when it is not built from signal conditions (the health alerts)."""
    model_label: str = ""
    """A static ``model`` label, for an expression whose series carry none."""
    unless: tuple[Condition, ...] = ()
    """Conditions that together silence the alert (``unless on (model, version)``)."""
    recipe: str | None = None
    """The remediation recipe the alert selects (its :data:`RECIPE_LABEL`); None: the
    workflow's default."""
    keep_firing_for: str | None = None
    """How long the alert stays firing after its condition clears (Prometheus's
    ``keep_firing_for``; its ``$value`` stays the last one). Remediating alerts keep firing for
    the longer of Alertmanager's ``group_wait`` and ``group_interval``: a new group is notified
    ``group_wait`` after its first alert, an alert joining a group that exists at the group's
    next ``group_interval`` tick, and an alert that had resolved by then would never reach the
    receiver."""

    def promql(self) -> str:
        if self.expr:
            return self.expr
        expr = "\nand on (model, version)\n".join(c.promql() for c in self.conditions)
        if self.unless:
            silencer = "\nand on (model, version)\n".join(c.promql() for c in self.unless)
            expr += f"\nunless on (model, version)\n(\n{silencer}\n)"
        return expr

    def labels(self) -> dict[str, str]:
        labels = {"model": self.model_label} if self.model_label else {}
        return {
            **labels,
            "severity": self.severity,
            REMEDIATION_LABEL: REMEDIATION_VALUE if self.remediate else NO_REMEDIATION_VALUE,
            **({RECIPE_LABEL: self.recipe} if self.recipe else {}),
        }

    def annotations(
        self, base_url: str, *, model: str = _MODEL, version: str = _VERSION, value: str = _VALUE
    ) -> dict[str, str]:
        """The annotations, as templates (defaults) or filled in with the given strings."""

        def fill(text: str) -> str:
            return (
                text.replace("{model}", model)
                .replace("{version}", version)
                .replace("{value}", value)
            )

        return {
            "summary": fill(self.summary),
            "description": fill(self.description),
            "runbook_url": f"{base_url}#{self.name.lower()}",
        }


@dataclass(frozen=True)
class RuleSet:
    """Everything the rules file holds, grouped."""

    records: dict[str, tuple[Record, ...]]
    alerts: tuple[Alert, ...]


def effective_threshold(signal: SignalAlert, *, labelled: bool) -> float:
    """The number the window's value is compared with.

    ``absolute``: the threshold itself. ``relative``: ``baseline * threshold`` for the labelled
    canary accuracy (a fraction of the clean accuracy), ``baseline + threshold`` for a label-free
    signal (a shift of the clean mean).
    """
    if signal.mode == "absolute":
        return signal.threshold
    assert signal.baseline is not None  # the config model refuses relative without a baseline
    return signal.baseline * signal.threshold if labelled else signal.baseline + signal.threshold


def _basis(signal: SignalAlert, calibrated_version: str | None, *, labelled: bool) -> str:
    if signal.mode == "absolute":
        return "absolute threshold"
    operator = f"x {num(signal.threshold)}" if labelled else f"+ {num(signal.threshold)}"
    assert signal.baseline is not None
    where = f", calibrated on version {calibrated_version}" if calibrated_version else ""
    return f"clean baseline {num(signal.baseline)} {operator}{where}"


def _action(remediate: bool) -> str:
    if remediate:
        return "The receiver starts adversarial training of this model (see the runbook)."
    return "Notification only: this alert does not start a remediation (see the runbook)."


def build(cfg: RobustloopConfig) -> RuleSet:
    """Describe the recording rules and alerts that ``cfg`` asks for."""
    alerts_cfg = cfg.alerts
    model = cfg.model.name
    sel = f'model="{model}"'
    canary, entropy, squeeze = alerts_cfg.canary_accuracy, alerts_cfg.entropy, alerts_cfg.squeeze
    version = alerts_cfg.calibrated_version

    cw, ew, sw = canary.window, entropy.window, squeeze.window
    feedback_rate = f"model_version:robustloop_feedback:rate{cw}"
    accuracy = f"model_version:robustloop_feedback:accuracy{cw}"
    entropy_rate = f"model_version:{ENTROPY_METRIC}:rate{ew}"
    entropy_mean = f"model_version:{ENTROPY_METRIC}:mean{ew}"
    maxp_mean = f"model_version:{MAX_PROBABILITY_METRIC}:mean{ew}"
    squeeze_rate = f"model_version:{SQUEEZE_METRIC}:rate{sw}"
    squeeze_mean = f"model_version:{SQUEEZE_METRIC}:mean{sw}"

    def rate(series: str, window: str) -> str:
        return f"sum by (model, version) (rate({series}[{window}]))"

    correct = f'{FEEDBACK_METRIC}{{{sel},outcome="correct"}}'
    canary_records = (
        Record(feedback_rate, rate(f"{FEEDBACK_METRIC}{{{sel}}}", cw)),
        Record(
            accuracy,
            f"(\n  {rate(correct, cw)}\n  or\n  0 * {feedback_rate}\n)\n/\n({feedback_rate} > 0)",
        ),
    )
    input_records = (
        Record(entropy_rate, rate(f"{ENTROPY_METRIC}_count{{{sel}}}", ew)),
        Record(
            entropy_mean,
            f"{rate(f'{ENTROPY_METRIC}_sum{{{sel}}}', ew)}\n/\n({entropy_rate} > 0)",
        ),
        Record(
            maxp_mean,
            f"{rate(f'{MAX_PROBABILITY_METRIC}_sum{{{sel}}}', ew)}\n/\n"
            f"({rate(f'{MAX_PROBABILITY_METRIC}_count{{{sel}}}', ew)} > 0)",
        ),
        Record(squeeze_rate, rate(f"{SQUEEZE_METRIC}_count{{{sel}}}", sw)),
        Record(
            squeeze_mean,
            f"{rate(f'{SQUEEZE_METRIC}_sum{{{sel}}}', sw)}\n/\n({squeeze_rate} > 0)",
        ),
    )

    canary_thr = effective_threshold(canary, labelled=True)
    entropy_thr = effective_threshold(entropy, labelled=False)
    squeeze_thr = effective_threshold(squeeze, labelled=False)
    canary_cond = Condition(
        "canary_accuracy", accuracy, feedback_rate, "<", canary_thr, canary.min_rate, None
    )
    entropy_cond = Condition(
        "entropy", entropy_mean, entropy_rate, ">", entropy_thr, entropy.min_rate, version
    )
    squeeze_cond = Condition(
        "squeeze", squeeze_mean, squeeze_rate, ">", squeeze_thr, squeeze.min_rate, version
    )
    judged = f"version {version} only" if version else "every version"

    alerts: list[Alert] = []
    if canary.enabled:
        alerts.append(
            Alert(
                name="CanaryAccuracyDegraded",
                group=GROUP,
                conditions=(canary_cond,),
                for_=canary.for_,
                severity=canary.severity,
                remediate=canary.remediate,
                summary="Canary accuracy of {model} version {version} fell to {value}",
                description=(
                    "Ground truth fed back for a sample of live requests says that {model} "
                    "version {version} answered {value} of them correctly over the last "
                    f"{cw}, below {num(canary_thr)} "
                    f"({_basis(canary, None, labelled=True)}; at least "
                    f"{num(canary.min_rate)} feedback/s; judges every version). Labelled "
                    "evidence of harm: an evasion attack or a shift of the inputs "
                    "(AdversarialAttackDetected tells them apart). " + _action(canary.remediate)
                ),
            )
        )
    if canary.enabled and squeeze.enabled and alerts_cfg.attack_signature:
        alerts.append(
            Alert(
                name="AdversarialAttackDetected",
                group=GROUP,
                conditions=(canary_cond, squeeze_cond),
                for_=canary.for_,
                severity=canary.severity,
                remediate=True,
                summary="Evasion attack on {model} version {version}: canary accuracy {value} "
                "with the squeeze signature",
                description=(
                    "Ground truth fed back for live requests says that {model} version {version} "
                    f"answered {{value}} of them correctly over the last {cw}, below "
                    f"{num(canary_thr)} ({_basis(canary, None, labelled=True)}), while the mean "
                    f"feature-squeezing score over the last {sw} is above {num(squeeze_thr)} "
                    f"({_basis(squeeze, version, labelled=False)}; judges {judged}). Labelled "
                    "harm with the signature of perturbations tuned to exact pixel values: an "
                    "evasion attack, not natural drift (which lowers the accuracy without "
                    "raising the squeeze score). " + _action(True)
                ),
            )
        )
    attack_rendered = canary.enabled and squeeze.enabled and alerts_cfg.attack_signature
    if canary.enabled and canary.escalate_after is not None:
        without = (
            "without the squeeze score above "
            f"{num(squeeze_thr)} ({_basis(squeeze, version, labelled=False)}; judges {judged}), "
            "so without AdversarialAttackDetected"
            if attack_rendered
            else "(AdversarialAttackDetected is not rendered)"
        )
        alerts.append(
            Alert(
                name=ESCALATED_ALERT,
                group=GROUP,
                conditions=(canary_cond,),
                unless=(squeeze_cond,) if attack_rendered else (),
                for_=canary.escalate_after,
                severity=canary.severity,
                remediate=True,
                recipe=CAPTURED_RECIPE,
                summary="Canary accuracy of {model} version {version} stayed down for "
                f"{canary.escalate_after} without the attack signature: {{value}}",
                description=(
                    "Ground truth fed back for live requests says that {model} version "
                    f"{{version}} answered {{value}} of them correctly over the last {cw}, below "
                    f"{num(canary_thr)} ({_basis(canary, None, labelled=True)}; at least "
                    f"{num(canary.min_rate)} feedback/s), for {canary.escalate_after} without a "
                    f"break, {without}. Persistent labelled harm without an attack's signature: "
                    "natural drift, or an attack that keeps the squeeze score flat; either way "
                    "the model must learn from the traffic that hurt. The receiver starts "
                    "adversarial fine-tuning on the traffic the server captured, mixed with the "
                    "training split (recipe captured), gated also on the captured held-out part "
                    "(see the runbook)."
                ),
            )
        )
    if entropy.enabled:
        alerts.append(
            Alert(
                name="PredictionEntropyShift",
                group=GROUP,
                conditions=(entropy_cond,),
                for_=entropy.for_,
                severity=entropy.severity,
                remediate=entropy.remediate,
                summary="Prediction entropy of {model} version {version} rose to {value}",
                description=(
                    "The mean normalised softmax entropy of {model} version {version} over the "
                    f"last {ew} is {{value}}, above {num(entropy_thr)} "
                    f"({_basis(entropy, version, labelled=False)}; at least "
                    f"{num(entropy.min_rate)} images/s; judges {judged}). The model is less "
                    "certain than on clean inputs: an attack, or natural drift such as noise. "
                    + _action(entropy.remediate)
                ),
            )
        )
    if squeeze.enabled:
        alerts.append(
            Alert(
                name="AdversarialInputSuspected",
                group=GROUP,
                conditions=(squeeze_cond,),
                for_=squeeze.for_,
                severity=squeeze.severity,
                remediate=squeeze.remediate,
                summary="Adversarial inputs suspected at {model} version {version}: "
                "squeeze score {value}",
                description=(
                    "The mean feature-squeezing score of {model} version {version} over the last "
                    f"{sw} is {{value}}, above {num(squeeze_thr)} "
                    f"({_basis(squeeze, version, labelled=False)}; at least "
                    f"{num(squeeze.min_rate)} scored images/s; judges {judged}). Predictions "
                    "that change when the input is squeezed are the signature of perturbations "
                    "tuned to exact pixel values: an evasion attack. " + _action(squeeze.remediate)
                ),
            )
        )
    kept = max(alerts_cfg.group_wait, alerts_cfg.group_interval, key=duration_seconds)
    return RuleSet(
        records={GROUP: canary_records + input_records},
        alerts=tuple(replace(a, keep_firing_for=kept) if a.remediate else a for a in alerts),
    )
