"""Capture of labelled live traffic (opt-in: ``capture.enabled``), for the captured recipe.

When CanaryAccuracyDegraded persists without the attack signature (CanaryAccuracyEscalated),
the remediation fine-tunes on the traffic that hurt: the inputs whose ground truth came back.
The server can only know that traffic while it has the inputs, so :class:`Capture`:

1. *holds* the input of each classified image under its sample id (:meth:`Capture.hold`), in
   memory, for at most ``serving.feedback_ttl_seconds`` and within ``capture.max_pending_bytes``
   (the oldest are dropped first, and are then never captured);
2. when ground truth is fed back for a held id (:meth:`Capture.labelled`), moves (input, label)
   to a buffer; each id is captured at most once, and only ids this server handed out can be;
3. writes the buffer as one chunk of the captured set (:func:`training.append_captured`, which
   also drops what is older than ``capture.retention_seconds`` and beyond
   ``capture.max_examples``) once ``capture.chunk_examples`` are waiting or the oldest has
   waited ``capture.flush_seconds``, and when the server stops.

Every outcome of feedback is captured, right and wrong: the gate compares production and the
candidate on the held-out part, which would be biased against production if it held only
production's mistakes. A failed write is logged and counted
(``robustloop_capture_write_failures_total``); the feedback itself is counted as always.

One server writes a folder: it holds an exclusive lock on ``<capture.path>/.lock`` while it
runs, and a second one refuses to start. Nothing here runs unless capture is enabled:
:meth:`Capture.from_config` returns None otherwise, and the app's hooks do nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge

from robustloop.config import CaptureConfig, ConfigError, RobustloopConfig
from training import CapturedDataError, append_captured, example_key, prepare_captured

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class _Held:
    image: torch.Tensor
    expires_at: float


@dataclass(frozen=True)
class _Example:
    image: torch.Tensor
    label: int
    time: float
    key: int


class CaptureMetrics:
    """The capture's series (all labelled ``model``), registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "robustloop_captured_examples_total",
            "Labelled examples written to the captured set.",
            ["model"],
            registry=registry,
        )
        self.held_set = Gauge(
            "robustloop_captured_set_examples",
            "Examples in the captured set after the last write (retention and cap applied).",
            ["model"],
            registry=registry,
        )
        self.failures = Counter(
            "robustloop_capture_write_failures_total",
            "Chunks of labelled examples that could not be written (see the server log).",
            ["model"],
            registry=registry,
        )


