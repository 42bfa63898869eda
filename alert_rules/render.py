"""Render the Prometheus rules and the Alertmanager config from ``robustloop.yaml``.

The config's ``alerts`` section is the one source; everything here is a pure function of it
(no clock, no environment), so that the committed files can be regenerated and diffed:

- :func:`render_rules`: the Prometheus rules file (``alert_rules/robustloop.rules.yaml``);
- :func:`prometheus_rule_groups`: the same groups as data, all of them or one part: the rules
  that hold for every model (the Helm chart's PrometheusRule) or those that change with each
  calibration (the PrometheusRule that robustloop publishes itself, :mod:`alert_rules.cluster`);
- :func:`render_alertmanager`: routes remediation alerts to the webhook receiver, grouped by
  model, ``send_resolved: true``, with a bearer token read from a credentials file;
- :func:`render_promtool_tests` (in :mod:`alert_rules.promtool_tests`): unit tests of the rules;
- :func:`write_generated`: all three files into a folder.

Design, statistics and the reasoning behind each alert: ``docs/alerts.md`` and ``RUNBOOK.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alert_rules import _yaml
from alert_rules._health import CALIBRATED_HEALTH_ALERTS, HEALTH_GROUP, health_alerts
from alert_rules._spec import GROUP, REMEDIATION_LABEL, REMEDIATION_VALUE, Alert, build
from alert_rules._yaml import generated_header
from robustloop.atomic import atomic_write_text
from robustloop.config import RobustloopConfig

#: Where the committed, generated files live (rendered from the default config).
PACKAGE_DIR = Path(__file__).resolve().parent
RULES_FILE = "robustloop.rules.yaml"
ALERTMANAGER_FILE = "alertmanager.yml"
TESTS_FILE = "tests/robustloop.test.yml"
ALERTS_FILE = "robustloop.alerts.yaml"
"""The ``alerts`` section the rules were rendered from, for a config that must match them (the
Helm chart's)."""
FIXED_RULES_FILE = "robustloop.fixed.rules.yaml"
"""The groups that no calibration changes (``part="fixed"``): the Helm chart's PrometheusRule."""

Part = Literal["all", "fixed", "calibrated"]
"""Which rules :func:`prometheus_rule_groups` returns."""


def is_calibrated(group: str, alert: Alert | None = None) -> bool:
    """Whether a rule changes when a model version is calibrated (``alert`` None: a recording rule).

    Every rule of the detection group does: its label-free thresholds and version selector come
    from the calibration, and its alerts share its recording rules (AdversarialAttackDetected
    compares canary accuracy and squeeze score recorded in one evaluation of the group). Of the
    loop's own alerts, only those that name the calibrated version do.
    """
    if group == GROUP:
        return True
    return alert is not None and alert.name in CALIBRATED_HEALTH_ALERTS


#: Receiver names in the Alertmanager config.
REMEDIATION_RECEIVER = "robustloop-remediation"
DEFAULT_RECEIVER = "robustloop-null"


def prometheus_rule_groups(cfg: RobustloopConfig, part: Part = "all") -> list[dict[str, Any]]:
    """The rule groups, as the ``groups`` of a rules file or a PrometheusRule's ``spec``.

    Each group lists its recording rules first, then its alerts, so that one evaluation of the
    group compares the values recorded in that same evaluation (no extra interval of delay).
    The detection alerts form one group; the loop's own alerts (:mod:`alert_rules._health`)
    another.

    Args:
        cfg: the configuration.
        part: ``all``; ``fixed``, the rules no calibration changes; or ``calibrated``, the
            others (:func:`is_calibrated`). The two parts hold every rule exactly once, in
            groups of the same names; a group with no rule in a part is left out of it.
    """
    spec = build(cfg)
    health = health_alerts(cfg)
    records = {**spec.records, **({HEALTH_GROUP: ()} if health else {})}

    def wanted(group: str, alert: Alert | None = None) -> bool:
        return part == "all" or is_calibrated(group, alert) == (part == "calibrated")

    groups: list[dict[str, Any]] = []
    for group_name, group_records in records.items():
        rules: list[dict[str, Any]] = [
            {"record": r.name, "expr": r.expr} for r in group_records if wanted(group_name)
        ]
        for alert in (*spec.alerts, *health):
            if alert.group != group_name or not wanted(group_name, alert):
                continue
            rules.append(
                {
                    "alert": alert.name,
                    "expr": alert.promql(),
                    "for": alert.for_,
                    **({"keep_firing_for": alert.keep_firing_for} if alert.keep_firing_for else {}),
                    "labels": alert.labels(),
                    "annotations": alert.annotations(cfg.alerts.runbook_base_url),
                }
            )
        if rules:
            groups.append({"name": group_name, "rules": rules})
    return groups


def render_rules(cfg: RobustloopConfig, part: Part = "all") -> str:
    """The Prometheus rules file for ``cfg`` (or one part of it), with its generated header."""
    which = {
        "all": "",
        "fixed": " that no calibration changes (the Helm chart's PrometheusRule)",
        "calibrated": " that a calibration changes",
    }[part]
    header = generated_header(f"Prometheus rules of model {cfg.model.name}{which}.")
    return header + _yaml.dump({"groups": prometheus_rule_groups(cfg, part)})


def render_alertmanager(
    cfg: RobustloopConfig,
    *,
    receiver_url: str | None = None,
    credentials_file: str | None = None,
) -> str:
    """The Alertmanager config: remediation alerts go to the webhook receiver, nothing else does.

    Alerts labelled ``remediation="adversarial-training"`` are grouped by model (one incident per
    model, whichever signals fire) and delivered with ``send_resolved: true`` and a bearer token
    that Alertmanager reads from ``credentials_file`` at each delivery (so a rotated token needs no
    restart, and the token never appears in the config). Every other alert ends at a receiver with
    no integrations: add your own (mail, chat) under ``robustloop-null`` in a copy.

    Args:
        cfg: the configuration; ``alerts.receiver_url``, ``alerts.credentials_file`` and the
            grouping intervals come from it.
        receiver_url: overrides ``alerts.receiver_url`` (the embedded stack's receiver port).
        credentials_file: overrides ``alerts.credentials_file``; a relative path is resolved by
            Alertmanager against the folder of the config file.
    """
    a = cfg.alerts
    config = {
        "route": {
            "receiver": DEFAULT_RECEIVER,
            "group_by": ["alertname", "model"],
            "group_wait": a.group_wait,
            "group_interval": a.group_interval,
            "repeat_interval": a.repeat_interval,
            "routes": [
                {
                    "receiver": REMEDIATION_RECEIVER,
                    "matchers": [f'{REMEDIATION_LABEL}="{REMEDIATION_VALUE}"'],
                    "group_by": ["model"],
                    "continue": False,
                }
            ],
        },
        "receivers": [
            {"name": DEFAULT_RECEIVER},
            {
                "name": REMEDIATION_RECEIVER,
                "webhook_configs": [
                    {
                        "url": receiver_url or a.receiver_url,
                        "send_resolved": True,
                        "max_alerts": 0,
                        "http_config": {
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": credentials_file or a.credentials_file,
                            }
                        },
                    }
                ],
            },
        ],
    }
    header = generated_header(f"Alertmanager config for model {cfg.model.name}.")
    return header + _yaml.dump(config)


