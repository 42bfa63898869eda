"""Fit the label-free alert thresholds to one model version.

The use case behind ``robustloop calibrate`` and behind the workflow's recalibration after a
promotion or a rollback (:func:`workflows.steps.recalibrate`): measure the model's entropy and
squeeze score on the held-out eval split (:func:`serving.signals.measure_clean_signals`), choose
thresholds for the configured false-alarm rate (:func:`alert_rules.calibration.calibrate_alerts`),
record them with the version in the store, write them into the config file's ``alerts`` section
(every other line is kept), and render the rules. torch is imported when it runs, not on import.

In a cluster, :func:`publish_production` puts the rules that judge the production version in
force (the Helm chart's bootstrap Job runs it, as ``robustloop rules publish``, after every
install, upgrade and rollback of the release): from the calibration recorded with that version
when it fits the config (no model is loaded then), else from a new calibration.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alert_rules import GenerationError, render_promtool_tests, write_generated
from alert_rules.calibration import (
    CalibrationError,
    alerts_from_record,
    calibrate_alerts,
    rewrite_alerts_section,
)
from alert_rules.cluster import Outcome, Target, publish_rules
from robustloop.atomic import atomic_write_text
from robustloop.config import RobustloopConfig

log = logging.getLogger(__name__)

ANNOTATION_KEY = "alerts-calibration"
"""Store annotation under which a calibration is recorded with its model version."""

MIN_IMAGES = 30
"""Fewer clean images than this cannot estimate a signal's spread."""


class CalibrateError(Exception):
    """The calibration cannot be made or saved; the message says why and what is stale."""


@dataclass(frozen=True)
class Calibration:
    """What a calibration chose, and where it was written.

    Attributes:
        version: the model version the thresholds judge.
        config: the config with the new ``alerts`` section.
        record: how each threshold was set (also the store annotation).
        promtool_tests: whether the promtool tests could be generated (an alert that can
            never fire with these thresholds has none; the rules are rendered without them).
        written: the files written (none for a dry run).
    """

    version: str
    config: RobustloopConfig
    record: dict[str, Any]
    promtool_tests: bool
    written: list[Path] = field(default_factory=list)


def calibrate_version(
    cfg: RobustloopConfig,
    model: str = "production",
    *,
    config_path: Path | None,
    rules_out: Path | None,
    n: int | None = None,
    dry_run: bool = False,
) -> Calibration:
    """Calibrate the thresholds for ``model`` and save them.

    Args:
        cfg: the config in force.
        model: a version id or ``production``.
        config_path: the config file whose ``alerts`` section is rewritten (created when
            missing); None writes no config (a pod's config is a read-only ConfigMap: there the
            thresholds live in the store's annotation and in the published rules).
        rules_out: folder the rules, Alertmanager config and promtool tests are rendered into;
            None renders nothing.
        n: eval images to use (default: the whole eval split); at least :data:`MIN_IMAGES`.
        dry_run: measure and choose, write nothing.

    Raises:
        CalibrateError: unknown version, no data, too few images, a target that cannot be met,
            or a file or the store that cannot be written (the message says what is stale).
    """
    import training
    from serving.signals import measure_clean_signals

    if n is not None and n < MIN_IMAGES:
        raise CalibrateError(f"--n must be at least {MIN_IMAGES} (got {n})")
    try:
        store = training.ModelStore(cfg.store.path)
        version = store.resolve(model)
        net, manifest = store.load(version, device=training.resolve_device(cfg.device))
        splits = training.make_splits(cfg.data)
        training.check_fits(splits, manifest.spec, version)
        images, labels = splits.eval.tensors
    except (training.StoreError, training.DatasetError, training.DeviceError) as exc:
        raise CalibrateError(str(exc)) from None
    if n is not None:
        images, labels = images[:n], labels[:n]
    serving = cfg.serving
    signals = measure_clean_signals(
        net, images, labels, serving.squeezers, bits=serving.squeeze_bits
    )
    try:
        alerts, record = calibrate_alerts(cfg, signals, version)
    except CalibrationError as exc:
        raise CalibrateError(str(exc)) from None
    new_cfg = cfg.model_copy(update={"alerts": alerts})
    new_text = None
    if config_path is not None:
        old_text = config_path.read_text(encoding="utf-8") if config_path.exists() else None
        new_text = rewrite_alerts_section(old_text, new_cfg)
        if RobustloopConfig.model_validate(yaml.safe_load(new_text)) != new_cfg:
            raise CalibrateError(
                f"cannot rewrite the alerts section of {config_path} safely (its layout is "
                "unusual); write these thresholds by hand: "
                + json.dumps(alerts.model_dump(mode="json", by_alias=True))
            )
    tests = True
    try:
        render_promtool_tests(new_cfg)
    except GenerationError as exc:
        tests = False
        log.warning(
            "an alert can never fire with these thresholds (%s); rendering the rules without "
            "their promtool tests",
            exc,
        )
    result = Calibration(version, new_cfg, record, tests)
    if dry_run:
        return result
    try:
        store.annotate(version, ANNOTATION_KEY, record)
    except (training.StoreError, OSError) as exc:
        raise CalibrateError(f"cannot record the calibration in the store: {exc}") from None
    if config_path is not None and new_text is not None:
        try:
            atomic_write_text(config_path, new_text)
        except OSError as exc:
            raise CalibrateError(
                f"cannot write {config_path}: {exc.strerror}; the thresholds are recorded as "
                f"annotation {ANNOTATION_KEY!r} of {version} in the store; copy them into the "
                "config by hand"
            ) from None
        result.written.append(config_path)
    if rules_out is not None:
        try:
            result.written.extend(write_generated(new_cfg, rules_out, tests=tests))
        except OSError as exc:
            raise CalibrateError(
                f"the thresholds for {version} are saved, but the rules cannot be rendered into "
                f"{rules_out}: {exc.strerror}; run `robustloop rules render --out DIR`"
            ) from None
    return result


