"""``robustloop rules render`` and ``robustloop calibrate``: the alert thresholds and rules.

``rules render`` writes the Prometheus rules, the Alertmanager config and their promtool tests
from the config (:mod:`alert_rules`). ``calibrate`` measures the clean distribution of each
label-free signal on the held-out eval split with a model from the store, chooses thresholds for
the configured false-alarm rate (:mod:`alert_rules.calibration`), writes them into the config
file's ``alerts`` section (the rest of the file is kept as it is), records them as an annotation
of that model version, and re-renders the rules. torch is imported inside ``calibrate`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from robustloop._atomic import atomic_write_text
from robustloop.config import (
    DEFAULT_CONFIG_PATH,
    AlertsConfig,
    RobustloopConfig,
    dump_config,
)

#: Store annotation key under which ``calibrate`` records its result for the model version.
ANNOTATION_KEY = "alerts-calibration"


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
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a file differs from what would be written",
    )
    render.set_defaults(handler=_render)

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
    from alert_rules.render import ALERTMANAGER_FILE, RULES_FILE, TESTS_FILE

    cfg: RobustloopConfig = RobustloopConfig() if args.defaults else args.cfg
    out: Path = args.out if args.out is not None else PACKAGE_DIR
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            _write_generated(cfg, Path(tmp))
            stale = [
                name
                for name in (RULES_FILE, ALERTMANAGER_FILE, TESTS_FILE)
                if not (out / name).is_file()
                or (out / name).read_text(encoding="utf-8")
                != (Path(tmp) / name).read_text(encoding="utf-8")
            ]
        for name in stale:
            print(f"stale: {out / name} (run `robustloop rules render`)")
        return 1 if stale else 0
    for path in _write_generated(cfg, out):
        print(f"wrote {path}")
    return 0


def _write_generated(cfg: RobustloopConfig, out: Path) -> list[Path]:
    """Render everything into ``out``; nothing is written when the tests cannot be generated."""
    from alert_rules import GenerationError, render_promtool_tests, write_generated
    from robustloop.cli import CommandError

    try:
        render_promtool_tests(cfg)
    except GenerationError as exc:
        raise CommandError(f"cannot generate the promtool tests: {exc}") from None
    return write_generated(cfg, out)


# -- calibrate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanSignals:
    """Per-image signals of a model on clean images, and its accuracy on them."""

    entropy: list[float]
    squeeze: list[float]
    accuracy: float


def measure_clean_signals(
    model: Any, images: Any, labels: Any, squeezers: Sequence[str], batch: int = 500
) -> CleanSignals:
    """Entropy and squeeze score of every image, as the server computes them (serving.signals).

    Args:
        model: the classifier (eval mode), returning logits.
        images: float tensor [N, 1, 28, 28] in [0, 1].
        labels: int tensor [N].
        squeezers: the server's ``serving.squeezers``.
        batch: images per forward pass.
    """
    import torch

    from serving.signals import normalised_entropy, squeeze_score

    entropy: list[float] = []
    squeeze: list[float] = []
    correct = 0
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch):
            x = images[start : start + batch]
            probs = torch.softmax(model(x), dim=1)
            entropy += normalised_entropy(probs).tolist()
            squeeze += squeeze_score(model, x, squeezers=squeezers, probs=probs).tolist()
            correct += int((probs.argmax(dim=1) == labels[start : start + batch]).sum())
    return CleanSignals(entropy, squeeze, correct / max(1, images.shape[0]))


def calibrate_alerts(
    cfg: RobustloopConfig, signals: CleanSignals, version: str
) -> tuple[AlertsConfig, dict[str, Any]]:
    """New ``alerts`` section with calibrated thresholds, and the record of how they were set.

    The entropy and squeeze thresholds become ``relative``: the clean baseline plus the shift
    of :func:`alert_rules.calibration.window_threshold`. The canary accuracy keeps its mode and
    threshold; its baseline becomes the clean eval accuracy (used where its mode is relative).
    A disabled signal, or the squeeze score when the server scores no images
    (``serving.squeeze_fraction: 0``), keeps its settings.

    Raises:
        CalibrationError: too few images, or a target false-alarm rate that cannot be met.
    """
    from alert_rules import duration_seconds
    from alert_rules.calibration import SignalStats, check_threshold, window_threshold

    a = cfg.alerts
    rates = {
        "entropy": a.expected_rate,
        "squeeze": a.expected_rate * cfg.serving.squeeze_fraction,
    }
    updates: dict[str, Any] = {}
    record: dict[str, Any] = {
        "version": version,
        "false_alarms_per_hour": a.false_alarms_per_hour,
        "expected_rate": a.expected_rate,
        "squeeze_fraction": cfg.serving.squeeze_fraction,
        "clean_accuracy": signals.accuracy,
        "signals": {},
    }
    for name, values in (("entropy", signals.entropy), ("squeeze", signals.squeeze)):
        current = getattr(a, name)
        if not current.enabled or rates[name] == 0:
            why = "disabled" if not current.enabled else "serving.squeeze_fraction is 0"
            record["signals"][name] = {"skipped": why}
            continue
        result = window_threshold(
            SignalStats.of(values),
            window_seconds=duration_seconds(current.window),
            samples_per_second=rates[name],
            false_alarms_per_hour=a.false_alarms_per_hour,
        )
        checked = check_threshold(
            values,
            result,
            window_seconds=max(1, round(duration_seconds(current.window))),
            for_seconds=round(duration_seconds(current.for_)),
        )
        delta = round(checked.threshold - result.baseline, 4)
        updates[name] = current.model_copy(
            update={"mode": "relative", "baseline": result.baseline, "threshold": delta}
        )
        record["signals"][name] = {
            "window": current.window,
            "for": current.for_,
            **result.to_dict(),
            "simulation": asdict(checked),
            "threshold": checked.threshold,
            "delta": delta,
            "gaussian_threshold": result.threshold,
        }
    updates["canary_accuracy"] = a.canary_accuracy.model_copy(
        update={"baseline": round(signals.accuracy, 4)}
    )
    updates["calibrated_version"] = version
    new = AlertsConfig.model_validate({**a.model_dump(by_alias=True), **_dumped(updates)})
    return new, record


def _dumped(updates: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.model_dump(by_alias=True) if hasattr(v, "model_dump") else v)
        for k, v in updates.items()
    }


def _alerts_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the top-level ``alerts:`` block, comments before the next key excluded."""
    start = next((i for i, line in enumerate(lines) if line.startswith("alerts:")), None)
    if start is None:
        return None
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#")
        ),
        len(lines),
    )
    while end > start + 1 and lines[end - 1].startswith("#"):
        end -= 1
    return start, end


