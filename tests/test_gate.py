"""The gate's statistics and decisions (pure: synthetic per-example outcomes, no torch)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustloop.config import GateConfig, RobustloopConfig
from workflows._stats import (
    PairedCounts,
    mcnemar_midp,
    paired_counts,
    paired_difference_interval,
    two_proportion_p_worse,
)
from workflows.gate import GateError, decide, gate_eps, pack_bits, unpack_bits


def _outcomes(n: int, accuracy: float, rng: random.Random) -> list[bool]:
    right = round(n * accuracy)
    values = [True] * right + [False] * (n - right)
    rng.shuffle(values)
    return values


def _paired(base: list[bool], accuracy: float) -> list[bool]:
    """The candidate's outcomes: the baseline's, with as few flips as reach ``accuracy``.

    Two models of one architecture get mostly the same images right; the flips are the
    discordant pairs the paired tests look at.
    """
    values = list(base)
    target = round(len(values) * accuracy)
    flip_to = target > sum(values)
    for i, value in enumerate(values):
        if sum(values) == target:
            break
        if value is not flip_to:
            values[i] = flip_to
    return values


def _evaluation(
    n: int,
    base_clean: float,
    cand_clean: float,
    base_robust: float,
    cand_robust: float,
    attack: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rng = random.Random(0)

    def entry(version: str, clean: list[bool], robust: list[bool]) -> dict[str, Any]:
        return {
            "version": version,
            "clean": {"accuracy": sum(clean) / n, "correct": pack_bits(clean)},
            "robust": {"accuracy": sum(robust) / n, "correct": pack_bits(robust)},
        }

    clean, robust = _outcomes(n, base_clean, rng), _outcomes(n, base_robust, rng)
    return {
        "n": n,
        "eps": 0.1,
        "attack": attack or {"name": "pgd", "steps": 20, "restarts": 2},
        "candidate": entry("v0002-cand", _paired(clean, cand_clean), _paired(robust, cand_robust)),
        "baseline": entry("v0001-base", clean, robust),
    }


POLICY = GateConfig(min_robust_gain=0.05, max_clean_drop=0.05, alpha=0.05)


def test_mcnemar_mid_p_matches_the_binomial_by_hand() -> None:
    # 12 discordant pairs, 10 of them gains: P(X>10) + P(X=10)/2 with X ~ Bin(12, 1/2)
    counts = PairedCounts(both=50, only_candidate=10, only_baseline=2, neither=38)
    assert mcnemar_midp(counts) == pytest.approx((1 + 12 + 66 / 2) / 4096)
    assert mcnemar_midp(PairedCounts(5, 0, 0, 5)) == 1.0


def test_paired_counts_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="same examples"):
        paired_counts([True], [True, False])


@given(
    st.integers(0, 300),
    st.integers(0, 300),
    st.integers(0, 300),
    st.integers(0, 300),
    st.floats(0.001, 0.2),
)
def test_interval_is_ordered_bounded_and_p_values_are_probabilities(
    both: int, gain: int, loss: int, neither: int, alpha: float
) -> None:
    counts = PairedCounts(both, gain, loss, neither)
    if counts.n == 0:
        return
    low, high = paired_difference_interval(counts, alpha)
    assert -1.0 <= low <= high <= 1.0
    assert 0.0 <= mcnemar_midp(counts) <= 1.0
    # one more gain never makes the improvement less significant
    more = PairedCounts(both, gain + 1, loss, neither)
    assert mcnemar_midp(more) <= mcnemar_midp(counts) + 1e-12


@given(st.lists(st.booleans(), min_size=1, max_size=3000))
def test_correctness_packing_round_trips(values: list[bool]) -> None:
    assert unpack_bits(pack_bits(values), len(values)) == values


def test_a_clearly_more_robust_candidate_passes() -> None:
    decision = decide(_evaluation(400, 0.85, 0.84, 0.05, 0.50), POLICY)
    assert decision.passed
    assert decision.metrics["robust"]["interval"][0] >= 0.05
    assert decision.metrics["robust"]["mcnemar_midp"] < 0.05
    assert json.loads(decision.to_json())["passed"] is True
    assert all("ok" in reason for reason in decision.reasons)


def test_a_worse_candidate_is_rejected() -> None:
    decision = decide(_evaluation(400, 0.85, 0.80, 0.30, 0.10), POLICY)
    assert not decision.passed
    assert "robust" in decision.reasons[0] and "FAIL" in decision.reasons[0]


def test_a_large_clean_drop_is_rejected_even_with_a_robust_gain() -> None:
    decision = decide(_evaluation(400, 0.90, 0.70, 0.05, 0.60), POLICY)
    assert not decision.passed
    clean = next(r for r in decision.reasons if r.startswith("clean"))
    assert "FAIL" in clean


def test_a_raw_gain_above_the_margin_is_not_enough_on_few_examples() -> None:
    # +8 points robust on 100 images: the raw comparison says pass, the paired bound does not
    decision = decide(_evaluation(100, 0.85, 0.85, 0.10, 0.18), POLICY)
    assert decision.metrics["robust"]["difference"] > POLICY.min_robust_gain
    assert not decision.passed


def test_an_fgsm_only_or_weak_attack_never_passes() -> None:
    evaluation = _evaluation(400, 0.85, 0.84, 0.05, 0.50, attack={"name": "fgsm", "steps": 1})
    decision = decide(evaluation, POLICY)
    assert not decision.passed
    assert "PGD-20" in decision.reasons[0]
    weak = _evaluation(400, 0.85, 0.84, 0.05, 0.50, attack={"name": "pgd", "steps": 7})
    assert not decide(weak, POLICY).passed


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("candidate"),
        lambda e: e["baseline"]["robust"].update(correct="zz-not-hex"),
        lambda e: e.update(n=3),  # more bits set than examples
    ],
)
def test_a_malformed_evaluation_is_an_error_not_a_pass(mutate: Any) -> None:
    evaluation = _evaluation(200, 0.85, 0.84, 0.05, 0.50)
    mutate(evaluation)
    with pytest.raises(GateError):
        decide(evaluation, POLICY)


def test_two_proportion_test_flags_only_a_real_drop() -> None:
    assert two_proportion_p_worse(60, 100, 90, 100) < 0.001
    assert two_proportion_p_worse(90, 100, 60, 100) > 0.99
    assert two_proportion_p_worse(0, 0, 90, 100) == 1.0


def test_gate_eps_has_one_order_for_the_command_and_the_workflow() -> None:
    """A person's --eps, then gate.eps, then the eps trained against (the workflow's
    parameter), then remediation.eps."""
    cfg = RobustloopConfig()
    cfg.remediation.eps = 0.1
    assert gate_eps(cfg) == 0.1
    assert gate_eps(cfg, trained=0.08) == 0.08
    cfg.gate.eps = 0.12
    assert gate_eps(cfg, trained=0.08) == 0.12, "the policy's eps beats the training eps"
    assert gate_eps(cfg, override=0.05, trained=0.08) == 0.05, "a person's --eps beats both"
