"""Use cases that register a new model version without hardening it.

- :func:`model_spec`: the spec of the configured model for the configured data.
- :func:`train_baseline`: a standard (undefended) model trained from scratch with
  ``cfg.training``; the store makes the first version production.
- :func:`average_versions`: the weight average of versions of one architecture (a "model soup").
- :func:`import_weights`: a state_dict trained elsewhere, as a version of the configured model.

Hardening lives in :mod:`training.harden`. Callers handle the errors (the CLI prints one line).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from robustloop.config import RobustloopConfig
from training.data import Splits, make_splits
from training.device import resolve_device
from training.evaluate import evaluate
from training.models import (
    ModelSpec,
    ModelSpecError,
    average_weights,
    build_model,
    load_weights,
    unwrap,
)
from training.store import ModelStore
from training.train import train_standard


def model_spec(cfg: RobustloopConfig, splits: Splits) -> ModelSpec:
    """The configured architecture (``model``) fitted to the data's shape and classes."""
    channels, height, width = splits.image_shape
    normalize = cfg.model.normalize
    return ModelSpec(
        architecture=cfg.model.architecture,
        in_channels=channels,
        image_size=(height, width),
        class_names=splits.classes,
        normalize=normalize.model_dump() if normalize is not None else None,
        python_path=tuple(cfg.model.python_path),
    )


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
    spec = model_spec(cfg, splits)
    model = build_model(spec).to(device)
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
        architecture=spec,
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
    specs = {json.dumps(manifest.spec.to_dict(), sort_keys=True) for _, manifest in loaded}
    if len(specs) > 1:
        raise ValueError(f"cannot average models of different architectures or shapes: {sources}")
    soup = average_weights([model for model, _ in loaded])
    splits = make_splits(cfg.data)
    return store.register(
        soup,
        architecture=loaded[0][1].spec,
        parent=sources[0],
        recipe={"method": "average", "sources": sources},
        metrics={"eval_clean_accuracy": evaluate(soup, splits.eval, attack="none").accuracy},
        split=splits.describe(),
        provenance={"command": "models average", "sources": sources},
    )


def import_weights(cfg: RobustloopConfig, path: Path) -> str:
    """Register the state_dict in ``path`` as a version of ``cfg.model`` (not promoted, unless
    it is the store's first version); its clean accuracy on the eval split is recorded.

    ``path`` is a safetensors file, or a ``.pt`` file read with ``torch.load(weights_only=True)``
    (tensors and plain containers only: a pickle that would run code is refused). A
    ``{"state_dict": {...}}`` checkpoint is unwrapped. The weights are those of the network
    itself: a configured normalization is added around them.

    Raises:
        DatasetError, DeviceError: as their names say.
        ModelSpecError: the file is unreadable, or its weights do not fit the architecture
            (the message names the first mismatching key and both shapes).
    """
    state = _read_state_dict(path)
    splits = make_splits(cfg.data)
    spec = model_spec(cfg, splits)
    model = build_model(spec)
    load_weights(unwrap(model), state, str(path))
    model.to(resolve_device(cfg.device)).eval()
    return ModelStore(cfg.store.path).register(
        model,
        architecture=spec,
        parent=None,
        recipe={"method": "imported", "file": path.name},
        metrics={"eval_clean_accuracy": evaluate(model, splits.eval, attack="none").accuracy},
        split=splits.describe(),
        provenance={
            "command": "models import",
            "file": str(path),
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelSpecError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader's failure is an unreadable file
        raise ModelSpecError(
            f"cannot read weights from {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelSpecError(
            f"{path} does not hold a state_dict (a mapping of weight names to tensors); save "
            "one with torch.save(model.state_dict(), path)"
        )
    return dict(loaded)


__all__ = ["average_versions", "import_weights", "model_spec", "train_baseline"]
