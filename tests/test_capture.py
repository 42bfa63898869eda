"""Capture of labelled live traffic: opt-in, bounded in memory and on disk, verified when read.

The model server keeps each classified input until its ground truth comes back and then writes
(input, label) to the captured set (serving/capture.py); training reads the set back
(training/captured.py). The first tests go through a real server over HTTP; the bounds are
tested on :class:`serving.capture.Capture` with clocks the tests move.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from prometheus_client import CollectorRegistry
from torch.utils.data import TensorDataset

from robustloop.config import CaptureConfig, ConfigError, RobustloopConfig
from serving import RunningServer, create_app, get_state
from serving.capture import Capture
from tests.support import register_model
from training import (
    CapturedDataError,
    ModelStore,
    append_captured,
    example_key,
    load_captured,
    mix_captured,
)
from training.captured import MANIFEST, held_out

MODEL = "fashion-cnn"
DAY = 86400.0


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _infer(url: str, x: torch.Tensor) -> list[str]:
    body = {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}]}  # fmt: skip
    answer = requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    return [str(i) for i in outputs["sample_ids"]]


def _feedback(url: str, ids: list[str], labels: list[int]) -> dict[str, int]:
    answer = requests.post(
        f"{url}/v2/models/{MODEL}/feedback", json={"ids": ids, "labels": labels}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    counts: dict[str, int] = answer.json()
    return counts


@pytest.fixture
def server(small_config: RobustloopConfig, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A real model server over HTTP with capture on (chunks of 4): its URL and its state."""
    small_config.capture.enabled = True
    small_config.capture.path = tmp_path / "captured"
    small_config.capture.chunk_examples = 4
    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    state = get_state(app)
    try:
        with RunningServer(app) as running:
            yield running.url, state
    finally:
        state.close()


def test_labelled_inputs_reach_the_captured_set_exactly_once(
    server: tuple[str, Any], small_config: RobustloopConfig
) -> None:
    url, state = server
    # GIVEN six classified images
    x = _images(6)
    ids = _infer(url, x)
    # WHEN ground truth comes back for four of them (once more for one, and for an unknown id)
    labels = [3, 1, 4, 1]
    assert _feedback(url, ids[:4], labels)["unknown"] == 0
    again = _feedback(url, [ids[0], "not-a-sample"], [3, 2])
    assert again == {"correct": 0, "wrong": 0, "unknown": 2}
    # THEN exactly those four are on disk, pixel for pixel, with their labels and keys
    captured = load_captured(small_config.capture)
    assert len(captured) == 4
    assert torch.equal(captured.images, x[:4])
    assert captured.labels.tolist() == labels
    assert captured.keys.tolist() == [example_key(i) for i in ids[:4]]
    # the other two still wait in memory; nothing of them was written
    assert state.capture.pending == 2 and state.capture.buffered == 0
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert f'robustloop_captured_examples_total{{model="{MODEL}"}} 4.0' in metrics
    assert f'robustloop_captured_set_examples{{model="{MODEL}"}} 4.0' in metrics
    # the folder is private: captured inputs are user data
    folder = Path(small_config.capture.path)
    assert folder.stat().st_mode & 0o077 == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in folder.iterdir() if p.name != ".lock")


