"""docs/openldap.md ("Using resetbot with OpenLDAP") and docs/active-directory.md ("Using resetbot
with Active Directory"), run as written.

The settings blocks are used as they stand, with only what a reader would change replaced
(host and port, the CA file, the password file, the domain's names), against a real slapd and a
real Samba AD domain; the OpenLDAP ACL is the one the test server runs under, and the Active
Directory access control entries are the ones the test domain's service account is given.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine

from bot.cli import main
from core.directory.ldap.directory import LdapDirectory
from core.directory.protocol import PasswordSet, SetResult
from core.settings import Settings
from tests.support import docs
from tests.support.engine import build_context, run_task
from tests.support.openldap import OpenLdap, resetbot_rules, seeded_users
from tests.support.openldap import openldap_template as openldap_template
from tests.support.openldap import slapd as slapd
from tests.support.samba_ad import (
    BASE_DN,
    LOCKOUT_TIME_ATTRIBUTE,
    PEOPLE_OU,
    PWD_LAST_SET_ATTRIBUTE,
    RESET_PASSWORD_RIGHT,
    SEED_USERS,
    SERVICE_DN,
    SERVICE_NAME,
    SERVICE_PASSWORD,
    USER_CLASS,
    SambaDomain,
    seed_user,
)
from tests.support.samba_ad import domain as domain
from tests.support.samba_ad import samba_template as samba_template

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



def reset_as_written(
    settings: Settings, env: dict[str, str], redis_conn: Redis, engine: Engine,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], users: str,
) -> None:
    """A default password for `users`, through the page's settings, run to its end."""
    code, out = cli(settings, env, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", users, "--default-password-stdin", "--yes", "--detach",
                    stdin=DEFAULT + "\n")
    assert code == 0, out
    configured = Settings.from_env({**settings.to_env(), **env}, env_file=None)
    assert run_task(build_context(configured, redis_conn, engine), 1).counts

# ---- OpenLDAP -------------------------------------------------------------------------------


def test_the_openldap_acl_is_the_one_the_test_server_runs_under() -> None:
    documented: list[str] = []
    for line in block("Using resetbot with OpenLDAP", "ldif").splitlines():
        if line.startswith("olcAccess: {"):
            documented.append(line.split("}", 1)[1])
        else:
            documented[-1] += line[1:]  # LDIF unfolds by dropping the one leading space
    assert documented == resetbot_rules()


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
    reset_as_written(settings, env, redis_conn, engine, monkeypatch, capsys, "ann,sam")
    for uid in ("ann", "sam"):
        assert slapd.binds(uid, DEFAULT) == (0, "changeAfterReset"), uid


# ---- Active Directory -----------------------------------------------------------------------


def test_the_active_directory_entries_are_the_ones_the_test_domain_gives() -> None:
    given = [f"(OA;CI;{right};{guid};{USER_CLASS};SID)" for right, guid in (
        ("CR", RESET_PASSWORD_RIGHT), ("WP", PWD_LAST_SET_ATTRIBUTE),
        ("WP", LOCKOUT_TIME_ATTRIBUTE))]
    assert block("Using resetbot with Active Directory", "sddl").split() == given


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
    reset_as_written(settings, env, redis_conn, engine, monkeypatch, capsys, "ann,ben")
    for user in map(seed_user, ("ann", "ben")):
        assert domain.sign_in(user.dn, DEFAULT) == "773", user.username  # must change
        assert domain.sign_in(user.dn, user.password) == "52e", user.username
    for user in map(seed_user, ("dana", "pat", "olga")):  # staff, not picked, out of the base
        assert domain.sign_in(user.dn, user.password) == "ok", user.username


#: dsacls's permission names as SDDL writes them (CA, control access, is SDDL's CR).
DSACLS_RIGHTS = {"CA": "CR", "WP": "WP", "RP": "RP"}
#: dsacls names an extended right by its display name on Windows; Samba displays this one as
#: "User Force Change Password". Its name (cn) is the same on both (MS-ADTS 5.1.3.2.1).
WINDOWS_RIGHTS = {"Reset Password": "User-Force-Change-Password"}


@dataclass(frozen=True)
class Dsacls:
    account: str
    #: /I: S (sub-objects only), T (this object and sub-objects), P (one level down).
    inheritance: str
    #: (permission, object: an extended right's or an attribute's name, inherited object type)
    grants: frozenset[tuple[str, str, str]]


