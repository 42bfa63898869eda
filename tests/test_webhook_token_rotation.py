"""The receiver's token rotates under GitOps: its file, mounted from a Secret, is replaced the
way the kubelet replaces it (a new folder, then the ``..data`` symlink swapped), and a running
receiver takes the new token at the next delivery and refuses the old one, without a restart."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from robustloop.config import RobustloopConfig
from tests.webhook_support import RunningReceiver, firing_payload, get, post
from webhook._auth import BearerToken

OLD, NEW = "old-token-4d1f0c", "new-token-93ab7e"
STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _kubelet_write(volume: Path, token: str, version: int) -> None:
    """Write the Secret's one key as the kubelet's atomic writer does: the data in a new
    timestamped folder, ``..data`` pointing at it (swapped by rename), ``token`` pointing at
    ``..data/token``; the previous folder removed."""
    volume.mkdir(exist_ok=True)
    folder = volume / f"..2026_01_02_03_04_0{version}.{version:09d}"
    folder.mkdir()
    (folder / "token").write_text(token, encoding="utf-8")
    data = volume / "..data"
    previous = os.readlink(data) if data.is_symlink() else None
    staging = volume / "..data_tmp"
    staging.symlink_to(folder.name)
    os.replace(staging, data)
    if not (volume / "token").is_symlink():
        (volume / "token").symlink_to("..data/token")
    if previous is not None:
        shutil.rmtree(volume / previous)


def _status(url: str, token: str) -> int:
    return post(url, firing_payload(starts_at=STARTS), token=token).status_code


def test_a_running_receiver_takes_the_rotated_token_and_refuses_the_old_one(
    webhook_config: RobustloopConfig,
    tmp_path: Path,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a receiver whose token file is a mounted Secret holding the old token
    volume = tmp_path / "secret-volume"
    _kubelet_write(volume, OLD + "\n", 1)
    webhook_config.webhook.token_file = volume / "token"
    running = start_receiver(webhook_config, start_dispatcher=False)
    assert _status(running.url, OLD) == 200
    assert _status(running.url, NEW) == 401

    # WHEN the Secret is rotated and the kubelet swaps the volume's data
    _kubelet_write(volume, NEW + "\n", 2)

    # THEN the next delivery with the new token is accepted, the old one refused, on every route
    assert _status(running.url, NEW) == 200
    assert _status(running.url, OLD) == 401
    assert get(running.url, "/api/v1/remediations", token=NEW).status_code == 200
    assert get(running.url, "/api/v1/remediations", token=OLD).status_code == 401
    deliveries = running.outbox.in_state("received")[0].deliveries
    assert deliveries == 2, "the refused deliveries stored nothing"


def test_a_token_file_that_cannot_be_read_keeps_the_last_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a watched token file
    path = tmp_path / "token"
    path.write_text(OLD, encoding="utf-8")
    bearer = BearerToken.from_file(path)

    # WHEN it is emptied, then removed (a deleted Secret key): the last token stays, with one
    # warning per state
    with caplog.at_level(logging.WARNING, logger="webhook._auth"):
        path.write_text("", encoding="utf-8")
        assert bearer.current() == OLD and bearer.current() == OLD
        path.unlink()
        assert bearer.matches(f"Bearer {OLD}") and not bearer.matches(f"Bearer {NEW}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("previous token stays in force" in w for w in warnings)

    # WHEN a new token is written THEN it is in force
    path.write_text(NEW + "\n", encoding="utf-8")
    assert bearer.current() == NEW
