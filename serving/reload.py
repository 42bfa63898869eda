"""Hot reload: watch the store's production pointer and swap the served model atomically.

A background thread asks the store which version is in production every
``serving.reload_interval_seconds``. When that changes it loads the new version (the store
verifies the weights' sha256 and raises on a mismatch), puts it in inference mode, and only then
replaces the reference to the served model. Each request reads that reference once and uses the
same model, version and hash for its whole life, so a swap lands between requests and no request
fails or mixes two versions. A load that fails keeps the old model serving, logs why, counts
``robustloop_model_reload_failures_total`` and is retried with a growing back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from training.models import ModelSpec

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


class Store(Protocol):
    """What the server needs of :class:`training.ModelStore`."""

    def production(self) -> str | None: ...

    def load(self, ref: str, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]: ...


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified model version; immutable, swapped as a whole."""

    model: nn.Module
    version: str
    sha256: str
    spec: ModelSpec
    """What the model takes and answers (input shape, class names), from its manifest."""

    @property
    def architecture(self) -> str:
        return self.spec.architecture


class ModelWatcher:
    """Keeps :attr:`current` equal to the store's production version, loading in the background.

    Args:
        store: the model store (its ``load`` verifies the weights' hash).
        interval: seconds between two looks at the production pointer.
        on_swap: called with the new :class:`ServedModel` right after each swap.
        on_failure: called with the version that failed to load (for the failure metric).
        clock: monotonic time source (tests replace it).
        device: where each loaded model is placed (``training.resolve_device``).
    """

    def __init__(
        self,
        store: Store,
        interval: float,
        on_swap: Callable[[ServedModel], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        device: torch.device | str = "cpu",
    ) -> None:
        self._store = store
        self._device = device
        self._interval = interval
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._clock = clock
        self._current: ServedModel | None = None
        self._failed: dict[str, tuple[int, float]] = {}  # version -> (failures, retry at)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    @property
    def current(self) -> ServedModel | None:
        """The model to serve now (None until a production version has loaded)."""
        return self._current

    def check(self) -> bool:
        """Look at the production pointer once; load and swap if it changed. True on a swap."""
        with self._check_lock:
            try:
                wanted = self._store.production()
            except Exception as exc:
                log.error("cannot read the production pointer (keeping the served model): %s", exc)
                self._fail("<pointer>")
                return False
            served = self._current
            if wanted is None or (served is not None and served.version == wanted):
                return False
            failures, retry_at = self._failed.get(wanted, (0, 0.0))
            if failures and self._clock() < retry_at:
                return False
            try:
                model, manifest = self._store.load(wanted, device=self._device)
            except Exception as exc:
                old = served.version if served else "nothing"
                log.error(
                    "hot reload of version %s failed, still serving %s: %s: %s",
                    wanted,
                    old,
                    type(exc).__name__,
                    exc,
                )
                self._fail(wanted, failures)
                return False
            model.eval()
            model.requires_grad_(False)
            new = ServedModel(
                model=model,
                version=str(manifest.version),
                sha256=str(manifest.sha256),
                spec=manifest.spec,
            )
            self._failed.pop(wanted, None)
            self._current = new
            log.info(
                "now serving version %s (sha256 %s), was %s",
                new.version,
                new.sha256[:12],
                served.version if served else "nothing",
            )
            if self._on_swap is not None:
                self._on_swap(new)
            return True

    def _fail(self, version: str, failures: int = 0) -> None:
        delay = min(self._interval * 2**failures, MAX_BACKOFF_SECONDS)
        self._failed[version] = (failures + 1, self._clock() + delay)
        if self._on_failure is not None:
            self._on_failure(version)

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()


__all__ = ["ModelWatcher", "ServedModel", "Store"]
