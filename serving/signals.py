"""Per-image robustness signals the server exports, and the histogram buckets they fill.

Two label-free signals read only the model's softmax output; the third, feature squeezing, asks
the model again about simplified copies of the input:

- :func:`normalised_entropy`: softmax entropy divided by ``ln K``, so that it lies in [0, 1]
  whatever the number of classes. Adversarial inputs tend to sit near a decision boundary, where
  the output is less certain.
- :func:`max_probability`: the top softmax probability (the classic baseline of Hendrycks and
  Gimpel 2017, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples").
- :func:`squeeze_score`: feature squeezing (Xu, Evans and Qi 2018, "Feature Squeezing: Detecting
  Adversarial Examples in Deep Neural Networks", NDSS): the L1 distance between the softmax of an
  input and of squeezed copies of it (bit-depth reduction by default; the 2x2 median filter on
  request), the maximum over squeezers. A natural image keeps its prediction when squeezed; an
  adversarial perturbation, tuned to the exact pixel values, often does not. The median filter
  also smooths away natural noise, so it reacts to drift as much as to attacks: it is off by
  default (docs/alerts.md has the measurements).

None of them proves anything about one request (docs/serving.md measures how little): the
server exports their distributions as Prometheus histograms and the alert rules compare windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.device import model_device

#: Buckets of ``robustloop_prediction_entropy`` (normalised entropy, in [0, 1]).
ENTROPY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)

#: Buckets of ``robustloop_max_probability`` (top softmax probability, in [1/K, 1]).
MAX_PROBABILITY_BUCKETS: tuple[float, ...] = (
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    0.999,
    1.0,
)

#: Buckets of ``robustloop_squeeze_score`` (L1 distance of two distributions, in [0, 2]).
SQUEEZE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
)

#: Buckets of ``robustloop_request_duration_seconds``.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Bit depth of the bit-depth squeezer. Xu et al. use 1 bit for MNIST, whose digits are nearly
#: binary; Fashion-MNIST's textures are not. bench/detection.py, bit-depth squeezer alone,
#: per-request AUROC for 1 to 5 bits against FGSM (eps 0.1): 0.74, 0.84, 0.88, 0.93, 0.80; against
#: Gaussian noise (sigma 0.3): 0.65, 0.62, 0.65, 0.67, 0.68. 2 bits reacts least to noise, and is
#: what the alerts and the demo's drift scenario were measured with (docs/serving.md).
DEFAULT_SQUEEZE_BITS = 2


def _check_probs(probs: Tensor) -> None:
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"expected probabilities of shape [N, K] with K >= 2, got {tuple(probs.shape)}"
        )


def normalised_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy of each row of ``probs`` divided by ``ln K``: 0 = certain, 1 = uniform.

    Args:
        probs: softmax outputs, shape [N, K], rows summing to 1.

    Returns:
        Tensor of shape [N] with values in [0, 1].
    """
    _check_probs(probs)
    k = probs.shape[1]
    return (torch.special.entr(probs).sum(dim=1) / math.log(k)).clamp_(0.0, 1.0)


def max_probability(probs: Tensor) -> Tensor:
    """Top softmax probability of each row of ``probs`` (shape [N, K]); shape [N], in [1/K, 1]."""
    _check_probs(probs)
    return probs.max(dim=1).values


def reduce_bit_depth(images: Tensor, bits: int = DEFAULT_SQUEEZE_BITS) -> Tensor:
    """Quantise pixel values in [0, 1] to ``2**bits`` levels (Xu et al. 2018, section 3.1)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}")
    levels = 2**bits - 1
    return torch.round(images * levels) / levels


def median_filter_2x2(images: Tensor) -> Tensor:
    """2x2 median smoothing of [N, C, H, W] images (Xu et al. 2018, section 3.2).

    An even window has two middle values; like ``scipy.ndimage.median_filter(size=2)``, which the
    paper used, this takes the upper one, with the window at offsets (-1, 0) and the border
    repeated.
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


SQUEEZERS: tuple[str, ...] = ("bit-depth", "median-2x2")
"""Squeezer names, as ``serving.squeezers`` in robustloop.yaml lists them."""

