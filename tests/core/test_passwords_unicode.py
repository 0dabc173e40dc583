"""Passwords are Unicode-normalised (NFC) before the policy check and hashing: "é" typed as one
character or as "e" + a combining accent is one password, stored as the NFC form's hash.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from passlib.context import CryptContext
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import Scope, TaskStatus
from core.passwords import PasswordHasher, policy_violations
from core.settings import PasswordPolicy, Settings
from tests.support.engine import build_context, run_until_final, submit, user_rows

COMPOSED = "Caf\u00e9-Harbour-92"  # é as one code point (NFC)
DECOMPOSED = "Cafe\u0301-Harbour-92"  # e + COMBINING ACUTE ACCENT (NFD), as macOS types it


def test_the_two_spellings_differ_as_text_but_not_once_normalised() -> None:
    assert COMPOSED != DECOMPOSED
    assert unicodedata.normalize("NFC", DECOMPOSED) == COMPOSED


def test_the_hash_of_a_decomposed_password_verifies_its_nfc_form() -> None:
    hasher = PasswordHasher(("pbkdf2_sha256",), rounds=1000)
    stored = hasher.hash(DECOMPOSED)
    # What a sign-in side holding a plain passlib context checks after normalising to NFC.
    sign_in = CryptContext(schemes=["pbkdf2_sha256"])
    assert sign_in.verify(COMPOSED, stored)
    assert not sign_in.verify(DECOMPOSED, stored)  # the hash is not of the raw NFD bytes
    assert hasher.verify(DECOMPOSED, stored) and hasher.verify(COMPOSED, stored)


def test_the_policy_counts_the_normalised_characters() -> None:
    policy = PasswordPolicy(min_length=16, min_classes=3)
    assert len(DECOMPOSED) == 16 and len(COMPOSED) == 15
    reasons = policy_violations(DECOMPOSED, policy, schemes=("pbkdf2_sha256",))
    assert reasons == ["It must be at least 16 characters long."]


def test_a_decomposed_default_password_is_set_as_its_nfc_form(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any],
) -> None:
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1, 2), default_password=DECOMPOSED)
    assert run_until_final(context, task_id).status == TaskStatus.COMPLETED

    sign_in = CryptContext(schemes=list(settings.password_schemes))
    rows = user_rows(sessions, directory)
    for user_id in (1, 2):
        stored = rows[user_id].password_hash
        assert stored is not None
        assert sign_in.verify(COMPOSED, stored)
        assert not sign_in.verify(DECOMPOSED, stored)
