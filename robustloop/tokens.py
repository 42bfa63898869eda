"""Bearer tokens: reading one from a file, and checking an ``Authorization`` header against it.

Shared by the receiver (Alertmanager's deliveries) and the model server (feedback, a credential
separate from inference). Standard library only.
"""

from __future__ import annotations

import hmac
from pathlib import Path


class TokenFileError(ValueError):
    """The token file cannot be read or is empty; the message names it."""


def read_token_file(path: Path, what: str) -> str:
    """The token in ``path``, surrounding whitespace stripped (as Alertmanager's
    ``credentials_file`` is).

    Raises:
        TokenFileError: the file cannot be read or holds no token; ``what`` names the setting.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not token:
        raise TokenFileError(f"{what} {path} is empty")
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


__all__ = ["TokenFileError", "read_token_file", "token_matches"]
