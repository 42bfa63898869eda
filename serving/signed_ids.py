"""Signed sample ids: feedback that any replica holding the key can judge.

Without a key, the server hands out random sample ids and remembers, in its own memory, what
each one predicted (:class:`serving.feedback.FeedbackMap`), so feedback must reach the process
that made the prediction. With ``serving.feedback_signing_key_file`` the sample id carries the
prediction itself, signed, and any replica holding the same key judges it without shared state.
An id is, before URL-safe base64 without padding (about 100 characters for a store version)::

    byte 0             format, 1
    bytes 1-8          expiry, milliseconds since the Unix epoch (big-endian)
    bytes 9-12         predicted class (big-endian)
    bytes 13-28        nonce: 16 random bytes, which the replay check remembers
    bytes 29 to n-33   model version, UTF-8
    last 32 bytes      HMAC-SHA256(key, CONTEXT | len(model) | model | all the bytes above)

The model name is signed but not carried: a replica verifies with its own, so an id issued for
another model under the same key does not verify. The MAC is compared in constant time
(:func:`hmac.compare_digest`) before anything it covers is read.

Expiry is wall-clock time, since replicas share no monotonic clock: their clocks are assumed to
agree (NTP), and a skew between two replicas lengthens or shortens an id's life by that much.
A replay is refused only by the replica that judged the id first (:class:`serving.feedback.
SeenNonces`); docs/security.md says what bounds a replay across replicas.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.errors import BadRequest, Forbidden, Gone

FORMAT = 1
CONTEXT = b"robustloop signed sample id\x00"
"""Domain separation: the key signs nothing else, but a MAC of this kind is never valid as
another's."""
NONCE_BYTES = 16
MAC_BYTES = 32
MAX_VERSION_BYTES = 64
"""The longest version a signed id carries (the store's ids have about 14 characters)."""
MIN_KEY_CHARS = 32
"""The shortest signing key accepted (the chart generates 64 random characters)."""

_HEAD = struct.Struct(">BQI")  # format, expiry in ms, predicted class
_FIXED = _HEAD.size + NONCE_BYTES + MAC_BYTES
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def _encoded_length(size: int) -> int:
    """Characters of ``size`` bytes in base64 without padding."""
    return (4 * size + 2) // 3


MAX_ID_CHARS = _encoded_length(_FIXED + MAX_VERSION_BYTES)
"""The longest signed sample id; the feedback body's bounds make room for this many per entry."""
_MIN_ID_CHARS = _encoded_length(_FIXED + 1)


@dataclass(frozen=True)
class SignedPrediction:
    """What a verified sample id says: the version that predicted, its class, until when the
    id may be judged (Unix seconds), and its nonce (the key of the replay check)."""

    version: str
    predicted: int
    expires_at: float
    nonce: bytes


class SampleIdSigner:
    """Issues and verifies the signed sample ids of one model.

    Args:
        key: the secret shared by every replica (``serving.feedback_signing_key_file``).
        model: the served model's name, signed into every id.
        ttl_seconds: how long an id may be judged (``serving.feedback_ttl_seconds``).
        clock: Unix seconds (tests pass a shifted one to make expired ids).

    Raises:
        ValueError: a key shorter than :data:`MIN_KEY_CHARS`, or a TTL that is not positive.
    """

    def __init__(
        self,
        key: bytes,
        model: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"a signing key needs at least {MIN_KEY_CHARS} bytes")
        if not ttl_seconds > 0:
            raise ValueError("ttl_seconds must be > 0")
        name = model.encode()
        self._key = key
        self._prefix = CONTEXT + struct.pack(">H", len(name)) + name
        self._ttl = ttl_seconds
        self._clock = clock

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, self._prefix + body, hashlib.sha256).digest()

    def issue(self, version: str, predicted: list[int]) -> list[str]:
        """One signed id per predicted class, each with its own nonce, all valid for the TTL.

        Raises:
            ValueError: ``version`` is longer than :data:`MAX_VERSION_BYTES` in UTF-8.
        """
        encoded = version.encode()
        if not 0 < len(encoded) <= MAX_VERSION_BYTES:
            raise ValueError(f"a signed id carries a version of 1 to {MAX_VERSION_BYTES} bytes")
        expires_ms = math.ceil((self._clock() + self._ttl) * 1000)
        ids = []
        for label in predicted:
            body = _HEAD.pack(FORMAT, expires_ms, label) + secrets.token_bytes(NONCE_BYTES)
            body += encoded
            token = base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=")
            ids.append(token.decode("ascii"))
        return ids

    def verify(self, sample_id: str, where: str) -> SignedPrediction:
        """The prediction ``sample_id`` carries, once its signature and expiry hold.

        Args:
            sample_id: an id from an infer response's ``sample_ids``.
            where: names the id in error messages (``ids[3]``).

        Raises:
            serving.errors.BadRequest: not a signed id at all (malformed).
            serving.errors.Forbidden: the signature does not hold (forged, altered, another
                key or another model).
            serving.errors.Gone: the id has expired.
        """
        raw = self._decode(sample_id, where)
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise Forbidden(
                f"{where} was not signed by this model's servers: its signature does not hold "
                "(forged, altered, or signed with another serving.feedback_signing_key_file)"
            )
        _, expires_ms, predicted = _HEAD.unpack_from(body)
        nonce = body[_HEAD.size : _HEAD.size + NONCE_BYTES]
        version = body[_HEAD.size + NONCE_BYTES :].decode("utf-8", errors="replace")
        expires_at = expires_ms / 1000
        now = self._clock()
        if now >= expires_at:
            raise Gone(
                f"{where} expired {now - expires_at:.0f} s ago: feedback must arrive within "
                f"serving.feedback_ttl_seconds ({self._ttl:g} s) of its prediction"
            )
        return SignedPrediction(version, predicted, expires_at, nonce)

    @staticmethod
    def _decode(sample_id: str, where: str) -> bytes:
        malformed = BadRequest(
            f"{where} is not a signed sample id (URL-safe base64 of {_MIN_ID_CHARS} to "
            f"{MAX_ID_CHARS} characters, as the infer response's sample_ids holds)"
        )
        if not _MIN_ID_CHARS <= len(sample_id) <= MAX_ID_CHARS:
            raise malformed
        if not _ALPHABET.fullmatch(sample_id):
            raise malformed
        try:
            raw = base64.urlsafe_b64decode(sample_id + "=" * (-len(sample_id) % 4))
        except binascii.Error:
            raise malformed from None
        if raw[0] != FORMAT:
            raise BadRequest(f"{where} is a signed sample id of format {raw[0]}, not {FORMAT}")
        return raw


__all__ = ["MAX_ID_CHARS", "MIN_KEY_CHARS", "SampleIdSigner", "SignedPrediction"]
