"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from training import ModelStore, build_model


def register_model(store: ModelStore, seed: int = 0) -> str:
    """Register an untrained reference CNN (seeded weights); enough for protocol tests."""
    torch.manual_seed(seed)
    return store.register(
        build_model("cnn"),
        architecture="cnn",
        parent=None,
        recipe={},
        metrics={},
        split={},
        provenance={"test": True},
    )
