"""PGD, projected gradient descent on the loss (Madry, Makelov, Schmidt, Tsipras and Vladu 2018,
"Towards Deep Learning Models Resistant to Adversarial Attacks"), L-inf, with random restarts.
"""

from __future__ import annotations

import torch
from torch import nn

from training.attacks.base import Attack

_FOOLED = 1e6
"""Score bonus of a fooled example (any loss is far below it)."""


class PGD(Attack):
    """``steps`` signed-gradient steps of ``step_size``, each projected back onto the eps-ball.

    With several restarts, each example keeps the restart that fooled the model, or, where none
    did, the one with the highest loss: accuracy under PGD with restarts is the accuracy on the
    worst restart of each example. Restarts after the first run only on the examples that no
    earlier restart fooled, which gives the same accuracy for a fraction of the cost.

    Args:
        model: the classifier under attack.
        eps: L-inf radius.
        step_size: step per iteration; default ``2.5 * eps / steps`` (Madry et al.), which lets
            a walk reach the boundary of the ball from anywhere inside it.
        steps: iterations per restart (20 for evaluation; 7 or 10 during training).
        restarts: independent runs from random starts (the first from the call's ``start``
            where one is given).
        random_start: start from a uniform point in the ball (otherwise from the image itself;
            then restarts beyond the first are identical and skipped).
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.1,
        step_size: float | None = None,
        steps: int = 20,
        restarts: int = 1,
        random_start: bool = True,
    ) -> None:
        super().__init__(model, eps)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        self.steps = int(steps)
        self.restarts = int(restarts) if random_start else 1
        self.random_start = random_start
        self.step_size = float(step_size) if step_size is not None else 2.5 * eps / steps

    def _run(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        bounds = self.bounds(images)
        if start is not None:
            adv = start.clone()
        else:
            adv = images.clone()
            if self.random_start:
                adv.add_(torch.empty_like(images).uniform_(-self.eps, self.eps)).clamp_(0.0, 1.0)
        for _ in range(self.steps):
            grad = self.input_gradient(adv, labels)
            adv = self.project(adv.add_(grad.sign_(), alpha=self.step_size), images, bounds)
        return adv

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None
    ) -> torch.Tensor:
        best = self._run(images, labels, start)
        if self.restarts == 1:
            return best
        best_score = self._score(best, labels)
        for _ in range(self.restarts - 1):
            # Examples already fooled cannot do better: restart only the others.
            todo = (best_score < _FOOLED).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            adv = self._run(images[todo], labels[todo])
            score = self._score(adv, labels[todo])
            better = score > best_score[todo]
            best[todo[better]] = adv[better]
            best_score[todo[better]] = score[better]
        return best

    @torch.no_grad()
    def _score(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per example: loss, plus a large bonus where the model is fooled."""
        logits = self.model(adv)
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        fooled = logits.argmax(dim=1) != labels
        return loss + fooled.to(loss.dtype) * _FOOLED

    def __repr__(self) -> str:
        return (
            f"PGD(eps={self.eps}, step_size={self.step_size}, steps={self.steps}, "
            f"restarts={self.restarts}, random_start={self.random_start})"
        )
