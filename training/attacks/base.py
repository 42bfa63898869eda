"""The base classes of the attacks: mode handling, clamping and the eps-ball guarantee.

:class:`Attack` is the base of the white-box attacks; :class:`ScoreAttack` of the black-box ones,
which see only the probabilities a :data:`Scores` callable returns and count their queries.

A white-box attack holds the model and is called like a module, ``attack(images, labels) -> adv``.
Subclasses override only :meth:`Attack.forward`; the base class puts the model in eval mode for
the attack and restores its previous mode afterwards, and guarantees on the way out that
``adv`` is in [0, 1] and within ``eps`` of ``images`` in L-inf norm, whatever ``forward`` did.
"""

from __future__ import annotations

from collections.abc import Callable

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


Scores = Callable[[torch.Tensor], torch.Tensor]
"""A black box: images [N, C, H, W] in [0, 1] -> class probabilities [N, K] (softmax scores)."""


class QueryBudgetExceeded(RuntimeError):
    """A score-based attack asked for more queries than its budget (a bug of that attack)."""


class ScoreAttack:
    """An L-inf evasion attack that sees only a classifier's output probabilities.

    It holds a :data:`Scores` callable, never a model: the classifier may be a local model
    (:func:`model_scores`) or a model server answering over HTTP. Every image the attack asks
    about counts as one query of that image; :meth:`query` refuses to go past ``max_queries``
    per image, so no subclass can overspend. Subclasses override only :meth:`forward`; like
    :class:`Attack`, the call guarantees ``adv`` in [0, 1] and within ``eps`` of the images.

    Args:
        scores: the black box.
        eps: the L-inf radius, in pixel units of [0, 1].
        max_queries: queries allowed per image (each image the black box scores is one).

    Attributes:
        queries: per image of the last call, the queries it used (a tensor [N]).
        calls: calls to ``scores`` during the last call.
    """

    name = "score-attack"

    def __init__(self, scores: Scores, eps: float, max_queries: int) -> None:
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (inputs are in [0, 1]), got {eps}")
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.scores = scores
        self.eps = float(eps)
        self.max_queries = int(max_queries)
        self.queries = torch.zeros(0, dtype=torch.int64)
        self.calls = 0

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Craft adversarial examples for ``images`` with true ``labels``, asking only
        :meth:`query`."""
        raise NotImplementedError

    def query(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """The black box's probabilities for ``images``, which are versions of the call's
        images at indices ``which``; counts one query for each.

        Raises:
            QueryBudgetExceeded: one of them has already used ``max_queries``.
        """
        if bool((self.queries[which] >= self.max_queries).any()):
            raise QueryBudgetExceeded(
                f"{type(self).__name__} asked for more than {self.max_queries} queries per image"
            )
        self.queries[which] += 1
        self.calls += 1
        probs = self.scores(images.detach())
        if probs.shape[0] != images.shape[0] or probs.dim() != 2:
            raise ValueError(
                f"the black box answered {tuple(probs.shape)} for {images.shape[0]} images; "
                "expected probabilities [N, K]"
            )
        return probs.to(images.device, torch.float32)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial examples: same shape as ``images``, in [0, 1], within eps; no grad.

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
        self.queries = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
        self.calls = 0
        with torch.no_grad():
            adv = self.forward(images, labels.detach())
            low = (images - self.eps).clamp(min=0.0)
            high = (images + self.eps).clamp(max=1.0)
            return torch.maximum(torch.minimum(adv, high), low)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, max_queries={self.max_queries})"


def model_scores(model: nn.Module) -> Scores:
    """A local model as a black box: its softmax in eval mode, without gradients; the model's
    train/eval mode is restored after each call."""

    def scores(images: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return torch.softmax(model(images), dim=1)
        finally:
            model.train(was_training)

    return scores
