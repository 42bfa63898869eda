"""Paired tests for the gate and the two-proportion test of the post-rollout guard (stdlib only).

The gate compares two models on the SAME examples, so the right tools are paired: McNemar's test
on the discordant pairs (mid-p version, Fagerland, Lydersen and Laake, "The McNemar test for
binary matched-pairs data: mid-p and asymptotic are better than exact conditional", BMC Medical
Research Methodology 13:91, 2013) and a confidence interval for the paired difference of
proportions (adjusted Wald, Agresti and Min, "Simple improved confidence intervals for comparing
matched proportions", Statistics in Medicine 24:729-740, 2005).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class PairedCounts:
    """A 2x2 table of paired outcomes: baseline (b) versus candidate (c), correct (1) or not (0).

    Attributes:
        both: both correct.
        only_candidate: the candidate is right where the baseline is wrong (a gain).
        only_baseline: the baseline is right where the candidate is wrong (a loss).
        neither: both wrong.
    """

    both: int
    only_candidate: int
    only_baseline: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_candidate + self.only_baseline + self.neither

    @property
    def difference(self) -> float:
        """Candidate accuracy minus baseline accuracy."""
        return (self.only_candidate - self.only_baseline) / self.n if self.n else 0.0


def paired_counts(baseline: list[bool], candidate: list[bool]) -> PairedCounts:
    """Tabulate per-example correctness of two models on the same examples.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(baseline) != len(candidate):
        raise ValueError(
            f"paired outcomes differ in length ({len(baseline)} vs {len(candidate)}): "
            "both models must be judged on the same examples"
        )
    if not baseline:
        raise ValueError("no examples to compare")
    table = [0, 0, 0, 0]
    for b, c in zip(baseline, candidate, strict=True):
        table[(2 if b else 0) + (1 if c else 0)] += 1
    return PairedCounts(
        both=table[3], only_candidate=table[1], only_baseline=table[2], neither=table[0]
    )


def _binom_pmf(k: int, n: int) -> float:
    """P(X = k) for X ~ Binomial(n, 1/2), computed in log space (n may be thousands)."""
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    return math.exp(log)


def mcnemar_midp(counts: PairedCounts) -> float:
    """One-sided mid-p value of McNemar's exact test that the candidate is better.

    Under H0 (no difference) the gains among the discordant pairs follow Binomial(b + c, 1/2); the
    mid-p value is P(X > gains) + P(X = gains) / 2. With no discordant pair it is 1 (nothing
    shows an improvement).
    """
    discordant = counts.only_candidate + counts.only_baseline
    if discordant == 0:
        return 1.0
    gains = counts.only_candidate
    upper = sum(_binom_pmf(k, discordant) for k in range(gains + 1, discordant + 1))
    return min(1.0, upper + 0.5 * _binom_pmf(gains, discordant))


def paired_difference_interval(counts: PairedCounts, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - 2*alpha) interval for candidate minus baseline accuracy.

    Each bound is therefore a one-sided (1 - alpha) confidence bound. Adjusted Wald interval of
    Agresti and Min (2005): half a pseudo-observation is added to every cell before the Wald
    interval of the paired difference is computed; it keeps its coverage near nominal when the
    discordant counts are small, where the plain Wald interval collapses to zero width.
    """
    z = NormalDist().inv_cdf(1.0 - alpha)
    b = counts.only_candidate + 0.5
    c = counts.only_baseline + 0.5
    n = counts.n + 2.0
    diff = (b - c) / n
    var = ((b + c) - (b - c) ** 2 / n) / n**2
    half = z * math.sqrt(max(var, 0.0))
    return max(-1.0, diff - half), min(1.0, diff + half)


def two_proportion_p_worse(
    new_correct: int, new_total: int, old_correct: int, old_total: int
) -> float:
    """One-sided p-value that the new proportion is lower than the old one (pooled z-test).

    Used by the post-rollout guard on canary feedback counts, where the two versions saw
    different (unpaired) requests. Returns 1 when either side has no data.
    """
    if new_total <= 0 or old_total <= 0:
        return 1.0
    p_new = new_correct / new_total
    p_old = old_correct / old_total
    pooled = (new_correct + old_correct) / (new_total + old_total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / new_total + 1 / old_total))
    if se == 0:
        return 0.0 if p_new < p_old else 1.0
    return NormalDist().cdf((p_new - p_old) / se)
