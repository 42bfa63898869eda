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

The tensor functions are defined once, in :mod:`training.signals` (the detector-aware attack
differentiates the same definitions); this module re-exports them, runs the squeeze score in
inference mode, and holds what only the server needs: buckets and the clean-signal measurement.

None of them proves anything about one request (docs/serving.md measures how little): the
server exports their distributions as Prometheus histograms and the alert rules compare windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training import (
    DEFAULT_SQUEEZE_BITS,
    DEFAULT_SQUEEZERS,
    SQUEEZERS,
    max_probability,
    median_filter_2x2,
    model_device,
    normalised_entropy,
    reduce_bit_depth,
)
from training import squeeze_score as _squeeze_score

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


def squeeze_score(
    model: nn.Module,
    images: Tensor,
    *,
    squeezers: Sequence[str] = DEFAULT_SQUEEZERS,
    bits: int = DEFAULT_SQUEEZE_BITS,
    probs: Tensor | None = None,
) -> Tensor:
    """Feature-squeezing score of each image, as the server exports it: max over squeezers of
    ``||p(x) - p(squeeze(x))||_1``, computed in inference mode.

    The definition is :func:`training.squeeze_score` (Xu, Evans and Qi 2018, NDSS), which the
    detector-aware attack differentiates; this runs it without recording gradients.

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
    with torch.inference_mode():
        return _squeeze_score(model, images, squeezers=squeezers, bits=bits, probs=probs)


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