def test_a_partial_chunk_is_written_when_the_server_stops(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    small_config.capture.enabled = True
    small_config.capture.path = tmp_path / "captured"
    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    state = get_state(app)
    with RunningServer(app) as running:
        ids = _infer(running.url, _images(3))
        _feedback(running.url, ids, [0, 1, 2])
        assert state.capture.buffered == 3  # under chunk_examples and flush_seconds
    state.close()
    assert load_captured(small_config.capture).labels.tolist() == [0, 1, 2]


def test_nothing_is_captured_without_opt_in(small_config: RobustloopConfig, tmp_path: Path) -> None:
    # GIVEN the default config (capture.enabled: false) pointing at a folder
    small_config.capture.path = tmp_path / "captured"
    assert small_config.capture.enabled is False
    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    state = get_state(app)
    try:
        with RunningServer(app) as running:
            # WHEN traffic is classified and labelled
            ids = _infer(running.url, _images(8))
            assert _feedback(running.url, ids, [1] * 8)["unknown"] == 0
            metrics = requests.get(f"{running.url}/metrics", timeout=10).text
    finally:
        state.close()
    # THEN no input was kept, nothing was written, no capture series exists
    assert state.capture is None
    assert not (tmp_path / "captured").exists()
    assert "robustloop_captured" not in metrics


# -- the bounds, on Capture with clocks the test moves -----------------------------------------


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _capture(cfg: CaptureConfig, wall: Clock, mono: Clock, ttl: float = 600.0) -> Capture:
    return Capture(cfg, ttl, model=MODEL, registry=CollectorRegistry(), clock=wall, monotonic=mono)


def _label(capture: Capture, first: int, n: int) -> list[str]:
    ids = [f"id-{i}" for i in range(first, first + n)]
    capture.hold(ids, _images(n, seed=first))
    assert capture.labelled(ids, [i % 10 for i in range(first, first + n)]) == n
    return ids


def test_the_set_keeps_at_most_max_examples_the_oldest_dropped_first(tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c", max_examples=5, chunk_examples=2)
    wall, mono = Clock(), Clock()
    capture = _capture(cfg, wall, mono)
    manifest_path = tmp_path / "c" / MANIFEST
    for first in range(0, 9):  # nine examples, one at a time, a second apart
        wall.now += 1
        _label(capture, first, 1)
        if manifest_path.exists():  # never more than the cap on disk, after any write
            written = json.loads(manifest_path.read_text())["chunks"]
            assert sum(c["examples"] for c in written) <= 5
    capture.close()
    captured = load_captured(cfg, now=wall.now)
    # the newest five, in order; the manifest and the files agree with the cap
    assert captured.labels.tolist() == [4, 5, 6, 7, 8]
    assert captured.keys.tolist() == [example_key(f"id-{i}") for i in range(4, 9)]
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert sum(c["examples"] for c in manifest["chunks"]) == 5
    on_disk = {p.name for p in (tmp_path / "c").glob("chunk-*")}
    assert on_disk == {c["file"] for c in manifest["chunks"]}


def test_examples_past_the_retention_are_dropped_on_write_and_ignored_on_read(
    tmp_path: Path,
) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c", retention_seconds=DAY, chunk_examples=3)
    wall, mono = Clock(), Clock()
    capture = _capture(cfg, wall, mono)
    _label(capture, 0, 3)  # written at day 0
    wall.now += 0.5 * DAY
    _label(capture, 3, 3)  # written at day 0.5
    # read at day 1.2: the first chunk is past the retention, though still on disk
    assert load_captured(cfg, now=wall.now + 0.7 * DAY).labels.tolist() == [3, 4, 5]
    assert load_captured(cfg, now=wall.now).labels.tolist() == [0, 1, 2, 3, 4, 5]
    # a write at day 1.2 drops it from disk
    wall.now += 0.7 * DAY
    _label(capture, 6, 3)
    capture.close()
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert [c["examples"] for c in manifest["chunks"]] == [3, 3]
    assert load_captured(cfg, now=wall.now).labels.tolist() == [3, 4, 5, 6, 7, 8]
    assert len(list((tmp_path / "c").glob("chunk-*"))) == 2


def test_held_inputs_are_bounded_in_memory_and_in_time(tmp_path: Path) -> None:
    one_image = 28 * 28 * 4
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c", max_pending_bytes=3 * one_image)
    wall, mono = Clock(), Clock()
    capture = _capture(cfg, wall, mono, ttl=60.0)
    ids = [f"id-{i}" for i in range(5)]
    capture.hold(ids, _images(5))
    # only the newest three fit: the two oldest are never captured
    assert capture.pending == 3
    assert capture.labelled(ids, [0] * 5) == 3
    # an input whose ground truth comes after the TTL is not captured either
    capture.hold(["late"], _images(1))
    mono.now += 61
    assert capture.labelled(["late"], [1]) == 0
    assert capture.pending == 0
    capture.close()


def test_a_second_server_cannot_capture_into_the_same_folder(tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c")
    first = _capture(cfg, Clock(), Clock())
    with pytest.raises(ConfigError, match="in use by another model server"):
        _capture(cfg, Clock(), Clock())
    first.close()
    _capture(cfg, Clock(), Clock()).close()  # released when the first one stops


def test_a_tampered_chunk_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c", chunk_examples=4)
    wall, mono = Clock(), Clock()
    capture = _capture(cfg, wall, mono)
    _label(capture, 0, 4)
    capture.close()
    chunk = next((tmp_path / "c").glob("chunk-*"))
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01  # one bit of one pixel
    chunk.write_bytes(bytes(data))
    with pytest.raises(CapturedDataError, match=r"captured chunk .* is tampered: its sha256"):
        load_captured(cfg, now=wall.now)


def test_a_manifest_that_is_not_one_refuses_to_start_the_capture(tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / MANIFEST).write_text("[]")
    with pytest.raises(ConfigError, match="is not a captured-set manifest"):
        _capture(cfg, Clock(), Clock())


def test_chunks_left_by_a_crash_are_removed_and_a_missing_folder_reads_empty(
    tmp_path: Path,
) -> None:
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c")
    assert len(load_captured(cfg)) == 0
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "chunk-00000007.safetensors").write_bytes(b"half a chunk")
    _capture(cfg, Clock(), Clock()).close()
    assert list((tmp_path / "c").glob("chunk-*")) == []


# -- the split and the mix -------------------------------------------------------------------


def test_an_example_keeps_its_side_of_the_split_as_the_set_changes(tmp_path: Path) -> None:
    keys = torch.tensor([example_key(f"sample-{i}") for i in range(4000)])
    out = held_out(keys, 0.2)
    assert 0.17 < out.float().mean().item() < 0.23  # about the fraction asked for
    # the side of each example depends on its key alone: the same in any subset
    assert torch.equal(held_out(keys[1000:3000], 0.2), out[1000:3000])
    cfg = CaptureConfig(enabled=True, path=tmp_path / "c", max_examples=100_000)
    now = 2_000_000.0
    times = torch.full((4000,), now, dtype=torch.float64)
    append_captured(cfg, _images(4000), torch.arange(4000) % 10, times, keys, now=now)
    train, holdout = load_captured(cfg, now=now).split(0.2)
    assert len(holdout) == int(out.sum()) and len(train) == 4000 - int(out.sum())


def test_the_mix_fills_its_share_with_captured_examples_and_the_rest_with_the_split() -> None:
    original = TensorDataset(torch.zeros(1000, 1, 4, 4), torch.zeros(1000, dtype=torch.int64))
    captured = TensorDataset(torch.ones(30, 1, 4, 4), torch.arange(30) % 10)
    mixed, composition = mix_captured(original, captured, 0.25, seed=0)
    images, labels = mixed.tensors
    is_captured = images.flatten(1)[:, 0] == 1
    # a quarter of a set as large as the split; every captured example at least 8 times
    assert len(mixed) == 1000 and int(is_captured.sum()) == 250 == composition["slots"]
    assert composition == {"captured": 30, "slots": 250, "original": 750}
    counts = torch.bincount(labels[is_captured], minlength=10)
    assert int(counts.min()) >= 8 * 3
    # many captured examples: each once, with training images keeping the ratio
    many = TensorDataset(torch.ones(600, 1, 4, 4), torch.zeros(600, dtype=torch.int64))
    mixed, composition = mix_captured(original, many, 0.5, seed=0)
    assert composition == {"captured": 600, "slots": 600, "original": 600}
    with pytest.raises(ValueError, match="differ from the training images"):
        mix_captured(original, TensorDataset(torch.ones(3, 1, 5, 5), torch.zeros(3)), 0.5, 0)
