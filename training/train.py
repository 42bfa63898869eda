"""Standard (undefended) training, and the result type every training function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from training._loop import Deadline, log_epoch, steps_per_epoch, train_epoch, validate


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: the trained model (for adversarial training, the best checkpoint), in eval mode.
        history: one dict per epoch (a partial epoch too, when stopped by the clock); for
            adversarial training the first is epoch 0, the check of the starting weights.
        stopped_early: True when ``max_seconds`` or the catastrophic-overfitting guard ended
            training before the last epoch.
        seconds: wall time of the run.
        best: the history entry of the kept checkpoint (adversarial training), else None.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    best: dict[str, Any] | None = None


def train_standard(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_seconds: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on clean images: Adam, cross-entropy, cosine learning-rate decay.

    The data order is drawn from a generator seeded by ``seed``; with the same initial weights
    (seed torch before :func:`~training.models.build_model`) a run is reproducible.
    ``max_seconds`` ends training after the current mini-batch once exceeded.

    Raises:
        ValueError: an empty dataset or a non-positive epochs, batch size or learning rate.
    """
    validate(dataset, epochs, batch_size, lr)
    deadline = Deadline(max_seconds)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total_steps = epochs * steps_per_epoch(dataset, batch_size)
    history: list[dict[str, Any]] = []
    stopped = False
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        desc = f"train epoch {epoch}/{epochs}"
        result = train_epoch(
            model,
            optimizer,
            dataset,
            generator,
            batch_size=batch_size,
            lr=lr,
            step=step,
            total_steps=total_steps,
            deadline=deadline,
            desc=desc,
            progress=progress,
        )
        step, stopped, seen = result.step, result.stopped, result.samples
        entry = {
            "epoch": epoch,
            "loss": result.loss,
            "train_accuracy": result.accuracy,
            "samples": seen,
            "seconds": deadline.elapsed,
        }
        history.append(entry)
        log_epoch(desc, entry)
        if stopped:
            break
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        stopped_early=stopped and not (epoch == epochs and seen == len(dataset)),
        seconds=deadline.elapsed,
    )
