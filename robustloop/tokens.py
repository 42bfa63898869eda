"""Bearer tokens and keys: reading one from a file, and checking an ``Authorization`` header
against a token.

Shared by the receiver (Alertmanager's deliveries) and the model server (feedback, a credential
separate from inference, and the key that signs its sample ids). Standard library only.
"""

from __future__ import annotations

import hmac
from pathlib import Path


class TokenFileError(ValueError):
    """The token file cannot be read or is empty; the message names it."""


def read_token_file(path: Path, what: str, *, min_length: int = 1) -> str:
    """The token in ``path``, surrounding whitespace stripped (as Alertmanager's
    ``credentials_file`` is).

    Args:
        path: the file.
        what: the setting that names it, for the error message.
        min_length: the fewest characters a usable secret has (a signing key needs more than
            a bearer token that merely has to be present).

    Raises:
        TokenFileError: the file cannot be read or holds no token, or a shorter one than
            ``min_length``; ``what`` names the setting.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not token:
        raise TokenFileError(f"{what} {path} is empty")
    if len(token) < min_length:
        raise TokenFileError(
            f"{what} {path} holds {len(token)} characters, fewer than the {min_length} a key "
            "needs; write a random one, e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'`"
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


__all__ = ["TokenFileError", "read_token_file", "token_matches"]
