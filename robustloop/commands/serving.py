"""Sub-commands of this area (filled in by its issue)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this area's sub-commands to the robustloop parser."""
    del sub


__all__ = ["argparse", "register"]
