"""Seal a default password with RESET_SECRET_KEY so it is never stored or sent in the clear."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from core.errors import ConfigError


def _fernet(secret_key: str) -> Fernet:
    if not secret_key:
        raise ConfigError("RESET_SECRET_KEY is not set: it is needed to keep a default password")
    digest = hashlib.sha256(b"resetbot-default-password\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(secret_key: str, plaintext: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode()).decode("ascii")


def unseal(secret_key: str, token: str) -> str:
    try:
        return _fernet(secret_key).decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        # Different processes disagree on RESET_SECRET_KEY: say so, never show the token.
        raise ConfigError(
            "RESET_SECRET_KEY differs from the one that sealed this task's default password"
        ) from None
