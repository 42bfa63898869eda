"""Do the calibrated thresholds keep their false-alarm promise?

For a skewed clean signal (Beta(0.5, 2) per image, shaped like clean prediction entropies: mean
0.2, most images near 0), computes the threshold of ``robustloop calibrate``'s formula
(alert_rules.calibration.window_threshold: Gaussian window mean, Bonferroni over the disjoint
windows of an hour, Cornish-Fisher skew correction) and of the plain Gaussian formula, and
measures their false alarms per hour by Monte Carlo (simulate_false_alarms: Poisson arrivals at
10 images/s, 30 s sliding windows evaluated every second, an alarm when the condition holds
longer than ``for:``), for ``for:`` 10 s (the default) and 0 s. Then the threshold after
check_threshold, the simulation-backed correction that ``calibrate`` applies.

Run: ``.venv/bin/python bench/alert_false_alarms.py`` (about a minute). Prints figures.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _machine import machine_header


def main() -> int:
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from alert_rules.calibration import (
        SignalStats,
        check_threshold,
        simulate_false_alarms,
        window_threshold,
    )

    print(machine_header())
    values = np.random.default_rng(1).beta(0.5, 2.0, 5000).tolist()
    stats = SignalStats.of(values)
    window, rate = 30, 10.0
    print(
        f"clean signal: mean {stats.mean:.3f} sd {stats.sd:.3f} skew {stats.skewness:.2f}; "
        f"{window}s windows at {rate:g} samples/s"
    )
    print(
        f"{'target/h':>8s} {'for':>4s} | {'formula':>8s} {'sim/h':>7s} | {'no skew':>8s} "
        f"{'sim/h':>7s} | {'checked':>8s} {'sim/h':>7s} | {'hours':>5s} {'time':>5s}"
    )
    for target in (1.0, 0.1):
        hours = 40 / target
        for hold in (10, 0):
            start = time.time()
            proposed = window_threshold(
                stats, window_seconds=window, samples_per_second=rate, false_alarms_per_hour=target
            )
            plain = window_threshold(
                replace(stats, skewness=0.0),
                window_seconds=window,
                samples_per_second=rate,
                false_alarms_per_hour=target,
            )

            def simulate(threshold: float, hold: int = hold, hours: float = hours) -> float:
                return simulate_false_alarms(
                    values,
                    threshold,
                    window_seconds=window,
                    samples_per_second=rate,
                    for_seconds=hold,
                    hours=hours,
                )

            checked = check_threshold(values, proposed, window_seconds=window, for_seconds=hold)
            proposed_rate = simulate(proposed.threshold)
            print(
                f"{target:8g} {hold:3d}s | {proposed.threshold:8.4f} {proposed_rate:7.3f}"
                f" | {plain.threshold:8.4f} {simulate(plain.threshold):7.3f}"
                f" | {checked.threshold:8.4f} {checked.simulated_false_alarms_per_hour:7.3f}"
                f" | {hours:5.0f} {time.time() - start:4.0f}s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
