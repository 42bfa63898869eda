"""The mini-batch loop shared by standard and adversarial training (private)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from training.device import autocast, model_device

Perturb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(images, labels, indices) -> images to train on``: replaces a mini-batch before the update
(an attack, in adversarial training); ``indices`` are the examples' positions in the dataset."""


def batches(
    dataset: TensorDataset, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches as (indices, images, labels); the last may be smaller."""
    images, labels = dataset.tensors[0], dataset.tensors[1]
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, images[idx], labels[idx]


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


WARMUP_MIN_STEPS = 30
"""A warm-up, when there is one, lasts at least this many optimizer steps, however fast the
clock runs.

SGD's momentum needs steps, not seconds, to settle: from a briefly trained model, FGSM-prior at
peak lr 0.1 diverged to chance (loss ln 10, every prediction one class) when the warm-up
reached the peak within 10 steps, and trained normally from 12 steps on (docs/training.md).
A warm-up that followed the clock alone took that few steps on a slow CPU, where the first
seconds of the budget hold few steps (float32 without native bfloat16, the server and the
attacker sharing the cores). Thirty keeps a factor of 2.5 from the edge.
"""


def cosine_lr(
    base: float, step: int, total: int, deadline: Deadline | None = None, warmup: float = 0.0
) -> float:
    """Linear warm-up from 0 over the first ``warmup`` fraction of the run, then cosine decay
    from ``base`` to 0 (Loshchilov and Hutter 2017) over the rest.

    With a ``deadline`` that has a budget, progress is the larger of the step fraction and the
    time fraction, so that a run cut short by the clock still ends with a small learning rate.
    A warm-up climbs for at least :data:`WARMUP_MIN_STEPS` steps (all of a shorter run's);
    where the clock has moved the decay on meanwhile, the climb ends where it meets the
    decaying curve, so the rate never jumps up.
    """
    fraction = min(step, total) / max(total, 1)
    if deadline is not None and deadline.max_seconds:
        fraction = max(fraction, min(1.0, deadline.elapsed / deadline.max_seconds))
    decayed = max(0.0, fraction - warmup) / (1 - warmup)
    factor = 0.5 * (1 + math.cos(math.pi * decayed))
    if warmup > 0:
        # counted at the end of the step: the first step gets a small rate, not 0
        by_progress = (fraction + 1 / max(total, 1)) / warmup
        by_steps = (step + 1) / min(WARMUP_MIN_STEPS, max(total, 1))
        factor = min(factor, by_progress, by_steps)
    return base * factor


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr (stdout carries the command's result)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


log = logging.getLogger("training")


def log_epoch(desc: str, entry: dict[str, Any]) -> None:
    """One INFO line per finished epoch: the progress bar shows only on a terminal, and a long
    run in a workflow step or under nohup should still say how it goes."""
    fields = ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in entry.items()
        if key != "epoch"
    )
    log.info("%s: %s", desc, fields)


def steps_per_epoch(dataset: TensorDataset, batch_size: int) -> int:
    """Mini-batches in one pass over ``dataset`` (the last one may be smaller)."""
    return -(-len(dataset) // batch_size)


def validate(dataset: TensorDataset, epochs: int, batch_size: int, lr: float) -> None:
    """Reject arguments that would silently train nothing."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}"
        )


@dataclass
class EpochResult:
    """One pass over the data: step reached, images seen, mean loss and accuracy, clock stop.

    ``diverged`` is set when a mini-batch's loss was not finite: the epoch stopped there,
    before that batch's update; ``loss`` is then that batch's, ``samples`` those before it, and
    ``lr`` the learning rate of that step (else of the last).
    """

    step: int
    samples: int
    loss: float
    accuracy: float
    stopped: bool
    lr: float = 0.0
    diverged: bool = False


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: TensorDataset,
    generator: torch.Generator,
    *,
    batch_size: int,
    lr: float,
    step: int,
    total_steps: int,
    deadline: Deadline,
    desc: str,
    progress: bool,
    schedule_by_clock: bool = False,
    perturb: Perturb | None = None,
    metric: str = "acc",
    bf16: bool = False,
    warmup: float = 0.0,
) -> EpochResult:
    """One epoch of mini-batch training, shared by standard and adversarial training.

    Args:
        desc: label of the epoch's progress bar (on stderr when ``progress``).
        perturb: replaces each mini-batch's images before the update (:data:`Perturb`);
            None trains on the clean images.
        schedule_by_clock: let the cosine learning rate follow ``deadline`` as well as steps.
        metric: name of the running accuracy on the progress bar.
        bf16: run the attack and the forward pass under bfloat16 autocast on the model's
            device (weights, gradients and the optimizer stay float32). The context is entered
            per mini-batch (:func:`training.device.autocast`).
        warmup: fraction of the run over which the learning rate climbs to ``lr``
            (:func:`cosine_lr`).
    """
    loss_sum, hits, seen, stopped, rate = 0.0, 0, 0, False, 0.0
    device = model_device(model)
    with progress_bar(steps_per_epoch(dataset, batch_size), desc, progress) as bar:
        for indices, host_images, host_labels in batches(dataset, batch_size, generator):
            images, labels = host_images.to(device), host_labels.to(device)
            clock = deadline if schedule_by_clock else None
            rate = cosine_lr(lr, step, total_steps, clock, warmup)
            for group in optimizer.param_groups:
                group["lr"] = rate
            with autocast(device, bf16):
                inputs = perturb(images, labels, indices) if perturb is not None else images
                logits = model(inputs)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            value = float(loss.detach())
            if not math.isfinite(value):  # the loss is that batch's, the samples those before
                return EpochResult(step, seen, value, hits / max(seen, 1), True, rate, True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += value * len(labels)
            hits += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(1)
            bar.set_postfix({"loss": f"{loss_sum / seen:.3f}", metric: f"{hits / seen:.3f}"})
            if deadline.expired:
                stopped = True
                break
    return EpochResult(step, seen, loss_sum / max(seen, 1), hits / max(seen, 1), stopped, rate)
