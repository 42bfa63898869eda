"""L-inf evasion attacks, one per file under two small base classes.

White-box (they hold the model and follow its gradient), under :class:`Attack`: :class:`FGSM`,
:class:`PGD`, and :class:`BPDA`, a PGD that also keeps the server's detection signals at their
clean levels. Black-box (they see only probabilities, through a :data:`Scores` callable, and
count their queries), under :class:`ScoreAttack`: :class:`Square`. :func:`model_scores` turns a
local model into such a callable.

:data:`ATTACKS` and :func:`make_attack` name the attacks that evaluation and the gate run.
"""

from __future__ import annotations

from torch import nn

from training.attacks.base import (
    Attack,
    QueryBudgetExceeded,
    ScoreAttack,
    Scores,
    model_scores,
)
from training.attacks.bpda import BPDA
from training.attacks.fgsm import FGSM
from training.attacks.pgd import PGD
from training.attacks.square import Square

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD}
"""Attack classes by name: the names ``robustloop evaluate`` and the gate accept."""


def make_attack(
    name: str,
    model: nn.Module,
    eps: float,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
) -> Attack:
    """Build a registered attack by name; ``steps`` and ``restarts`` apply to PGD only.

    Raises:
        ValueError: unknown name (the message lists the choices) or invalid parameters.
    """
    if name == "fgsm":
        return FGSM(model, eps=eps, step_size=step_size)
    if name == "pgd":
        return PGD(model, eps=eps, step_size=step_size, steps=steps, restarts=restarts)
    raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")


__all__ = [
    "ATTACKS",
    "BPDA",
    "FGSM",
    "PGD",
    "Attack",
    "QueryBudgetExceeded",
    "ScoreAttack",
    "Scores",
    "Square",
    "make_attack",
    "model_scores",
]
