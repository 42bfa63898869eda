"""Every error the model server answers with, each with its HTTP status.

The app maps them to Open Inference Protocol error bodies (``{"error": "<message>"}``) in one
place (:func:`serving.app.create_app`). A client's garbage is always a 4xx that says what was
wrong; a 5xx means the server itself could not answer.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of the server's errors; ``status`` is the HTTP status it is answered with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    """The request is malformed or its tensor is invalid (shape, dtype, NaN, range, batch)."""

    status = 400


class Unauthorized(ServingError):
    """Feedback without the feedback token (``serving.feedback_token_file``); nothing counted."""

    status = 401


class Forbidden(ServingError):
    """A signed sample id whose signature does not hold: forged, altered, or signed with another
    key or for another model; nothing counted."""

    status = 403


class ModelNotFound(ServingError):
    """The URL names a model this server does not serve."""

    status = 404


class Conflict(ServingError):
    """A signed sample id this server has already judged (a replay); nothing counted."""

    status = 409


class Gone(ServingError):
    """A signed sample id past its expiry (``serving.feedback_ttl_seconds``); nothing counted."""

    status = 410


class PayloadTooLarge(ServingError):
    """The body is larger than ``serving.max_body_bytes``."""

    status = 413


class TooManyRequests(ServingError):
    """A client sent more feedback than its rate allows (``serving.feedback_rate_per_client``);
    nothing counted. ``retry_after`` is when its bucket holds enough again, in seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnsupportedMediaType(ServingError):
    """The body's Content-Type is neither JSON nor, with the binary extension, octet-stream."""

    status = 415


class NotReady(ServingError):
    """No model is loaded yet (the store has no production version, or it failed to load)."""

    status = 503


__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "ModelNotFound",
    "NotReady",
    "PayloadTooLarge",
    "ServingError",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
]
