"""The remediation workflow's steps: the functions a pod (or the local executor) runs.

Each function is a Hera script template run by Hera's runner: the pod executes ``python -m
hera.workflows.runner -e workflows.steps:<function> <file>``, where Argo writes the template's
inputs (``{{inputs.parameters}}``, a JSON list of ``{"name", "value"}``) to ``<file>``; the runner
calls the function and writes each annotated return value to
``$hera__outputs_directory/parameters/<name>``, from where Argo (or the local executor) reads the
output parameters. The steps read ``robustloop.yaml`` from ``$ROBUSTLOOP_CONFIG`` (the mounted
ConfigMap in a pod, the executor's config locally) and import torch only when they run, so that
importing this module to build the template stays cheap.

No ``from __future__ import annotations`` here: Hera reads the parameters' ``Annotated`` types
at runtime.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from hera.workflows import Env, Parameter, Resources, RetryStrategy, RunnerScriptConstructor, script
from hera.workflows import models as m

from robustloop.config import ConfigError, RobustloopConfig, load_config, override

log = logging.getLogger("workflows.steps")

IMAGE = "robustloop:latest"
"""Placeholder for the project's image (the Helm chart patches it)."""
STORE_MOUNT = "/var/lib/robustloop"
"""Where the model store PVC is mounted in a pod."""
CONFIG_MOUNT = "/etc/robustloop"
"""Where the ConfigMap holding robustloop.yaml is mounted in a pod."""
CONFIG_ENV = "ROBUSTLOOP_CONFIG"
"""Environment variable naming the config file a step reads."""
OUTPUTS_DIR = "/tmp/hera-outputs"
"""Hera runner's outputs folder in a pod (the local executor points it elsewhere)."""
PROMOTION_ANNOTATION = "promotion"
"""Store annotation of a promoted version: incident, workflow, previous version, gate figures."""
OUTCOMES_FILE = "remediations.jsonl"
"""File in the store folder where the exit handler appends each run's outcome."""

_RUNNER = RunnerScriptConstructor(outputs_directory=OUTPUTS_DIR)
_RETRY = RetryStrategy(
    limit="2",
    retry_policy="OnError",  # pod deleted, node lost: not a non-zero exit of our code
    backoff=m.Backoff(duration="10s", factor=m.IntOrString("2")),
)
_COMMON: dict[str, Any] = {
    "constructor": _RUNNER,
    "image": IMAGE,
    "image_pull_policy": "IfNotPresent",
    "env": [Env(name=CONFIG_ENV, value=f"{CONFIG_MOUNT}/robustloop.yaml")],
    "volume_mounts": [
        m.VolumeMount(name="store", mount_path=STORE_MOUNT),
        m.VolumeMount(name="config", mount_path=CONFIG_MOUNT, read_only=True),
    ],
    "retry_strategy": _RETRY,
}
_HEAVY = Resources(cpu_request=1, memory_request="2Gi")
_LIGHT = Resources(cpu_request="100m", memory_request="256Mi")


class StepError(SystemExit):
    """A step failed for a reason its message states; the runner exits 1 with that message."""

    def __init__(self, message: str) -> None:
        super().__init__(f"robustloop step failed: {message}")


