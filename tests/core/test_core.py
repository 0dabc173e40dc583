"""The shared domain on both databases: settings, search, scopes, previews, policy, hashing."""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import replace

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import tasks
from core.directory import Directory
from core.directory.sql import SqlDirectory
from core.errors import ConfigError, ConflictError
from core.models import Scope
from core.passwords import (
    LOOK_ALIKES,
    SYMBOLS,
    PasswordHasher,
    generate_password,
    policy_violations,
)
from core.settings import PasswordPolicy, Settings

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database


def test_settings_defaults_need_no_configuration() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.database_url == "sqlite:///resetbot.db"
    assert settings.redis_url is None
    assert settings.mail_retry_delays == (60, 300, 900)
    assert settings.max_mail_attempts == 4


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT"),
        ({"MAIL_RETRY_DELAYS": "60,soon"}, "MAIL_RETRY_DELAYS"),
        ({"PASSWORD_SCHEMES": "rot13x"}, "PASSWORD_SCHEMES"),
        ({"SMTP_SECURITY": "tls1"}, "SMTP_SECURITY"),
        ({"USERS_COLUMNS": "login"}, "USERS_COLUMNS"),
    ],
)
def test_invalid_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env, env_file=None)


def test_search_is_case_insensitive_substring(
    sessions: sessionmaker[Session], directory: Directory, sample_users: list[object]
) -> None:
    assert [u.username for u in directory.search("CATALOG")] == ["carol"]
    assert [u.username for u in directory.search("ob")] == ["bob"]
    assert [u.username for u in directory.search("example.org")] == [
        "alice", "bob", "carol", "erin", "grace"
    ]
    assert directory.search("%") == []


@pytest.mark.parametrize(
    ("scope", "selection", "expected"),
    [
        (Scope.ALL, (), {1, 2, 3, 4, 5, 6, 7}),
        (Scope.ALL_EXCEPT_SELECTED, (1, 3), {2, 4, 5, 6, 7}),
        (Scope.ALL_WITHOUT_ROLE, (), {1, 2, 4, 6, 7}),
        (Scope.SELECTED_ONLY, (3, 4), {3, 4}),
    ],
)
def test_scopes_pick_exactly_the_right_users(
    sessions: sessionmaker[Session],
    directory: Directory,
    sample_users: list[object],
    scope: Scope,
    selection: tuple[int, ...],
    expected: set[int],
) -> None:
    picked = {u.id for u in directory.scope_batch(scope, selection, 0, 100)}
    preview = directory.preview(scope, selection)
    assert picked == expected
    assert preview.users == len(expected)


def test_preview_counts_email_and_staff(
    sessions: sessionmaker[Session], directory: Directory, sample_users: list[object]
) -> None:
    preview = directory.preview(Scope.ALL, ())
    assert (preview.users, preview.emailable, preview.without_email, preview.staff) == (7, 5, 2, 2)


def test_policy_gives_every_reason() -> None:
    reasons = policy_violations("password", PasswordPolicy())
    assert len(reasons) == 3  # too short, too few classes, too common
    assert policy_violations("Tr4vel-Lantern-Quill", PasswordPolicy()) == []
    assert any("username" in r for r in policy_violations(
        "Alice-Tr4vel-Lantern", PasswordPolicy(), username="alice"))
    assert any("72 bytes" in r for r in policy_violations("Ab1!" + "é" * 40, PasswordPolicy()))


def test_generated_passwords_pass_policy_and_avoid_look_alikes() -> None:
    policy = PasswordPolicy()
    for _ in range(200):
        password = generate_password(policy)
        assert len(password) == 16
        assert not LOOK_ALIKES & set(password)
        assert policy_violations(password, policy) == []


def test_generated_passwords_use_every_allowed_character_evenly() -> None:
    """Each character is drawn from all the classes' characters at once: over 1,000 passwords
    (16,000 characters, 250 expected each of the 64, somewhat more for the 5 digits as every
    password holds one) every one shows up, none far outside its share."""
    allowed = set(string.ascii_letters + string.digits + SYMBOLS) - LOOK_ALIKES
    seen = Counter("".join(generate_password(PasswordPolicy()) for _ in range(1000)))
    assert set(seen) == allowed and len(allowed) == 64
    assert min(seen.values()) > 150 and max(seen.values()) < 600


