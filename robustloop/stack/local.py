"""The embedded stack: Prometheus, Alertmanager, the model server and the receiver on 127.0.0.1.

:class:`LocalStack` is what ``robustloop up`` runs and what ``robustloop demo`` drives. It prepares
the run folder (:mod:`robustloop.stack.run_folder`), trains a baseline if the store has no
production model, starts the four processes under a :class:`~robustloop.stack.supervisor.
Supervisor`, waits until each answers its readiness endpoint, and from then on watches two
things once a second (:meth:`LocalStack.poll`): that no process has died, and whether the rules
file changed. The stack calibrates the alert thresholds once, at start, for the model about to
serve. After that the remediation workflow owns them: its promote step (and its guard step after
a rollback) recalibrates for the version it put into production and renders the rules into the
run folder, and the stack only asks Prometheus to reload them (``POST /-/reload``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import requests

from robustloop.config import ConfigError, RobustloopConfig, load_config
from robustloop.stack.run_folder import (
    RunFolder,
    RunFolderBusy,
    lock_run_folder,
    prepare_run_folder,
)
from robustloop.stack.supervisor import StackError, Supervisor, find_binary

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


def robustloop_argv(config: Path, *args: str) -> list[str]:
    """Command line running a robustloop sub-command with this interpreter and ``config``."""
    return [sys.executable, "-m", "robustloop", "--config", str(config), *args]


def production_version(cfg: RobustloopConfig) -> str | None:
    """The store's production version id, or None when the store has none."""
    from training import ModelStore

    store = ModelStore(cfg.store.path)
    current = store.production()
    if current is None:
        return None
    return str(getattr(current, "version", current))


def undefended_root(cfg: RobustloopConfig) -> str | None:
    """The version the production model descends from that was not fine-tuned (parent None).

    After a demo, production is the hardened model; the next demo must start from the
    undefended baseline again, or there would be nothing to attack.
    """
    from training import ModelStore

    store = ModelStore(cfg.store.path)
    version = store.production()
    seen: set[str] = set()
    while version is not None and version not in seen:
        seen.add(version)
        parent = store.manifest(version).parent
        if parent is None:
            return version
        version = parent
    return version


def reset_to_baseline(cfg: RobustloopConfig) -> str | None:
    """Point production back at the undefended baseline; returns it if production changed."""
    from training import ModelStore

    store = ModelStore(cfg.store.path)
    root = undefended_root(cfg)
    if root is None or root == store.production():
        return None
    store.promote(
        root, provenance={"reason": "robustloop demo starts from the undefended baseline"}
    )
    return root


