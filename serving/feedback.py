"""Predictions awaiting ground truth: a bounded map with a time-to-live.

The server remembers, for each classified image, its predicted class and the model version that
predicted it, until the client sends the true label (``POST /v2/models/{name}/feedback``) or the
entry expires. Expired and evicted entries are dropped silently: feedback for them is reported
back as ``unknown``, never counted as correct or wrong. Each prediction is judged at most once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Pending:
    """A prediction awaiting its label."""

    predicted: int
    version: str
    expires_at: float


class FeedbackMap:
    """Thread-safe map from sample id to :class:`Pending`, bounded in size and age.

    Entries are kept in insertion order, which is also expiry order (one TTL for all), so
    purging expired entries and evicting the oldest when full are both O(1) per entry.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or max_entries < 1:
            raise ValueError("ttl_seconds must be > 0 and max_entries >= 1")
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, ids: list[str], predicted: list[int], version: str) -> None:
        """Remember predictions; the oldest entries make room when the map is full."""
        now = self._clock()
        expires = now + self._ttl
        with self._lock:
            self._purge(now)
            for sample_id, label in zip(ids, predicted, strict=True):
                self._entries[sample_id] = Pending(label, version, expires)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def take(self, sample_id: str) -> Pending | None:
        """Remove and return the prediction for ``sample_id``; None if unknown or expired."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            return self._entries.pop(sample_id, None)

    def _purge(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                break
            self._entries.popitem(last=False)


__all__ = ["FeedbackMap", "Pending"]
