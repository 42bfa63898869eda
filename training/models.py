"""The classifiers: what a model is (:class:`ModelSpec`) and how it is built (:func:`build_model`).

A spec names an architecture and the shape of the data: input channels, image size, classes and
their names, and an optional normalization. Every version's manifest records its spec, so that a
stored model can be rebuilt and served without the config. Architectures:

- ``cnn``: the paper's reference CNN (conv 32, conv 64, fc 128, fc K); ``wide-cnn``: twice as
  wide. Both take any channel count and image size (the flatten follows the size).
- ``torchvision:NAME``: a torchvision classification model, e.g. ``torchvision:resnet18``, built
  with ``num_classes=K`` and no pretrained weights; a first convolution that expects another
  channel count is replaced by one that takes C channels.
- ``package.module:function``: the user's own factory, called as
  ``function(in_channels=C, num_classes=K, image_size=(H, W))``; it must return an
  ``nn.Module`` mapping ``[N, C, H, W]`` to logits ``[N, K]`` (checked on a dummy batch). This
  imports and runs the user's code, from the folders of ``model.python_path``.

Inputs are pixels in [0, 1] whatever the architecture: a normalization (``model.normalize``) is a
layer inside the model (:class:`Normalized`), so attacks, eps and every signal stay in pixel
space. The built-in CNNs have neither batch normalization nor dropout, so train and eval mode
compute the same function.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's class names, by label: the classes of a spec that names none."""

TORCHVISION_PREFIX = "torchvision:"

MEMORY_FORMAT = torch.channels_last
"""Layout of the weights (and so of every activation) of a built model.

On CPU, PyTorch's max pooling of a contiguous (NCHW) activation is the slowest operation of the
network by far (about 10 ms per 128-image batch after the first convolution, 15 times its
channels-last cost). With channels-last weights the convolutions emit channels-last activations:
FGSM-RS adversarial training runs 1.4 times the samples per second in float32
(``bench/training_speed.py``) and 1.7 times under bfloat16 autocast (``bench/harden_recipes.py``);
PGD evaluation and serving gain alike. A 1-channel input batch is already channels-last.
"""


class ModelSpecError(ValueError):
    """The architecture cannot be built for this data; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: enough to rebuild it, feed it and name its answers.

    Attributes:
        architecture: ``cnn``, ``wide-cnn``, ``torchvision:NAME`` or ``package.module:function``.
        in_channels: C of the input ``[N, C, H, W]``.
        image_size: (H, W).
        class_names: one name per class, by label; K is their number.
        normalize: ``{"mean": [...], "std": [...]}`` (one value per channel), or None.
        python_path: folders put on ``sys.path`` before a factory is imported.
    """

    architecture: str = "cnn"
    in_channels: int = 1
    image_size: tuple[int, int] = (28, 28)
    class_names: tuple[str, ...] = FASHION_CLASSES
    normalize: dict[str, list[float]] | None = None
    python_path: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.in_channels, *self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as a manifest records it."""
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["class_names"] = list(self.class_names)
        out["python_path"] = list(self.python_path)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Parse :meth:`to_dict`'s output (a manifest's ``model``)."""
        return cls(
            architecture=str(data["architecture"]),
            in_channels=int(data["in_channels"]),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            class_names=tuple(str(n) for n in data["class_names"]),
            normalize=data.get("normalize"),
            python_path=tuple(str(p) for p in data.get("python_path", ())),
        )


# -- the built-in CNNs -------------------------------------------------------------------------


def _cnn(width: int, spec: ModelSpec) -> nn.Module:
    """conv(w) - pool - ReLU - conv(2w) - pool - ReLU - fc(4w) - ReLU - fc(K), with 3x3
    convolutions and 2x2 max pooling.

    Pooling comes before ReLU, not after: the two orders compute the same function with the
    same gradients (ReLU is monotone), but pooling first rectifies a quarter of the values,
    forward and backward (about 1.25 times the samples per second in float32,
    ``bench/training_speed.py``). The swapped layers hold no weights.
    """
    height, width_px = spec.image_size
    if height < 4 or width_px < 4:
        raise ModelSpecError(f"architecture {spec.architecture} needs images of at least 4x4")
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, width, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (width_px // 4), 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, spec.num_classes),
    )


BUILTIN: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "cnn": lambda spec: _cnn(32, spec),  # the paper's reference CNN (about 420k parameters)
    "wide-cnn": lambda spec: _cnn(64, spec),  # capacity for adversarial training (Madry et al.)
}
"""The built-in architectures by name."""

ARCHITECTURES = tuple(BUILTIN)
"""Names of the built-in architectures (others: ``torchvision:NAME``, ``package.module:fn``)."""


