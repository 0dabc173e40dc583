"""Each setting is declared once: reading, writing back, the help rows and the Configuration page
(docs/configuration.md, its table generated from the declarations) all agree."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from core.settings import DirectoryNames, PasswordPolicy, Settings, settings_help
from tests.support import docs

SEALING_KEY = "4384154792593121a7a2067034090bd95ba9990bd9951c8b1bb60ac7332ddf88"
OLD_SEALING_KEY = "d684c92f38631de17bef9a00fa830ca6a394ca03f7c4a6bb4fa7a60fd6e82fdb"

CONFIGURATION = "docs/configuration.md"
TABLE_HEADER = "| Variable | Default | Meaning |"


def configuration_rows(markdown: str) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every row of the Configuration table in `markdown`."""
    lines = markdown.splitlines()
    start = lines.index(TABLE_HEADER) + 2  # past the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        name, default, meaning = (cell.strip().replace("\\|", "|") for cell in cells)
        rows.append((name.strip("`"), default, meaning))
    return rows


def test_the_configuration_page_shows_exactly_the_declared_settings() -> None:
    """The page's table is made from the declarations when the site is built: each variable
    once, with the declared default and meaning, and none written by hand beside them."""
    assert TABLE_HEADER not in docs.read(CONFIGURATION), "the table is generated, not written"
    rows = configuration_rows(docs.rendered(CONFIGURATION))
    assert len({name for name, _, _ in rows}) == len(rows), "a variable is listed twice"
    assert rows == settings_help()


def test_help_rows_name_each_variable_once_with_a_default_and_a_meaning() -> None:
    rows = settings_help()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)) == 64
    assert all(name.isupper() and default and meaning for name, default, meaning in rows)
    assert ("SMTP_TIMEOUT", "`30`", "seconds per SMTP operation") in rows
    assert rows[names.index("REDIS_URL")][:2] == ("REDIS_URL", "unset")


def every_field_changed() -> Settings:
    """Settings that differ from the defaults in every field (the test below checks that)."""
    return replace(
        Settings(),
        database_url="postgresql+psycopg://u@db/resetbot",
        directory_url="mysql+pymysql://koha@db/koha",
        directory_profile="/etc/resetbot/library.toml",
        directory_tls_ca_file="/etc/ssl/library-ca.pem",
        directory_bind_dn="cn=resetbot,ou=services,dc=library,dc=example",
        directory_bind_password="bind secret",
        directory_bind_password_file="/run/secrets/bind",
        directory_staff_group="cn=staff,ou=groups,dc=library,dc=example",
        directory_ldap_window=4,
        redis_url="redis://r:6379/2",
        reset_queue="other-queue",
        smtp_host="mail.example.org",
        smtp_port=2525,
        smtp_username="relay",
        smtp_password="pw with spaces # and = signs",
        smtp_allow_plaintext=True,
        smtp_allow_plaintext_auth=True,
        smtp_security="ssl",
        smtp_timeout=0.1,
        mail_from="Library <resetbot@library.example>",
        portal_url="https://portal.example/",
        mail_retry_delays=(0, 7),
        mail_outage_retry=0.5,
        mail_outage_give_up=600.0,
        directory_outage_retry=2.5,
        directory_outage_give_up=1200.0,
        mail_templates="/srv/library/mail",
        mail_language="fr",
        library_name="Springfield Library",
        helpdesk="help@library.example",
        password_schemes=("pbkdf2_sha256", "bcrypt"),
        password_rounds=1000,
        password_allow_weak_rounds=True,
        policy=PasswordPolicy(min_length=8, min_classes=0, forbid_username=False,
                              forbid_common=False, generated_length=40),
        reset_secret_key=SEALING_KEY,
        reset_secret_key_old=(OLD_SEALING_KEY,),
        directory=DirectoryNames(table="people", columns={
            **DirectoryNames().columns, "username": "login", "email": "mail_address"}),
        chunk_size=7,
        chunk_sweep=3,
        claim_batch=3,
        lease_seconds=3600,
        reaper_interval=0.25,
        slack_bot_token="xoxb-1",
        slack_signing_secret="signing",
        slack_app_token="xapp-1",
        slack_api_url="http://127.0.0.1:1/api/",
        reset_admins=frozenset({"U2", "U1"}),
        reset_admin_group="S1",
        reset_report_channel="G0REPORTS",
        progress_steps=20,
        admin_group_max_stale=30.0,
        directory_search_refresh=5.0,
        reset_approval_min_users=500,
        reset_approval_scope_all=True,
        reset_approval_ttl=3600.0,
        reset_approvers=frozenset({"U3"}),
        reset_approver_group="S2",
        schedule_reminder=60,
        reset_undo_window=600,
    )


