"""Bridge from the ``harden`` step to the training component's ``robustloop harden``.

The step overrides the remediation recipe with the workflow's parameters and calls the same
function the command runs (:func:`robustloop.commands.training.harden_version`), so that the
workflow and a user typing ``robustloop harden`` train in exactly the same way.
"""

from __future__ import annotations

from robustloop.config import RobustloopConfig


class HardenError(SystemExit):
    """Hardening failed (unknown base, tampered weights, missing data, bad recipe)."""


def harden_candidate(cfg: RobustloopConfig, *, base: str, incident: str) -> str:
    """Harden ``base`` with ``cfg.remediation`` for ``incident``; return the new version.

    Raises:
        HardenError: hardening failed; the message says why.
    """
    from robustloop.cli import CommandError
    from robustloop.commands.training import harden_version

    try:
        version, _parent = harden_version(cfg, base=base, incident=incident)
    except CommandError as exc:
        raise HardenError(f"robustloop step failed: harden: {exc}") from None
    print(version)
    return version
