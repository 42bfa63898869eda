"""Labels on submitted runs, so they can be filtered: ``argo list -l robustloop.dev/model=NAME``.

A Kubernetes label value is at most 63 characters of ``[A-Za-z0-9._-]``, beginning and ending
with a letter or digit (or empty). Model names and alert names usually are already; anything else
is made one by :func:`label_value`, which keeps a valid value as it is.
"""

from __future__ import annotations

import hashlib
import re

MODEL_LABEL = "robustloop.dev/model"
INCIDENT_LABEL = "robustloop.dev/incident"
ALERTNAME_LABEL = "robustloop.dev/alertname"

MAX_LABEL_VALUE = 63
_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
_EDGES = "._-"
_HASH_CHARS = 12


def label_value(text: str) -> str:
    """``text`` as a valid Kubernetes label value; a valid value is returned unchanged.

    Runs of other characters become ``-``, and leading and trailing ``.``, ``_``, ``-`` are
    dropped. A value still longer than 63 characters keeps its first 50 and ends with 12 hex
    digits of the SHA-256 of ``text``, so two long values that share a beginning stay distinct.
    """
    value = _INVALID.sub("-", text).strip(_EDGES)
    if len(value) <= MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    head = value[: MAX_LABEL_VALUE - _HASH_CHARS - 1].rstrip(_EDGES)
    return f"{head}-{digest}"


def run_labels(*, model: str, incident_id: str, alertname: str) -> dict[str, str]:
    """The labels identifying an incident's run: its model, incident and alert."""
    return {
        MODEL_LABEL: label_value(model),
        INCIDENT_LABEL: label_value(incident_id),
        ALERTNAME_LABEL: label_value(alertname),
    }


__all__ = [
    "ALERTNAME_LABEL",
    "INCIDENT_LABEL",
    "MAX_LABEL_VALUE",
    "MODEL_LABEL",
    "label_value",
    "run_labels",
]
