"""Thresholds for a chosen false-alarm rate, from the clean distribution of a signal.

Pure Python (``statistics``), no torch: ``robustloop calibrate`` measures the per-image values on
the held-out eval split and hands them here.

The statistics (also in docs/alerts.md):

1. A label-free alert compares the mean of a signal over a window of ``W`` seconds with a
   threshold. On clean traffic at ``r`` samples per second, the window holds ``n = r * W``
   samples; by the central limit theorem its mean is close to ``Normal(mu, sigma^2 / n)``, where
   ``mu`` and ``sigma`` are the per-image mean and standard deviation on clean data.
2. An hour holds ``k = 3600 / W`` disjoint windows. For at most ``F`` false alarms per hour, each
   window may exceed the threshold with probability ``p = F / k`` (Bonferroni: the expected
   number of exceeding windows is ``k * p = F``). Overlapping windows, evaluated every few
   seconds, are strongly correlated with these; and an alert also needs its condition to hold
   for the whole ``for:`` duration, which makes it rarer still. The rate is an upper estimate.
3. The one-sided Gaussian quantile ``z = Phi^-1(1 - p)`` gives ``mu + z * sigma / sqrt(n)``.
   Per-image entropy and squeeze scores are skewed (most clean images score near 0), so the
   window mean is skewed too, by ``gamma / sqrt(n)``; the Cornish-Fisher expansion (Cornish and
   Fisher 1938) corrects the quantile for it: ``z' = z + (z^2 - 1) * gamma / (6 sqrt(n))``.

The threshold is written as the clean baseline ``mu`` plus the shift ``z' * sigma / sqrt(n)``
(mode ``relative``), so that the rules say both what is normal and how far from it they alert.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SECONDS_PER_HOUR = 3600.0


class CalibrationError(ValueError):
    """The inputs cannot give a threshold (too few values, a target that cannot be met)."""


@dataclass(frozen=True)
class SignalStats:
    """Per-image statistics of a signal on clean data."""

    count: int
    mean: float
    sd: float
    skewness: float

    @classmethod
    def of(cls, values: Sequence[float]) -> SignalStats:
        """Mean, sample standard deviation and sample skewness of ``values``.

        Raises:
            CalibrationError: fewer than 30 values (too few to describe a distribution).
        """
        if len(values) < 30:
            raise CalibrationError(
                f"need at least 30 clean values to calibrate, got {len(values)}; "
                "raise data.eval_size"
            )
        mean = statistics.fmean(values)
        sd = statistics.stdev(values, mean)
        if sd == 0:
            skew = 0.0
        else:
            m3 = statistics.fmean((v - mean) ** 3 for v in values)
            m2 = statistics.fmean((v - mean) ** 2 for v in values)
            skew = m3 / m2**1.5
        return cls(count=len(values), mean=mean, sd=sd, skewness=skew)


@dataclass(frozen=True)
class WindowThreshold:
    """A calibrated threshold and how it was derived (recorded with the model version)."""

    baseline: float
    delta: float
    threshold: float
    z: float
    z_cornish_fisher: float
    samples_per_window: float
    windows_per_hour: float
    per_window_probability: float
    false_alarms_per_hour: float
    stats: SignalStats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_threshold(
    stats: SignalStats,
    *,
    window_seconds: float,
    samples_per_second: float,
    false_alarms_per_hour: float,
    decimals: int = 4,
) -> WindowThreshold:
    """The threshold on a window mean for at most ``false_alarms_per_hour`` on clean traffic.

    Args:
        stats: per-image statistics of the signal on clean data.
        window_seconds: the rule's window ``W``.
        samples_per_second: expected samples of this signal per second ``r`` (images/s for the
            entropy; images/s times the sampled fraction for the squeeze score).
        false_alarms_per_hour: the target ``F``.
        decimals: the shift is rounded *up* to this many decimals (never below the target).

    Raises:
        CalibrationError: the window holds under one sample, or ``F`` is so high that a window
            may exceed the threshold half the time (no meaningful threshold).
    """
    n = samples_per_second * window_seconds
    if n < 1:
        raise CalibrationError(
            f"a {window_seconds:g}s window at {samples_per_second:g} samples/s holds under one "
            "sample; lengthen the window or raise alerts.expected_rate"
        )
    windows = SECONDS_PER_HOUR / window_seconds
    p = false_alarms_per_hour / windows
    if not 0 < p < 0.5:
        raise CalibrationError(
            f"{false_alarms_per_hour:g} false alarms per hour over {windows:g} windows of "
            f"{window_seconds:g}s is a per-window probability of {p:.3g}; it must be below 0.5: "
            "lower alerts.false_alarms_per_hour or shorten the window"
        )
    z = statistics.NormalDist().inv_cdf(1 - p)
    z_cf = z + (z * z - 1) * stats.skewness / (6 * math.sqrt(n))
    scale = 10**decimals
    raw = stats.mean + max(z_cf, 0.0) * stats.sd / math.sqrt(n)
    threshold = math.ceil(raw * scale - 1e-9) / scale
    baseline = round(stats.mean, decimals)
    return WindowThreshold(
        baseline=baseline,
        delta=round(threshold - baseline, decimals),
        threshold=threshold,
        z=z,
        z_cornish_fisher=z_cf,
        samples_per_window=n,
        windows_per_hour=windows,
        per_window_probability=p,
        false_alarms_per_hour=false_alarms_per_hour,
        stats=stats,
    )


__all__ = ["CalibrationError", "SignalStats", "WindowThreshold", "window_threshold"]
