"""Bearer-token authentication of Alertmanager's deliveries.

The token comes from ``webhook.token_file`` or, without one, from
``$ROBUSTLOOP_WEBHOOK_TOKEN`` (read once). A token file is watched: every check stats the path
(following symlinks, as Kubernetes mounts a Secret: ``token -> ..data/token``, where an update
swaps the ``..data`` symlink to a new folder), and re-reads it when the file it resolves to is
another one (device, inode) or changed (size, mtime). So a rotated Secret is in force at the
next delivery, without a restart, and the old token is refused from then on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from robustloop.config import WebhookConfig
from robustloop.tokens import TokenFileError, read_token_file, token_matches
from webhook.errors import ConfigurationError

log = logging.getLogger(__name__)

TOKEN_ENV = "ROBUSTLOOP_WEBHOOK_TOKEN"
"""Environment variable holding the token when ``webhook.token_file`` is not set."""
TOKEN_FILE_SETTING = "webhook.token_file"

_FileIdentity = tuple[int, int, int, int]


def _identity(path: Path) -> _FileIdentity:
    """What changes when the file at ``path`` (symlinks followed) is replaced or rewritten."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class BearerToken:
    """The token the receiver requires, current: re-read from its file when that changes.

    Args:
        token: the token as read at start.
        path: the file it was read from (watched), or None (an environment variable: fixed).
        identity: the file's identity when it was read (:func:`_identity`).
    """

    def __init__(
        self, token: str, path: Path | None = None, identity: _FileIdentity | None = None
    ) -> None:
        self.path = path
        self._token = token
        self._identity = identity
        self._unreadable: object = None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> BearerToken:
        """The token in ``path``, watched from now on.

        Raises:
            TokenFileError: the file cannot be read or is empty.
        """
        try:
            identity: _FileIdentity | None = _identity(path)  # before reading: a change in
        except OSError:  # between is seen at the first check
            identity = None
        return cls(read_token_file(path, TOKEN_FILE_SETTING), path, identity)

    def current(self) -> str:
        """The token in force now. A file that changed is re-read first; one that cannot be
        read (gone, empty) leaves the last token in force, with a warning in the log."""
        if self.path is None:
            return self._token
        try:
            identity = _identity(self.path)
        except OSError as exc:
            self._warn(exc.strerror, f"cannot stat {TOKEN_FILE_SETTING} {self.path}")
            return self._token
        if identity == self._identity:
            return self._token
        with self._lock:
            if identity != self._identity:
                try:
                    token = read_token_file(self.path, TOKEN_FILE_SETTING)
                except TokenFileError as exc:
                    self._warn(identity, str(exc))
                    return self._token
                self._token, self._identity, self._unreadable = token, identity, None
                log.info("%s %s changed: its token is in force", TOKEN_FILE_SETTING, self.path)
            return self._token

    def _warn(self, what: object, message: str) -> None:
        """Log once per unreadable state, not once per request."""
        if what != self._unreadable:
            self._unreadable = what
            log.warning("%s; the previous token stays in force", message)

    def matches(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the current token (constant time)."""
        return token_matches(header, self.current())


def load_bearer(
    config: WebhookConfig, environ: Mapping[str, str] | None = None
) -> BearerToken | None:
    """The token the receiver requires, or None when ``webhook.auth`` is ``none``.

    From ``webhook.token_file`` when set (surrounding whitespace stripped, as Alertmanager's
    ``credentials_file`` is; re-read when the file changes), else from
    ``$ROBUSTLOOP_WEBHOOK_TOKEN`` (read once).

    Raises:
        ConfigurationError: auth is ``bearer`` and no non-empty token was found; the message
            says where the receiver looked and how to opt out explicitly.
    """
    if config.auth == "none":
        return None
    env = os.environ if environ is None else environ
    if config.token_file is not None:
        try:
            return BearerToken.from_file(config.token_file)
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
    return BearerToken(token)


def load_token(config: WebhookConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The token the receiver requires now, or None when ``webhook.auth`` is ``none``
    (:func:`load_bearer`'s token at this moment).

    Raises:
        ConfigurationError: as :func:`load_bearer`.
    """
    bearer = load_bearer(config, environ)
    return None if bearer is None else bearer.current()


__all__ = ["TOKEN_ENV", "BearerToken", "load_bearer", "load_token", "token_matches"]