DEFAULT_SQUEEZERS: tuple[str, ...] = ("bit-depth",)
"""The squeezers of the exported score: bit-depth reduction alone (see the module docstring)."""


def squeeze_score(
    model: nn.Module,
    images: Tensor,
    *,
    squeezers: Sequence[str] = DEFAULT_SQUEEZERS,
    bits: int = DEFAULT_SQUEEZE_BITS,
    probs: Tensor | None = None,
) -> Tensor:
    """Feature-squeezing score of each image: max over squeezers of ``||p(x) - p(squeeze(x))||_1``.

    Xu, Evans and Qi 2018 (NDSS), "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks", with bit-depth reduction and the 2x2 median filter as squeezers. All
    squeezed copies go through the model in one batch.

    Args:
        model: the classifier, returning logits; used in inference mode and not modified.
        images: shape [N, C, H, W], values in [0, 1].
        squeezers: names from :data:`SQUEEZERS`, at least one.
        bits: bit depth of the bit-depth squeezer.
        probs: the softmax of ``images`` if already computed (saves one forward pass).

    Returns:
        Tensor of shape [N] with values in [0, 2].

    Raises:
        ValueError: no squeezer, or an unknown one.
    """
    unknown = [name for name in squeezers if name not in SQUEEZERS]
    if not squeezers or unknown:
        raise ValueError(f"squeezers must be one or more of {SQUEEZERS}, got {list(squeezers)}")
    make = {"bit-depth": lambda x: reduce_bit_depth(x, bits), "median-2x2": median_filter_2x2}
    with torch.inference_mode():
        squeezed = torch.cat([make[name](images) for name in squeezers])
        if probs is None:
            probs = torch.softmax(model(images), dim=1)
        squeezed_probs = torch.softmax(model(squeezed), dim=1)
        n = images.shape[0]
        distances = squeezed_probs.reshape(len(squeezers), n, -1) - probs.unsqueeze(0)
        return distances.abs().sum(dim=2).max(dim=0).values


@dataclass(frozen=True)
class CleanSignals:
    """Per-image signals of a model on clean images, and its accuracy on them."""

    entropy: list[float]
    squeeze: list[float]
    accuracy: float


def measure_clean_signals(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    squeezers: Sequence[str] = DEFAULT_SQUEEZERS,
    batch: int = 500,
    bits: int = DEFAULT_SQUEEZE_BITS,
) -> CleanSignals:
    """Entropy and squeeze score of every image, computed as the server computes them.

    What alert calibration (:func:`alert_rules.calibration.calibrate_alerts`) starts from.

    Args:
        model: the classifier (eval mode), returning logits; the images follow its device.
        images: float tensor [N, C, H, W] in [0, 1].
        labels: int tensor [N].
        squeezers: the server's ``serving.squeezers``.
        batch: images per forward pass.
        bits: the server's ``serving.squeeze_bits``.
    """
    device = model_device(model)
    entropy: list[float] = []
    squeeze: list[float] = []
    correct = 0
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch):
            x = images[start : start + batch].to(device)
            probs = torch.softmax(model(x), dim=1)
            entropy += normalised_entropy(probs).tolist()
            squeeze += squeeze_score(model, x, squeezers=squeezers, probs=probs, bits=bits).tolist()
            y = labels[start : start + batch].to(device)
            correct += int((probs.argmax(dim=1) == y).sum())
    return CleanSignals(entropy, squeeze, correct / max(1, images.shape[0]))


__all__ = [
    "DEFAULT_SQUEEZERS",
    "DEFAULT_SQUEEZE_BITS",
    "ENTROPY_BUCKETS",
    "LATENCY_BUCKETS",
    "MAX_PROBABILITY_BUCKETS",
    "SQUEEZERS",
    "SQUEEZE_BUCKETS",
    "CleanSignals",
    "max_probability",
    "measure_clean_signals",
    "median_filter_2x2",
    "normalised_entropy",
    "reduce_bit_depth",
    "squeeze_score",
]
