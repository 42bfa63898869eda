"""L-inf evasion attacks, one per file under a small base class.

Public names: :class:`Attack` (the base), :class:`FGSM`, :class:`PGD`, :data:`ATTACKS` (the
registry by name) and :func:`make_attack`.
"""

from __future__ import annotations

from torch import nn

from training.attacks.base import Attack
from training.attacks.fgsm import FGSM
from training.attacks.pgd import PGD

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD}
"""Attack classes by name (the names the CLI and the gate accept)."""


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


__all__ = ["ATTACKS", "FGSM", "PGD", "Attack", "make_attack"]
