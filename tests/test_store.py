"""The model store: versions, verified loading, the atomic production pointer, rollback."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from training import (
    ModelStore,
    StoreConflict,
    StoreError,
    TamperedModelError,
    UnknownVersionError,
    build_model,
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn")


def _register(store: ModelStore, seed: int = 0, parent: str | None = None) -> str:
    return store.register(
        _model(seed),
        architecture="cnn",
        parent=parent,
        recipe={"method": "standard", "seed": seed},
        metrics={"eval_clean_accuracy": 0.5},
        split={"seed": 0},
        provenance={"command": "test"},
    )


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_first_version_becomes_production_later_ones_do_not(store: ModelStore) -> None:
    assert store.production() is None
    v1 = _register(store, 0)
    v2 = _register(store, 1, parent=v1)
    assert v1.startswith("v0001-") and v2.startswith("v0002-")
    assert store.production() == v1
    assert store.resolve("production") == v1
    assert store.resolve("latest") == v2
    assert store.resolve("v0002") == v2
    manifest = store.manifest(v2)
    assert manifest.parent == v1
    assert manifest.architecture == "cnn"
    assert manifest.recipe == {"method": "standard", "seed": 1}
    assert [m.version for m in store.list()] == [v1, v2]


def test_load_returns_the_same_function_in_eval_mode(store: ModelStore) -> None:
    original = _model(3)
    version = store.register(
        original, architecture="cnn", parent=None, recipe={}, metrics={}, split={}, provenance={}
    )
    loaded, manifest = store.load(version)
    assert manifest.version == version
    assert not loaded.training
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), original.eval()(x))


def test_tampered_weights_are_refused(store: ModelStore) -> None:
    v1 = _register(store, 0)
    v2 = _register(store, 1)
    weights = store.versions_dir / v2 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(TamperedModelError, match=v2):
        store.load(v2)
    with pytest.raises(TamperedModelError):
        store.promote(v2)
    assert store.production() == v1, "a tampered version must not be promoted"


def test_promote_and_rollback_walk_the_pointer_history(store: ModelStore) -> None:
    v1, v2, v3 = _register(store, 0), _register(store, 1), _register(store, 2)
    store.promote(v2, {"incident": "a"})
    store.promote(v3, {"incident": "b"})
    assert store.production() == v3
    assert store.rollback({"reason": "canary"}) == v2
    assert store.production() == v2
    assert store.rollback() == v1
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()
    assert store.production() == v1
    actions = [(h["action"], h["from"], h["to"]) for h in store.history()]
    assert actions == [
        ("initial", None, v1),
        ("promote", v1, v2),
        ("promote", v2, v3),
        ("rollback", v3, v2),
        ("rollback", v2, v1),
    ]
    assert store.history()[1]["provenance"] == {"incident": "a"}


def test_rollback_of_a_fresh_store_changes_nothing(store: ModelStore) -> None:
    v1 = _register(store)
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()
    assert store.production() == v1
    assert len(store.history()) == 1


def test_unknown_references_are_clear_errors_and_write_nothing(store: ModelStore) -> None:
    with pytest.raises(UnknownVersionError, match="robustloop train"):
        store.resolve("production")
    v1 = _register(store)
    for ref in ("v0009", "v0001-deadbeef", "../etc", ""):
        with pytest.raises(UnknownVersionError, match=v1):
            store.load(ref)
    with pytest.raises(UnknownVersionError):
        _register(store, parent="v0042")
    with pytest.raises(StoreError, match="architecture"):
        store.register(
            _model(0),
            architecture="vgg",
            parent=None,
            recipe={},
            metrics={},
            split={},
            provenance={},
        )
    with pytest.raises(StoreError, match="JSON"):
        store.register(
            _model(0),
            architecture="cnn",
            parent=None,
            recipe={"x": object()},
            metrics={},
            split={},
            provenance={},
        )
    with pytest.raises(
        StoreError,
        match=r"weight .0\.weight. has shape \[64, 1, 3, 3\], the architecture needs \[32",
    ):
        store.register(
            build_model("wide-cnn"),
            architecture="cnn",
            parent=None,
            recipe={},
            metrics={},
            split={},
            provenance={},
        )
    assert [m.version for m in store.list()] == [v1]
    assert sorted(p.name for p in store.versions_dir.iterdir()) == [v1]


def test_a_half_written_version_is_invisible(store: ModelStore) -> None:
    v1 = _register(store)
    partial = store.versions_dir / ".tmp-crashed"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert [m.version for m in store.list()] == [v1]
    v2 = _register(store, 1)
    assert v2.startswith("v0002-")


def test_a_crash_while_promoting_leaves_the_old_pointer(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = _register(store, 0), _register(store, 1)
    before = store.pointer_path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.promote(v2)
    monkeypatch.undo()
    assert store.pointer_path.read_bytes() == before
    assert store.production() == v1
    leftovers = [p.name for p in store.root.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_crash_between_history_and_pointer_leaves_no_false_history(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history is written first; a crash before the pointer follows leaves an entry the
    pointer never took: readers ignore it, rollback does not walk into it, the next change
    overwrites it."""
    v1, v2, v3 = _register(store, 0), _register(store, 1), _register(store, 2)
    real_replace = os.replace

    def crash_on_the_pointer(src: object, dst: object) -> None:
        if str(dst) == str(store.pointer_path):
            raise OSError("power cut")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", crash_on_the_pointer)
    with pytest.raises(OSError, match="power cut"):
        store.promote(v2)
    monkeypatch.undo()
    assert len(json.loads(store.history_path.read_text())) == 2  # the intent is on disk
    assert store.production() == v1
    assert [e["to"] for e in store.history()] == [v1]
    store.promote(v3)
    assert [e["to"] for e in store.history()] == [v1, v3]
    assert store.rollback() == v1


