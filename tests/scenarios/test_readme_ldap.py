"""docs/openldap.md ("Using resetbot with OpenLDAP") and docs/active-directory.md ("Using resetbot
with Active Directory"), run as written.

The settings blocks are used as they stand, with only what a reader would change replaced
(host and port, the CA file, the password file, the domain's names), against a real slapd and a
real Samba AD domain; the OpenLDAP ACL is the one the test server runs under, and the Active
Directory access control entries are the ones the test domain's service account is given.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine

from bot.cli import main
from core.directory.ldap import attempt_bind
from core.settings import Settings
from tests.core.test_active_directory_samba import _samba_available
from tests.support import docs
from tests.support.engine import build_context, run_until_final
from tests.support.openldap import OpenLdap, OpenLdapTemplate, resetbot_rules, seeded_users
from tests.support.samba_ad import (
    BASE_DN,
    LOCKOUT_TIME_ATTRIBUTE,
    PWD_LAST_SET_ATTRIBUTE,
    RESET_PASSWORD_RIGHT,
    SEED_USERS,
    SERVICE_NAME,
    SERVICE_PASSWORD,
    USER_CLASS,
    DomainTemplate,
    SambaDomain,
    seed_user,
)

#: The page each section is on.
PAGES = {"Using resetbot with OpenLDAP": "docs/openldap.md",
         "Using resetbot with Active Directory": "docs/active-directory.md"}
DEFAULT = "Harbour-Lantern-26"


def block(title: str, language: str) -> str:
    [found] = docs.blocks(PAGES[title], title, language)
    return found


def settings_of(title: str, replacements: dict[str, str]) -> dict[str, str]:
    """The section's settings block as the environment, with the reader's names put in."""
    env: dict[str, str] = {}
    for line in block(title, "sh").splitlines():
        name, _, value = line.partition("=")
        for written, own in replacements.items():
            value = value.replace(written, own)
        env[name] = value
    return env


def cli(settings: Settings, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv), environ={**settings.to_env(), **env})
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- OpenLDAP -------------------------------------------------------------------------------


def test_the_openldap_acl_is_the_one_the_test_server_runs_under() -> None:
    documented: list[str] = []
    for line in block("Using resetbot with OpenLDAP", "ldif").splitlines():
        if line.startswith("olcAccess: {"):
            documented.append(line.split("}", 1)[1])
        else:
            documented[-1] += line[1:]  # LDIF unfolds by dropping the one leading space
    assert documented == resetbot_rules()


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[OpenLdap]:
    with OpenLdapTemplate.build() as template, template.start() as server:
        yield server


def test_the_openldap_settings_as_written_check_and_reset(
    settings: Settings, engine: Engine, redis_conn: Redis, slapd: OpenLdap, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    password_file = tmp_path / "ldap-bind-password"
    password_file.write_text(slapd.template.service_password + "\n", encoding="utf-8")
    env = settings_of("Using resetbot with OpenLDAP", {
        "ldap.example.org": f"localhost:{slapd.tls_port}",
        "/etc/ssl/certs/example-ldap-ca.pem": str(slapd.ca_file),
        "/etc/resetbot/ldap-bind-password": str(password_file),
    })
    code, out = cli(settings, env, monkeypatch, capsys, "directory", "check")
    assert code == 0, out
    assert f"Users:            {len(seeded_users())}" in out and "Staff:            2" in out
    code, out = cli(settings, env, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,sam", "--default-password-stdin", "--yes", "--detach",
                    stdin=DEFAULT + "\n")
    assert code == 0, out
    configured = Settings.from_env({**settings.to_env(), **env}, env_file=None)
    context = build_context(configured, redis_conn, engine)
    try:
        assert run_until_final(context, 1).counts
    finally:
        context.close()
    for uid in ("ann", "sam"):
        bound = attempt_bind(slapd.config(), slapd.user_dn(uid), DEFAULT)
        assert (bound.result, bound.ppolicy_error) == (0, "changeAfterReset"), uid


# ---- Active Directory -----------------------------------------------------------------------


def test_the_active_directory_entries_are_the_ones_the_test_domain_gives() -> None:
    given = [f"(OA;CI;{right};{guid};{USER_CLASS};SID)" for right, guid in (
        ("CR", RESET_PASSWORD_RIGHT), ("WP", PWD_LAST_SET_ATTRIBUTE),
        ("WP", LOCKOUT_TIME_ATTRIBUTE))]
    assert block("Using resetbot with Active Directory", "sddl").split() == given


@pytest.fixture
def domain() -> Iterator[SambaDomain]:
    _samba_available()
    template = DomainTemplate.acquire()
    try:
        with template.domain() as running:
            yield running
    finally:
        template.release()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_active_directory_settings_as_written_check_and_reset(
    settings: Settings, engine: Engine, redis_conn: Redis, domain: SambaDomain, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the page's settings (and the service account's three entries): a check, then
    a default password for two users, proven by the domain's own sign-in."""
    password_file = tmp_path / "ad-bind-password"
    password_file.write_text(SERVICE_PASSWORD, encoding="utf-8")
    env = settings_of("Using resetbot with Active Directory", {
        "dc1.example.org": domain.address,
        "DC=example,DC=org": BASE_DN,
        "resetbot-svc@example.org": SERVICE_NAME,
        "/etc/ssl/certs/example-ad-ca.pem": str(domain.ca_file),
        "/etc/resetbot/ad-bind-password": str(password_file),
    })
    code, out = cli(settings, env, monkeypatch, capsys, "directory", "check")
    assert code == 0, out
    in_scope = [user for user in SEED_USERS if user.in_scope]
    assert f"Users:            {len(in_scope)}" in out and "Staff:            2" in out
    assert "Locked on purpose: 1" in out
    code, out = cli(settings, env, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,ben", "--default-password-stdin", "--yes", "--detach",
                    stdin=DEFAULT + "\n")
    assert code == 0, out
    configured = Settings.from_env({**settings.to_env(), **env}, env_file=None)
    context = build_context(configured, redis_conn, engine)
    try:
        assert run_until_final(context, 1).counts
    finally:
        context.close()
    for user in map(seed_user, ("ann", "ben")):
        assert domain.sign_in(user.dn, DEFAULT) == "773", user.username  # must change
        assert domain.sign_in(user.dn, user.password) == "52e", user.username
    for user in map(seed_user, ("dana", "pat", "olga")):  # staff, not picked, out of the base
        assert domain.sign_in(user.dn, user.password) == "ok", user.username
