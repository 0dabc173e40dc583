"""The LDAP directory's settings and profiles: what is read, and each refusal's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.directory.ldap import LdapConfig, is_ldap_url, load_ldap_profile, parse_ldap_url
from core.directory.ldap.directory import rules_for
from core.directory.ldap.profile import parse_ldap_profile
from core.errors import ConfigError

SECRET = "Bind-secret-31"
BASE = "dc=example,dc=org"


def env(**changes: str) -> dict[str, str]:
    values = {
        "DIRECTORY_URL": f"ldaps://ldap.example.org/{BASE}",
        "DIRECTORY_BIND_DN": f"cn=resetbot,ou=services,{BASE}",
        "DIRECTORY_BIND_PASSWORD": SECRET,
    }
    values.update(changes)
    return {key: value for key, value in values.items() if value != "<unset>"}


@pytest.mark.parametrize(("url", "scheme", "host", "port", "base"), [
    (f"ldaps://ldap.example.org/{BASE}", "ldaps", "ldap.example.org", 636, BASE),
    (f"ldap://LDAP.example.org:1389/{BASE}", "ldap", "ldap.example.org", 1389, BASE),
    ("ldaps://[::1]:6360/ou=People,dc=x", "ldaps", "::1", 6360, "ou=People,dc=x"),
    ("ldaps://dc1/ou=Library%20Users,dc=corp,dc=example", "ldaps", "dc1", 636,
     "ou=Library Users,dc=corp,dc=example"),
])
def test_an_ldap_url_gives_the_host_port_and_base_dn(
    url: str, scheme: str, host: str, port: int, base: str
) -> None:
    parsed = parse_ldap_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.base_dn) == (scheme, host, port, base)
    assert parsed.implicit_tls is (scheme == "ldaps")
    assert is_ldap_url(url) and not is_ldap_url("mysql+pymysql://koha@db/koha")


@pytest.mark.parametrize(("url", "words"), [
    ("ldapi:///dc=x", "expected ldaps://"),
    ("ldaps:///dc=x", "names no host"),
    ("ldaps://host", "no base DN"),
    ("ldaps://host/not a dn", "not a distinguished name"),
    ("ldaps://host/dc=x?uid?sub?(uid=a)", "profile says them"),
    ("ldaps://admin:pw@host/dc=x", "no user or password"),
    ("ldaps://host:0/dc=x", "port 0"),
])
def test_a_url_resetbot_cannot_use_is_refused_naming_the_setting(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as raised:
        parse_ldap_url(url)
    assert str(raised.value).startswith("DIRECTORY_URL: ")
    assert "pw@" not in str(raised.value)


def test_the_config_reads_every_setting_and_never_shows_the_password(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = LdapConfig.from_env(env(
        DIRECTORY_TLS_CA_FILE=str(ca),
        DIRECTORY_STAFF_GROUP=f"cn=staff,ou=groups,{BASE}",
        DIRECTORY_PROFILE="openldap",
        DIRECTORY_LDAP_WINDOW="4",
    ))
    assert config.window == 4 and LdapConfig.from_env(env()).window == 8
    assert config.bind_password == SECRET and config.ca_file == ca
    assert config.staff_group == f"cn=staff,ou=groups,{BASE}"
    assert config.profile.name == "openldap" and config.base_dn == BASE
    assert SECRET not in repr(config) and SECRET not in str(config)


def test_the_bind_password_may_come_from_a_file_never_from_both(tmp_path: Path) -> None:
    secret_file = tmp_path / "bind"
    secret_file.write_text(SECRET + "\n")
    read = LdapConfig.from_env(env(DIRECTORY_BIND_PASSWORD="<unset>",
                                   DIRECTORY_BIND_PASSWORD_FILE=str(secret_file)))
    assert read.bind_password == SECRET
    with pytest.raises(ConfigError, match="not both") as both:
        LdapConfig.from_env(env(DIRECTORY_BIND_PASSWORD_FILE=str(secret_file)))
    with pytest.raises(ConfigError, match="DIRECTORY_BIND_PASSWORD: not set"):
        LdapConfig.from_env(env(DIRECTORY_BIND_PASSWORD="<unset>"))
    secret_file.write_text(SECRET + "\nsecond line\n")
    with pytest.raises(ConfigError, match="on one line") as two_lines:
        LdapConfig.from_env(env(DIRECTORY_BIND_PASSWORD="<unset>",
                                DIRECTORY_BIND_PASSWORD_FILE=str(secret_file)))
    assert SECRET not in str(both.value) and SECRET not in str(two_lines.value)


@pytest.mark.parametrize(("changes", "words"), [
    ({"DIRECTORY_BIND_DN": "<unset>"}, "DIRECTORY_BIND_DN: not set"),
    ({"DIRECTORY_BIND_DN": "resetbot"}, "DIRECTORY_BIND_DN: 'resetbot' is not a distinguished"),
    ({"DIRECTORY_TLS_CA_FILE": "/nonexistent/ca.pem"}, "DIRECTORY_TLS_CA_FILE: there is no file"),
    ({"DIRECTORY_STAFF_GROUP": "staff"}, "DIRECTORY_STAFF_GROUP: 'staff' is not"),
    ({"DIRECTORY_PROFILE": "koha-ldap"}, "DIRECTORY_PROFILE: 'koha-ldap' is neither"),
    ({"DIRECTORY_LDAP_WINDOW": "0"}, "DIRECTORY_LDAP_WINDOW: expected a whole number"),
    ({"DIRECTORY_LDAP_WINDOW": "eight"}, "DIRECTORY_LDAP_WINDOW: expected a whole number"),
])
def test_each_setting_is_refused_by_name(changes: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        LdapConfig.from_env(env(**changes))


def test_an_active_directory_sign_in_name_is_a_bind_dn() -> None:
    config = LdapConfig.from_env(env(DIRECTORY_BIND_DN="svc-resetbot@corp.example"))
    assert config.bind_dn == "svc-resetbot@corp.example"


def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        LdapConfig.from_env(env(DIRECTORY_TLS_CA_FILE=str(empty)))


def test_the_shipped_profiles_load_and_name_their_families() -> None:
    openldap, active = load_ldap_profile("openldap"), load_ldap_profile("active-directory")
    assert (openldap.id, openldap.username, openldap.set_by) == (
        "entryUUID", ("uid",), "password-modify"
    )
    assert (active.id, active.id_syntax, active.set_by) == ("objectGUID", "guid", "unicode-pwd")
    assert openldap.attributes()[:2] == ["entryUUID", "uid"]
    assert type(rules_for(openldap)).__name__ == "OpenLdapRules"


OWN = """
[ldap]
object_filter = "(&(objectClass=inetOrgPerson)(employeeType=patron))"
id = "entryUUID"
username = ["uid", "employeeNumber"]
name = "cn"
staff = "group-members"
password = "password-modify"
must_change = "pwd-reset"
unlock = "pwd-account-locked-time"
locked_on_purpose = "ppolicy-permanent"
"""


def test_a_profile_file_is_read_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(OWN)
    profile = load_ldap_profile(str(path))
    assert profile.username == ("uid", "employeeNumber") and profile.email is None
    assert profile.id_syntax == "text" and profile.password_rules == "none"


@pytest.mark.parametrize(("edit", "words"), [
    (("[ldap]", "[sql]"), "ldap: expected an [ldap] section"),
    (('id = "entryUUID"', 'id = "entry UUID"'), "ldap.id: expected an attribute name"),
    (('staff = "group-members"', 'staff = "memberOf"'), "ldap.staff: unknown value 'memberOf'"),
    (('unlock = "pwd-account-locked-time"\n', ""), "ldap.unlock: missing"),
    (('object_filter = "(&(objectClass=inetOrgPerson)(employeeType=patron))"',
      'object_filter = "objectClass=person"'), "ldap.object_filter: expected an LDAP filter"),
    (('name = "cn"', 'name = "cn"\ncolour = "red"'), "ldap.colour: unknown key"),
    (('password = "password-modify"', "password = 1"), "ldap.password: unknown value 1"),
])
def test_a_wrong_profile_is_refused_with_file_key_and_reason(
    edit: tuple[str, str], words: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_ldap_profile(OWN.replace(*edit), name="mine", source="mine.toml")
    assert str(raised.value).startswith("mine.toml: ")
    assert words in str(raised.value)


def test_kinds_of_two_server_families_are_refused_together() -> None:
    mixed = parse_ldap_profile(OWN.replace('must_change = "pwd-reset"',
                                           'must_change = "pwd-last-set"'),
                               name="mine", source="mine.toml")
    with pytest.raises(ConfigError, match=r"ldap\.must_change: 'pwd-last-set' does not go with"):
        rules_for(mixed)