class LocalStack:
    """The four processes of the one-machine loop, started together and always stopped together.

    Use as a context manager::

        with LocalStack(cfg) as stack:
            print(stack.urls())
            while True:
                stack.poll()
                time.sleep(1)

    Args:
        cfg: the user's config (the stack runs a rewritten copy, see :attr:`folder`).
        echo: where progress lines go (the CLI prints them).
        train_baseline: train a baseline when the store has no production model (else fail).
        from_baseline: first point production back at the undefended baseline (the demo).
        fresh: forget the previous runs' incidents and workflow runs (else they are kept and a
            pending incident is resumed).
    """

    def __init__(
        self,
        cfg: RobustloopConfig,
        echo: Echo = print,
        *,
        train_baseline: bool = True,
        from_baseline: bool = False,
        fresh: bool = False,
    ) -> None:
        self.cfg = cfg
        self.from_baseline = from_baseline
        self.fresh = fresh
        self.echo = echo
        self.train_baseline = train_baseline
        self.supervisor = Supervisor()
        self._folder: RunFolder | None = None
        self.production: str | None = None
        self.rules_reloads = 0
        self._rules_loaded: bytes | None = None
        self._lock_fd: int | None = None

    @property
    def folder(self) -> RunFolder:
        if self._folder is None:
            raise RuntimeError("the stack is not started")
        return self._folder

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Prepare the run folder, ensure a baseline, start every process and wait until ready.

        Raises:
            StackError: a binary is missing, a process died or did not become ready.
        """
        prometheus = find_binary(self.cfg.stack.prometheus_binary)
        alertmanager = find_binary(self.cfg.stack.alertmanager_binary)
        try:
            self._lock_fd = lock_run_folder(self.cfg.stack.run_dir)
        except (RunFolderBusy, NotADirectoryError) as exc:
            raise StackError(str(exc)) from None
        self.production = self._ensure_baseline()
        folder = self._folder = prepare_run_folder(self.cfg, fresh=self.fresh)
        if folder.config.alerts.calibrated_version != self.production:
            # Thresholds judge one model: fit them to the one about to serve.
            self.echo(f"calibrating the alert thresholds for {self.production}")
            self.calibrate()
        self._rules_loaded = self._rules_signature()  # what Prometheus reads when it starts
        timeout = self.cfg.stack.ready_timeout_seconds
        sup = self.supervisor
        children = [
            sup.start(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={folder.prometheus_config}",
                    f"--storage.tsdb.path={folder.prometheus_data}",
                    f"--web.listen-address=127.0.0.1:{folder.ports.prometheus}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1d",
                ],
                folder.logs / "prometheus.log",
                ready_url=f"{folder.prometheus_url}/-/ready",
            ),
            sup.start(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={folder.alertmanager_config}",
                    f"--storage.path={folder.alertmanager_data}",
                    f"--web.listen-address=127.0.0.1:{folder.ports.alertmanager}",
                    "--cluster.listen-address=",
                ],
                folder.logs / "alertmanager.log",
                ready_url=f"{folder.alertmanager_url}/-/ready",
            ),
            sup.start(
                "server",
                robustloop_argv(
                    folder.config_path,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(folder.ports.serving),
                ),
                folder.logs / "server.log",
                ready_url=f"{folder.serving_url}/v2/health/ready",
            ),
            sup.start(
                "receiver",
                robustloop_argv(
                    folder.config_path,
                    "webhook",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(folder.ports.webhook),
                ),
                folder.logs / "receiver.log",
                ready_url=f"{folder.webhook_url}/readyz",
            ),
        ]
        for child in children:
            sup.wait_ready(child, timeout)
        log.info("stack ready in %s", folder.root)

    def _ensure_baseline(self) -> str:
        """The production version; trains a baseline first when the store has none."""
        version = production_version(self.cfg)
        if version is not None:
            if self.from_baseline:
                reset = reset_to_baseline(self.cfg)
                if reset is not None:
                    self.echo(f"production was {version}; starting from the baseline {reset}")
                    return reset
            return version
        if not self.train_baseline:
            raise StackError(
                f"the model store {self.cfg.store.path} has no production model; "
                "run `robustloop train` first"
            )
        self.echo(f"no production model in {self.cfg.store.path}: training a baseline first")
        config = self.cfg.stack.run_dir.resolve() / "train-baseline.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        from robustloop.config import dump_config

        config.write_text(dump_config(self.cfg), encoding="utf-8")
        result = subprocess.run(robustloop_argv(config, "train"), check=False)
        if result.returncode != 0:
            raise StackError(
                f"training the baseline failed (exit {result.returncode}); run "
                "`robustloop train` to see why"
            )
        version = production_version(self.cfg)
        if version is None:
            raise StackError(
                f"`robustloop train` succeeded but {self.cfg.store.path} has no production model"
            )
        return version

    def urls(self) -> dict[str, str]:
        """Where each part of the stack answers."""
        f = self.folder
        return {
            "prometheus": f.prometheus_url,
            "alertmanager": f.alertmanager_url,
            "server": f.serving_url,
            "receiver": f.webhook_url,
        }

    def poll(self) -> str | None:
        """Check the stack once: every process alive; Prometheus holds the current rules.

        Returns:
            The new production version if it changed since the last poll, else None.

        Raises:
            StackError: a process died, or Prometheus refused the new rules.
        """
        self.supervisor.check_alive()
        rules = self._rules_signature()
        if rules != self._rules_loaded:
            self.reload_prometheus()
            self._rules_loaded = rules
            calibrated = self._calibrated_version()
            self.echo(f"alert rules reloaded (thresholds calibrated for {calibrated})")
        current = production_version(self.folder.config)
        if current is None or current == self.production:
            return None
        log.info("production changed %s -> %s", self.production, current)
        self.production = current
        return current

    def _rules_signature(self) -> bytes | None:
        try:
            return hashlib.sha256(self.folder.rules_path.read_bytes()).digest()
        except FileNotFoundError:
            return None

    def _calibrated_version(self) -> str | None:
        try:
            return load_config(self.folder.config_path).alerts.calibrated_version
        except ConfigError:  # being replaced right now: the next poll reads it
            return None

    def calibrate(self) -> None:
        """Fit the thresholds to the production model and render the rules into the run folder
        (what ``robustloop calibrate`` does; the workflow does it after each promotion).

        A failed calibration keeps the previous thresholds, and says so: old rules are better
        than none.
        """
        from training import use_threads
        from workflows.calibrate import CalibrateError, calibrate_version

        folder = self.folder
        use_threads(self.cfg.training.threads)
        try:
            calibrate_version(
                load_config(folder.config_path),
                self.production or "production",
                config_path=folder.config_path,
                rules_out=folder.rules_path.parent,
            )
        except CalibrateError as exc:
            self.echo(
                f"calibration for {self.production} failed ({exc}); keeping the previous thresholds"
            )

    def reload_prometheus(self) -> None:
        """Ask Prometheus to reread its config and rules (it runs with --web.enable-lifecycle).

        Raises:
            StackError: Prometheus answered with an error (its log says which rule is wrong).
        """
        resp = requests.post(f"{self.folder.prometheus_url}/-/reload", timeout=10)
        if resp.status_code != 200:
            raise StackError(
                f"Prometheus refused to reload its rules (HTTP {resp.status_code}: "
                f"{resp.text.strip()}); see {self.folder.logs / 'prometheus.log'}"
            )
        self.rules_reloads += 1

    def stop(self) -> None:
        """Stop every process (safe to call twice, and after a failed start)."""
        self.supervisor.stop_all()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the run folder's lock
            self._lock_fd = None


__all__ = [
    "LocalStack",
    "production_version",
    "reset_to_baseline",
    "robustloop_argv",
    "undefended_root",
]