Source = Literal["recorded", "calibrated", "config"]


@dataclass(frozen=True)
class InForce:
    """The alerts section that judges the production version, and where it comes from.

    Attributes:
        version: the production version, or None when the store has none yet.
        config: the config with that alerts section.
        source: ``recorded``: the version's calibration in the store; ``calibrated``: measured
            now (none recorded, or one made for other settings); ``config``: no production
            version, the config's own thresholds.
    """

    version: str | None
    config: RobustloopConfig
    source: Source


def production_calibration(cfg: RobustloopConfig) -> InForce:
    """The alerts section for the production version: recorded if it fits ``cfg``, else new.

    Raises:
        CalibrateError: the store cannot be read, or a needed calibration fails.
    """
    import training

    try:
        store = training.ModelStore(cfg.store.path)
        version = store.production()
        record = None if version is None else store.annotation(version, ANNOTATION_KEY)
    except training.StoreError as exc:
        raise CalibrateError(str(exc)) from None
    if version is None:
        return InForce(None, cfg, "config")
    alerts = None if record is None else alerts_from_record(cfg, record)
    if alerts is not None:
        return InForce(version, cfg.model_copy(update={"alerts": alerts}), "recorded")
    log.info("no calibration of %s fits the config's alerts section: calibrating it", version)
    return InForce(
        version,
        calibrate_version(cfg, version, config_path=None, rules_out=None).config,
        "calibrated",
    )


@dataclass(frozen=True)
class Published:
    """What :func:`publish_production` wrote: for which version, from what, and how."""

    version: str | None
    source: Source
    outcome: Outcome


PUBLISH_ROUNDS = 3
"""Times :func:`publish_production` follows a production pointer that moves while it writes."""


def publish_production(cfg: RobustloopConfig, target: Target, *, api: Any = None) -> Published:
    """Publish the calibrated rules that judge the production version to ``target``.

    A promotion may move production while this runs; the pointer is read again after the
    write, and a version that changed is published in turn, so that the last write judges what
    is served.

    Raises:
        CalibrateError: the store cannot be read, a calibration fails, or production kept
            moving.
        alert_rules.cluster.PublishError: the API refused or could not be reached.
    """
    import training

    for _ in range(PUBLISH_ROUNDS):
        in_force = production_calibration(cfg)
        outcome = publish_rules(in_force.config, target, api=api)
        try:
            now = training.ModelStore(cfg.store.path).production()
        except training.StoreError as exc:
            raise CalibrateError(str(exc)) from None
        if now == in_force.version:
            return Published(in_force.version, in_force.source, outcome)
        log.info("production moved to %s while the rules were published: again", now)
    raise CalibrateError(
        f"production moved during each of {PUBLISH_ROUNDS} publications of its rules; run again"
    )


__all__ = [
    "ANNOTATION_KEY",
    "MIN_IMAGES",
    "CalibrateError",
    "Calibration",
    "InForce",
    "Published",
    "calibrate_version",
    "production_calibration",
    "publish_production",
]
