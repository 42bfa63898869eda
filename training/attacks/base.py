"""The base class of every attack: mode handling, clamping and the eps-ball guarantee.

An attack holds the model and is called like a module, ``attack(images, labels) -> adv``.
Subclasses override only :meth:`Attack.forward`; the base class puts the model in eval mode for
the attack and restores its previous mode afterwards, and guarantees on the way out that
``adv`` is in [0, 1] and within ``eps`` of ``images`` in L-inf norm, whatever ``forward`` did.
"""

from __future__ import annotations

import torch
from torch import nn


class Attack:
    """An L-inf evasion attack on a classifier with inputs in [0, 1].

    Args:
        model: the classifier under attack (returns logits).
        eps: the L-inf radius, in pixel units of [0, 1].
    """

    name = "attack"

    def __init__(self, model: nn.Module, eps: float) -> None:
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (inputs are in [0, 1]), got {eps}")
        self.model = model
        self.eps = float(eps)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Craft adversarial examples for ``images`` with true ``labels``."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial examples: same shape as ``images``, in [0, 1], within eps; no grad attached.

        Raises:
            ValueError: images outside [0, 1], or labels that do not match the batch.
        """
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels disagree on the batch size: {images.shape[0]} vs "
                f"{labels.shape[0]}"
            )
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("images must be in [0, 1]")
        images = images.detach()
        labels = labels.detach()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                adv = self.forward(images, labels)
        finally:
            self.model.train(was_training)
        return self.project(adv.detach(), images)

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Project onto the eps-ball around ``images`` intersected with [0, 1]."""
        adv = torch.maximum(torch.minimum(adv, images + self.eps), images - self.eps)
        return adv.clamp_(0.0, 1.0)

    def input_gradient(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed cross-entropy loss with respect to the input only.

        ``torch.autograd.grad`` with the input as the only target skips the weight gradients.
        """
        adv = adv.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(self.model(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"
