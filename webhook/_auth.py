"""Bearer-token authentication of Alertmanager's deliveries."""

from __future__ import annotations

import os
from collections.abc import Mapping

from robustloop.config import WebhookConfig
from robustloop.tokens import TokenFileError, read_token_file, token_matches
from webhook.errors import ConfigurationError

TOKEN_ENV = "ROBUSTLOOP_WEBHOOK_TOKEN"
"""Environment variable holding the token when ``webhook.token_file`` is not set."""


def load_token(config: WebhookConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The token the receiver requires, or None when ``webhook.auth`` is ``none``.

    Read from ``webhook.token_file`` when set (surrounding whitespace stripped, as Alertmanager's
    ``credentials_file`` is), else from ``$ROBUSTLOOP_WEBHOOK_TOKEN``.

    Raises:
        ConfigurationError: auth is ``bearer`` and no non-empty token was found; the message
            says where the receiver looked and how to opt out explicitly.
    """
    if config.auth == "none":
        return None
    env = os.environ if environ is None else environ
    if config.token_file is not None:
        try:
            return read_token_file(config.token_file, "webhook.token_file")
        except TokenFileError as exc:
            raise ConfigurationError(
                f"{exc}; put the bearer token Alertmanager sends there, or set "
                "`webhook.auth: none` to run without authentication (explicit opt-out)"
            ) from None
    token = env.get(TOKEN_ENV, "").strip()
    where = f"webhook.token_file is not set and ${TOKEN_ENV} is empty or unset"
    if not token:
        raise ConfigurationError(
            f"the webhook receiver needs a bearer token but {where}; put a token there, or set "
            "`webhook.auth: none` to run without authentication (explicit opt-out)"
        )
    return token


__all__ = ["TOKEN_ENV", "load_token", "token_matches"]
