"""The embedded stack: Prometheus, Alertmanager, the model server and the receiver on 127.0.0.1.

:class:`LocalStack` is what ``robustloop up`` runs and what ``robustloop demo`` drives. It prepares
the run folder (:mod:`robustloop.stack.run_folder`), trains a baseline if the store has no
production model, starts the four processes under a :class:`~robustloop.stack.supervisor.
Supervisor`, waits until each answers its readiness endpoint, and from then on watches two
things once a second (:meth:`LocalStack.poll`): that no process has died, and whether the
production model changed — after a promotion the thresholds are recalibrated for the new model
(``robustloop calibrate``), the rules re-rendered into the run folder and Prometheus reloaded
(``POST /-/reload``), so that the rules judge the model that serves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
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
    render_rules_file,
)
from robustloop.stack.supervisor import TAG_ENV, StackError, Supervisor, find_binary

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
        calibration_grace_s: after a promotion, how long to wait for the workflow's own
            calibration before calibrating here.
    """

    def __init__(
        self,
        cfg: RobustloopConfig,
        echo: Echo = print,
        *,
        train_baseline: bool = True,
        from_baseline: bool = False,
        calibration_grace_s: float = 90.0,
    ) -> None:
        self.cfg = cfg
        self.from_baseline = from_baseline
        self.echo = echo
        self.train_baseline = train_baseline
        self.supervisor = Supervisor()
        self._folder: RunFolder | None = None
        self.production: str | None = None
        self.rules_reloads = 0
        self._recal_lock = threading.Lock()
        self._recal_thread: threading.Thread | None = None
        self._recal_again = False
        self._recal_error: StackError | None = None
        self._calibrate_proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock_fd: int | None = None
        self.calibration_grace_s = calibration_grace_s

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
        folder = self._folder = prepare_run_folder(self.cfg)
        if folder.config.alerts.calibrated_version != self.production:
            # Thresholds judge one model: fit them to the one about to serve.
            self.echo(f"calibrating the alert thresholds for {self.production}")
            self._calibrate()
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
        """Check the stack once: every process alive; rules follow the production model.

        A production change starts a recalibration in the background (calibrating takes
        seconds, and the demo must keep observing meanwhile); :meth:`wait_recalibrated` waits
        for it.

        Returns:
            The new production version if it changed since the last poll, else None.

        Raises:
            StackError: a process died, or the last recalibration could not reload Prometheus.
        """
        self.supervisor.check_alive()
        self._raise_recalibration_error()
        current = production_version(self.folder.config)
        if current is None or current == self.production:
            return None
        previous, self.production = self.production, current
        log.info(
            "production changed %s -> %s: recalibrating and reloading rules", previous, current
        )
        with self._recal_lock:
            if self._recal_thread is not None and self._recal_thread.is_alive():
                self._recal_again = True
            else:
                self._recal_thread = threading.Thread(
                    target=self._recalibrate_loop, name="recalibrate", daemon=True
                )
                self._recal_thread.start()
        return current

    def wait_recalibrated(self, timeout: float | None = None) -> None:
        """Wait for a running recalibration to end.

        Raises:
            StackError: it failed, or did not end within ``timeout``.
        """
        thread = self._recal_thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise StackError(f"recalibration still running after {timeout} s")
        self._raise_recalibration_error()

    def _raise_recalibration_error(self) -> None:
        error, self._recal_error = self._recal_error, None
        if error is not None:
            raise error

    def _recalibrate_loop(self) -> None:
        """Recalibrate until no production change arrived meanwhile; keep the error for poll."""
        try:
            while True:
                if self._wait_for_workflow_calibration():
                    self._render_rules()
                    self.reload_prometheus()
                    self.echo(f"rules follow {self.production} (calibrated by the workflow)")
                elif self._stopping.is_set():
                    return
                else:
                    self.recalibrate()
                with self._recal_lock:
                    if not self._recal_again:
                        return
                    self._recal_again = False
        except StackError as exc:
            self._recal_error = exc

    def _wait_for_workflow_calibration(self) -> bool:
        """Wait up to the grace period for the run config to be calibrated for production.

        The remediation workflow runs ``robustloop calibrate`` itself, on this same config, in
        its promote step and in the guard step after a rollback; calibrating again here would
        only race with it. A change made by hand gets no such step: then the grace period ends
        and the stack calibrates.
        """
        deadline = time.monotonic() + self.calibration_grace_s
        while True:
            try:
                cfg = load_config(self.folder.config_path)
            except ConfigError:
                cfg = None  # being rewritten right now; read it again in a moment
            if cfg is not None and cfg.alerts.calibrated_version == self.production:
                return True
            if time.monotonic() >= deadline or self._stopping.wait(0.5):
                return False

    def _render_rules(self) -> None:
        cfg = load_config(self.folder.config_path)
        self.folder.rules_path.write_text(render_rules_file(cfg), encoding="utf-8")

    def recalibrate(self) -> None:
        """Recalibrate the thresholds for the production model, re-render the rules, reload.

        ``robustloop calibrate`` rewrites the thresholds in the run folder's config; the rules
        file is rendered from that config and Prometheus reloads it. A failed calibration keeps
        the previous thresholds (and says so), since old rules are better than none.

        Raises:
            StackError: Prometheus refused to reload (the rules are invalid).
        """
        self._calibrate()
        self.reload_prometheus()
        self.echo(f"rules recalibrated for {self.production} and reloaded")

    def _calibrate(self) -> None:
        """Run ``robustloop calibrate`` on the run folder's config and re-render the rules."""
        folder = self.folder
        with open(folder.logs / "calibrate.log", "ab") as out:
            proc = subprocess.Popen(
                robustloop_argv(folder.config_path, "calibrate"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, TAG_ENV: self.supervisor.tag},
            )
            self._calibrate_proc = proc
            returncode = proc.wait()
        if returncode != 0:
            self.echo(
                f"calibration for {self.production} failed (exit {returncode}, see "
                f"{folder.logs / 'calibrate.log'}); keeping the previous thresholds"
            )
        self._render_rules()

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
        self._stopping.set()
        proc = self._calibrate_proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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