def rewrite_alerts_section(text: str | None, cfg: RobustloopConfig) -> str:
    """The config file ``text`` with its ``alerts`` section replaced by ``cfg.alerts``.

    Every other line (other sections, comments) is kept byte for byte. A file without an
    ``alerts`` section gets one appended; no file (``None``) becomes the full commented config.
    """
    full = dump_config(cfg)
    if text is None:
        return full
    full_lines = full.splitlines()
    block = _alerts_block(full_lines)
    assert block is not None  # dump_config always writes the section
    new_block = full_lines[block[0] : block[1]]
    lines = text.splitlines()
    found = _alerts_block(lines)
    if found is None:
        description = full_lines[block[0] - 1]
        out = [*lines, description, *new_block]
    else:
        out = lines[: found[0]] + new_block + lines[found[1] :]
    return "\n".join(out) + "\n"


def _calibrate(args: argparse.Namespace) -> int:
    from alert_rules import GenerationError, render_promtool_tests, write_generated
    from alert_rules.calibration import CalibrationError
    from robustloop.cli import CommandError

    cfg: RobustloopConfig = args.cfg
    if args.n is not None and args.n < 30:
        raise CommandError(f"--n must be at least 30 (got {args.n})")
    path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    old_text = path.read_text(encoding="utf-8") if path.exists() else None

    import training

    try:
        store = training.ModelStore(cfg.store.path)
        version = store.resolve(args.model)
        model, _ = store.load(version)
        splits = training.make_splits(cfg.data)
    except (training.StoreError, training.DatasetError) as exc:
        raise CommandError(str(exc)) from None
    images, labels = splits.eval.tensors
    if args.n is not None:
        images, labels = images[: args.n], labels[: args.n]
    signals = measure_clean_signals(model, images, labels, cfg.serving.squeezers)
    try:
        alerts, record = calibrate_alerts(cfg, signals, version)
    except CalibrationError as exc:
        raise CommandError(str(exc)) from None
    new_cfg = cfg.model_copy(update={"alerts": alerts})
    new_text = rewrite_alerts_section(old_text, new_cfg)
    reread = RobustloopConfig.model_validate(yaml.safe_load(new_text))
    if reread != new_cfg:
        raise CommandError(
            f"cannot rewrite the alerts section of {path} safely (its layout is unusual); "
            "write the thresholds by hand:\n" + json.dumps(alerts.model_dump(by_alias=True))
        )
    tests = True
    try:
        render_promtool_tests(new_cfg)
    except GenerationError as exc:
        tests = False
        print(
            f"robustloop: warning: an alert can never fire with these thresholds ({exc}); "
            "rendering the rules without their promtool tests",
            file=sys.stderr,
        )
    _report(record, as_json=args.json)
    if args.dry_run:
        return 0
    try:
        store.annotate(version, ANNOTATION_KEY, record)
    except (training.StoreError, OSError) as exc:
        raise CommandError(f"cannot record the calibration in the store: {exc}") from None
    try:
        atomic_write_text(path, new_text)
    except OSError as exc:
        raise CommandError(
            f"cannot write {path}: {exc.strerror}; the thresholds are recorded as annotation "
            f"{ANNOTATION_KEY!r} of {version} in the store; copy them into the config by hand"
        ) from None
    out = args.rules_out if args.rules_out is not None else cfg.stack.run_dir / "alert_rules"
    try:
        written = write_generated(new_cfg, out, tests=tests)
    except OSError as exc:
        raise CommandError(
            f"wrote the thresholds into {path}, but cannot render the rules into {out}: "
            f"{exc.strerror}; run `robustloop rules render --out DIR`"
        ) from None
    if not args.json:
        print(f"wrote thresholds for {version} into {path}")
        print(f"recorded them as annotation {ANNOTATION_KEY!r} of {version}")
        print(f"rendered {', '.join(str(p) for p in written)}")
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