def _setup() -> RobustloopConfig:
    """Configure logging and read the config named by ``$ROBUSTLOOP_CONFIG``."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(os.environ.get(CONFIG_ENV))
    except ConfigError as exc:
        raise StepError(str(exc)) from None
    if cfg.training.threads:  # torch only for the steps that need it
        from training.device import use_threads

        use_threads(cfg.training.threads)
    return cfg


def _check_model(cfg: RobustloopConfig, model: str) -> None:
    if model != cfg.model.name:
        raise StepError(
            f"parameter model={model!r} but this config serves {cfg.model.name!r}; "
            "submit the workflow for the configured model"
        )


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise StepError(f"parameter {name}={value!r} is not a number") from None


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StepError(f"parameter {name}={value!r} is not an integer") from None


@script(resources=_HEAVY, **_COMMON)
def harden(
    model: Annotated[str, Parameter(name="model")],
    base_version: Annotated[str, Parameter(name="base-version")],
    method: Annotated[str, Parameter(name="method")],
    eps: Annotated[str, Parameter(name="eps")],
    steps: Annotated[str, Parameter(name="steps")],
    epochs: Annotated[str, Parameter(name="epochs")],
    max_seconds: Annotated[str, Parameter(name="max-seconds")],
    recipe: Annotated[str, Parameter(name="recipe")],
    incident_id: Annotated[str, Parameter(name="incident-id")],
) -> Annotated[str, Parameter(name="version")]:
    """Adversarially fine-tune the base version with the recipe; output the new (unpromoted)
    version id. The captured recipe fails at once, in one line, without enough captured
    examples."""
    from workflows._training import harden_candidate

    cfg = _setup()
    _check_model(cfg, model)
    seconds = _float("max-seconds", max_seconds)
    changes = {
        "method": method,
        "eps": _float("eps", eps),
        "steps": _int("steps", steps),
        "epochs": _int("epochs", epochs),
        "max_seconds": seconds if seconds > 0 else None,
        "recipe": recipe,
    }
    try:
        cfg = override(cfg, {"remediation": changes})
    except ConfigError as exc:
        raise StepError(f"invalid remediation parameter: {exc}") from None
    version = harden_candidate(cfg, base=base_version, incident=incident_id)
    log.info(
        "harden: candidate %s from %s (%s recipe) for incident %s",
        version,
        base_version,
        recipe,
        incident_id,
    )
    return version


@script(resources=_HEAVY, **_COMMON)
def evaluate(
    model: Annotated[str, Parameter(name="model")],
    candidate: Annotated[str, Parameter(name="candidate")],
    eps: Annotated[str, Parameter(name="eps")],
    recipe: Annotated[str, Parameter(name="recipe")],
) -> tuple[
    Annotated[str, Parameter(name="evaluation")],
    Annotated[str, Parameter(name="baseline")],
]:
    """Evaluate candidate and production on the held-out split (clean, PGD with restarts) and,
    for the captured recipe, on the captured set's held-out part (clean)."""
    from workflows.gate import GateError, evaluate_pair

    cfg = _setup()
    _check_model(cfg, model)
    trained = _float("eps", eps)
    try:
        evaluation = evaluate_pair(
            cfg, candidate, "production", trained_eps=trained, captured=recipe == "captured"
        )
    except GateError as exc:
        raise StepError(str(exc)) from None
    for role in ("candidate", "baseline"):
        entry = evaluation[role]
        log.info(
            "evaluate: %s %s clean %.3f robust %.3f",
            role,
            entry["version"],
            entry["clean"]["accuracy"],
            entry["robust"]["accuracy"],
        )
        if "captured" in entry:
            log.info(
                "evaluate: %s %s on %d held-out captured examples %.3f",
                role,
                entry["version"],
                evaluation["captured_n"],
                entry["captured"]["accuracy"],
            )
    return json.dumps(evaluation, sort_keys=True), str(evaluation["baseline"]["version"])


@script(resources=_LIGHT, **_COMMON)
def gate(
    evaluation: Annotated[str, Parameter(name="evaluation")],
) -> tuple[
    Annotated[str, Parameter(name="passed")],
    Annotated[str, Parameter(name="decision")],
]:
    """Judge the evaluation against the gate policy; output ``passed`` and the decision JSON."""
    from workflows.gate import GateError, decide

    cfg = _setup()
    try:
        decision = decide(json.loads(evaluation), cfg.gate)
    except (GateError, json.JSONDecodeError) as exc:
        raise StepError(f"cannot judge the evaluation: {exc}") from None
    for reason in decision.reasons:
        log.info("gate: %s", reason)
    log.info("gate: %s", "PASSED" if decision.passed else "REJECTED")
    return ("true" if decision.passed else "false"), decision.to_json()


