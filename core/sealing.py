"""Seal a default password with RESET_SECRET_KEY so it is never stored or sent in the clear.

Sealing always uses the current key. Opening also tries RESET_SECRET_KEY_OLD, so a key can be
changed while a task still holds a password sealed with the previous one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.errors import ConfigError


@functools.lru_cache(maxsize=8)
def _fernet(secret_key: str) -> Fernet:
    """The key's Fernet, made once per key and process (Undo seals two values a user)."""
    if not secret_key:
        raise ConfigError("RESET_SECRET_KEY is not set: it is needed to keep a default password")
    # Derived from the key's text, as before key rotation existed: tasks sealed by an older
    # release still open.
    digest = hashlib.sha256(b"resetbot-default-password\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(secret_key: str, plaintext: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode()).decode("ascii")


def unseal(secret_key: str, token: str, old_keys: Sequence[str] = ()) -> str:
    """Open `token` with the current key or any of `old_keys` (RESET_SECRET_KEY_OLD)."""
    keys = MultiFernet([_fernet(key) for key in (secret_key, *old_keys)])
    try:
        return keys.decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        # Different processes disagree on the key: say so, never show the token.
        raise ConfigError(
            "RESET_SECRET_KEY differs from the one that sealed this task's default password, "
            "and no key in RESET_SECRET_KEY_OLD opens it"
        ) from None
