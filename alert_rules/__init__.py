"""Prometheus alert rules and the Alertmanager config, rendered from ``robustloop.yaml``.

Pure Python and YAML (no torch): the Helm chart helpers and the embedded stack import it. The
committed files beside this module (``robustloop.rules.yaml``, ``alertmanager.yml``,
``tests/robustloop.test.yml``) are rendered from the default config; ``RUNBOOK.md`` explains
each alert. Calibration statistics live in :mod:`alert_rules.calibration`.
"""

from alert_rules._health import HEALTH_ALERT_NAMES, HEALTH_GROUP
from alert_rules._spec import (
    CAPTURED_RECIPE,
    ESCALATED_ALERT,
    GROUP,
    NO_REMEDIATION_VALUE,
    RECIPE_LABEL,
    REMEDIATION_LABEL,
    REMEDIATION_VALUE,
    duration_seconds,
    effective_threshold,
)
from alert_rules.promtool_tests import GenerationError, render_promtool_tests
from alert_rules.render import (
    ALERTMANAGER_FILE,
    DEFAULT_RECEIVER,
    FIXED_RULES_FILE,
    PACKAGE_DIR,
    REMEDIATION_RECEIVER,
    RULES_FILE,
    TESTS_FILE,
    generated_header,
    prometheus_rule_groups,
    render_alertmanager,
    render_rules,
    write_generated,
)

ALERT_NAMES = (
    "CanaryAccuracyDegraded",
    "AdversarialAttackDetected",
    "PredictionEntropyShift",
    "AdversarialInputSuspected",
)
"""The detection alerts a default config renders."""
OPT_IN_ALERT_NAMES = (ESCALATED_ALERT,)
"""Detection alerts rendered only when configured (``alerts.canary_accuracy.escalate_after``)."""

__all__ = [
    "ALERTMANAGER_FILE",
    "ALERT_NAMES",
    "CAPTURED_RECIPE",
    "DEFAULT_RECEIVER",
    "ESCALATED_ALERT",
    "FIXED_RULES_FILE",
    "GROUP",
    "HEALTH_ALERT_NAMES",
    "HEALTH_GROUP",
    "NO_REMEDIATION_VALUE",
    "OPT_IN_ALERT_NAMES",
    "PACKAGE_DIR",
    "RECIPE_LABEL",
    "REMEDIATION_LABEL",
    "REMEDIATION_RECEIVER",
    "REMEDIATION_VALUE",
    "RULES_FILE",
    "TESTS_FILE",
    "GenerationError",
    "duration_seconds",
    "effective_threshold",
    "generated_header",
    "prometheus_rule_groups",
    "render_alertmanager",
    "render_promtool_tests",
    "render_rules",
    "write_generated",
]