@script(resources=_LIGHT, **_COMMON)
def promote(
    model: Annotated[str, Parameter(name="model")],
    candidate: Annotated[str, Parameter(name="candidate")],
    baseline: Annotated[str, Parameter(name="baseline")],
    incident_id: Annotated[str, Parameter(name="incident-id")],
    workflow: Annotated[str, Parameter(name="workflow")],
    decision: Annotated[str, Parameter(name="decision")],
) -> Annotated[str, Parameter(name="version")]:
    """Put the rules calibrated for the candidate in force, then point production at it.

    The order keeps the new version judged from its first request: its thresholds are fitted
    and published, Prometheus is seen to evaluate them (``rollout.rules_wait_seconds``), and
    only then does the pointer move, compared and swapped under the store's lock. A retry after
    the pointer moved finds the candidate in production and only makes sure its rules are
    published: the step is idempotent.
    """
    import training

    cfg = _setup()
    _check_model(cfg, model)
    verdict = json.loads(decision)
    if verdict.get("passed") is not True or verdict.get("candidate") != candidate:
        raise StepError(f"the gate's decision does not approve {candidate}: {decision[:200]}")
    store = training.ModelStore(cfg.store.path)
    current = store.production()
    if current == candidate:
        log.info("promote: %s is production already (a retry); republishing its rules", candidate)
        recalibrate(cfg, candidate)
        return candidate
    if current != baseline:
        raise StepError(
            f"production moved from {baseline} to {current} after the evaluation; the gate's "
            "verdict is stale, so nothing is promoted (run the remediation again)"
        )
    provenance = {
        "incident": incident_id,
        "workflow": workflow,
        "previous": baseline,
        "gate": {"passed": True, "metrics": verdict.get("metrics", {})},
    }
    # The manifest is immutable: the promotion's provenance goes beside it and into the history.
    store.annotate(candidate, PROMOTION_ANNOTATION, provenance)
    recalibrate(cfg, candidate, promoted=False)
    _wait_rules_in_force(cfg, candidate)
    try:
        store.promote(candidate, provenance=provenance, expect=baseline)
    except training.StoreConflict as exc:
        moved_to = store.production()
        if moved_to is not None:
            recalibrate(cfg, moved_to)  # the rules go back to judging what is served
        raise StepError(f"{exc}; the gate's verdict is stale (run the remediation again)") from None
    log.info("promote: production is now %s (was %s)", candidate, baseline)
    return candidate


def _wait_rules_in_force(cfg: RobustloopConfig, version: str) -> None:
    """Wait until Prometheus evaluates the rules that judge ``version`` (no wait when
    ``rollout.rules_wait_seconds`` is 0 or no label-free alert is rendered)."""
    from alert_rules.in_force import RulesNotInForce, wait_until_in_force

    rollout = cfg.rollout
    if rollout.rules_wait_seconds == 0 or not cfg.alerts.label_free_enabled:
        return
    try:
        waited = wait_until_in_force(rollout.prometheus_url, version, rollout.rules_wait_seconds)
    except RulesNotInForce as exc:
        raise StepError(f"{exc}; production stays where it is, nothing is promoted") from None
    log.info("promote: Prometheus evaluates the rules for %s (after %.1f s)", version, waited)


