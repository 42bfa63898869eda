"""The detector's per-image signals as tensor functions: their one definition.

The model server exports them (:mod:`serving.signals` runs them in inference mode and fills
Prometheus histograms); the detector-aware attack (:class:`training.attacks.BPDA`) differentiates
them, so that it can keep them near their clean levels. Both must compute the same numbers, so
they live here, below both:

- :func:`normalised_entropy`: softmax entropy divided by ``ln K``, in [0, 1].
- :func:`max_probability`: the top softmax probability.
- :func:`squeeze_score`: feature squeezing (Xu, Evans and Qi 2018, "Feature Squeezing: Detecting
  Adversarial Examples in Deep Neural Networks", NDSS): the L1 distance between the softmax of an
  input and of squeezed copies of it, the maximum over squeezers (:data:`SQUEEZERS`).

Bit-depth reduction rounds, so its gradient is zero almost everywhere. With
``straight_through=True`` :func:`squeeze_score` replaces that gradient by the identity's (the
straight-through estimate of BPDA, Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a
False Sense of Security"); the values it computes are the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Bit depth of the bit-depth squeezer. Xu et al. use 1 bit for MNIST, whose digits are nearly
#: binary; Fashion-MNIST's textures are not. bench/detection.py, bit-depth squeezer alone,
#: per-request AUROC for 1 to 5 bits against FGSM (eps 0.1): 0.74, 0.84, 0.88, 0.93, 0.80; against
#: Gaussian noise (sigma 0.3): 0.65, 0.62, 0.65, 0.67, 0.68. 2 bits reacts least to noise, and is
#: what the alerts and the demo's drift scenario were measured with (docs/serving.md).
DEFAULT_SQUEEZE_BITS = 2

SQUEEZERS: tuple[str, ...] = ("bit-depth", "median-2x2")
"""Squeezer names, as ``serving.squeezers`` in robustloop.yaml lists them."""

DEFAULT_SQUEEZERS: tuple[str, ...] = ("bit-depth",)
"""The squeezers of the exported score: bit-depth reduction alone (the median filter reacts to
natural noise as much as to attacks; docs/alerts.md has the measurements)."""


def _check_probs(probs: Tensor) -> None:
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"expected probabilities of shape [N, K] with K >= 2, got {tuple(probs.shape)}"
        )


def normalised_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy of each row of ``probs`` divided by ``ln K``: 0 = certain, 1 = uniform.

    Differentiable (``torch.special.entr`` is 0 at 0 with a finite gradient elsewhere).

    Args:
        probs: softmax outputs, shape [N, K], rows summing to 1.

    Returns:
        Tensor of shape [N] with values in [0, 1].
    """
    _check_probs(probs)
    k = probs.shape[1]
    return (torch.special.entr(probs).sum(dim=1) / math.log(k)).clamp(0.0, 1.0)


def max_probability(probs: Tensor) -> Tensor:
    """Top softmax probability of each row of ``probs`` (shape [N, K]); shape [N], in [1/K, 1]
    (the classic baseline of Hendrycks and Gimpel 2017, "A Baseline for Detecting Misclassified
    and Out-of-Distribution Examples")."""
    _check_probs(probs)
    return probs.max(dim=1).values


class _RoundStraightThrough(torch.autograd.Function):
    """``round`` forward, identity backward: BPDA's straight-through estimate of rounding."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        del ctx
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        del ctx
        return grad


def reduce_bit_depth(
    images: Tensor, bits: int = DEFAULT_SQUEEZE_BITS, *, straight_through: bool = False
) -> Tensor:
    """Quantise pixel values in [0, 1] to ``2**bits`` levels (Xu et al. 2018, section 3.1).

    Args:
        images: pixel values in [0, 1].
        bits: bits per pixel after squeezing, 1 to 16.
        straight_through: let the gradient pass as if no rounding happened (BPDA); the values
            are the same.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}")
    levels = 2**bits - 1
    scaled = images * levels
    rounded = _RoundStraightThrough.apply(scaled) if straight_through else torch.round(scaled)
    return rounded / levels


def median_filter_2x2(images: Tensor) -> Tensor:
    """2x2 median smoothing of [N, C, H, W] images (Xu et al. 2018, section 3.2).

    An even window has two middle values; like ``scipy.ndimage.median_filter(size=2)``, which the
    paper used, this takes the upper one, with the window at offsets (-1, 0) and the border
    repeated. Made of max and min, it passes gradients to the selected pixels.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
    padded = F.pad(images, (1, 0, 1, 0), mode="replicate")
    a, b = padded[..., :-1, :-1], padded[..., :-1, 1:]  # the window's upper row
    c, d = padded[..., 1:, :-1], padded[..., 1:, 1:]  # and its lower row
    # The second largest of four values: the smaller of the two pairs' maxima or the larger
    # of their minima, whichever is larger (elementwise, much cheaper than a sort).
    return torch.maximum(
        torch.minimum(torch.maximum(a, b), torch.maximum(c, d)),
        torch.maximum(torch.minimum(a, b), torch.minimum(c, d)),
    )


def squeeze_score(
    model: nn.Module,
    images: Tensor,
    *,
    squeezers: Sequence[str] = DEFAULT_SQUEEZERS,
    bits: int = DEFAULT_SQUEEZE_BITS,
    probs: Tensor | None = None,
    straight_through: bool = False,
) -> Tensor:
    """Feature-squeezing score of each image: max over squeezers of ``||p(x) - p(squeeze(x))||_1``.

    Xu, Evans and Qi 2018 (NDSS), with bit-depth reduction and the 2x2 median filter as
    squeezers. All squeezed copies go through the model in one batch. Runs in the caller's grad
    mode: the server calls it in inference mode, an attack with gradients enabled.

    Args:
        model: the classifier, returning logits; not modified.
        images: shape [N, C, H, W], values in [0, 1].
        squeezers: names from :data:`SQUEEZERS`, at least one.
        bits: bit depth of the bit-depth squeezer.
        probs: the softmax of ``images`` if already computed (saves one forward pass).
        straight_through: differentiate bit-depth reduction as the identity (BPDA).

    Returns:
        Tensor of shape [N] with values in [0, 2].

    Raises:
        ValueError: no squeezer, or an unknown one.
    """
    unknown = [name for name in squeezers if name not in SQUEEZERS]
    if not squeezers or unknown:
        raise ValueError(f"squeezers must be one or more of {SQUEEZERS}, got {list(squeezers)}")

    def squeeze(name: str) -> Tensor:
        if name == "bit-depth":
            return reduce_bit_depth(images, bits, straight_through=straight_through)
        return median_filter_2x2(images)

    squeezed = torch.cat([squeeze(name) for name in squeezers])
    if probs is None:
        probs = torch.softmax(model(images), dim=1)
    squeezed_probs = torch.softmax(model(squeezed), dim=1)
    n = images.shape[0]
    distances = squeezed_probs.reshape(len(squeezers), n, -1) - probs.unsqueeze(0)
    return distances.abs().sum(dim=2).max(dim=0).values


__all__ = [
    "DEFAULT_SQUEEZERS",
    "DEFAULT_SQUEEZE_BITS",
    "SQUEEZERS",
    "max_probability",
    "median_filter_2x2",
    "normalised_entropy",
    "reduce_bit_depth",
    "squeeze_score",
]
