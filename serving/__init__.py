"""Model server: Open Inference Protocol v2 endpoints, robustness signals, Prometheus metrics,
hot reload of the store's production model, and the traffic generator that exercises it.

Public names:

- :func:`create_app` (Flask app factory), :func:`get_state`, :class:`RunningServer`;
- :mod:`serving.signals`: ``normalised_entropy``, ``max_probability``, ``squeeze_score`` and the
  histogram bucket tuples;
- :mod:`serving.errors`: the errors the server answers with;
- :mod:`serving.traffic`: the traffic generator behind ``robustloop traffic``.
"""

from serving import errors, signals
from serving.app import ServingState, create_app, get_state
from serving.server import RunningServer

__all__ = ["RunningServer", "ServingState", "create_app", "errors", "get_state", "signals"]