def test_a_pointer_that_names_no_version_is_refused_before_any_path_is_built(
    store: ModelStore,
) -> None:
    _register(store, 0)
    for bad in ("../../../etc", "v0001-1234567/../../x", "", 7):
        store.pointer_path.write_text(json.dumps({"version": bad}))
        with pytest.raises(StoreError, match="not a version id"):
            store.production()
        with pytest.raises(StoreError, match="not a version id"):
            store.load("production")


def test_promote_and_rollback_compare_and_swap_under_the_lock(store: ModelStore) -> None:
    v1, v2, v3 = _register(store, 0), _register(store, 1), _register(store, 2)
    store.promote(v2, expect=v1)
    with pytest.raises(StoreConflict, match=f"production is {v2}, not {v1}"):
        store.promote(v3, expect=v1)
    assert store.promote(v2, expect=v1) == v2  # already done: a retry changes nothing
    with pytest.raises(StoreConflict, match=f"production is {v2}, not {v3}"):
        store.rollback(expect=v3)
    assert store.production() == v2 and len(store.history()) == 2
    assert store.rollback(expect=v2) == v1


def test_readers_never_see_a_partial_pointer(store: ModelStore) -> None:
    versions = [_register(store, seed) for seed in range(3)]
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(store.pointer_path.read_text())["version"])
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            store.promote(versions[i % 3])
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen <= set(versions)


def test_concurrent_registrations_get_distinct_ids(store: ModelStore) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        version = _register(store, seed)
        with lock:
            results.append(version)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(v.split("-")[0] for v in results)
    assert numbers == ["v0001", "v0002", "v0003", "v0004"]


def test_annotations_sit_beside_the_manifest(store: ModelStore) -> None:
    v1 = _register(store)
    manifest_before = (store.versions_dir / v1 / "manifest.json").read_bytes()
    assert store.annotation(v1, "calibration") is None
    store.annotate(v1, "calibration", {"entropy": 0.3})
    store.annotate("production", "calibration", {"entropy": 0.4})
    assert store.annotation(v1, "calibration") == {"entropy": 0.4}
    assert (store.versions_dir / v1 / "manifest.json").read_bytes() == manifest_before
    with pytest.raises(StoreError, match="annotation key"):
        store.annotate(v1, "../escape", {})
    with pytest.raises(UnknownVersionError):
        store.annotate("v0007", "calibration", {})