def dsacls_said(section_text: str) -> Dsacls:
    """What the section grants from its `dsacls` on: each quoted `"DOMAIN\\account:PERM;OBJECT;
    TYPE"` grant, and grants in words (`` `WP` on `a` and `b` for `user` `` on the same
    account), with the /I: inheritance."""
    text = " ".join(section_text[section_text.index("`dsacls`"):].split())
    [inheritance] = set(re.findall(r"/I:([TSP])", text))
    quoted = re.findall(r'"([^"\\]+\\[^":]+):([A-Z]+);([^;"]+);([^";]+)"', text)
    accounts = {account for account, _, _, _ in quoted}
    grants = {(perm, obj, kind) for _, perm, obj, kind in quoted}
    for perm, objects, kind in re.findall(
            r"`([A-Z]{2})` on ((?:`[^`]+`(?:,? and |, )?)+) for `([^`]+)`", text):
        grants |= {(perm, obj, kind) for obj in re.findall(r"`([^`]+)`", objects)}
    [account] = accounts
    return Dsacls(account, inheritance, frozenset(grants))


def applies(flags: str, inherited_type: str, own_class: str) -> tuple[bool, bool]:
    """Whether an entry on an OU applies to the OU itself, and to the objects below it."""
    to_self = "IO" not in flags and inherited_type in ("", own_class)
    return to_self, "CI" in flags


def test_the_dsacls_line_grants_exactly_what_the_test_domain_gives_and_a_reset_works(
    domain: SambaDomain,
) -> None:
    """The README's Windows line (`dsacls`), its names looked up in the domain's own schema
    and configuration, is the service account's entries on the users' OU, and nothing else
    is: the "Reset Password" extended right and write on pwdLastSet and lockoutTime, for user
    objects below the OU. With those alone the account resets (must change: 773) and unlocks."""
    said = dsacls_said(docs.section(PAGES["Using resetbot with Active Directory"],
                                     "Using resetbot with Active Directory"))
    assert said.account == "EXAMPLE\\resetbot-svc"  # the example domain's service account
    documented = {(DSACLS_RIGHTS[perm], domain.schema_guid(WINDOWS_RIGHTS.get(obj, obj)),
                   domain.schema_guid(kind)) for perm, obj, kind in said.grants}
    assert documented == {("CR", RESET_PASSWORD_RIGHT, USER_CLASS),
                          ("WP", PWD_LAST_SET_ATTRIBUTE, USER_CLASS),
                          ("WP", LOCKOUT_TIME_ATTRIBUTE, USER_CLASS)}
    service = domain.sid_of(SERVICE_DN)
    given = [ace for ace in domain.aces_on(PEOPLE_OU) if ace.sid == service]
    assert len(given) == len(documented)
    assert {(ace.rights, ace.object_type, ace.inherited_object_type)
            for ace in given} == documented
    ou_class = domain.schema_guid("organizationalUnit")
    dsacls_applies = {"S": (False, True), "T": (True, True)}[said.inheritance]
    for ace in given:  # /I:S: the user objects below, not the OU
        assert applies(ace.flags, ace.inherited_object_type, ou_class) == dsacls_applies, ace
    inherited = [ace for ace in domain.aces_on(seed_user("ann").dn) if ace.sid == service]
    assert {(ace.rights, ace.object_type) for ace in inherited} == {
        (rights, guid) for rights, guid, _ in documented}
    assert all("ID" in ace.flags for ace in inherited)  # from the OU, none of its own

    directory = LdapDirectory(domain.config())  # the service account, with only those rights
    try:
        users = {user.username: user for user in directory.by_username(["ann", "lou"])}
        outcomes = directory.set_passwords([
            PasswordSet(users["ann"].id, DEFAULT, must_change=True),
            PasswordSet(users["lou"].id, DEFAULT, must_change=False),  # locked out: unlocked
        ])
    finally:
        directory.dispose()
    assert [outcome.result for outcome in outcomes] == [SetResult.SET, SetResult.SET]
    assert domain.signs_in("ann", DEFAULT) == "773"
    assert domain.signs_in("lou", DEFAULT) == "ok"
    assert domain.read(seed_user("lou").dn, "lockoutTime")["lockoutTime"] == [b"0"]
