"""Sub-commands of ``robustloop``, one module per area.

Each module defines ``register(subparsers)``, which adds its sub-commands and sets
``handler=`` on each; handlers receive the parsed ``args`` with ``args.cfg`` (the loaded
:class:`~robustloop.config.RobustloopConfig`). Handlers import torch lazily.
"""

from robustloop.commands import alerts, serving, smoke, stack, training, webhook, workflow

COMMAND_MODULES = [training, serving, alerts, webhook, workflow, stack, smoke]

__all__ = ["COMMAND_MODULES"]