class Capture:
    """Inputs awaiting ground truth, labelled examples awaiting disk, and the folder's lock.

    Thread-safe: the server's request threads call :meth:`hold` and :meth:`labelled`.

    Args:
        cfg: the ``capture`` section (enabled or not: the caller decides).
        ttl_seconds: how long an input waits for its ground truth.
        model: the ``model`` label of the metrics.
        registry: where the metrics are registered.
        clock: seconds since the epoch (tests pass their own): examples' times, retention.
        monotonic: monotonic seconds (tests pass their own): waits in memory.

    Raises:
        robustloop.config.ConfigError: the folder cannot be created or locked (another server
            writes it), or its manifest is unreadable.
    """

    def __init__(
        self,
        cfg: CaptureConfig,
        ttl_seconds: float,
        *,
        model: str,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._ttl = ttl_seconds
        self._model = model
        self._clock = clock
        self._monotonic = monotonic
        self.metrics = CaptureMetrics(registry)
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._held_bytes = 0
        self._buffer: list[_Example] = []
        self._buffer_since = 0.0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._lock_fd = self._take_folder(Path(cfg.path))

    @classmethod
    def from_config(cls, config: RobustloopConfig, registry: CollectorRegistry) -> Capture | None:
        """The capture of a server with ``config``; None unless ``capture.enabled``."""
        if not config.capture.enabled:
            return None
        return cls(
            config.capture,
            config.serving.feedback_ttl_seconds,
            model=config.model.name,
            registry=registry,
        )

    def _take_folder(self, folder: Path) -> int:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"capture.path {folder}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"capture.path {folder} is in use by another model server; each server "
                "captures into its own folder"
            ) from None
        try:
            examples = prepare_captured(self.cfg)
        except CapturedDataError as exc:
            os.close(fd)
            raise ConfigError(str(exc)) from None
        self.metrics.held_set.labels(self._model).set(examples)
        self.metrics.written.labels(self._model)
        self.metrics.failures.labels(self._model)
        log.info("capturing labelled traffic into %s (%d examples there)", folder, examples)
        return fd

    # -- the hooks ----------------------------------------------------------------------------

    def hold(self, ids: list[str], images: torch.Tensor) -> None:
        """Keep the input of each classified image under its sample id until its ground truth
        comes back (or it expires, or memory runs short). Nothing after :meth:`close`."""
        if self._closed:
            return
        now = self._monotonic()
        expires = now + self._ttl
        copies = [image.detach().to("cpu", torch.float32).clone() for image in images]
        with self._lock:
            self._expire(now)
            for sample_id, image in zip(ids, copies, strict=True):
                self._forget(sample_id)
                self._held[sample_id] = _Held(image, expires)
                self._held_bytes += _size(image)
            while self._held_bytes > self.cfg.max_pending_bytes and self._held:
                self._forget(next(iter(self._held)))
        self._flush_if_due()

    def labelled(self, ids: list[str], labels: list[int]) -> int:
        """Capture (input, label) for each id held here; returns how many were captured."""
        if self._closed:
            return 0
        now, wall = self._monotonic(), self._clock()
        captured = 0
        with self._lock:
            self._expire(now)
            for sample_id, label in zip(ids, labels, strict=True):
                held = self._forget(sample_id)
                if held is None:
                    continue
                if not self._buffer:
                    self._buffer_since = now
                self._buffer.append(_Example(held.image, int(label), wall, example_key(sample_id)))
                captured += 1
        self._flush_if_due()
        return captured

    # -- state --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Inputs held in memory, awaiting their ground truth."""
        with self._lock:
            return len(self._held)

    @property
    def buffered(self) -> int:
        """Labelled examples not yet written."""
        with self._lock:
            return len(self._buffer)

    def _forget(self, sample_id: str) -> _Held | None:
        held = self._held.pop(sample_id, None)
        if held is not None:
            self._held_bytes -= _size(held.image)
        return held

    def _expire(self, now: float) -> None:
        while self._held:
            sample_id, oldest = next(iter(self._held.items()))
            if oldest.expires_at > now:
                break
            self._forget(sample_id)

    # -- writing ------------------------------------------------------------------------------

    def _flush_if_due(self) -> None:
        with self._lock:
            due = bool(self._buffer) and (
                len(self._buffer) >= self.cfg.chunk_examples
                or self._monotonic() - self._buffer_since >= self.cfg.flush_seconds
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the labelled examples waiting in memory, as chunks of at most
        ``capture.chunk_examples``."""
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            size = self.cfg.chunk_examples
            for start in range(0, len(batch), size):
                self._write(batch[start : start + size])

    def _write(self, examples: list[_Example]) -> None:
        try:
            total = append_captured(
                self.cfg,
                torch.stack([e.image for e in examples]),
                torch.tensor([e.label for e in examples], dtype=torch.int64),
                torch.tensor([e.time for e in examples], dtype=torch.float64),
                torch.tensor([e.key for e in examples], dtype=torch.int64),
                now=self._clock(),
            )
        except (CapturedDataError, OSError, RuntimeError) as exc:
            self.metrics.failures.labels(self._model).inc()
            log.error("could not write %d captured examples: %s", len(examples), exc)
            return
        self.metrics.written.labels(self._model).inc(len(examples))
        self.metrics.held_set.labels(self._model).set(total)

    def close(self) -> None:
        """Write what is buffered, forget what is held, release the folder (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.flush()  # a request still in flight captures nothing more (see hold, labelled)
        with self._lock:
            self._held.clear()
            self._held_bytes = 0
        os.close(self._lock_fd)


def _size(image: torch.Tensor) -> int:
    return image.numel() * image.element_size()


__all__ = ["Capture", "CaptureMetrics"]
