"""``robustloop rules render|dashboard|publish`` and ``robustloop calibrate``: the alert
thresholds, rules and dashboard.

``rules render`` writes the Prometheus rules, the Alertmanager config and their promtool tests
from the config (:mod:`alert_rules`); ``rules dashboard`` the Grafana dashboard over them
(:mod:`alert_rules.dashboard`). ``calibrate`` runs :func:`workflows.calibrate.
calibrate_version` (the workflow's recalibration runs it too) and prints what it chose.
``rules publish`` runs :func:`workflows.calibrate.publish_production` in a cluster (the Helm
chart's bootstrap Job). torch is imported inside ``calibrate`` and ``rules publish`` only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from robustloop.commands.base import CommandError
from robustloop.config import DEFAULT_CONFIG_PATH, RobustloopConfig


def register(sub: Any) -> None:
    """Add ``rules`` (``rules render``) and ``calibrate`` to the robustloop parser."""
    rules = sub.add_parser("rules", help="alert rules and Alertmanager config")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    render = rules_sub.add_parser(
        "render",
        help="write the Prometheus rules, Alertmanager config and promtool tests",
        description="Render alert_rules/robustloop.rules.yaml, alert_rules/alertmanager.yml and "
        "alert_rules/tests/robustloop.test.yml from the alerts section of the config.",
    )
    render.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write into (default: the alert_rules package folder)",
    )
    render.add_argument(
        "--defaults",
        action="store_true",
        help="render from the built-in defaults, ignoring robustloop.yaml (the committed files)",
    )
    render.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        default=None,
        help="render for a Prometheus that scrapes every DURATION (a cluster's ServiceMonitor, "
        "e.g. 30s): windows shorter than 4 scrapes are widened, and the alerts section used "
        "and the rules no calibration changes are written beside the rules "
        "(robustloop.alerts.yaml, which the Helm chart's config takes, and "
        "robustloop.fixed.rules.yaml, its PrometheusRule)",
    )
    render.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a file differs from what would be written",
    )
    render.set_defaults(handler=_render)
    publish = rules_sub.add_parser(
        "publish",
        help="publish the rules calibrated for the production version to the cluster",
        description="Write the rule groups that judge the production version (its recorded "
        "calibration when that fits the config, else a new one; the config's thresholds when "
        "there is no production version) into the PrometheusRule that robustloop owns, as the "
        "workflow does after a promotion. It is named by the environment: "
        "ROBUSTLOOP_PROMETHEUS_RULE, ROBUSTLOOP_PROMETHEUS_RULE_OWNER (the Helm chart's "
        "PrometheusRule), ROBUSTLOOP_NAMESPACE and ROBUSTLOOP_PROMETHEUS_RULE_LABELS; the "
        "chart's bootstrap Job sets them and runs this after every install, upgrade and "
        "rollback.",
    )
    publish.set_defaults(handler=_publish)

    dashboard = rules_sub.add_parser(
        "dashboard",
        help="write the Grafana dashboard of the rules' signals, alerts, versions and receiver",
        description="Render the Grafana dashboard (JSON) whose panels read the recording rules "
        "of the alerts section (their names carry its windows), the robustloop alerts, the "
        "served version and the receiver's metrics. The Helm chart ships the one rendered with "
        "`--defaults --scrape-interval 30s` (`make generate`).",
    )
    dashboard.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    dashboard.add_argument(
        "--defaults",
        action="store_true",
        help="render from the built-in defaults, ignoring robustloop.yaml (the committed file)",
    )
    dashboard.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        default=None,
        help="for rules rendered with the same --scrape-interval (`rules render`), whose "
        "recording rules are named after the widened windows",
    )
    dashboard.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the file differs from what would be written",
    )
    dashboard.set_defaults(handler=_dashboard)

    cal = sub.add_parser(
        "calibrate",
        help="set label-free alert thresholds from clean data for a false-alarm rate",
        description="Measure the clean distribution of the prediction entropy and the "
        "feature-squeezing score on the held-out eval split, choose thresholds for "
        "alerts.false_alarms_per_hour at alerts.expected_rate, write them into the config "
        "file, record them with the model version, and re-render the rules.",
    )
    cal.add_argument(
        "--model", default="production", help="version to calibrate for (default: production)"
    )
    cal.add_argument(
        "--n", type=int, default=None, help="eval images to use (default: all of the eval split)"
    )
    cal.add_argument(
        "--rules-out",
        type=Path,
        default=None,
        help="folder the rules are re-rendered into (default: <stack.run_dir>/alert_rules)",
    )
    cal.add_argument("--dry-run", action="store_true", help="print the thresholds; write nothing")
    cal.add_argument("--json", action="store_true", help="print the result as JSON")
    cal.set_defaults(handler=_calibrate)


# -- rules render ----------------------------------------------------------------------------


def _render(args: argparse.Namespace) -> int:
    from alert_rules import PACKAGE_DIR
    from alert_rules.render import (
        ALERTMANAGER_FILE,
        ALERTS_FILE,
        FIXED_RULES_FILE,
        RULES_FILE,
        TESTS_FILE,
    )

    cfg: RobustloopConfig = RobustloopConfig() if args.defaults else args.cfg
    out: Path = args.out if args.out is not None else PACKAGE_DIR
    names = [RULES_FILE, ALERTMANAGER_FILE, TESTS_FILE]
    if args.scrape_interval is not None:
        cfg = _for_scrape_interval(cfg, args.scrape_interval)
        names += [ALERTS_FILE, FIXED_RULES_FILE]
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            _write_generated(cfg, Path(tmp), cluster=ALERTS_FILE in names)
            stale = [
                name
                for name in names
                if not (out / name).is_file()
                or (out / name).read_text(encoding="utf-8")
                != (Path(tmp) / name).read_text(encoding="utf-8")
            ]
        for name in stale:
            print(f"stale: {out / name} (run `robustloop rules render`)")
        return 1 if stale else 0
    for path in _write_generated(cfg, out, cluster=ALERTS_FILE in names):
        print(f"wrote {path}")
    return 0


def _for_scrape_interval(
    cfg: RobustloopConfig, interval: str, *, quiet: bool = False
) -> RobustloopConfig:
    """``cfg`` with its alerts fitted to a Prometheus scraping every ``interval``."""
    try:
        alerts, changes = cfg.alerts.for_scrape_interval(interval)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CommandError(f"--scrape-interval {interval!r}: {first['msg']}") from None
    for change in [] if quiet else changes:
        print(f"scrape interval {interval}: {change}")
    return cfg.model_copy(update={"alerts": alerts})


# -- rules dashboard -------------------------------------------------------------------------


def _dashboard(args: argparse.Namespace) -> int:
    from alert_rules.dashboard import dashboard_json
    from robustloop.atomic import atomic_write_text

    cfg: RobustloopConfig = RobustloopConfig() if args.defaults else args.cfg
    if args.scrape_interval is not None:
        cfg = _for_scrape_interval(cfg, args.scrape_interval, quiet=True)
    text = dashboard_json(cfg)
    out: Path = args.out
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else None
        if current != text:
            print(f"stale: {out} (run `robustloop rules dashboard` or `make generate`)")
            return 1
        return 0
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


def _write_generated(cfg: RobustloopConfig, out: Path, *, cluster: bool = False) -> list[Path]:
    """Render everything into ``out`` (``cluster``: with the alerts section and the fixed rules
    the Helm chart takes); nothing is written when the tests cannot be generated."""
    from alert_rules import GenerationError, render_promtool_tests, write_generated

    try:
        render_promtool_tests(cfg)
    except GenerationError as exc:
        raise CommandError(f"cannot generate the promtool tests: {exc}") from None
    return write_generated(cfg, out, alerts_section=cluster, fixed_rules=cluster)


# -- rules publish ---------------------------------------------------------------------------


def _publish(args: argparse.Namespace) -> int:
    from alert_rules.cluster import (
        NAMESPACE_ENV,
        OWNER_ENV,
        RULE_ENV,
        PublishError,
        target_from_env,
    )
    from workflows.calibrate import CalibrateError, publish_production

    try:
        target = target_from_env()
        if target is None:
            raise CommandError(
                f"no PrometheusRule to publish to: set {RULE_ENV}, {OWNER_ENV} and "
                f"{NAMESPACE_ENV} (the Helm chart sets them on its bootstrap Job)"
            )
        published = publish_production(args.cfg, target)
    except (PublishError, CalibrateError) as exc:
        raise CommandError(str(exc)) from None
    judged = published.version or "no production version yet"
    how = {
        "recorded": "its recorded calibration",
        "calibrated": "a new calibration",
        "config": "the config's thresholds",
    }[published.source]
    print(f"{published.outcome} {target}: the rules for {judged}, from {how}")
    return 0


# -- calibrate -------------------------------------------------------------------------------


def _calibrate(args: argparse.Namespace) -> int:
    from workflows.calibrate import ANNOTATION_KEY, CalibrateError, calibrate_version

    cfg: RobustloopConfig = args.cfg
    try:
        result = calibrate_version(
            cfg,
            args.model,
            config_path=Path(args.config) if args.config else DEFAULT_CONFIG_PATH,
            rules_out=args.rules_out or cfg.stack.run_dir / "alert_rules",
            n=args.n,
            dry_run=args.dry_run,
        )
    except CalibrateError as exc:
        raise CommandError(str(exc)) from None
    _report(result.record, as_json=args.json)
    if not args.dry_run and not args.json:
        version = result.version
        print(f"wrote {', '.join(str(p) for p in result.written)}")
        print(f"recorded the thresholds as annotation {ANNOTATION_KEY!r} of {version}")
    return 0


def _report(record: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return
    print(
        f"calibrated for {record['version']}: {record['false_alarms_per_hour']:g} false "
        f"alarms/hour at {record['expected_rate']:g} images/s; clean accuracy "
        f"{record['clean_accuracy']:.4f}"
    )
    for name, s in record["signals"].items():
        if "skipped" in s:
            print(f"  {name:8s} not calibrated: {s['skipped']}")
            continue
        stats = s["stats"]
        print(
            f"  {name:8s} clean mean {stats['mean']:.4f} sd {stats['sd']:.4f} "
            f"skew {stats['skewness']:.2f} (n={stats['count']}); window {s['window']} holds "
            f"{s['samples_per_window']:.1f} samples; "
            f"z {s['z']:.2f} -> {s['z_cornish_fisher']:.2f}; "
            f"threshold {s['baseline']:.4f} + {s['delta']:.4f} = {s['threshold']:.4f}"
        )
        sim = s["simulation"]
        print(
            f"  {'':8s} Monte Carlo check ({sim['simulated_hours']:.0f} h of clean traffic, for: "
            f"{s['for']}): {sim['simulated_false_alarms_per_hour']:.3g} false alarms/hour"
            + (f"; raised from {s['gaussian_threshold']:.4f}" if sim["raised"] else "")
        )
