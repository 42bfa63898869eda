"""Thresholds for a chosen false-alarm rate, from the clean distribution of a signal.

Pure Python (``statistics``), no torch: the model server's signals are measured on the held-out
eval split (:func:`serving.signals.measure_clean_signals`) and handed here;
:func:`calibrate_alerts` turns them into a new ``alerts`` section and
:func:`rewrite_alerts_section` writes that section into the user's config file.

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
from typing import Any, Protocol

from robustloop.config import AlertsConfig, RobustloopConfig, dump_config, duration_seconds

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


def simulate_false_alarms(
    values: Sequence[float],
    threshold: float,
    *,
    window_seconds: int,
    samples_per_second: float,
    for_seconds: int,
    hours: float,
    seed: int = 0,
) -> float:
    """False alarms per hour of a window-mean rule on simulated clean traffic (Monte Carlo).

    Checks the Gaussian/Bonferroni threshold without its assumptions: Poisson arrivals at
    ``samples_per_second``, each sample drawn from ``values`` (bootstrap of the clean
    distribution), the window mean evaluated every second over a sliding window as
    ``rate(sum)/rate(count)`` does, and an alarm when the mean stays above ``threshold`` for more
    than ``for_seconds`` (the pending -> firing rule of Prometheus at a 1 s evaluation interval).
    Each such episode counts once. numpy is imported here only.
    """
    import numpy as np

    if window_seconds < 1 or hours <= 0:
        raise CalibrationError("window_seconds must be >= 1 and hours > 0")
    rng = np.random.default_rng(seed)
    pool = np.asarray(values, dtype=np.float64)
    seconds = int(hours * SECONDS_PER_HOUR)
    counts = np.empty(seconds, dtype=np.int64)
    sums = np.empty(seconds, dtype=np.float64)
    chunk = 100_000
    for start in range(0, seconds, chunk):
        n = min(chunk, seconds - start)
        k = rng.poisson(samples_per_second, n)
        drawn = pool[rng.integers(0, len(pool), int(k.sum()))]
        counts[start : start + n] = k
        sums[start : start + n] = np.bincount(np.repeat(np.arange(n), k), drawn, minlength=n)
    cum_c = np.concatenate([[0], np.cumsum(counts)])
    cum_s = np.concatenate([[0.0], np.cumsum(sums)])
    in_window = cum_c[window_seconds:] - cum_c[:-window_seconds]
    total = cum_s[window_seconds:] - cum_s[:-window_seconds]
    mean = np.divide(total, in_window, out=np.zeros_like(total), where=in_window > 0)
    above = np.concatenate([[False], mean > threshold, [False]]).astype(np.int8)
    edges = np.diff(above)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    alarms = int(np.count_nonzero(ends - starts > for_seconds))
    return alarms / hours


@dataclass(frozen=True)
class CheckedThreshold:
    """A threshold after the Monte Carlo check of :func:`check_threshold`."""

    threshold: float
    simulated_false_alarms_per_hour: float
    simulated_hours: float
    raised: bool


def check_threshold(
    values: Sequence[float],
    proposed: WindowThreshold,
    *,
    window_seconds: int,
    for_seconds: int,
    events: float = 40.0,
    max_samples: float = 2e7,
    decimals: int = 4,
    seed: int = 0,
) -> CheckedThreshold:
    """Check a threshold by :func:`simulate_false_alarms`; raise it if it alarms too often.

    The Gaussian/Bonferroni threshold counts disjoint windows; Prometheus evaluates overlapping
    windows every second, which crosses a threshold more often, and the ``for:`` duration
    compensates only when it is long enough (about a third of the window or more). So the
    proposed threshold is simulated for about ``events`` expected false alarms' worth of hours;
    where the simulated rate exceeds the target, the threshold is raised (doubling the shift,
    then bisecting, with the same random draws each time) until it does not.
    """
    target = proposed.false_alarms_per_hour
    rate = proposed.samples_per_window / window_seconds
    hours = min(events / target, max_samples / (rate * SECONDS_PER_HOUR))

    def simulated(threshold: float) -> float:
        return simulate_false_alarms(
            values,
            threshold,
            window_seconds=window_seconds,
            samples_per_second=rate,
            for_seconds=for_seconds,
            hours=hours,
            seed=seed,
        )

    first_rate = simulated(proposed.threshold)
    if first_rate <= target:
        return CheckedThreshold(proposed.threshold, first_rate, hours, raised=False)
    step = max(proposed.threshold - proposed.baseline, 10.0**-decimals)
    lo, hi = proposed.threshold, proposed.threshold + step
    while simulated(hi) > target:
        lo, hi, step = hi, hi + 2 * step, 2 * step
        if step > 1e6:
            raise CalibrationError("no threshold meets the false-alarm target in simulation")
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated(mid) > target else (lo, mid)
    scale = 10**decimals
    threshold = math.ceil(hi * scale - 1e-9) / scale
    # Raising a threshold can split one long excursion into two alarms, so the rate is not
    # strictly monotone: step on until the rounded threshold itself meets the target.
    final = simulated(threshold)
    for _ in range(32):
        if final <= target:
            break
        threshold = math.ceil((threshold + step / 16) * scale - 1e-9) / scale
        final = simulated(threshold)
    else:
        raise CalibrationError("no threshold meets the false-alarm target in simulation")
    return CheckedThreshold(threshold, final, hours, raised=True)


class MeasuredSignals(Protocol):
    """Per-image signals of a model on clean images, and its accuracy on them."""

    @property
    def entropy(self) -> Sequence[float]: ...
    @property
    def squeeze(self) -> Sequence[float]: ...
    @property
    def accuracy(self) -> float: ...


def calibrate_alerts(
    cfg: RobustloopConfig, signals: MeasuredSignals, version: str
) -> tuple[AlertsConfig, dict[str, Any]]:
    """New ``alerts`` section with calibrated thresholds, and the record of how they were set.

    The entropy and squeeze thresholds become ``relative``: the clean baseline plus the shift
    of :func:`alert_rules.calibration.window_threshold`. The canary accuracy keeps its mode and
    threshold; its baseline becomes the clean eval accuracy (used where its mode is relative).
    A disabled signal, or the squeeze score when the server scores no images
    (``serving.squeeze_fraction: 0``), keeps its settings.

    Raises:
        CalibrationError: too few images, or a target false-alarm rate that cannot be met.
    """
    a = cfg.alerts
    rates = _rates(cfg)
    record: dict[str, Any] = {
        "version": version,
        "false_alarms_per_hour": a.false_alarms_per_hour,
        "expected_rate": a.expected_rate,
        "squeeze_fraction": cfg.serving.squeeze_fraction,
        "clean_accuracy": signals.accuracy,
        "signals": {},
    }
    for name, values in (("entropy", signals.entropy), ("squeeze", signals.squeeze)):
        current = getattr(a, name)
        skipped = _skipped(cfg, name)
        if skipped:
            record["signals"][name] = {"skipped": skipped}
            continue
        result = window_threshold(
            SignalStats.of(values),
            window_seconds=duration_seconds(current.window),
            samples_per_second=rates[name],
            false_alarms_per_hour=a.false_alarms_per_hour,
        )
        checked = check_threshold(
            values,
            result,
            window_seconds=max(1, round(duration_seconds(current.window))),
            for_seconds=round(duration_seconds(current.for_)),
        )
        record["signals"][name] = {
            "window": current.window,
            "for": current.for_,
            **result.to_dict(),
            "simulation": asdict(checked),
            "threshold": checked.threshold,
            "delta": round(checked.threshold - result.baseline, 4),
            "gaussian_threshold": result.threshold,
        }
    new = alerts_from_record(cfg, record)
    assert new is not None, "a record fits the config it was made with"
    return new, record


def alerts_from_record(cfg: RobustloopConfig, record: dict[str, Any]) -> AlertsConfig | None:
    """The ``alerts`` section that a recorded calibration (:func:`calibrate_alerts`' record)
    gives ``cfg``, or None when the record does not fit ``cfg``.

    What :func:`calibrate_alerts` returns is made by this very function from its record, so a
    version's rules can be rendered again from the record alone, without measuring the model
    again (the Helm chart's bootstrap Job does, after each upgrade). Every setting of ``cfg``
    is kept but the calibrated ones: the entropy and squeeze baselines and shifts, the canary
    accuracy's baseline and ``calibrated_version``.

    A record fits when it was measured for what decides the thresholds in ``cfg``: the
    false-alarm rate, the expected traffic, the squeeze fraction, the same signals enabled,
    and each signal's window and ``for:``. Else (or a record of another shape) it is None: the
    version must be calibrated again.
    """
    a = cfg.alerts
    try:
        if (
            record["false_alarms_per_hour"] != a.false_alarms_per_hour
            or record["expected_rate"] != a.expected_rate
            or record["squeeze_fraction"] != cfg.serving.squeeze_fraction
        ):
            return None
        updates: dict[str, Any] = {}
        for name in ("entropy", "squeeze"):
            current = getattr(a, name)
            entry = record["signals"][name]
            skipped = _skipped(cfg, name)
            if skipped or "skipped" in entry:
                if entry.get("skipped") != skipped:
                    return None
                continue
            if duration_seconds(entry["window"]) != duration_seconds(current.window) or (
                duration_seconds(entry["for"]) != duration_seconds(current.for_)
            ):
                return None
            updates[name] = current.model_copy(
                update={
                    "mode": "relative",
                    "baseline": float(entry["baseline"]),
                    "threshold": float(entry["delta"]),
                }
            )
        updates["canary_accuracy"] = a.canary_accuracy.model_copy(
            update={"baseline": round(float(record["clean_accuracy"]), 4)}
        )
        updates["calibrated_version"] = str(record["version"])
        return AlertsConfig.model_validate({**a.model_dump(by_alias=True), **_dumped(updates)})
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def _rates(cfg: RobustloopConfig) -> dict[str, float]:
    """Scored images per second of each label-free signal at the expected traffic."""
    a = cfg.alerts
    return {"entropy": a.expected_rate, "squeeze": a.expected_rate * cfg.serving.squeeze_fraction}


def _skipped(cfg: RobustloopConfig, name: str) -> str | None:
    """Why signal ``name`` is not calibrated (disabled, or no image scored), or None."""
    if not getattr(cfg.alerts, name).enabled:
        return "disabled"
    if _rates(cfg)[name] == 0:
        return "serving.squeeze_fraction is 0"
    return None


def _dumped(updates: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.model_dump(by_alias=True) if hasattr(v, "model_dump") else v)
        for k, v in updates.items()
    }


def _alerts_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the top-level ``alerts:`` block, comments before the next key excluded."""
    start = next((i for i, line in enumerate(lines) if line.startswith("alerts:")), None)
    if start is None:
        return None
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#")
        ),
        len(lines),
    )
    while end > start + 1 and lines[end - 1].startswith("#"):
        end -= 1
    return start, end


def rewrite_alerts_section(text: str | None, cfg: RobustloopConfig) -> str:
    """The config file ``text`` with its ``alerts`` section replaced by ``cfg.alerts``.

    Every other line (other sections, comments) is kept byte for byte. A file without an
    ``alerts`` section gets one appended; no file (``None``) becomes the full commented config.
    """
    full = dump_config(cfg)
    if text is None:
        return full
    full_lines = full.splitlines()
    block = _alerts_block(full_lines)
    assert block is not None  # dump_config always writes the section
    new_block = full_lines[block[0] : block[1]]
    lines = text.splitlines()
    found = _alerts_block(lines)
    if found is None:
        description = full_lines[block[0] - 1]
        out = [*lines, description, *new_block]
    else:
        out = lines[: found[0]] + new_block + lines[found[1] :]
    return "\n".join(out) + "\n"


__all__ = [
    "CalibrationError",
    "CheckedThreshold",
    "MeasuredSignals",
    "SignalStats",
    "WindowThreshold",
    "alerts_from_record",
    "calibrate_alerts",
    "check_threshold",
    "rewrite_alerts_section",
    "simulate_false_alarms",
    "window_threshold",
]
