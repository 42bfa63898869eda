"""FGSM, the fast gradient sign method (Goodfellow, Shlens and Szegedy 2015, "Explaining and
Harnessing Adversarial Examples"), with the optional random start of "fast" adversarial training
(Wong, Rice and Kolter 2020, "Fast is better than free").
"""

from __future__ import annotations

import torch
from torch import nn

from training.attacks.base import Attack


class FGSM(Attack):
    """One signed-gradient step: ``x + step_size * sign(grad_x loss)``, projected to the eps-ball.

    Args:
        model: the classifier under attack.
        eps: L-inf radius (0.1 on Fashion-MNIST in this project's threat model).
        random_start: start from a uniform point in the eps-ball (FGSM-RS, Wong et al. 2020)
            unless the call passes a ``start``.
        step_size: size of the signed step; default ``eps`` without a random start (Goodfellow
            et al.), ``1.25 * eps`` with one (Wong et al.'s recommended alpha).
    """

    name = "fgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.1,
        random_start: bool = False,
        step_size: float | None = None,
    ) -> None:
        super().__init__(model, eps)
        self.random_start = random_start
        if step_size is None:
            step_size = 1.25 * eps if random_start else eps
        self.step_size = float(step_size)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None
    ) -> torch.Tensor:
        if start is None:
            start = images
            if self.random_start:
                noise = torch.empty_like(images).uniform_(-self.eps, self.eps)
                start = (images + noise).clamp_(0.0, 1.0)
        grad = self.input_gradient(start, labels)
        return start + self.step_size * grad.sign()

    def __repr__(self) -> str:
        return f"FGSM(eps={self.eps}, random_start={self.random_start}, step_size={self.step_size})"
