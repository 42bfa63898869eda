"""The model store: immutable, verified model versions in a folder, and a production pointer.

Layout under ``root`` (default ``./.robustloop/store``)::

    versions/v0001-3f2a9c1e/manifest.json        id, parent, architecture, sha256, recipe, ...
    versions/v0001-3f2a9c1e/model.safetensors    the weights
    versions/v0001-3f2a9c1e/annotations/K.json   side data written later (e.g. calibration)
    production.json                              {"version": ..., "updated_at": ...}
    history.json                                 every change of the production pointer

Guarantees:

* A version appears complete or not at all: it is written into a temporary folder, fsynced, and
  renamed into ``versions/``. Readers skip the temporary folders (their names start with ".").
* The pointer, the history and annotations are replaced atomically (temp file, fsync, rename,
  fsync of the folder); a reader sees the old or the new content, never half of it.
* Loading verifies the sha256 of the weights against the manifest and refuses a tampered file.
* Writers serialise through an advisory lock (``.lock``), so two processes registering at once
  get distinct version numbers; promote and rollback compare and swap under it (``expect``).
* The history is written before the pointer, and the pointer records how many history entries
  it reflects (``seq``): a crash between the two writes leaves an entry the pointer never
  took, which :meth:`ModelStore.history` ignores and the next change overwrites.
* The pointer's version is checked to be a version id before it is used in a path.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from robustloop.atomic import atomic_write_json, fsync_dir, write_bytes_durably
from training.models import ModelSpec, ModelSpecError, build_model, load_weights

_ID = re.compile(r"^v(\d{4,})-([0-9a-f]{8})$")
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


class StoreError(Exception):
    """The store cannot do what was asked; the message says why and what to do."""


class UnknownVersionError(StoreError):
    """No version matches the reference (or there is no production version yet)."""


class TamperedModelError(StoreError):
    """The weights on disk do not match the sha256 recorded in the manifest."""


class StoreConflict(StoreError):
    """Production is not the version the caller expected (someone else moved it first)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What the store knows about one version; written once, never changed.

    Attributes:
        version: the id, ``v<number>-<first 8 hex digits of sha256>``.
        parent: the version it was fine-tuned from, or None.
        architecture: the architecture spec (``cnn``, ``torchvision:resnet18``, ...).
        sha256: hex digest of the safetensors file.
        recipe: how it was trained (method, eps, epochs, ...).
        metrics: what was measured when it was registered.
        split: :meth:`training.data.Splits.describe` of the data it was trained on.
        created_at: ISO 8601 UTC time of registration.
        provenance: why it exists (command, incident id, workflow, ...).
        model: :meth:`training.models.ModelSpec.to_dict`: architecture, input shape, classes
            and normalization, enough to rebuild and serve it without the config (empty in
            versions registered before specs existed: those are Fashion-MNIST CNNs).
    """

    version: str
    parent: str | None
    architecture: str
    sha256: str
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    split: dict[str, Any]
    created_at: str
    provenance: dict[str, Any]
    model: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        """What the model is (:class:`training.models.ModelSpec`)."""
        if not self.model:
            return ModelSpec(architecture=self.architecture)
        return ModelSpec.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest read from disk.

        Raises:
            StoreError: a field is missing or has the wrong type.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data and n != "model"]
        if missing:
            raise StoreError(f"manifest lacks fields {missing}")
        return cls(**{n: data[n] for n in names if n in data})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_ready(name: str, value: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise StoreError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name} is not JSON-serialisable: {exc}") from None


class ModelStore:
    """Versioned model artifacts in a folder, with a production pointer.

    Args:
        root: the store folder; created on first write.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------------

    @property
    def versions_dir(self) -> Path:
        """Folder holding one sub-folder per version."""
        return self.root / "versions"

    @property
    def pointer_path(self) -> Path:
        """The production pointer file (replaced atomically on every change; servers watch it)."""
        return self.root / "production.json"

    @property
    def history_path(self) -> Path:
        """The log of production pointer changes."""
        return self.root / "history.json"

    def _version_dir(self, version: str) -> Path:
        return self.versions_dir / version

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- reading -----------------------------------------------------------------------------

    def _ids(self) -> builtins.list[str]:
        if not self.versions_dir.is_dir():
            return []
        found = [p.name for p in self.versions_dir.iterdir() if _ID.match(p.name)]
        return sorted(found, key=lambda v: int(_ID.match(v).group(1)))  # type: ignore[union-attr]

    def resolve(self, ref: str) -> str:
        """The version id that ``ref`` names.

        ``ref`` is ``production``, ``latest``, a full id (``v0003-1a2b3c4d``) or its number
        part (``v0003``).

        Raises:
            UnknownVersionError: nothing matches (the message lists the known versions).
        """
        ids = self._ids()
        if ref == "production":
            current = self.production()
            if current is None:
                raise UnknownVersionError(
                    f"no production model in store {self.root}: run `robustloop train` first"
                )
            return current
        if ref == "latest":
            if not ids:
                raise UnknownVersionError(f"store {self.root} holds no versions yet")
            return ids[-1]
        if ref in ids:
            return ref
        matches = [v for v in ids if v.split("-")[0] == ref]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(ids[-10:]) or "none"
        raise UnknownVersionError(
            f"unknown model version {ref!r} in store {self.root} (known: {known}); "
            "see `robustloop models list`"
        )

    def manifest(self, ref: str) -> Manifest:
        """The manifest of the version ``ref`` names.

        Raises:
            UnknownVersionError: no such version.
            StoreError: the manifest is unreadable.
        """
        version = self.resolve(ref)
        path = self._version_dir(version) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read manifest {path}: {exc}") from None
        manifest = Manifest.from_dict(data)
        if manifest.version != version:
            raise StoreError(f"manifest {path} names version {manifest.version}, not {version}")
        return manifest

    def _verified_weights(self, manifest: Manifest) -> bytes:
        path = self._version_dir(manifest.version) / WEIGHTS
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read weights {path}: {exc.strerror}") from None
        actual = _sha256(data)
        if actual != manifest.sha256:
            raise TamperedModelError(
                f"weights of {manifest.version} ({path}) have sha256 {actual[:16]}..., the "
                f"manifest records {manifest.sha256[:16]}...: the file was modified or "
                "corrupted; refusing to load it (restore it or promote another version)"
            )
        return data

    def load(self, ref: str, device: torch.device | str = "cpu") -> tuple[nn.Module, Manifest]:
        """The model of version ``ref`` on ``device``, in eval mode, after verifying its sha256.

        Raises:
            UnknownVersionError: no such version.
            TamperedModelError: the weights do not match the manifest's hash.
            StoreError: the weights do not fit the recorded architecture.
        """
        manifest = self.manifest(ref)
        data = self._verified_weights(manifest)
        try:
            state = st_load(data)
            model = build_model(manifest.spec)
            load_weights(model, state, f"the weights of {manifest.version}")
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise StoreError(f"cannot load {manifest.version}: {exc}") from None
        model.to(device).eval()
        return model, manifest

    def production(self) -> str | None:
        """The production version id, or None when nothing was registered yet.

        Raises:
            StoreError: the pointer file is corrupt.
        """
        pointer = self._pointer()
        return None if pointer is None else pointer[0]

    def _pointer(self) -> tuple[str, int | None] | None:
        """The pointer's version and ``seq`` (None for a pointer written before it had one)."""
        try:
            text = self.pointer_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            version, seq = data["version"], data.get("seq")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"production pointer {self.pointer_path} is corrupt: {exc}") from None
        if not isinstance(version, str) or not _ID.match(version):
            raise StoreError(
                f"production pointer {self.pointer_path} names {str(version)[:80]!r}, which is "
                "not a version id such as v0003-1a2b3c4d; repair it with `robustloop models "
                "promote VERSION`"
            )
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
            raise StoreError(f"production pointer {self.pointer_path} has a bad seq {seq!r}")
        return version, seq

    def list(self) -> list[Manifest]:
        """Manifests of every version, oldest first."""
        return [self.manifest(v) for v in self._ids()]

    def history(self) -> builtins.list[dict[str, Any]]:
        """Changes of the production pointer, oldest first.

        Each entry: ``at``, ``action`` (``initial``, ``promote`` or ``rollback``), ``from``,
        ``to`` and ``provenance``.
        """
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"history {self.history_path} is corrupt: {exc}") from None
        if not isinstance(entries, builtins.list):
            raise StoreError(f"history {self.history_path} is corrupt: not a list")
        pointer = self._pointer()
        if pointer is not None and pointer[1] is not None:
            entries = entries[: pointer[1]]  # an entry the pointer never took (a crash) is void
        return entries

    def annotation(self, version: str, key: str) -> dict[str, Any] | None:
        """Side data stored by :meth:`annotate`, or None if there is none."""
        path = self._annotation_path(self.resolve(version), key)
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"annotation {path} is corrupt: {exc}") from None

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        model: nn.Module,
        *,
        architecture: str | ModelSpec,
        parent: str | None,
        recipe: dict[str, Any],
        metrics: dict[str, Any],
        split: dict[str, Any],
        provenance: dict[str, Any],
    ) -> str:
        """Store a new version and return its id; the first version ever becomes production.

        ``architecture`` is the model's :class:`~training.models.ModelSpec`, or a built-in
        architecture's name (Fashion-MNIST's shape). Nothing is written when an argument is
        invalid.

        Raises:
            StoreError: unknown architecture, unknown parent, weights that do not fit the
                architecture, or fields that are not JSON-serialisable.
        """
        spec = architecture if isinstance(architecture, ModelSpec) else ModelSpec(architecture)
        for name, value in (
            ("recipe", recipe),
            ("metrics", metrics),
            ("split", split),
            ("provenance", provenance),
        ):
            _json_ready(name, value)
        parent_id = self.resolve(parent) if parent is not None else None
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        try:
            load_weights(build_model(spec), state, f"the model to register ({spec.architecture})")
        except ModelSpecError as exc:
            raise StoreError(str(exc)) from None
        data = st_save(state, metadata={"architecture": spec.architecture})
        digest = _sha256(data)

        with self._lock():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            ids = self._ids()
            number = int(_ID.match(ids[-1]).group(1)) + 1 if ids else 1  # type: ignore[union-attr]
            version = f"v{number:04d}-{digest[:8]}"
            manifest = Manifest(
                version=version,
                parent=parent_id,
                architecture=spec.architecture,
                sha256=digest,
                recipe=recipe,
                metrics=metrics,
                split=split,
                created_at=_now(),
                provenance=provenance,
                model=spec.to_dict(),
            )
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
            try:
                write_bytes_durably(tmp / WEIGHTS, data)
                manifest_text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
                write_bytes_durably(tmp / MANIFEST, manifest_text.encode())
                fsync_dir(tmp)
                os.rename(tmp, self._version_dir(version))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.versions_dir)
            if self.production() is None:
                self._set_pointer(version, "initial", None, {"reason": "first version"})
        return version

    def promote(
        self,
        version: str,
        provenance: dict[str, Any] | None = None,
        *,
        expect: str | None = None,
    ) -> str:
        """Point production at ``version`` (after verifying its weights); returns its id.

        Promoting the current production version changes nothing (so a retried promotion is
        harmless). With ``expect``, production moves only from that version: checked and
        changed under the store's lock.

        Raises:
            UnknownVersionError: no such version.
            TamperedModelError: its weights do not match the manifest.
            StoreConflict: production is neither ``expect`` nor ``version``.
        """
        provenance = dict(provenance or {})
        _json_ready("provenance", provenance)
        with self._lock():
            target = self.resolve(version)
            self._verified_weights(self.manifest(target))
            current = self.production()
            if current == target:
                return target
            if expect is not None and current != expect:
                raise StoreConflict(
                    f"production is {current}, not {expect}: it moved meanwhile, so {target} "
                    "is not promoted"
                )
            self._set_pointer(target, "promote", current, provenance)
        return target

    def rollback(
        self, provenance: dict[str, Any] | None = None, *, expect: str | None = None
    ) -> str:
        """Point production back at the version that served before the current one.

        Repeated rollbacks walk further back through the promotions. With ``expect``, only a
        production that is still that version is rolled back (checked under the store's lock).
        Returns the new production version.

        Raises:
            StoreError: there is no earlier production version.
            StoreConflict: production is not ``expect``.
            TamperedModelError: the earlier version's weights were modified.
        """
        provenance = dict(provenance or {})
        _json_ready("provenance", provenance)
        with self._lock():
            stack = self._production_stack()
            if expect is not None and (not stack or stack[-1] != expect):
                current = stack[-1] if stack else None
                raise StoreConflict(
                    f"production is {current}, not {expect}: it moved meanwhile, so nothing is "
                    "rolled back"
                )
            if len(stack) < 2:
                raise StoreError(
                    f"nothing to roll back to in store {self.root}: production "
                    f"({stack[-1] if stack else 'none'}) is the earliest production version"
                )
            target = stack[-2]
            self._verified_weights(self.manifest(target))
            self._set_pointer(target, "rollback", stack[-1], provenance)
        return target

    def annotate(self, version: str, key: str, data: dict[str, Any]) -> None:
        """Atomically write side data (e.g. calibration) beside an immutable manifest.

        Raises:
            UnknownVersionError: no such version.
            StoreError: the key is not a simple name, or data is not JSON-serialisable.
        """
        if not _KEY.match(key):
            raise StoreError(f"annotation key {key!r} must match {_KEY.pattern}")
        _json_ready("annotation data", data)
        atomic_write_json(self._annotation_path(self.resolve(version), key), data)

    def _annotation_path(self, version: str, key: str) -> Path:
        if not _KEY.match(key):
            raise StoreError(f"annotation key {key!r} must match {_KEY.pattern}")
        return self._version_dir(version) / "annotations" / f"{key}.json"

    def _production_stack(self) -> builtins.list[str]:
        stack: builtins.list[str] = []
        for entry in self.history():
            if entry["action"] == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(entry["to"])
        return stack

    def _set_pointer(
        self, version: str, action: str, previous: str | None, provenance: dict[str, Any]
    ) -> None:
        at = _now()
        history = self.history()
        history.append(
            {"at": at, "action": action, "from": previous, "to": version, "provenance": provenance}
        )
        atomic_write_json(self.history_path, history)  # the intent first, then the pointer
        atomic_write_json(
            self.pointer_path, {"version": version, "updated_at": at, "seq": len(history)}
        )


__all__ = [
    "Manifest",
    "ModelStore",
    "StoreConflict",
    "StoreError",
    "TamperedModelError",
    "UnknownVersionError",
]
