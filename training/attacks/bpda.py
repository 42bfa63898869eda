"""A detector-aware PGD: fool the classifier while keeping the server's detection signals at
their clean levels, with BPDA through the non-differentiable bit-depth squeezer.

The loss is the one Carlini and Wagner 2017 ("Adversarial Examples Are Not Easily Detected:
Bypassing Ten Detection Methods", AISec) use against detectors: the classifier's loss minus a
penalty for every signal the detector reads. Here the signals are the ones robustloop's server
exports (:mod:`training.signals`): the feature-squeezing score (Xu, Evans and Qi 2018) and the
normalised softmax entropy. Bit-depth reduction rounds, so its gradient is zero almost
everywhere; the backward pass replaces it by the identity, the straight-through form of
Backward Pass Differentiable Approximation (Athalye, Carlini and Wagner 2018, "Obfuscated
Gradients Give a False Sense of Security", ICML, section 4.1).
"""

from __future__ import annotations

import torch
from torch import nn

from training.attacks.base import Attack
from training.signals import (
    DEFAULT_SQUEEZE_BITS,
    DEFAULT_SQUEEZERS,
    normalised_entropy,
    squeeze_score,
)


class BPDA(Attack):
    """L-inf PGD on ``loss - squeeze_weight * |S - S0| - entropy_weight * |H - H0|``.

    ``S`` is the squeeze score and ``H`` the normalised entropy of the adversarial image, ``S0``
    and ``H0`` those of the clean image. The loss is the cross-entropy, capped at
    ``loss_cap``: an example misclassified with a margin stops gaining from a higher loss, and
    its steps go to the penalties instead (like the confidence ``kappa`` of Carlini and Wagner).
    Each example keeps the iterate that fooled the model with the smallest penalty; where none
    did, its last iterate.

    Args:
        model: the classifier under attack.
        eps: L-inf radius.
        step_size: step per iteration; default ``2.5 * eps / steps`` (Madry et al. 2018).
        steps: iterations.
        squeeze_weight: weight of the squeeze-score penalty.
        entropy_weight: weight of the entropy penalty.
        loss_cap: the cross-entropy above which the loss term stops growing; the default,
            ``ln 10``, is reached when the true class's probability falls to 0.1.
        bits: bit depth of the server's bit-depth squeezer (``serving.squeeze_bits``).
        squeezers: the server's squeezers (``serving.squeezers``).
        random_start: start from a uniform point in the ball (else from the image).
    """

    name = "bpda"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.1,
        step_size: float | None = None,
        steps: int = 20,
        squeeze_weight: float = 1.0,
        entropy_weight: float = 1.0,
        loss_cap: float = 2.302585092994046,
        bits: int = DEFAULT_SQUEEZE_BITS,
        squeezers: tuple[str, ...] = DEFAULT_SQUEEZERS,
        random_start: bool = True,
    ) -> None:
        super().__init__(model, eps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if squeeze_weight < 0 or entropy_weight < 0 or loss_cap <= 0:
            raise ValueError(
                "squeeze_weight and entropy_weight must be >= 0 and loss_cap > 0, got "
                f"{squeeze_weight}, {entropy_weight} and {loss_cap}"
            )
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * eps / steps
        self.squeeze_weight = float(squeeze_weight)
        self.entropy_weight = float(entropy_weight)
        self.loss_cap = float(loss_cap)
        self.bits = int(bits)
        self.squeezers = tuple(squeezers)
        self.random_start = random_start

    def _terms(
        self, adv: torch.Tensor, labels: torch.Tensor, clean: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per example: the capped loss, the detector penalty, and whether the model is fooled."""
        logits = self.model(adv)
        probs = torch.softmax(logits, dim=1)
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        squeeze = squeeze_score(
            self.model,
            adv,
            squeezers=self.squeezers,
            bits=self.bits,
            probs=probs,
            straight_through=True,
        )
        entropy = normalised_entropy(probs)
        penalty = self.squeeze_weight * (squeeze - clean[0]).abs()
        penalty = penalty + self.entropy_weight * (entropy - clean[1]).abs()
        fooled = logits.argmax(dim=1) != labels
        return loss.clamp(max=self.loss_cap), penalty, fooled

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None
    ) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.softmax(self.model(images), dim=1)
            clean = (
                squeeze_score(
                    self.model, images, squeezers=self.squeezers, bits=self.bits, probs=probs
                ),
                normalised_entropy(probs),
            )
        bounds = self.bounds(images)
        if start is not None:
            adv = start.clone()
        else:
            adv = images.clone()
            if self.random_start:
                adv.add_(torch.empty_like(images).uniform_(-self.eps, self.eps)).clamp_(0.0, 1.0)
        best = adv.clone()
        best_penalty = torch.full_like(labels, float("inf"), dtype=images.dtype)
        for step in range(self.steps + 1):
            adv.requires_grad_(True)
            loss, penalty, fooled = self._terms(adv, labels, clean)
            with torch.no_grad():
                better = fooled & (penalty < best_penalty)
                best[better] = adv[better]
                best_penalty[better] = penalty[better]
            if step == self.steps:
                break
            (grad,) = torch.autograd.grad((loss - penalty).sum(), adv)
            with torch.no_grad():
                adv = self.project(adv + self.step_size * grad.sign(), images, bounds)
        never = torch.isinf(best_penalty)
        best[never] = adv.detach()[never]
        return best

    def __repr__(self) -> str:
        return (
            f"BPDA(eps={self.eps}, step_size={self.step_size}, steps={self.steps}, "
            f"squeeze_weight={self.squeeze_weight}, entropy_weight={self.entropy_weight}, "
            f"loss_cap={self.loss_cap:.4g}, bits={self.bits}, squeezers={self.squeezers})"
        )
