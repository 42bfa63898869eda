"""Bridge from the ``harden`` step to the training component's hardening use case.

The step overrides the remediation recipe with the workflow's parameters and calls
:func:`training.harden`, the function ``robustloop harden`` calls too, so that the workflow
and a user typing ``robustloop harden`` train in exactly the same way.
"""

from __future__ import annotations

from robustloop.config import RobustloopConfig


class HardenError(SystemExit):
    """Hardening failed (unknown base, tampered weights, missing data, bad recipe, no such
    device, or a run that diverged)."""


def harden_candidate(cfg: RobustloopConfig, *, base: str, incident: str) -> str:
    """Harden ``base`` with ``cfg.remediation`` for ``incident``; return the new version.

    Raises:
        HardenError: hardening failed; the message says why.
    """
    import training

    failures = (training.DatasetError, training.StoreError, training.TrainingDiverged, ValueError)
    try:
        hardened = training.harden(cfg, base=base, incident=incident)
    except failures as exc:
        raise HardenError(f"robustloop step failed: harden: {exc}") from None
    print(hardened.version)
    return hardened.version
