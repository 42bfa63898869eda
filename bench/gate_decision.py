"""How often does the gate promote, against a raw comparison of accuracies? (simulation)

Two models judged on the same n held-out images; the candidate's true robust gain is known. The
raw rule promotes when the observed gain reaches ``min_robust_gain``; the gate
(:func:`workflows.gate.decide`) promotes only when the paired lower bound reaches it and McNemar's
mid-p test finds the gain significant. Correct outcomes are correlated as for two models of one
architecture: a tenth of the baseline's right answers turn wrong, the rest of the change comes from
its wrong answers turning right.

Prints, per true gain, the promotion rate of each rule and their ratio. Pure Python, no torch:

    .venv/bin/python bench/gate_decision.py [--trials 400] [--n 2000]
"""

from __future__ import annotations

import argparse
import random
import time

from _machine import machine_header

from robustloop.config import GateConfig
from workflows.gate import decide, pack_bits

BASE_ROBUST = 0.30
LOSS = 0.10  # fraction of the baseline's right answers the candidate gets wrong


def _trial(n: int, gain: float, rng: random.Random, policy: GateConfig) -> tuple[bool, bool]:
    turn_right = (BASE_ROBUST + gain - BASE_ROBUST * (1 - LOSS)) / (1 - BASE_ROBUST)
    base = [rng.random() < BASE_ROBUST for _ in range(n)]
    cand = [(rng.random() >= LOSS) if b else (rng.random() < turn_right) for b in base]
    clean = [True] * (n * 9 // 10) + [False] * (n - n * 9 // 10)
    evaluation = {
        "n": n,
        "eps": 0.1,
        "attack": {"name": "pgd", "steps": 20, "restarts": 2},
        "candidate": {
            "version": "cand",
            "clean": {"correct": pack_bits(clean)},
            "robust": {"correct": pack_bits(cand)},
        },
        "baseline": {
            "version": "base",
            "clean": {"correct": pack_bits(clean)},
            "robust": {"correct": pack_bits(base)},
        },
    }
    raw = (sum(cand) - sum(base)) / n >= policy.min_robust_gain
    return raw, decide(evaluation, policy).passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--n", type=int, default=GateConfig().n)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_header())
    policy = GateConfig()
    rng = random.Random(args.seed)
    print(
        f"n={args.n} images, {args.trials} trials per row, baseline robust {BASE_ROBUST}, "
        f"min_robust_gain {policy.min_robust_gain}, alpha {policy.alpha}"
    )
    print(f"{'true gain':>9}  {'raw promotes':>12}  {'gate promotes':>13}  {'gate/raw':>8}")
    started = time.perf_counter()
    for gain in (0.0, 0.02, 0.04, 0.05, 0.07, 0.10, 0.15):
        raw = gate = 0
        for _ in range(args.trials):
            r, g = _trial(args.n, gain, rng, policy)
            raw += r
            gate += g
        ratio = f"{gate / raw:.2f}" if raw else "-"
        print(f"{gain:>9.2f}  {raw / args.trials:>12.3f}  {gate / args.trials:>13.3f}  {ratio:>8}")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
