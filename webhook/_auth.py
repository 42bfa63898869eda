"""Bearer-token authentication of Alertmanager's deliveries."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from robustloop.config import WebhookConfig
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
            token = config.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read webhook.token_file {config.token_file}: {exc.strerror}; "
                "create it with the bearer token Alertmanager sends"
            ) from None
        where = f"webhook.token_file {config.token_file} is empty"
    else:
        token = env.get(TOKEN_ENV, "").strip()
        where = f"webhook.token_file is not set and ${TOKEN_ENV} is empty or unset"
    if not token:
        raise ConfigurationError(
            f"the webhook receiver needs a bearer token but {where}; put a token there, or set "
            "`webhook.auth: none` to run without authentication (explicit opt-out)"
        )
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())