def test_every_field_of_the_round_trip_settings_differs_from_its_default() -> None:
    changed, default = every_field_changed(), Settings()
    for group in ("policy", "directory"):
        for item in fields(getattr(default, group)):
            assert getattr(changed.__dict__[group], item.name) != getattr(
                default.__dict__[group], item.name), f"{group}.{item.name}"
    for item in fields(Settings):
        assert getattr(changed, item.name) != getattr(default, item.name), item.name


def test_settings_written_back_to_the_environment_read_back_equal() -> None:
    settings = every_field_changed()
    env = settings.to_env()
    assert sorted(env) == sorted(name for name, _, _ in settings_help())
    assert Settings.from_env(env, env_file=None) == settings
    assert Settings.from_env(Settings().to_env(), env_file=None) == Settings()


def test_default_settings_write_back_only_what_unset_would_not_give() -> None:
    env = Settings().to_env()
    for unset in ("REDIS_URL", "SMTP_PASSWORD", "RESET_SECRET_KEY", "RESET_ADMINS",
                  "PASSWORD_ROUNDS", "SLACK_BOT_TOKEN"):
        assert unset not in env
    assert env["SMTP_TIMEOUT"] == "30.0"
    assert env["PASSWORD_FORBID_COMMON"] == "true"


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("SSL", 465), ("none", 25)])
def test_the_smtp_port_follows_the_security_unless_it_is_set(security: str, port: int) -> None:
    assert Settings.from_env({"SMTP_SECURITY": security}, env_file=None).smtp_port == port
    chosen = Settings.from_env({"SMTP_SECURITY": security, "SMTP_PORT": "2525"}, env_file=None)
    assert chosen.smtp_port == 2525


def test_the_env_file_is_read_under_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n\n"
        "export SMTP_HOST=mail.example.org\n"
        "MAIL_FROM='Library <lib@example.org>'\n"
        'SMTP_PASSWORD="a ${HOME} #b"\n'
        "RESET_QUEUE=from-file\n",
        encoding="utf-8",
    )
    settings = Settings.from_env({"RESET_QUEUE": "from-environ"}, env_file=env_file)
    assert settings.smtp_host == "mail.example.org"
    assert settings.mail_from == "Library <lib@example.org>"
    assert settings.smtp_password == "a ${HOME} #b"
    assert settings.reset_queue == "from-environ"


def test_settings_without_an_env_file_are_the_defaults(tmp_path: Path) -> None:
    assert Settings.from_env({}, env_file=tmp_path / "missing.env") == Settings()


def test_secrets_stay_out_of_the_repr() -> None:
    shown = repr(every_field_changed())
    for secret in ("pw with spaces", SEALING_KEY, OLD_SEALING_KEY, "xoxb-1", "xapp-1",
                   "signing"):
        assert secret not in shown
    assert "mail.example.org" in shown


@pytest.mark.parametrize(("host", "security"), [
    # What SMTP_SECURITY's help calls "this host": each form it names.
    ("localhost", "none"), ("mail.localhost", "none"), ("127.0.0.1", "none"),
    ("127.1.2.3", "none"), ("::1", "none"), ("[::1]", "none"), ("::ffff:127.0.0.9", "none"),
    # Elsewhere, and names that are not resolved (even if they point here).
    ("128.0.0.1", "starttls"), ("mail.library.example", "starttls"), ("::2", "starttls"),
    ("localhost.example", "starttls"),
])
def test_smtp_security_defaults_to_none_for_exactly_the_hosts_its_help_names(
    host: str, security: str
) -> None:
    help_text = dict((name, meaning) for name, _, meaning in settings_help())["SMTP_SECURITY"]
    assert "127.0.0.0/8, ::1, ::ffff:127.0.0.0/104" in help_text
    assert Settings.from_env({"SMTP_HOST": host}, env_file=None).smtp_security == security
