"""Use cases that register a new model version without hardening it.

- :func:`train_baseline`: a standard (undefended) model trained from scratch with
  ``cfg.training``; the store makes the first version production.
- :func:`average_versions`: the weight average of versions of one architecture (a "model soup").

Hardening lives in :mod:`training.harden`. Callers handle the errors (the CLI prints one line).
"""

from __future__ import annotations

import torch

from robustloop.config import RobustloopConfig
from training.data import make_splits
from training.device import resolve_device
from training.evaluate import evaluate
from training.models import average_weights, build_model
from training.store import ModelStore
from training.train import train_standard


def train_baseline(
    cfg: RobustloopConfig, *, max_seconds: float | None = None, progress: bool = False
) -> str:
    """Train ``cfg.model.architecture`` from scratch with ``cfg.training``; register it.

    Args:
        cfg: the config (``training`` is the recipe; ``device``, ``data``, ``store``, ``model``).
        max_seconds: stop cleanly after this many seconds.
        progress: show a progress bar on stderr.

    Returns:
        The new version id.

    Raises:
        training.DeviceError, training.StoreError, training.DatasetError: as their names say.
    """
    tc = cfg.training
    device = resolve_device(cfg.device)
    store = ModelStore(cfg.store.path)
    splits = make_splits(cfg.data)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model.architecture).to(device)
    result = train_standard(
        model,
        splits.train,
        epochs=tc.epochs,
        batch_size=tc.batch_size,
        lr=tc.lr,
        seed=tc.seed,
        max_seconds=max_seconds,
        progress=progress,
    )
    return store.register(
        result.model,
        architecture=cfg.model.architecture,
        parent=None,
        recipe={
            "method": "standard",
            "epochs": tc.epochs,
            "batch_size": tc.batch_size,
            "lr": tc.lr,
            "seed": tc.seed,
            "optimizer": "adam, cosine decay",
        },
        metrics={
            "eval_clean_accuracy": evaluate(result.model, splits.eval, attack="none").accuracy,
            "train_seconds": result.seconds,
            "stopped_early": result.stopped_early,
            "history": result.history,
        },
        split=splits.describe(),
        provenance={"command": "train"},
    )


def average_versions(cfg: RobustloopConfig, versions: list[str]) -> str:
    """Register the weight average of ``versions`` (not promoted); its parent is the first.

    Raises:
        ValueError: fewer than two versions, or different architectures.
        training.StoreError: an unknown or tampered version.
    """
    if len(versions) < 2:
        raise ValueError(f"averaging needs at least two versions, got {versions}")
    store = ModelStore(cfg.store.path)
    loaded = [store.load(version) for version in versions]
    sources = [manifest.version for _, manifest in loaded]
    architectures = {manifest.architecture for _, manifest in loaded}
    if len(architectures) > 1:
        raise ValueError(f"cannot average different architectures: {sorted(architectures)}")
    soup = average_weights([model for model, _ in loaded])
    splits = make_splits(cfg.data)
    return store.register(
        soup,
        architecture=architectures.pop(),
        parent=sources[0],
        recipe={"method": "average", "sources": sources},
        metrics={"eval_clean_accuracy": evaluate(soup, splits.eval, attack="none").accuracy},
        split=splits.describe(),
        provenance={"command": "models average", "sources": sources},
    )


__all__ = ["average_versions", "train_baseline"]
