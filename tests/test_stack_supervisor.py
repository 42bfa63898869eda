"""Process supervision of the embedded stack: children and grandchildren always stopped."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from robustloop.stack.supervisor import (
    INSTALL_HINT,
    StackError,
    Supervisor,
    find_binary,
    tagged_pids,
)

# A child that starts a grandchild in its own process group and writes both pids, then sleeps.
_PARENT = """
import os, subprocess, sys, time
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {grand.pid}")
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_for_file(path: Path) -> str:
    for _ in range(200):
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def _wait_dead(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_leaving_the_block_with_an_error_stops_child_and_grandchild(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    with pytest.raises(RuntimeError, match="boom"), Supervisor(stop_timeout=5) as sup:
        sup.start("parent", [sys.executable, "-c", _PARENT, str(pids)], tmp_path / "p.log")
        child_pid, grand_pid = map(int, _wait_for_file(pids).split())
        raise RuntimeError("boom")
    assert _wait_dead(child_pid)
    assert _wait_dead(grand_pid)
    assert sup.children == []


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(600)"
    )
    log = tmp_path / "stubborn.log"
    with Supervisor(stop_timeout=0.5) as sup:
        child = sup.start("stubborn", [sys.executable, "-c", code], log)
        for _ in range(200):
            if "up" in log.read_text():
                break
            time.sleep(0.05)
    assert child.process.returncode == -9


def test_wait_ready_reports_an_early_exit_with_the_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('cannot bind the port'); sys.exit(3)"
    with Supervisor() as sup:
        child = sup.start(
            "broken",
            [sys.executable, "-c", code],
            tmp_path / "broken.log",
            ready_url="http://127.0.0.1:9/never",
        )
        with pytest.raises(StackError) as info:
            sup.wait_ready(child, timeout=30)
    message = str(info.value)
    assert "broken exited with status 3" in message
    assert "cannot bind the port" in message


def test_check_alive_names_a_dead_child(tmp_path: Path) -> None:
    with Supervisor() as sup:
        child = sup.start("short", [sys.executable, "-c", "print('bye')"], tmp_path / "s.log")
        child.process.wait(30)
        with pytest.raises(StackError, match="short exited with status 0"):
            sup.check_alive()


def test_missing_binary_names_the_packages_to_install() -> None:
    with pytest.raises(StackError) as info:
        find_binary("robustloop-no-such-prometheus")
    assert INSTALL_HINT in str(info.value)
    assert "robustloop-no-such-prometheus" in str(info.value)


def test_find_binary_resolves_a_name_on_path() -> None:
    assert Path(find_binary("sh")).is_file()


# A child that starts a grandchild in a session of its own (as the receiver starts a local
# workflow), so that signalling the child's process group does not reach it.
_DETACHING = """
import subprocess, sys, time
grand = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
)
open(sys.argv[1], "w").write(str(grand.pid))
time.sleep(600)
"""


def test_a_descendant_in_its_own_session_is_stopped_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "grand.pid"
    with Supervisor(stop_timeout=5) as sup:
        sup.start("receiver", [sys.executable, "-c", _DETACHING, str(pid_file)], tmp_path / "r.log")
        grand = int(_wait_for_file(pid_file))
        assert grand in tagged_pids(sup.tag)
    assert _wait_dead(grand)
    assert tagged_pids(sup.tag) == []
