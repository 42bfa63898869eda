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

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None
    ) -> torch.Tensor:
        """Craft adversarial examples for ``images`` with true ``labels``, beginning at
        ``start`` (a point of the eps-ball) where given, else at the attack's own start."""
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adversarial examples: same shape as ``images``, in [0, 1], within eps; no grad attached.

        Args:
            images: the clean inputs, in [0, 1].
            labels: their true classes.
            start: where the attack begins instead of its own start (the images, or a random
                point): for example a training example's perturbation from the previous epoch.
                Projected onto the eps-ball first.

        Raises:
            ValueError: images outside [0, 1], or labels or a start that do not match the batch.
        """
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels disagree on the batch size: {images.shape[0]} vs "
                f"{labels.shape[0]}"
            )
        if start is not None and start.shape != images.shape:
            raise ValueError(f"start has shape {tuple(start.shape)}, images {tuple(images.shape)}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("images must be in [0, 1]")
        images = images.detach()
        labels = labels.detach()
        if start is not None:
            start = self.project(start.detach(), images)
        was_training = self.model.training
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.eval()
        try:
            # Only the input needs a gradient: frozen weights keep the attack's graph small.
            for param in params:
                param.requires_grad_(False)
            with torch.enable_grad():
                adv = self.forward(images, labels, start)
        finally:
            for param in params:
                param.requires_grad_(True)
            self.model.train(was_training)
        return self.project(adv.detach(), images)

    def bounds(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds of the eps-ball around ``images`` intersected with [0, 1]."""
        return (images - self.eps).clamp_(min=0.0), (images + self.eps).clamp_(max=1.0)

    def project(
        self,
        adv: torch.Tensor,
        images: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Project onto the eps-ball around ``images`` intersected with [0, 1].

        Pass precomputed :meth:`bounds` when projecting repeatedly around the same images.
        """
        low, high = self.bounds(images) if bounds is None else bounds
        return torch.maximum(torch.minimum(adv, high), low)

    def input_gradient(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed cross-entropy loss with respect to the input only.

        ``torch.autograd.grad`` with the input as the only target skips the weight gradients
        (and :meth:`__call__` freezes the weights, so none are recorded either).
        """
        adv = adv.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(self.model(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"
