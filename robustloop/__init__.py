"""robustloop: keep a served image classifier robust against adversarial inputs.

Public names: the config model and its loader. The CLI lives in :mod:`robustloop.cli`.
"""

from robustloop.config import ConfigError, RobustloopConfig, load_config

__all__ = ["ConfigError", "RobustloopConfig", "load_config"]
__version__ = "0.1.0"
