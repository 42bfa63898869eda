"""Bridge from the ``harden`` step to the training component's own ``robustloop harden`` command.

The step overrides the remediation recipe with the workflow's parameters; the command reads the
recipe from a config file. Rather than reach into training's internals, the step writes the
overridden config to a temporary file and runs the command in-process, so that the workflow and
a user typing ``robustloop harden`` train in exactly the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from robustloop.config import RobustloopConfig, dump_config


class HardenError(SystemExit):
    """``robustloop harden`` failed or printed no version id."""


def harden_candidate(cfg: RobustloopConfig, *, base: str, incident: str) -> str:
    """Run ``robustloop harden --from BASE --incident ID`` with ``cfg``; return the new version.

    Raises:
        HardenError: the command failed, or printed no version id.
    """
    from robustloop.cli import main

    with tempfile.TemporaryDirectory(prefix="robustloop-harden-") as tmp:
        path = Path(tmp) / "robustloop.yaml"
        path.write_text(dump_config(cfg), encoding="utf-8")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                ["--config", os.fspath(path), "harden", "--from", base, "--incident", incident]
            )
    printed = out.getvalue()
    print(printed, end="")
    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    if code != 0:
        raise HardenError(f"robustloop step failed: `robustloop harden` exited {code}")
    if not lines:
        raise HardenError("robustloop step failed: `robustloop harden` printed no version id")
    return lines[-1]
