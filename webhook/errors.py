"""Every error the receiver answers with, each with its HTTP status.

:func:`webhook.app.create_app` maps them to ``{"error": "<message>"}`` bodies in one place.
Alertmanager retries a delivery only on a 5xx (and on connection errors), so the statuses follow
its contract: a client's garbage is a 4xx (never retried), and a 5xx means "resend it later"
because the receiver itself could not record the alerts.
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base of the receiver's HTTP errors; ``status`` is the HTTP status it is answered with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadPayload(WebhookError):
    """The body is not JSON, not Alertmanager's webhook payload version 4, or misses fields."""

    status = 400


class Unauthorized(WebhookError):
    """The bearer token is missing or wrong; nothing was read or stored."""

    status = 401


class NotFound(WebhookError):
    """The URL names no route, or no remediation with that id."""

    status = 404


class MethodNotAllowed(WebhookError):
    """The route exists but not for this HTTP method."""

    status = 405


class PayloadTooLarge(WebhookError):
    """The body (declared or, when chunked, actually read) exceeds ``webhook.max_body_bytes``."""

    status = 413


class UnsupportedMediaType(WebhookError):
    """The body's Content-Type is not JSON (Alertmanager sends application/json)."""

    status = 415


class StorageUnavailable(WebhookError):
    """The outbox could not record the alerts (disk full, database locked): resend later."""

    status = 503


class ConfigurationError(Exception):
    """The receiver cannot start as configured (no token, bad submitter settings)."""


class OutboxInUse(ConfigurationError):
    """Another receiver (this process or another) holds the outbox: one receiver per outbox."""


__all__ = [
    "BadPayload",
    "ConfigurationError",
    "MethodNotAllowed",
    "NotFound",
    "OutboxInUse",
    "PayloadTooLarge",
    "StorageUnavailable",
    "Unauthorized",
    "WebhookError",
]
