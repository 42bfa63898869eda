"""`robustloop serve` as the demo runs it: a subprocess that announces its URL once ready."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests

from robustloop.config import RobustloopConfig, dump_config
from tests.support import register_model
from training import ModelStore

ANNOUNCE = re.compile(r"^serving (\S+) (\S+) on (http://\S+)$")


class Serve:
    """A `robustloop serve` subprocess whose stdout lines arrive on a queue; always stopped."""

    def __init__(self, config_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robustloop", "--config", str(config_path), "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def announced(self, timeout: float = 120.0) -> re.Match[str]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no announcement within {timeout:.0f}s") from None
        match = ANNOUNCE.match(line.strip())
        assert match, f"unexpected first line: {line!r}"
        return match

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def config_path(small_config: RobustloopConfig, tmp_path: Path) -> Path:
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(small_config))
    return path


@pytest.fixture
def serve(config_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for proc in started:
        proc.stop()


def test_serve_on_port_0_announces_its_url_refuses_a_busy_port_and_stops_on_sigterm(
    small_config: RobustloopConfig, config_path: Path, serve: list[Serve]
) -> None:
    version = register_model(ModelStore(small_config.store.path))
    server = Serve(config_path, "--port", "0")
    serve.append(server)
    name, announced_version, url = server.announced().groups()
    assert (name, announced_version) == ("fashion-cnn", version)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200

    port = url.rsplit(":", 1)[1]
    second = Serve(config_path, "--port", port)
    serve.append(second)
    second.proc.wait(timeout=120)
    code, stderr = second.stop()
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in stderr

    code, stderr = server.stop()
    assert code == 0, stderr


def test_serve_with_an_empty_store_listens_unready_and_announces_once_a_model_arrives(
    small_config: RobustloopConfig, config_path: Path, serve: list[Serve], port: int
) -> None:
    server = Serve(config_path, "--host", "127.0.0.1", "--port", str(port))
    serve.append(server)
    url = f"http://127.0.0.1:{port}"
    ready = None
    for _ in range(600):  # the process needs a moment to import torch and bind
        try:
            ready = requests.get(f"{url}/v2/health/ready", timeout=10)
            break
        except requests.ConnectionError:
            assert server.proc.poll() is None, server.stop()[1]
            threading.Event().wait(0.2)
    assert ready is not None and ready.status_code == 503
    assert server.lines.empty()
    version = register_model(ModelStore(small_config.store.path))
    assert server.announced().groups() == ("fashion-cnn", version, url)
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
