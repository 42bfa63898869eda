"""The captured set: labelled live traffic that the model server kept, as training reads it.

The model server (:mod:`serving.capture`, opt-in with ``capture.enabled``) writes the set; the
captured recipe (:func:`training.harden` with ``remediation.recipe: captured``) and the gate read
it. Both sides share the format defined here, so training (below serving in the layers) owns it.

Layout of ``capture.path``::

    manifest.json                  {"format": 1, "image_shape": [C, H, W], "next": 18,
                                    "chunks": [{"file", "sha256", "examples", "oldest",
                                                "newest"}, ...]}   oldest chunk first
    chunk-00000017.safetensors     images float32 [n, C, H, W] in [0, 1], labels int64 [n],
                                   times float64 [n] (seconds since the epoch, when the label
                                   came), keys int64 [n] (from a hash of the prediction's id)

Guarantees:

* A chunk file is written completely (temporary file, fsync, rename) before the manifest names
  it, and the manifest is replaced atomically (:mod:`robustloop.atomic`); a reader sees the old
  or the new set, never half of one. A chunk the writer dropped after a reader read the manifest
  makes the reader read the manifest again.
* Reading verifies every chunk's sha256 against the manifest and refuses a changed file
  (:class:`CapturedDataError`), as the model store refuses tampered weights.
* Examples older than ``capture.retention_seconds`` are ignored when read (the writer also
  drops them), and at most the newest ``capture.max_examples`` are read.
* Each example's side, training or held out (:func:`held_out`), follows from its key alone: an
  example never changes sides as the set grows or shrinks, so an example the gate judges on was
  never trained on by any candidate.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.utils.data import TensorDataset

from robustloop.atomic import atomic_write_bytes
from robustloop.config import CaptureConfig
from training.data import DatasetError
from training.models import ModelSpec

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_PREFIX = "chunk-"
CHUNK_SUFFIX = ".safetensors"
FILE_MODE = 0o600
"""Captured inputs are user data: only the server's user may read them."""
_TENSORS = {
    "images": torch.float32,
    "labels": torch.int64,
    "times": torch.float64,
    "keys": torch.int64,
}
_READ_ATTEMPTS = 3


class CapturedDataError(DatasetError):
    """The captured set is missing, too small, changed on disk or unreadable; the message says
    what and what to do."""


def example_key(sample_id: str) -> int:
    """An example's key: the first 8 bytes of the sha256 of its prediction's id, as int64."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big", signed=True)


def held_out(keys: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which examples are held out for the gate: the low 32 bits of the key, as a fraction of
    2**32, below ``fraction`` (a fixed, uniform choice per example)."""
    return (keys & 0xFFFFFFFF).to(torch.float64) / 2.0**32 < fraction


def chunk_name(number: int) -> str:
    """The file name of chunk ``number``."""
    return f"{CHUNK_PREFIX}{number:08d}{CHUNK_SUFFIX}"


def encode_chunk(
    images: torch.Tensor, labels: torch.Tensor, times: torch.Tensor, keys: torch.Tensor
) -> bytes:
    """A chunk file's bytes (safetensors: no code runs when it is read)."""
    tensors = {
        "images": images.to("cpu", torch.float32).contiguous(),
        "labels": labels.to("cpu", torch.int64).contiguous(),
        "times": times.to("cpu", torch.float64).contiguous(),
        "keys": keys.to("cpu", torch.int64).contiguous(),
    }
    return st_save(tensors, metadata={"format": str(FORMAT)})


