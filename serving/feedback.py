"""Predictions awaiting ground truth, and how much feedback one client may send.

The server remembers, for each classified image, its predicted class and the model version that
predicted it, until the client sends the true label (``POST /v2/models/{name}/feedback``) or the
entry expires. Expired and evicted entries are dropped silently: feedback for them is reported
back as ``unknown``, never counted as correct or wrong. Each prediction is judged at most once.

Both structures are keyed by client (the address a request came from), so that one client
cannot spend what others need:

- when :class:`FeedbackMap` is full, the client holding the most pending predictions gives up its
  oldest ones: a client flooding infer evicts its own predictions, not the canary's;
- :class:`RateLimiter` is a token bucket per client for feedback labels, so a client holding the
  feedback credential still cannot move canary accuracy faster than the configured rate.
"""

from __future__ import annotations

import heapq
import math
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
    client: str = ""


class FeedbackMap:
    """Thread-safe map from sample id to :class:`Pending`, bounded in size and age.

    Entries are kept in insertion order, which is also expiry order (one TTL for all), so
    purging expired entries is O(1) per entry. Eviction when full takes the oldest entries of
    the client that holds the most (O(clients) per eviction round).
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
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def held_by(self, client: str) -> int:
        """How many pending predictions ``client`` holds."""
        with self._lock:
            return len(self._by_client.get(client, ()))

    def add(self, ids: list[str], predicted: list[int], version: str, client: str = "") -> None:
        """Remember predictions made for ``client``; when the map is full, the client holding
        the most makes room."""
        now = self._clock()
        expires = now + self._ttl
        with self._lock:
            self._purge(now)
            for sample_id, label in zip(ids, predicted, strict=True):
                self._forget(sample_id)  # an id given twice keeps its newest prediction
                self._entries[sample_id] = Pending(label, version, expires, client)
                self._by_client.setdefault(client, OrderedDict())[sample_id] = None
            self._evict(len(self._entries) - self._max)

    def take(self, sample_id: str) -> Pending | None:
        """Remove and return the prediction for ``sample_id``; None if unknown or expired."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            return self._forget(sample_id)

    def _forget(self, sample_id: str) -> Pending | None:
        pending = self._entries.pop(sample_id, None)
        if pending is not None:
            held = self._by_client[pending.client]
            del held[sample_id]
            if not held:
                del self._by_client[pending.client]
        return pending

    def _evict(self, excess: int) -> None:
        """Drop ``excess`` entries, each time from the client that holds the most."""
        while excess > 0:
            largest = heapq.nlargest(2, self._by_client.items(), key=lambda item: len(item[1]))
            held = largest[0][1]
            runner_up = len(largest[1][1]) if len(largest) > 1 else 0
            for _ in range(min(excess, len(held) - runner_up + 1)):
                sample_id = next(iter(held))
                self._forget(sample_id)
                excess -= 1

    def _purge(self, now: float) -> None:
        while self._entries:
            sample_id, oldest = next(iter(self._entries.items()))
            if oldest.expires_at > now:
                break
            self._forget(sample_id)


class RateLimiter:
    """A token bucket per client: ``rate`` tokens a second, at most ``burst`` held.

    Buckets of at most ``max_clients`` clients are kept, the least recently seen dropped first
    (a dropped client starts again with a full bucket).

    Args:
        rate: tokens added per second; ``math.inf`` never limits.
        burst: the bucket's size, and so the most one request may take.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be > 0, burst and max_clients >= 1")
        self.rate = rate
        self.burst = burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, tokens: int) -> float:
        """Take ``tokens`` from ``client``'s bucket: 0.0 when taken, else the seconds until the
        bucket holds enough (nothing taken). ``tokens`` over ``burst`` never fits: ``math.inf``.
        """
        if math.isinf(self.rate):
            return 0.0
        if tokens > self.burst:
            return math.inf
        now = self._clock()
        with self._lock:
            level, at = self._buckets.pop(client, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.rate)
            wait = 0.0 if level >= tokens else (tokens - level) / self.rate
            if wait == 0.0:
                level -= tokens
            self._buckets[client] = (level, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return wait


__all__ = ["FeedbackMap", "Pending", "RateLimiter"]
