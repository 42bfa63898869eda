"""Robustness evaluation: clean, FGSM and PGD-k accuracy with Wilson 95 % intervals.

The per-example outcome (:attr:`EvalResult.correct`) is kept so that two models judged on the
same images can be compared with a paired test (the gate's McNemar test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from training.attacks import make_attack
from training.device import model_device

_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); (0, 1) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and behaves near 0 and 1, where
    robust accuracies of undefended models live.
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one set of images under one attack.

    Attributes:
        attack: ``none``, ``fgsm`` or ``pgd``.
        eps: the attack's L-inf radius (0 for ``none``).
        n: images judged.
        accuracy: fraction classified correctly.
        ci95: Wilson 95 % interval of the accuracy.
        correct: bool tensor ``[n]``, whether each image was classified correctly.
        steps: PGD steps (None otherwise).
        restarts: PGD restarts (None otherwise).
    """

    attack: str
    eps: float
    n: int
    accuracy: float
    ci95: tuple[float, float]
    correct: torch.Tensor = field(repr=False)
    steps: int | None = None
    restarts: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"attack", "eps", "n", "accuracy", "ci95": [lo, hi]}`` (JSON-ready)."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci95": [self.ci95[0], self.ci95[1]],
        }


def evaluate(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    attack: str = "none",
    eps: float = 0.1,
    steps: int = 20,
    restarts: int = 1,
    n: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> EvalResult:
    """Accuracy of ``model`` on the first ``n`` images of ``dataset`` under ``attack``.

    The attack's random starts are drawn from a generator seeded by ``seed`` (the global RNG
    state is restored afterwards), so the same call gives the same result. The model's mode is
    left as it was.

    Raises:
        ValueError: unknown attack, or ``n`` larger than the dataset or below 1.
    """
    if attack not in ("none", "fgsm", "pgd"):
        raise ValueError(f"unknown attack {attack!r}; choose one of ['fgsm', 'none', 'pgd']")
    images, labels = dataset.tensors[0], dataset.tensors[1]
    total = len(labels)
    if n is None:
        n = total
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and {total} (the dataset's size), got {n}")
    adversary = None if attack == "none" else make_attack(attack, model, eps, steps, restarts)
    device = model_device(model)
    was_training = model.training
    model.eval()
    outcomes: list[torch.Tensor] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, n, batch_size):
                x = images[start : min(n, start + batch_size)].to(device)
                y = labels[start : min(n, start + batch_size)].to(device)
                if adversary is not None:
                    x = adversary(x, y)
                with torch.no_grad():
                    outcomes.append((model(x).argmax(dim=1) == y).cpu())
    finally:
        model.train(was_training)
    correct = torch.cat(outcomes)
    hits = int(correct.sum())
    return EvalResult(
        attack=attack,
        eps=0.0 if attack == "none" else float(eps),
        n=n,
        accuracy=hits / n,
        ci95=wilson_interval(hits, n),
        correct=correct,
        steps=steps if attack == "pgd" else None,
        restarts=restarts if attack == "pgd" else None,
    )
