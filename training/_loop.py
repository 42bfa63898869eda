"""The mini-batch loop shared by standard and adversarial training (private)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator

import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm


def batches(
    dataset: TensorDataset, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches (the last one may be smaller)."""
    images, labels = dataset.tensors[0], dataset.tensors[1]
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield images[idx], labels[idx]


class Deadline:
    """Wall-clock budget: ``expired`` once ``max_seconds`` have passed (never if None)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.start = time.monotonic()
        self.max_seconds = max_seconds

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def expired(self) -> bool:
        return self.max_seconds is not None and self.elapsed >= self.max_seconds


def cosine_lr(base: float, step: int, total: int, deadline: Deadline | None = None) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps (Loshchilov and Hutter 2017).

    With a ``deadline`` that has a budget, progress is the larger of the step fraction and the
    time fraction, so that a run cut short by the clock still ends with a small learning rate.
    """
    fraction = min(step, total) / max(total, 1)
    if deadline is not None and deadline.max_seconds:
        fraction = max(fraction, min(1.0, deadline.elapsed / deadline.max_seconds))
    return base * 0.5 * (1 + math.cos(math.pi * fraction))


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr (stdout carries the command's result)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def validate(dataset: TensorDataset, epochs: int, batch_size: int, lr: float) -> None:
    """Reject arguments that would silently train nothing."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}"
        )
