"""Hardening as a use case: adversarially fine-tune a stored version and register the result.

The one implementation behind ``robustloop harden`` and the workflow's ``harden`` step: it
assembles the recipe from ``cfg.remediation``, resolves the device and the precision, trains,
and registers the candidate (never promoted) with its recipe, metrics, split and provenance.
Callers handle the errors (the CLI prints one line; the step fails with it).

Two recipes (``remediation.recipe``, :data:`RECIPES`): ``standard`` fine-tunes on the training
split; ``captured`` on the training part of the captured set (:mod:`training.captured`) mixed
with the training split (``capture.mix``), so that a model hurt by traffic it was not trained
for (natural drift, or an attack the squeeze score does not see) learns from that traffic, still
adversarially. The captured set's held-out part is never trained on: the gate judges on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustloop.config import RobustloopConfig
from training.adversarial import DEFAULT_LR, adversarial_train, learning_rate_warning, use_bf16
from training.captured import load_captured_split, mix_captured
from training.data import check_fits, make_splits
from training.device import resolve_device
from training.evaluate import evaluate
from training.models import build_model
from training.store import ModelStore

log = logging.getLogger("training")

RECIPES: tuple[str, ...] = ("standard", "captured")
"""What a remediation fine-tunes on, by name (``remediation.recipe``): the training split, or
the captured set mixed with it."""


@dataclass(frozen=True)
class Hardened:
    """A registered candidate: its id and its parent's."""

    version: str
    parent: str


def harden(
    cfg: RobustloopConfig,
    *,
    base: str,
    incident: str | None,
    progress: bool = False,
    warn: Callable[[str], None] = log.warning,
) -> Hardened:
    """Adversarially train from ``base`` with ``cfg.remediation``; register, do not promote.

    Args:
        cfg: the config (``remediation`` is the recipe; ``device``, ``data``, ``store``).
        base: the version to start from (an id, ``production`` or ``latest``).
        incident: recorded as provenance.
        progress: show a progress bar on stderr.
        warn: told what the user should know: a learning rate far from the optimizer's
            scale (before training), a candidate that kept its base's weights (after).

    Raises:
        training.DeviceError: ``cfg.device`` names a device this machine lacks.
        training.StoreError: unknown base, tampered weights.
        training.DatasetError: the data is missing or corrupt; for the captured recipe also
            too few captured examples, or a tampered chunk (``CapturedDataError``).
        training.TrainingDiverged: the run diverged; nothing was registered.
        ValueError: an invalid recipe.
    """
    rc = cfg.remediation
    device = resolve_device(cfg.device)
    lr = rc.lr if rc.lr is not None else DEFAULT_LR[rc.optimizer]
    warning = learning_rate_warning(rc.optimizer, lr)
    if warning:
        warn(warning)
    bf16 = use_bf16(rc.precision, device)
    store = ModelStore(cfg.store.path)
    base_model, base_manifest = store.load(base, device)
    splits = make_splits(cfg.data)
    check_fits(splits, base_manifest.spec, base_manifest.version)
    dataset, captured = splits.train, None
    if rc.recipe == "captured":
        part = load_captured_split(cfg.capture, base_manifest.spec)
        dataset, composition = mix_captured(
            splits.train, part.train, cfg.capture.mix, cfg.training.seed
        )
        captured = {**part.describe(), "mix": cfg.capture.mix, "composition": composition}
        log.info(
            "captured recipe: %d captured examples in %d of %d slots (%d held out for the gate)",
            composition["captured"],
            composition["slots"],
            len(dataset),
            len(part.holdout),
        )
    elif rc.recipe != "standard":
        raise ValueError(f"unknown recipe {rc.recipe!r}; choose one of {RECIPES}")
    if rc.warm_start:
        model = base_model
    else:
        torch.manual_seed(cfg.training.seed)
        model = build_model(base_manifest.spec).to(device)
    result = adversarial_train(
        model,
        dataset,
        method=rc.method,
        eps=rc.eps,
        step_size=rc.step_size,
        steps=rc.steps,
        epochs=rc.epochs,
        batch_size=rc.batch_size,
        lr=lr,
        optimizer=rc.optimizer,
        warmup=rc.warmup,
        seed=cfg.training.seed,
        max_seconds=rc.max_seconds,
        check_size=rc.check_size,
        progress=progress,
        bf16=bf16,
    )
    version = store.register(
        result.model,
        architecture=base_manifest.spec,
        parent=base_manifest.version,
        recipe={
            "method": rc.method,
            "eps": rc.eps,
            "step_size": rc.step_size,
            "steps": rc.steps if rc.method == "pgd" else 1,
            "epochs": rc.epochs,
            "max_seconds": rc.max_seconds,
            "batch_size": rc.batch_size,
            "optimizer": rc.optimizer,
            "lr": lr,
            "warmup": rc.warmup,
            "seed": cfg.training.seed,
            "warm_start": rc.warm_start,
            "check_size": rc.check_size,
            "precision": "bf16" if bf16 else "fp32",
            "device": device.type,
            "recipe": rc.recipe,
            **({"captured": captured} if captured is not None else {}),
        },
        metrics={
            "eval_clean_accuracy": evaluate(result.model, splits.eval, attack="none").accuracy,
            "train_seconds": result.seconds,
            "stopped_early": result.stopped_early,
            "best_check": result.best,
            "history": result.history,
        },
        split=splits.describe(),
        provenance={"command": "harden", "incident": incident, "base": base},
    )
    if result.best is not None and result.best["epoch"] == 0:
        warn(
            f"no epoch beat {base_manifest.version} on the PGD check; {version} keeps its "
            "weights (the gate will reject it)"
        )
    return Hardened(version, base_manifest.version)


__all__ = ["RECIPES", "Hardened", "harden"]