def render_alerts_section(cfg: RobustloopConfig) -> str:
    """The config's ``alerts`` section as YAML, with the generated-file header."""
    header = generated_header(f"The alerts section the rules of model {cfg.model.name} use.")
    return header + _yaml.dump(cfg.alerts.model_dump(mode="json", by_alias=True))


def write_generated(
    cfg: RobustloopConfig,
    out_dir: Path | str,
    *,
    tests: bool = True,
    alerts_section: bool = False,
    fixed_rules: bool = False,
) -> list[Path]:
    """Write the rules, the Alertmanager config, (``tests``) the promtool tests,
    (``alerts_section``) the alerts section they were rendered from and (``fixed_rules``) the
    rules that no calibration changes (:data:`FIXED_RULES_FILE`, for the Helm chart).

    Each file is replaced atomically (a reader never sees half a file, and Prometheus reloading
    mid-write reads the old or the new rules). Returns the paths written.

    Raises:
        GenerationError: ``tests`` is set and a threshold leaves no room for a test series;
            nothing is written then.
    """
    from alert_rules.promtool_tests import render_promtool_tests

    out = Path(out_dir)
    contents = {
        out / RULES_FILE: render_rules(cfg),
        out / ALERTMANAGER_FILE: render_alertmanager(cfg),
    }
    if tests:
        contents[out / TESTS_FILE] = render_promtool_tests(cfg, rules_path=f"../{RULES_FILE}")
    if alerts_section:
        contents[out / ALERTS_FILE] = render_alerts_section(cfg)
    if fixed_rules:
        contents[out / FIXED_RULES_FILE] = render_rules(cfg, "fixed")
    for path, text in contents.items():
        atomic_write_text(path, text, 0o644)
    return list(contents)