# -- torchvision and the user's factories ------------------------------------------------------


def _torchvision(spec: ModelSpec) -> nn.Module:
    from torchvision import models

    name = spec.architecture.removeprefix(TORCHVISION_PREFIX)
    if name not in models.list_models(module=models):
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r}: torchvision has no classification "
            f"model {name!r} (e.g. torchvision:resnet18, torchvision:mobilenet_v3_small)"
        )
    net = models.get_model(name, weights=None, num_classes=spec.num_classes)
    _adapt_first_conv(net, spec.in_channels)
    return net


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    """Replace the first convolution by one taking ``channels`` inputs, if it takes others."""
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(
                        parent,
                        child_name,
                        nn.Conv2d(
                            channels,
                            child.out_channels,
                            kernel_size=child.kernel_size,  # type: ignore[arg-type]
                            stride=child.stride,  # type: ignore[arg-type]
                            padding=child.padding,  # type: ignore[arg-type]
                            bias=child.bias is not None,
                        ),
                    )
                return


def _factory(spec: ModelSpec) -> nn.Module:
    module_name, _, function_name = spec.architecture.partition(":")
    for folder in reversed(spec.python_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r}: cannot import {module_name!r} ({exc}); "
            "put its folder in model.python_path"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r}: {module_name} has no function "
            f"{function_name!r}"
        )
    net = function(
        in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size
    )
    if not isinstance(net, nn.Module):
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r} returned {type(net).__name__}, "
            "not a torch.nn.Module"
        )
    return net


def _check_output(net: nn.Module, spec: ModelSpec) -> None:
    """A dummy batch must map ``[2, C, H, W]`` to ``[2, K]``."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *spec.input_shape))
    except Exception as exc:  # the user's code: any failure is a configuration problem
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r} fails on a batch of shape "
            f"[2, {', '.join(map(str, spec.input_shape))}]: {exc}"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelSpecError(
            f"model.architecture {spec.architecture!r} maps [2, "
            f"{', '.join(map(str, spec.input_shape))}] to {got}, expected logits "
            f"[2, {spec.num_classes}]"
        )


class Normalized(nn.Module):
    """``net`` applied to ``(x - mean) / std``: the normalization lives inside the model, so
    its inputs (and every attack's eps) stay pixels in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`Normalized` model (the model itself otherwise): what a
    state_dict trained elsewhere loads into."""
    return model.net if isinstance(model, Normalized) else model


def build_model(spec: ModelSpec | str) -> nn.Module:
    """A freshly initialised model (seed torch first for determinism), weights channels-last.

    Args:
        spec: the spec, or just a built-in architecture's name (Fashion-MNIST's shape).

    Raises:
        ModelSpecError: unknown architecture, a factory that cannot be imported or returns
            the wrong output shape, or a normalization of the wrong length.
    """
    if isinstance(spec, str):
        spec = ModelSpec(architecture=spec)
    arch = spec.architecture
    if arch in BUILTIN:
        net = BUILTIN[arch](spec)
    elif arch.startswith(TORCHVISION_PREFIX):
        net = _torchvision(spec)
    elif ":" in arch:
        net = _factory(spec)
    else:
        raise ModelSpecError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}, "
            "torchvision:NAME or package.module:function"
        )
    if spec.normalize is not None:
        mean, std = spec.normalize.get("mean", []), spec.normalize.get("std", [])
        if len(mean) != spec.in_channels or len(std) != spec.in_channels or min(std) <= 0:
            raise ModelSpecError(
                f"model.normalize needs {spec.in_channels} mean and {spec.in_channels} positive "
                f"std values (one per channel), got mean {mean} and std {std}"
            )
        net = Normalized(net, mean, std)
    if arch not in BUILTIN:
        _check_output(net, spec)
    return net.to(memory_format=MEMORY_FORMAT)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` exactly (every key, every shape).

    Raises:
        ModelSpecError: the weights do not fit; the message names ``what`` and the first key
            that is missing, unexpected or of another shape (with both shapes).
    """
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelSpecError(f"{what} lacks weight {key!r} (shape {list(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelSpecError(
                f"{what}: weight {key!r} has shape {list(state[key].shape)}, the architecture "
                f"needs {list(tensor.shape)}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise ModelSpecError(f"{what} holds weight {extra[0]!r}, which the architecture lacks")
    model.load_state_dict(state, strict=True)


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


__all__ = [
    "ARCHITECTURES",
    "BUILTIN",
    "FASHION_CLASSES",
    "ModelSpec",
    "ModelSpecError",
    "Normalized",
    "average_weights",
    "build_model",
    "load_weights",
    "unwrap",
]