def recalibrate(cfg: RobustloopConfig, version: str, *, promoted: bool = True) -> None:
    """Fit the label-free alert thresholds to ``version`` so that the alerts judge it.

    The thresholds are recorded with the version in the store. Where the step's config file is
    writable (the local executor), they are written into it and the rules rendered into
    ``<stack.run_dir>/alert_rules``, which the local stack's Prometheus reads. A pod's config is
    a read-only ConfigMap: there, in a cluster (the chart names the PrometheusRule robustloop
    owns with :data:`alert_rules.cluster.RULE_ENV` and its companions), the calibrated rule
    groups are published to that object, which the cluster's Prometheus evaluates; the chart's
    own PrometheusRule is never written.

    Args:
        cfg: the step's config.
        version: the version the rules will judge.
        promoted: whether production already points at ``version`` (said in errors).

    Raises:
        StepError: calibration or publication failed (the message says what is stale).
    """
    from alert_rules.cluster import PublishError, publish_rules, target_from_env
    from workflows.calibrate import CalibrateError, calibrate_version

    state = f"{version} is promoted, but" if promoted else f"{version} is not promoted:"
    try:
        target = target_from_env()
    except PublishError as exc:
        raise StepError(f"{state} the alert rules cannot be published: {exc}") from None
    config = os.environ.get(CONFIG_ENV)
    writable = config is not None and os.access(config, os.W_OK)
    if config is not None and not writable:
        log.info("recalibrate: %s is read-only; the thresholds go to the store", config)
    local = writable and target is None
    rules_out = cfg.stack.run_dir / "alert_rules" if local else None
    try:
        result = calibrate_version(
            cfg,
            version,
            config_path=Path(config) if writable and config else None,
            rules_out=rules_out,
        )
    except CalibrateError as exc:
        raise StepError(
            f"{state} its alert thresholds could not be calibrated ({exc}); "
            f"`robustloop calibrate --model {version}` fits them"
        ) from None
    log.info("recalibrate: thresholds fitted to %s; rules in %s", version, rules_out or "-")
    if target is not None:
        try:
            outcome = publish_rules(result.config, target)
        except PublishError as exc:
            raise StepError(
                f"{state} its thresholds are calibrated, yet {exc}; the cluster's "
                "Prometheus keeps the previous rules until the rule is updated"
            ) from None
        log.info("recalibrate: the rules calibrated for %s: %s %s", version, outcome, target)


@script(resources=_LIGHT, **_COMMON)
def guard(
    model: Annotated[str, Parameter(name="model")],
    version: Annotated[str, Parameter(name="version")],
    previous: Annotated[str, Parameter(name="previous")],
    workflow: Annotated[str, Parameter(name="workflow")],
) -> tuple[
    Annotated[str, Parameter(name="action")],
    Annotated[str, Parameter(name="decision")],
]:
    """Watch canary accuracy after the promotion and roll back if the new version is worse;
    after a rollback the alert thresholds are recalibrated for the restored version."""
    from workflows.guard import CAP_REACHED, ROLLBACK, watch

    cfg = _setup()
    _check_model(cfg, model)
    result = watch(cfg, version=version, previous=previous, workflow=workflow)
    log.info("guard: %s: %s", result.action, result.reason)
    if result.action == CAP_REACHED:
        raise StepError(result.reason)
    if result.action == ROLLBACK:
        recalibrate(cfg, previous)
    return result.action, json.dumps(result.as_dict(), sort_keys=True)


@script(resources=_LIGHT, **_COMMON)
def record_outcome(
    model: Annotated[str, Parameter(name="model")],
    incident_id: Annotated[str, Parameter(name="incident-id")],
    workflow: Annotated[str, Parameter(name="workflow")],
    status: Annotated[str, Parameter(name="status")],
    failures: Annotated[str, Parameter(name="failures")],
) -> Annotated[str, Parameter(name="outcome")]:
    """Exit handler: append the run's outcome to ``remediations.jsonl`` in the store folder."""
    cfg = _setup()
    try:
        failed = json.loads(failures) or []
    except json.JSONDecodeError:
        failed = [{"message": failures}]
    store_path = Path(cfg.store.path)
    pointer = _production(cfg)
    outcome = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workflow": workflow,
        "incident": incident_id,
        "model": model,
        "status": status,
        "production": pointer,
        "failures": [
            {k: f.get(k) for k in ("displayName", "message", "phase")}
            for f in failed
            if isinstance(f, dict)
        ],
    }
    store_path.mkdir(parents=True, exist_ok=True)
    line = json.dumps(outcome, sort_keys=True) + "\n"
    fd = os.open(store_path / OUTCOMES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    log.info("outcome: workflow %s %s; production %s", workflow, status, pointer)
    return json.dumps(outcome, sort_keys=True)


def _production(cfg: RobustloopConfig) -> str | None:
    import training

    return training.ModelStore(cfg.store.path).production()


__all__ = [
    "CONFIG_ENV",
    "IMAGE",
    "OUTCOMES_FILE",
    "PROMOTION_ANNOTATION",
    "StepError",
    "evaluate",
    "gate",
    "guard",
    "harden",
    "promote",
    "recalibrate",
    "record_outcome",
]
