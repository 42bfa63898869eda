"""Where the tensors live: the ``device`` config key resolved in one place.

Every command resolves ``device`` (``auto``, ``cpu`` or ``cuda``) once with
:func:`resolve_device` and places its model there (``ModelStore.load(ref, device=...)`` or
``build_model(...).to(device)``); the training, attack and evaluation loops then follow the
model (:func:`model_device`), moving each mini-batch to it. Nothing else names a device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from robustloop.config import Device

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Devices by name (the ``device`` key and ``--device``): :func:`resolve_device`."""


class DeviceError(ValueError):
    """The configured device cannot be used here (the message says what to set instead)."""


def gpu_available() -> bool:
    """Whether torch sees a CUDA GPU (the one hardware question :func:`resolve_device` asks)."""
    return bool(torch.cuda.is_available())


def gpu_bf16() -> bool:
    """Whether the CUDA GPU computes bfloat16 natively (Ampere and later)."""
    return bool(torch.cuda.is_bf16_supported())


def resolve_device(name: Device | str) -> torch.device:
    """The torch device that ``name`` means on this machine.

    ``auto`` is the first CUDA GPU where torch sees one, else the CPU; ``cuda`` insists on a
    GPU; ``cpu`` is the CPU.

    Raises:
        DeviceError: unknown name, or ``cuda`` where torch sees no GPU.
    """
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {DEVICES}")
    if name == "cpu":
        return torch.device("cpu")
    if gpu_available():
        return torch.device("cuda")
    if name == "cuda":
        raise DeviceError(
            "device cuda: torch sees no CUDA GPU here (a CPU-only torch build, or no driver); "
            "set device: auto or cpu"
        )
    return torch.device("cpu")


def use_threads(threads: int | None) -> None:
    """Set torch's intra-op threads for this process; None or 0 keeps torch's default (one per
    core). The one place robustloop sets them (``training.threads`` for the training, evaluation
    and calibration commands and steps, ``serving.threads`` for the model server)."""
    if threads:
        torch.set_num_threads(threads)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[object]:
    """bfloat16 autocast on ``device`` when ``bf16``, else a context that changes nothing.

    The weight cache is off: a cache kept across optimizer steps would feed the forward pass
    stale weights.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: on a CPU, oneDNN's report (AVX512-BF16
    or AMX); on a GPU, torch's (Ampere and later)."""
    if device.type == "cuda":
        return gpu_bf16()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


__all__ = [
    "DeviceError",
    "autocast",
    "model_device",
    "native_bf16",
    "resolve_device",
    "use_threads",
]
