"""A profile file of a library's own (`DIRECTORY_PROFILE=mine.toml`, an `[ldap]` section) is
what the directory reads and writes by, against a real slapd (issue 19, "Settings"): its
object filter decides who the users are, its username attributes how they are found, its
name attribute what they are called, its password and must-change rules how a reset is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.directory.ldap import attempt_bind
from core.directory.ldap.directory import LdapDirectory
from core.directory.protocol import PasswordSet, SetResult
from core.models import Scope
from tests.support.openldap import OpenLdap, OpenLdapTemplate, seeded_users

#: Everyone but the `p…` bulk patrons, found by uid, called by their cn; the rest as the
#: shipped openldap profile.
MINE = """
[ldap]
object_filter = "(&(objectClass=inetOrgPerson)(!(uid=p*)))"
id = "entryUUID"
username = ["uid"]
name = "cn"
email = "mail"
staff = "group-members"
password = "password-modify"
must_change = "pwd-reset"
unlock = "pwd-account-locked-time"
locked_on_purpose = "ppolicy-permanent"
"""
NEW = "Own-profile-Pass-7"


@pytest.fixture(scope="module")
def template() -> Iterator[OpenLdapTemplate]:
    with OpenLdapTemplate.build() as built:
        yield built


@pytest.fixture
def mine(template: OpenLdapTemplate, tmp_path: Path) -> Iterator[tuple[OpenLdap, LdapDirectory]]:
    path = tmp_path / "mine.toml"
    path.write_text(MINE, encoding="utf-8")
    with template.start() as server:
        directory = LdapDirectory(server.config(DIRECTORY_PROFILE=str(path)))
        yield server, directory
        directory.dispose()


def test_the_files_object_filter_decides_who_the_users_are(
    mine: tuple[OpenLdap, LdapDirectory],
) -> None:
    _, directory = mine
    wanted = {user.uid for user in seeded_users() if not user.uid.startswith("p")}
    assert {user.username for user in directory.scope_users(Scope.ALL, ())} == wanted
    assert directory.preview(Scope.ALL, ()).users == len(wanted)
    assert directory.by_username(["p01"]) == []
    [ann] = directory.by_username(["ann"])
    assert ann.full_name == "Ann Patron"


def test_a_reset_through_the_file_is_made_by_its_rules(
    mine: tuple[OpenLdap, LdapDirectory],
) -> None:
    slapd, directory = mine
    [ann] = directory.by_username(["ann"])
    [outcome] = directory.set_passwords([PasswordSet(ann.id, NEW, must_change=True)])
    assert outcome.result is SetResult.SET
    bound = attempt_bind(slapd.config(), slapd.user_dn("ann"), NEW)
    assert (bound.result, bound.ppolicy_error) == (0, "changeAfterReset")
    assert attempt_bind(slapd.config(), slapd.user_dn("ann"), slapd.seeded("ann").password
                        ).result == 49
