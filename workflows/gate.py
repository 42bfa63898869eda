"""The promotion gate: is the candidate provably more robust, and not too much worse on clean data?

Both models are judged on the same held-out evaluation images (never seen by training), clean and
under PGD with random restarts (at least 20 steps: the threat model's floor; FGSM alone is never
enough, since a model can mask FGSM's gradient and still fall to PGD). Because the examples are
paired, the decision uses paired statistics (:mod:`workflows._stats`):

* robust accuracy must rise by at least ``gate.min_robust_gain``: the one-sided lower confidence
  bound of the paired gain must reach it, and McNemar's mid-p test must find the gain significant;
* clean accuracy may fall by at most ``gate.max_clean_drop``: the one-sided upper confidence bound
  of the paired drop must stay within it;
* for a candidate of the captured recipe, also on the held-out part of the captured set (live
  inputs with the ground truth fed back, never trained on: :mod:`training.captured`): its
  accuracy on those same examples may fall at most ``gate.max_captured_drop`` below
  production's (0 by default: not worse). The candidate was made for that traffic; one that does
  not do at least as well there as the model it replaces has not fixed what hurt.

A raw comparison of two accuracies is not a decision: on a few hundred images it moves by several
points from one random restart to the next.

:func:`evaluate_pair` measures (torch, in the ``evaluate`` step); :func:`decide` judges (pure,
in the ``gate`` step); both are used by ``robustloop gate`` too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from robustloop.config import GateConfig, RobustloopConfig
from workflows._stats import mcnemar_midp, paired_counts, paired_difference_interval

MIN_ATTACK_STEPS = 20
"""The gate never judges under an attack weaker than PGD-20."""


class GateError(Exception):
    """The gate cannot judge (no baseline, malformed evaluation); the message says why."""


def pack_bits(values: list[bool]) -> str:
    """Per-example correctness as a compact hex string (bit i = example i) for a parameter."""
    number = 0
    for i, value in enumerate(values):
        if value:
            number |= 1 << i
    return format(number, "x")


def unpack_bits(text: str, n: int) -> list[bool]:
    """Inverse of :func:`pack_bits` for ``n`` examples."""
    try:
        number = int(text, 16)
    except ValueError:
        raise GateError(f"per-example correctness {text[:20]!r}... is not a hex string") from None
    if number >> n:
        raise GateError(f"per-example correctness has more than n={n} examples")
    return [bool(number >> i & 1) for i in range(n)]


def gate_eps(
    cfg: RobustloopConfig, *, override: float | None = None, trained: float | None = None
) -> float:
    """The eps the gate attacks at: one rule for the command and the workflow.

    A person's explicit ``override`` (``robustloop gate --eps``) first; then the policy's
    ``gate.eps``; else the eps the candidate was trained against (``trained``, the workflow's
    ``eps`` parameter, else ``remediation.eps``).
    """
    if override is not None:
        return float(override)
    if cfg.gate.eps is not None:
        return float(cfg.gate.eps)
    return float(trained if trained is not None else cfg.remediation.eps)


def evaluate_pair(
    cfg: RobustloopConfig,
    candidate: str,
    baseline: str = "production",
    eps: float | None = None,
    *,
    trained_eps: float | None = None,
    captured: bool = False,
) -> dict[str, Any]:
    """Evaluate candidate and baseline on the held-out split, clean and under PGD with restarts,
    and with ``captured`` also clean on the captured set's held-out part.

    Args:
        cfg: the config (data split, store, gate attack settings).
        candidate: version id of the candidate.
        baseline: version id or ``production`` (resolved now; the resolved id is recorded).
        eps: attack radius chosen by a person; else :func:`gate_eps`'s rule, with
            ``trained_eps`` (the workflow's parameter) for the candidate's training eps.
        captured: judge on the captured set's held-out part too (the captured recipe).

    Returns:
        A JSON-serialisable evaluation: attack settings, and per model its version, clean and
        robust accuracy and per-example correctness (packed); with ``captured`` also
        ``captured_n``, ``captured_manifest`` and per model ``captured`` (accuracy, correctness).

    Raises:
        GateError: there is no production model to compare with, the candidate is it,
            ``device`` names a device this machine lacks, or (``captured``) the captured set
            is too small, tampered or unfit for the model.
    """
    import training

    try:
        device = training.resolve_device(cfg.device)
    except training.DeviceError as exc:
        raise GateError(str(exc)) from None
    store = training.ModelStore(cfg.store.path)
    if baseline == "production":
        current = store.production()
        if current is None:
            raise GateError(
                f"there is no production model in {cfg.store.path} to compare the candidate "
                "with; train one (`robustloop train`) or promote one (`robustloop models promote`)"
            )
        baseline = current
    try:
        baseline = store.resolve(baseline)
        candidate = store.resolve(candidate)
    except training.StoreError as exc:
        raise GateError(str(exc)) from None
    if candidate == baseline:
        raise GateError(f"the candidate {candidate} is the baseline itself; nothing to judge")
    eps = gate_eps(cfg, override=eps, trained=trained_eps)
    n = min(cfg.gate.n, cfg.data.eval_size)
    splits = training.make_splits(cfg.data)
    result: dict[str, Any] = {
        "n": n,
        "eps": eps,
        "attack": {
            "name": "pgd",
            "steps": cfg.gate.attack_steps,
            "restarts": cfg.gate.restarts,
        },
    }
    holdout = None
    if captured:
        try:
            part = training.load_captured_split(cfg.capture, store.manifest(baseline).spec)
        except training.DatasetError as exc:
            raise GateError(str(exc)) from None
        holdout = part.holdout
        result["captured_n"] = len(holdout)
        result["captured_manifest"] = part.manifest_sha256
    for role, version in (("candidate", candidate), ("baseline", baseline)):
        model, manifest = store.load(version, device)
        try:
            training.check_fits(splits, manifest.spec, version)
        except training.DatasetError as exc:
            raise GateError(str(exc)) from None
        clean = training.evaluate(model, splits.eval, attack="none", n=n)
        robust = training.evaluate(
            model,
            splits.eval,
            attack="pgd",
            eps=eps,
            steps=cfg.gate.attack_steps,
            restarts=cfg.gate.restarts,
            n=n,
        )
        result[role] = {
            "version": version,
            "clean": _outcome(clean.correct),
            "robust": _outcome(robust.correct),
        }
        if holdout is not None:
            on_captured = training.evaluate(model, holdout, attack="none")
            result[role]["captured"] = _outcome(on_captured.correct)
    return result


def _outcome(correct: Any) -> dict[str, Any]:
    values = [bool(v) for v in correct.tolist()]
    return {"accuracy": sum(values) / len(values), "correct": pack_bits(values)}


@dataclass
class GateDecision:
    """The gate's verdict with the figures and reasons behind it (JSON via :meth:`as_dict`)."""

    passed: bool
    candidate: str
    baseline: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


def _correctness(evaluation: dict[str, Any], role: str, kind: str) -> list[bool]:
    try:
        n = int(evaluation["captured_n" if kind == "captured" else "n"])
        return unpack_bits(str(evaluation[role][kind]["correct"]), n)
    except (KeyError, TypeError, ValueError) as exc:
        raise GateError(f"evaluation lacks {role}.{kind}.correct or n ({exc!r})") from None


def decide(evaluation: dict[str, Any], policy: GateConfig) -> GateDecision:
    """Judge an evaluation (from :func:`evaluate_pair`) against the gate policy.

    Raises:
        GateError: the evaluation is malformed (then nothing may be promoted).
    """
    try:
        candidate = str(evaluation["candidate"]["version"])
        baseline = str(evaluation["baseline"]["version"])
        attack = evaluation["attack"]
    except (KeyError, TypeError) as exc:
        raise GateError(f"evaluation lacks {exc}; expected the output of evaluate_pair") from None
    decision = GateDecision(passed=True, candidate=candidate, baseline=baseline)
    alpha = policy.alpha
    level = f"{100 * (1 - alpha):g}%"

    steps = int(attack.get("steps", 0))
    if attack.get("name") != "pgd" or steps < MIN_ATTACK_STEPS:
        decision.passed = False
        decision.reasons.append(
            f"attack {attack.get('name')}-{steps} is weaker than PGD-{MIN_ATTACK_STEPS}; "
            "the gate judges robustness only under PGD with at least 20 steps"
        )

    robust = paired_counts(
        _correctness(evaluation, "baseline", "robust"),
        _correctness(evaluation, "candidate", "robust"),
    )
    r_low, r_high = paired_difference_interval(robust, alpha)
    p_value = mcnemar_midp(robust)
    robust_ok = r_low >= policy.min_robust_gain and p_value < alpha
    decision.reasons.append(
        f"robust accuracy (PGD-{steps}, eps {evaluation.get('eps')}) "
        f"{_acc(robust, 'baseline')} -> {_acc(robust, 'candidate')}: "
        f"gain {robust.difference:+.3f}, "
        f"{level} lower bound {r_low:+.3f} {'>=' if r_low >= policy.min_robust_gain else '<'} "
        f"required {policy.min_robust_gain:+.3f}; McNemar mid-p {p_value:.2g} "
        f"{'<' if p_value < alpha else '>='} {alpha:g}: {'ok' if robust_ok else 'FAIL'}"
    )

    clean = paired_counts(
        _correctness(evaluation, "baseline", "clean"),
        _correctness(evaluation, "candidate", "clean"),
    )
    c_low, c_high = paired_difference_interval(clean, alpha)
    drop_bound = -c_low
    clean_ok = drop_bound <= policy.max_clean_drop
    decision.reasons.append(
        f"clean accuracy {_acc(clean, 'baseline')} -> {_acc(clean, 'candidate')}: drop "
        f"{-clean.difference:+.3f}, {level} upper bound {drop_bound:+.3f} "
        f"{'<=' if clean_ok else '>'} allowed {policy.max_clean_drop:.3f}: "
        f"{'ok' if clean_ok else 'FAIL'}"
    )
    decision.passed = decision.passed and robust_ok and clean_ok
    decision.metrics = {
        "n": robust.n,
        "alpha": alpha,
        "robust": _metrics(robust, r_low, r_high) | {"mcnemar_midp": p_value},
        "clean": _metrics(clean, c_low, c_high),
        "attack": attack,
        "eps": evaluation.get("eps"),
    }
    if "captured_n" in evaluation:
        _judge_captured(evaluation, policy, decision, level)
    return decision


def _judge_captured(
    evaluation: dict[str, Any], policy: GateConfig, decision: GateDecision, level: str
) -> None:
    """The captured recipe's check: on the held-out captured examples the candidate's accuracy
    is at most ``max_captured_drop`` below the baseline's (paired point estimate; the interval
    is reported alongside)."""
    counts = paired_counts(
        _correctness(evaluation, "baseline", "captured"),
        _correctness(evaluation, "candidate", "captured"),
    )
    if counts.n == 0:
        raise GateError("the evaluation's captured held-out part is empty; nothing to judge")
    low, high = paired_difference_interval(counts, policy.alpha)
    drop = -counts.difference
    ok = drop <= policy.max_captured_drop
    decision.reasons.append(
        f"captured held-out accuracy (n={counts.n}) {_acc(counts, 'baseline')} -> "
        f"{_acc(counts, 'candidate')}: drop {drop:+.3f} {'<=' if ok else '>'} allowed "
        f"{policy.max_captured_drop:.3f} ({level} interval of the gain "
        f"[{low:+.3f}, {high:+.3f}]): {'ok' if ok else 'FAIL'}"
    )
    decision.passed = decision.passed and ok
    decision.metrics["captured"] = _metrics(counts, low, high) | {
        "manifest_sha256": evaluation.get("captured_manifest")
    }


def _acc(counts: Any, role: str) -> str:
    right = counts.both + (counts.only_baseline if role == "baseline" else counts.only_candidate)
    return f"{right / counts.n:.3f}"


def _metrics(counts: Any, low: float, high: float) -> dict[str, Any]:
    n = counts.n
    return {
        "baseline_accuracy": (counts.both + counts.only_baseline) / n,
        "candidate_accuracy": (counts.both + counts.only_candidate) / n,
        "difference": counts.difference,
        "interval": [low, high],
        "only_candidate": counts.only_candidate,
        "only_baseline": counts.only_baseline,
    }


def run_gate(
    cfg: RobustloopConfig,
    candidate: str,
    baseline: str = "production",
    eps: float | None = None,
    *,
    captured: bool = False,
) -> GateDecision:
    """Evaluate and decide in one go (``robustloop gate``; ``--captured`` for a candidate of
    the captured recipe)."""
    return decide(evaluate_pair(cfg, candidate, baseline, eps, captured=captured), cfg.gate)


__all__ = [
    "MIN_ATTACK_STEPS",
    "GateDecision",
    "GateError",
    "decide",
    "evaluate_pair",
    "gate_eps",
    "pack_bits",
    "run_gate",
    "unpack_bits",
]
