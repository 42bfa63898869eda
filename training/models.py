"""The classifiers, chosen by name: the paper's reference CNN and a wider variant.

Both take ``[N, 1, 28, 28]`` float inputs in [0, 1] (no normalisation layer: the attacks' eps is
measured in that pixel space) and return logits ``[N, 10]``. Neither has batch normalisation or
dropout, so train and eval mode compute the same function and adversarial examples crafted in
either mode are the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

NUM_CLASSES = 10

MEMORY_FORMAT = torch.channels_last
"""Layout of the weights (and so of every activation) of a built model.

On CPU, PyTorch's max pooling of a contiguous (NCHW) activation is the slowest operation of the
network by far (about 10 ms per 128-image batch after the first convolution, 15 times its
channels-last cost). With channels-last weights the convolutions emit channels-last activations:
FGSM-RS adversarial training runs 1.4 times the samples per second in float32
(``bench/training_speed.py``) and 1.7 times under bfloat16 autocast (``bench/harden_recipes.py``:
3 epochs in 46 s where 2.3 used to fill the minute); PGD evaluation and serving gain alike.
A 1-channel input batch is already channels-last, so callers change nothing.
"""


def _cnn(width: int) -> nn.Module:
    """conv(w) - pool - ReLU - conv(2w) - pool - ReLU - fc(4w) - ReLU - fc(10), with 3x3
    convolutions and 2x2 max pooling.

    Pooling comes before ReLU, not after: the two orders compute the same function with the
    same gradients (ReLU is monotone, so the maximum of rectified values is the rectified
    maximum, and both pass the gradient to the same input), but pooling first rectifies a
    quarter of the values, forward and backward. ``bench/training_speed.py`` measures FGSM-RS
    and PGD-7 training steps at about 1.25 times the samples per second in float32 on one
    thread and 1.1 times under bfloat16 autocast on two (docs/training.md). The swapped layers
    hold no weights, so stored models load unchanged.
    """
    return nn.Sequential(
        nn.Conv2d(1, width, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, NUM_CLASSES),
    )


def reference_cnn() -> nn.Module:
    """The paper's reference CNN: conv 32, conv 64, fc 128, fc 10 (about 420k parameters).

    The two 3x3 convolutions are each followed by 2x2 max pooling, which keeps the network
    cheap enough for adversarial training on two CPU cores.
    """
    return _cnn(32)


def wide_cnn() -> nn.Module:
    """The reference CNN at twice the width: conv 64, conv 128, fc 256, fc 10.

    Adversarial training needs capacity (Madry et al. 2018, section 4); this one trades speed
    for robustness.
    """
    return _cnn(64)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "cnn": reference_cnn,
    "wide-cnn": wide_cnn,
}
"""Model constructors by architecture name (the ``model.architecture`` config field)."""


def build_model(architecture: str) -> nn.Module:
    """A freshly initialised model of the named architecture (seed torch first for determinism).

    Its weights are laid out channels-last (:data:`MEMORY_FORMAT`); the function it computes is
    the same, and the store serialises contiguous copies.

    Raises:
        ValueError: unknown architecture; the message lists the choices.
    """
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None
    return factory().to(memory_format=MEMORY_FORMAT)


def average_weights(models: Sequence[nn.Module]) -> nn.Module:
    """A uniform "model soup": a copy of ``models[0]`` whose every weight is the mean of that
    weight across ``models`` (Wortsman et al. 2022; Croce et al. 2023 for soups of models
    adversarially fine-tuned from one parent, which trade clean against robust accuracy
    better than either ingredient).

    Raises:
        ValueError: fewer than two models, or models whose weights differ in names or shapes.
    """
    if len(models) < 2:
        raise ValueError(f"averaging needs at least two models, got {len(models)}")
    states = [model.state_dict() for model in models]
    first = states[0]
    for index, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ValueError(f"model {index} does not have the weights of model 1")
    soup = copy.deepcopy(models[0])
    soup.load_state_dict({k: sum(state[k] for state in states) / len(states) for k in first})
    return soup
