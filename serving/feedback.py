"""Predictions awaiting ground truth, signed ids already judged, and how much feedback one
client may send.

Without a signing key the server remembers, for each classified image, its predicted class and
the model version that predicted it, until the client sends the true label (``POST
/v2/models/{name}/feedback``) or the entry expires. Expired and evicted entries are dropped
silently: feedback for them is reported back as ``unknown``, never counted as correct or wrong.
With a signing key (:mod:`serving.signed_ids`) the id itself carries the prediction, and the
server remembers instead the nonces of the ids it has judged, each until the id expires, so that
a replay to the same server is refused. Either way each prediction is judged at most once by
one server.

The structures are keyed by client (the address a request came from), so that one client
cannot spend what others need:

- when :class:`FeedbackMap` is full, the client holding the most pending predictions gives up its
  oldest ones: a client flooding infer evicts its own predictions, not the canary's;
- when :class:`SeenNonces` is full, the client that had the most ids judged forgets its oldest:
  only its own ids become replayable, and a replay still costs it rate (below);
- :class:`RateLimiter` is a token bucket per client for feedback labels, so a client holding the
  feedback credential still cannot move canary accuracy faster than the configured rate.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def _evict_from_largest(
    by_client: dict[str, OrderedDict[K, None]], excess: int, forget: Callable[[K], object]
) -> None:
    """Forget ``excess`` keys, each time the oldest of the client that holds the most
    (O(clients) per round); ``forget`` removes a key from ``by_client`` too."""
    while excess > 0:
        largest = heapq.nlargest(2, by_client.items(), key=lambda item: len(item[1]))
        held = largest[0][1]
        runner_up = len(largest[1][1]) if len(largest) > 1 else 0
        for _ in range(min(excess, len(held) - runner_up + 1)):
            forget(next(iter(held)))
            excess -= 1


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
        _evict_from_largest(self._by_client, excess, self._forget)

    def _purge(self, now: float) -> None:
        while self._entries:
            sample_id, oldest = next(iter(self._entries.items()))
            if oldest.expires_at > now:
                break
            self._forget(sample_id)


class SeenNonces:
    """The nonces of the signed sample ids this server has judged, each remembered until its id
    expires: a thread-safe set bounded in size.

    :meth:`claim` checks and records a request's nonces at once, so two requests replaying the
    same id cannot both count it. When more than ``max_entries`` are remembered, the client
    that claimed the most forgets its oldest (as :class:`FeedbackMap` evicts).

    Args:
        max_entries: the most nonces remembered (``serving.feedback_max_entries``).
        clock: Unix seconds, the clock the ids' expiry is written in (tests pass a fake one).
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max = max_entries
        self._clock = clock
        self._expiry: dict[bytes, tuple[float, str]] = {}
        self._by_client: dict[str, OrderedDict[bytes, None]] = {}
        self._queue: list[tuple[float, bytes]] = []  # a heap by expiry; evicted entries linger
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def claim(self, nonces: list[bytes], expires_at: list[float], client: str = "") -> int | None:
        """Remember ``nonces`` (their ids expire at ``expires_at``), judged for ``client``.

        Returns:
            None when none was seen before, all now remembered; else the index of the first
            that was (remembered already, or earlier in ``nonces``), and nothing is recorded.
        """
        now = self._clock()
        with self._lock:
            self._purge(now)
            fresh: set[bytes] = set()
            for index, nonce in enumerate(nonces):
                if nonce in self._expiry or nonce in fresh:
                    return index
                fresh.add(nonce)
            held = self._by_client.setdefault(client, OrderedDict())
            for nonce, expiry in zip(nonces, expires_at, strict=True):
                self._expiry[nonce] = (expiry, client)
                held[nonce] = None
                heapq.heappush(self._queue, (expiry, nonce))
            if not held:
                del self._by_client[client]
            _evict_from_largest(self._by_client, len(self._expiry) - self._max, self._forget)
            if len(self._queue) > 2 * len(self._expiry) + 1024:
                self._queue = [(expiry, n) for n, (expiry, _) in self._expiry.items()]
                heapq.heapify(self._queue)
            return None

    def _forget(self, nonce: bytes) -> None:
        _, client = self._expiry.pop(nonce)
        held = self._by_client[client]
        del held[nonce]
        if not held:
            del self._by_client[client]

    def _purge(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            expiry, nonce = heapq.heappop(self._queue)
            remembered = self._expiry.get(nonce)
            if remembered is not None and remembered[0] == expiry:
                self._forget(nonce)


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


__all__ = ["FeedbackMap", "Pending", "RateLimiter", "SeenNonces"]