def test_hash_is_salted_per_user_and_verifies() -> None:
    hasher = PasswordHasher(("pbkdf2_sha256",), rounds=1000)
    first, second = hasher.hash("Same-Pass-123"), hasher.hash("Same-Pass-123")
    assert first != second
    assert hasher.verify("Same-Pass-123", first) and not hasher.verify("other", first)


def test_bcrypt_works_with_libpass_and_bcrypt5() -> None:
    hasher = PasswordHasher(("bcrypt",), rounds=4)
    assert hasher.verify("Tr4vel-Lantern-Quill", hasher.hash("Tr4vel-Lantern-Quill"))


def test_confirm_consumes_a_pending_request_once(
    sessions: sessionmaker[Session], directory: Directory, settings: Settings,
    sample_users: list[object],
) -> None:
    request = tasks.ResetRequest(requester="U1", scope=Scope.SELECTED_ONLY, selection=(1, 2),
                                 default_password="Tr4vel-Lantern-Quill")
    with sessions() as session:
        tasks.validate_request(settings, SqlDirectory(directory), request)
        pending = tasks.create_pending(session, settings, request)
        session.commit()
        assert "Tr4vel" not in (pending.default_password_sealed or "")
    with sessions() as session:
        task = tasks.consume_pending(session, pending.id, "U1")
        session.commit()
        assert task.mode == "default"
    with sessions() as session, pytest.raises(ConflictError, match="already confirmed"):
        tasks.consume_pending(session, pending.id, "U1")


def test_the_bcrypt_length_limit_follows_the_hash_the_directory_writes(
    engine: Engine, settings: Settings, sample_users: list[object],
) -> None:
    """A directory read as Koha writes bcrypt whatever PASSWORD_SCHEMES says: a default
    password longer than 72 bytes would be cut there, so it is refused on its field."""
    long_password = "Ab1!" + "é" * 40
    request = tasks.ResetRequest(requester="U1", scope=Scope.ALL,
                                 default_password=long_password)
    pbkdf2_settings = replace(settings, password_schemes=("pbkdf2_sha256", "bcrypt"))
    as_koha = Directory.own_table(engine, settings.directory,
                                  PasswordHasher(("bcrypt",), ident="2a"))
    with pytest.raises(tasks.RequestInvalid) as refused:
        tasks.validate_request(pbkdf2_settings, SqlDirectory(as_koha), request)
    assert any("72 bytes" in reason for reason in refused.value.problems["password"])
    as_pbkdf2 = Directory.own_table(engine, settings.directory,
                                    PasswordHasher(("pbkdf2_sha256",)))
    assert tasks.validate_request(pbkdf2_settings, SqlDirectory(as_pbkdf2), request).users > 0


def test_database_errors_never_show_statement_parameters(engine: object) -> None:
    from sqlalchemy import Engine, text
    from sqlalchemy.exc import DBAPIError

    assert isinstance(engine, Engine)
    with engine.connect() as connection, pytest.raises(DBAPIError) as raised:
        connection.execute(
            text("SELECT * FROM no_such_table WHERE secret = :secret"),
            {"secret": "Sup3r-Secret-Value"},
        )
    assert "Sup3r-Secret-Value" not in str(raised.value)
    assert "hidden due to hide_parameters" in str(raised.value)


def test_an_expired_preview_forgets_its_password(
    sessions: sessionmaker[Session], directory: Directory, settings: Settings,
    sample_users: list[object],
) -> None:
    from datetime import timedelta

    from core.models import PendingRequest, utcnow

    request = tasks.ResetRequest(requester="U1", scope=Scope.SELECTED_ONLY, selection=(1,),
                                 default_password="Tr4vel-Lantern-Quill")
    with sessions() as session:
        stale = tasks.create_pending(session, settings, request)
        stale.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
        fresh = tasks.create_pending(session, settings, request)  # sweeps the stale one
        session.commit()
    with sessions() as session:
        assert session.get(PendingRequest, stale.id).default_password_sealed is None
        assert session.get(PendingRequest, fresh.id).default_password_sealed is not None
        assert tasks.forget_expired_passwords(session) == 0