def chunk_entry(file: str, data: bytes, times: torch.Tensor) -> dict[str, Any]:
    """The manifest's record of a chunk written as ``file`` with ``data``."""
    return {
        "file": file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "examples": len(times),
        "oldest": float(times.min()),
        "newest": float(times.max()),
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the captured set in ``folder``; None where there is none yet.

    Raises:
        CapturedDataError: the manifest is unreadable or not one this version writes.
    """
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CapturedDataError(f"cannot read {path}: {exc.strerror}") from None
    return parse_manifest(raw, path)


def parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """A manifest's content, checked.

    Raises:
        CapturedDataError: it is not a manifest this version writes.
    """
    try:
        manifest = json.loads(raw)
        chunks = manifest["chunks"]
        ok = (
            manifest.get("format") == FORMAT
            and isinstance(chunks, list)
            and all(
                isinstance(c, dict) and {"file", "sha256", "examples", "oldest", "newest"} <= set(c)
                for c in chunks
            )
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CapturedDataError(
            f"{path} is not a captured-set manifest (format {FORMAT}); move the folder aside "
            "and let the model server start a new one"
        )
    result: dict[str, Any] = manifest
    return result


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest in ``folder`` atomically."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(folder / MANIFEST, text.encode(), FILE_MODE)


def read_chunk(folder: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A chunk's tensors, after checking its sha256 against the manifest's ``entry``.

    Raises:
        FileNotFoundError: the file is gone (the writer dropped it after the manifest was read).
        CapturedDataError: the file changed after it was written, or is no chunk.
    """
    file = str(entry["file"])
    if Path(file).name != file or not file.startswith(CHUNK_PREFIX):
        raise CapturedDataError(f"{folder / MANIFEST} names {file!r}, which is no chunk file")
    path = folder / file
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise CapturedDataError(
            f"captured chunk {path} is tampered: its sha256 {digest[:12]}... differs from the "
            f"manifest's {str(entry['sha256'])[:12]}...; nothing is read from a changed set "
            "(delete the chunk and its manifest entry, or the whole folder)"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CapturedDataError(f"captured chunk {path} is unreadable: {exc}") from None
    n = int(entry["examples"])
    for name, dtype in _TENSORS.items():
        tensor = tensors.get(name)
        if tensor is None or tensor.dtype != dtype or len(tensor) != n:
            raise CapturedDataError(f"captured chunk {path} lacks {n} {name} of type {dtype}")
    return tensors


def prepare_captured(cfg: CaptureConfig) -> int:
    """Make ``cfg.path`` ready for a writer: create it (mode 0700), check its manifest, and
    remove chunk files it does not list (left by a writer that crashed mid-write). Call it
    only while holding the folder's writer lock. Returns the examples the set holds.

    Raises:
        CapturedDataError: the folder cannot be created, or its manifest is unreadable.
    """
    folder = Path(cfg.path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CapturedDataError(f"cannot create {folder}: {exc.strerror}") from None
    manifest = read_manifest(folder)
    listed = {str(c["file"]) for c in manifest["chunks"]} if manifest else set()
    for path in folder.iterdir():
        leftover = path.name.startswith(f".{CHUNK_PREFIX}") and path.name.endswith(".tmp")
        unlisted = path.name.startswith(CHUNK_PREFIX) and path.name not in listed
        if leftover or unlisted:
            path.unlink(missing_ok=True)
    return sum(int(c["examples"]) for c in manifest["chunks"]) if manifest else 0


def append_captured(
    cfg: CaptureConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    times: torch.Tensor,
    keys: torch.Tensor,
    *,
    now: float | None = None,
) -> int:
    """Add examples to the captured set as one chunk, then apply the retention and the cap.

    Examples older than ``cfg.retention_seconds`` are dropped, then the oldest beyond
    ``cfg.max_examples``; a chunk that keeps only some of its examples is rewritten under a new
    name. The manifest is replaced after every new file is durable, and the files it no longer
    lists are deleted after it. One writer at a time (the model server holds a lock). Returns
    the examples the set holds now.

    Raises:
        CapturedDataError: the images differ in shape from the set's, or the manifest is
            unreadable.
        OSError: the folder cannot be written.
    """
    folder = Path(cfg.path)
    now = time.time() if now is None else now
    shape = [int(d) for d in images.shape[1:]]
    manifest = read_manifest(folder) or {
        "format": FORMAT,
        "image_shape": shape,
        "next": 0,
        "chunks": [],
    }
    if manifest.get("image_shape") != shape:
        raise CapturedDataError(
            f"images of shape {shape} do not fit the captured set in {folder}, which holds "
            f"{manifest.get('image_shape')}; move the folder aside to capture for this model"
        )
    chunks: list[dict[str, Any]] = list(manifest["chunks"])
    chunks.append(_write_chunk(folder, manifest, images, labels, times, keys))
    dropped: list[str] = []

    def trim(index: int, keep: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> None:
        """Rewrite chunk ``index`` with the examples ``keep`` selects (a mask over its
        examples); a chunk that cannot be read any more is dropped whole."""
        entry = chunks[index]
        dropped.append(str(entry["file"]))
        try:
            old = read_chunk(folder, entry)
        except (CapturedDataError, FileNotFoundError):
            chunks[index] = {**entry, "examples": 0}
            return
        mask = keep(old)
        chunks[index] = _write_chunk(
            folder, manifest, *(old[name][mask] for name in ("images", "labels", "times", "keys"))
        )

    cutoff = now - cfg.retention_seconds
    for index, entry in enumerate(chunks):
        if entry["newest"] < cutoff:
            dropped.append(str(entry["file"]))
            chunks[index] = {**entry, "examples": 0}
        elif entry["oldest"] < cutoff:
            trim(index, lambda chunk: chunk["times"] >= cutoff)
    chunks = [c for c in chunks if int(c["examples"]) > 0]
    total = sum(int(c["examples"]) for c in chunks)
    while chunks and total - int(chunks[0]["examples"]) >= cfg.max_examples:
        total -= int(chunks[0]["examples"])
        dropped.append(str(chunks.pop(0)["file"]))
    if total > cfg.max_examples:
        excess = total - cfg.max_examples
        trim(0, lambda chunk: torch.arange(len(chunk["labels"])) >= excess)
    chunks = [c for c in chunks if int(c["examples"]) > 0]
    manifest["chunks"] = chunks
    write_manifest(folder, manifest)
    for file in dropped:
        (folder / file).unlink(missing_ok=True)
    return sum(int(c["examples"]) for c in chunks)


def _write_chunk(
    folder: Path,
    manifest: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    times: torch.Tensor,
    keys: torch.Tensor,
) -> dict[str, Any]:
    """Write a new chunk file durably; its manifest entry (the manifest is not written)."""
    number = int(manifest["next"])
    manifest["next"] = number + 1
    name = chunk_name(number)
    if len(times) == 0:
        return {"file": name, "sha256": "", "examples": 0, "oldest": 0.0, "newest": 0.0}
    data = encode_chunk(images, labels, times, keys)
    atomic_write_bytes(folder / name, data, FILE_MODE)
    return chunk_entry(name, data, times)


@dataclass(frozen=True, eq=False)
class Captured:
    """The examples of a captured set, oldest first.

    Attributes:
        images: float32 ``[N, C, H, W]`` in [0, 1], as the server classified them.
        labels: int64 ``[N]``, the ground truth fed back.
        times: float64 ``[N]``, when each label came (seconds since the epoch).
        keys: int64 ``[N]``, each example's key (:func:`example_key`).
        manifest_sha256: sha256 of the manifest read (which set this was).
    """

    images: torch.Tensor
    labels: torch.Tensor
    times: torch.Tensor
    keys: torch.Tensor
    manifest_sha256: str

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, holdout_fraction: float) -> tuple[TensorDataset, TensorDataset]:
        """(training part, held-out part) by :func:`held_out`."""
        out = held_out(self.keys, holdout_fraction)
        keep = ~out
        return (
            TensorDataset(self.images[keep], self.labels[keep]),
            TensorDataset(self.images[out], self.labels[out]),
        )


def _empty(shape: tuple[int, ...] = (0, 1, 1, 1)) -> Captured:
    return Captured(
        images=torch.empty(shape),
        labels=torch.empty(0, dtype=torch.int64),
        times=torch.empty(0, dtype=torch.float64),
        keys=torch.empty(0, dtype=torch.int64),
        manifest_sha256="",
    )


def load_captured(cfg: CaptureConfig, *, now: float | None = None) -> Captured:
    """Read the captured set of ``cfg.path``: verified, within the retention, capped.

    An absent folder or manifest is an empty set (the caller decides whether that is an error).

    Raises:
        CapturedDataError: a chunk changed after it was written, is unreadable, or stays
            missing; the manifest is unreadable.
    """
    folder = Path(cfg.path)
    now = time.time() if now is None else now
    manifest_path = folder / MANIFEST
    chunks: list[dict[str, torch.Tensor]] = []
    for attempt in range(_READ_ATTEMPTS):
        try:
            raw = manifest_path.read_bytes()
        except FileNotFoundError:
            return _empty()
        except OSError as exc:
            raise CapturedDataError(f"cannot read {manifest_path}: {exc.strerror}") from None
        manifest = parse_manifest(raw, manifest_path)
        try:
            chunks = [read_chunk(folder, entry) for entry in manifest["chunks"]]
        except FileNotFoundError as exc:
            if attempt + 1 < _READ_ATTEMPTS:
                continue  # the writer replaced the set meanwhile: read the new manifest
            raise CapturedDataError(
                f"captured chunk {exc.filename} is listed in {manifest_path} but missing"
            ) from None
        break
    if not chunks:
        return _empty()
    shape = tuple(chunks[0]["images"].shape[1:])
    if any(tuple(c["images"].shape[1:]) != shape for c in chunks):
        raise CapturedDataError(f"the chunks in {folder} hold images of different shapes")
    times = torch.cat([c["times"] for c in chunks])
    keep = times >= now - cfg.retention_seconds
    index = torch.nonzero(keep).flatten()[-cfg.max_examples :]
    return Captured(
        images=torch.cat([c["images"] for c in chunks])[index],
        labels=torch.cat([c["labels"] for c in chunks])[index],
        times=times[index],
        keys=torch.cat([c["keys"] for c in chunks])[index],
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
    )


@dataclass(frozen=True, eq=False)
class CapturedSplit:
    """The captured set as the captured recipe and the gate use it."""

    train: TensorDataset
    holdout: TensorDataset
    manifest_sha256: str

    def describe(self) -> dict[str, Any]:
        """What a manifest of a model trained on it records."""
        return {
            "train_examples": len(self.train),
            "holdout_examples": len(self.holdout),
            "manifest_sha256": self.manifest_sha256,
        }


def load_captured_split(
    cfg: CaptureConfig, spec: ModelSpec, *, now: float | None = None
) -> CapturedSplit:
    """The captured set split for the captured recipe, checked for size and fit.

    Raises:
        CapturedDataError: too few examples on either side (the one-line message says how many
            there are, what is needed and how to enable capture), or images that do not fit
            ``spec``; or what :func:`load_captured` raises.
    """
    captured = load_captured(cfg, now=now)
    train, holdout = captured.split(cfg.holdout_fraction)
    if len(train) < cfg.min_examples or len(holdout) < cfg.min_holdout:
        state = "" if cfg.enabled else " (capture.enabled is false in this config)"
        raise CapturedDataError(
            f"the captured recipe needs at least {cfg.min_examples} captured training examples "
            f"and {cfg.min_holdout} held out; {cfg.path} holds {len(train)} and {len(holdout)} "
            f"within capture.retention_seconds{state}: enable capture (capture.enabled: true "
            "in the model server's config) and feed back ground truth for its predictions, or "
            "lower capture.min_examples / capture.min_holdout"
        )
    shape = tuple(captured.images.shape[1:])
    if shape != tuple(spec.input_shape):
        raise CapturedDataError(
            f"captured images in {cfg.path} are {list(shape)}, the model takes "
            f"{list(spec.input_shape)}; they were captured for another model"
        )
    top = int(captured.labels.max())
    if top >= spec.num_classes:
        raise CapturedDataError(
            f"captured labels in {cfg.path} reach {top}, the model has {spec.num_classes} classes"
        )
    return CapturedSplit(train, holdout, captured.manifest_sha256)


def mix_captured(
    train: TensorDataset, captured: TensorDataset, mix: float, seed: int
) -> tuple[TensorDataset, dict[str, int]]:
    """The captured recipe's fine-tuning set: captured examples make ``mix`` of it.

    While the captured examples are fewer than ``mix`` of the training split, the set keeps the
    training split's size: the captured examples fill ``mix`` of it (each repeated about equally
    often, the remainder chosen by ``seed``) and a seeded sample of the training split the rest.
    With more captured examples, all of them are used once with as many training images as
    keep the ratio (at most the whole split). The training loop shuffles the set, so captured
    and original examples are interleaved in every mini-batch.

    Returns:
        The set, and its composition: ``captured`` (distinct captured examples), ``slots``
        (captured examples with repeats) and ``original`` (training images).

    Raises:
        ValueError: ``mix`` outside (0, 1), either set empty, or images of different shapes.
    """
    if not 0 < mix < 1:
        raise ValueError(f"mix must be in (0, 1), got {mix}")
    original_images, original_labels = train.tensors[0], train.tensors[1]
    images, labels = captured.tensors[0], captured.tensors[1]
    total, count = len(original_labels), len(labels)
    if total == 0 or count == 0:
        raise ValueError("mixing needs training images and captured examples")
    if original_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"captured images {list(images.shape[1:])} differ from the training images "
            f"{list(original_images.shape[1:])}"
        )
    generator = torch.Generator().manual_seed(seed + 11)
    if count <= mix * total:
        slots = max(count, round(mix * total))
        original = total - slots
    else:
        slots = count
        original = min(total, math.ceil(count * (1 - mix) / mix))
    order = torch.randperm(count, generator=generator)
    repeated = order[torch.arange(slots) % count]
    chosen = torch.randperm(total, generator=generator)[:original]
    mixed = TensorDataset(
        torch.cat([images[repeated], original_images[chosen]]),
        torch.cat([labels[repeated], original_labels[chosen]]),
    )
    return mixed, {"captured": count, "slots": slots, "original": original}


__all__ = [
    "CHUNK_PREFIX",
    "CHUNK_SUFFIX",
    "FILE_MODE",
    "MANIFEST",
    "Captured",
    "CapturedDataError",
    "CapturedSplit",
    "append_captured",
    "chunk_entry",
    "chunk_name",
    "encode_chunk",
    "example_key",
    "held_out",
    "load_captured",
    "load_captured_split",
    "mix_captured",
    "parse_manifest",
    "prepare_captured",
    "read_chunk",
    "read_manifest",
    "write_manifest",
]
