"""WSGI entry point for production servers such as gunicorn.

``gunicorn --workers 1 --threads 8 --bind 0.0.0.0:8080 'serving.wsgi:make_app()'``

The config is read from ``$ROBUSTLOOP_CONFIG`` (else ``./robustloop.yaml``, else the defaults).
Use one worker process with threads: the feedback map and the Prometheus registry live in the
process, so a second worker would count its own metrics and miss feedback for predictions the
first one made. Do not pass ``--preload``: the hot-reload thread must start in the worker.
"""

from __future__ import annotations

import os

from flask import Flask

from robustloop.config import load_config
from serving.app import create_app, set_threads


def make_app() -> Flask:
    """The model server app for the config named by ``$ROBUSTLOOP_CONFIG``."""
    config = load_config(os.environ.get("ROBUSTLOOP_CONFIG"))
    set_threads(config)
    return create_app(config)


__all__ = ["make_app"]
