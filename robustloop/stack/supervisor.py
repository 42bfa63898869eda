"""Process supervision for the embedded stack: start, wait until ready, always stop.

Each child runs in its own session (so its own process group): stopping it signals the whole
group, which also reaches the grandchildren a child may spawn (the receiver's local submitter
starts ``robustloop workflow run-local``). A :class:`Supervisor` is a context manager: leaving the
``with`` block by any route (normal end, an exception, Ctrl-C) stops every child it started, in
reverse order, SIGTERM first and SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import requests

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"


class StackError(Exception):
    """The stack could not start or died; the message says which part, why, and where its log is."""


def find_binary(name: str) -> str:
    """Resolve an executable by name (on PATH) or path.

    Raises:
        StackError: not found; the message names the Debian packages that provide the binaries.
    """
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"executable {name!r} not found (on PATH or as a path); install Prometheus and "
            f"Alertmanager with `sudo {INSTALL_HINT}`, or set stack.prometheus_binary / "
            "stack.alertmanager_binary in robustloop.yaml"
        )
    return found


@dataclass
class Child:
    """One supervised process and where its output goes."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    ready_url: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts child processes in their own process groups and stops them all on exit.

    Args:
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
    """

    def __init__(self, stop_timeout: float = 10.0) -> None:
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self.tag = secrets.token_hex(8)
        """Value of :data:`TAG_ENV` in every child's environment, inherited by its descendants."""

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_url: str | None = None,
    ) -> Child:
        """Start ``argv`` with stdout and stderr appended to ``log_path``.

        Raises:
            StackError: the executable cannot be started.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        merged = dict(os.environ)
        if env:
            merged.update(env)
        merged[TAG_ENV] = self.tag
        with open(log_path, "ab") as out:
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=merged,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StackError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        child = Child(name, list(argv), log_path, process, ready_url)
        self.children.append(child)
        log.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
        return child

    def wait_ready(
        self,
        child: Child,
        timeout: float,
        check: Callable[[requests.Response], bool] | None = None,
    ) -> None:
        """Poll ``child.ready_url`` until it answers 200 (and ``check`` passes).

        Raises:
            StackError: the child exited, or did not become ready within ``timeout``; the message
                quotes the end of its log.
        """
        if child.ready_url is None:
            return
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not child.alive:
                raise StackError(
                    f"{child.name} exited with status {child.process.returncode} before it was "
                    f"ready; its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            try:
                resp = requests.get(child.ready_url, timeout=2)
                if resp.status_code == 200 and (check is None or check(resp)):
                    return
                last = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} was not ready at {child.ready_url} after {timeout:.0f} s "
                    f"(last: {last}); its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            time.sleep(0.2)

    def check_alive(self) -> None:
        """Raise if any child has died (a stack with a dead part must not pretend to run).

        Raises:
            StackError: names the dead child and quotes its log.
        """
        for child in self.children:
            if not child.alive:
                raise StackError(
                    f"{child.name} exited with status {child.process.returncode}; its log "
                    f"({child.log_path}) ends with:\n{child.log_tail()}"
                )

    def stop(self, child: Child) -> None:
        """Stop one child's whole process group: SIGTERM, then SIGKILL after the grace period."""
        if child.process.poll() is None:
            _signal_group(child.process.pid, signal.SIGTERM)
            try:
                child.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing", child.name, self.stop_timeout)
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
        # The leader is gone; grandchildren left in its group (a running workflow step) go too.
        _signal_group(child.process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every child, last started first, then every descendant left. Safe to call twice.

        Descendants that left their parent's process group (the receiver starts each local
        workflow in a session of its own, since remediations outlive a receiver) are found by
        the tag in their environment and stopped too: when the stack stops, nothing it caused
        runs on.
        """
        while self.children:
            child = self.children.pop()
            self.stop(child)
            log.debug("stopped %s", child.name)
        self.stop_tagged()

    def stop_tagged(self) -> None:
        """SIGTERM every process carrying this supervisor's tag, SIGKILL what remains."""
        pids = tagged_pids(self.tag)
        if not pids:
            return
        log.info("stopping %d leftover process(es) of this stack: %s", len(pids), pids)
        for pid in pids:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if _running(pid)]
            if not pids:
                return
            time.sleep(0.1)
        for pid in pids:
            _signal_pid(pid, signal.SIGKILL)


TAG_ENV = "ROBUSTLOOP_STACK_TAG"
"""Environment variable marking the processes of one stack (and their descendants)."""


def tagged_pids(tag: str) -> list[int]:
    """Processes of this user whose environment holds ``TAG_ENV=tag`` (Linux /proc)."""
    marker = f"{TAG_ENV}={tag}".encode()
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if marker in environ.split(b"\0") and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


__all__ = [
    "INSTALL_HINT",
    "TAG_ENV",
    "Child",
    "StackError",
    "Supervisor",
    "find_binary",
    "tagged_pids",
]
