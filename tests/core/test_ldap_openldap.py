"""The LDAP directory against a real OpenLDAP (Debian's slapd, tests/support/openldap.py).

The proof of every write is the directory's own sign-in: a bind as the user, with the password
policy control (tests/support/openldap.py seeds the users; each test gets a fresh copy)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from ldap3 import MODIFY_REPLACE, SUBTREE
from ldap3.utils.log import (
    PROTOCOL,
    get_library_log_detail_level,
    set_library_log_detail_level,
)

from core.directory.ldap import DirectoryTlsError, LdapConfig, connect
from core.directory.ldap import directory as directory_module
from core.directory.ldap import openldap as openldap_module
from core.directory.ldap.directory import LdapDirectory
from core.directory.ldap.openldap import OpenLdapRules
from core.directory.ldap.server import Changes
from core.directory.protocol import (
    Directory,
    DirectoryUnavailable,
    PasswordSet,
    SetResult,
    User,
)
from core.errors import ConfigError, InputError
from core.models import Scope
from tests.support.openldap import (
    BASE_DN,
    DESK_GROUP,
    MIN_LENGTH,
    PAGE_LIMIT,
    PERMANENT_LOCK,
    SERVICE_DN,
    OpenLdap,
    OpenLdapTemplate,
    resetbot_rules,
    seeded_users,
    self_signed,
)
from tests.support.openldap import openldap_template as openldap_template
from tests.support.openldap import slapd as slapd

NEW = "Fresh-pass-42"


@pytest.fixture
def directory(slapd: OpenLdap) -> Iterator[LdapDirectory]:
    """This module's directory (in place of conftest's SQL one): the fresh slapd's, as the
    service account sees it over LDAPS."""
    found = LdapDirectory(slapd.config())
    yield found
    found.dispose()


def users(directory: LdapDirectory) -> dict[str, User]:
    return {user.username: user for user in directory.scope_users(Scope.ALL, ())}


# -- writing, proven by signing in ---------------------------------------------------------------


def test_must_change_the_new_password_binds_with_change_after_reset_the_old_gets_49(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    ann = users(directory)["ann"]
    outcomes = directory.set_passwords([PasswordSet(ann.id, NEW, must_change=True)])
    assert [(o.user_id, o.result) for o in outcomes] == [(ann.id, SetResult.SET)]
    assert slapd.binds("ann", NEW) == (0, "changeAfterReset")
    assert slapd.binds("ann", slapd.old("ann"))[0] == 49
    assert slapd.operational("ann", "pwdReset")["pwdReset"] == ["TRUE"]


def test_without_must_change_pwd_reset_is_removed_and_the_new_password_binds_plainly(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    """ppolicy removes pwdReset itself on the service account's Password Modify: resetbot
    sends nothing after it (one write) when no change is required and no lock is kept."""
    bob = users(directory)["bob"]
    directory.set_passwords([PasswordSet(bob.id, "Between-pass-7", must_change=True)])
    assert slapd.operational("bob", "pwdReset")["pwdReset"] == ["TRUE"]
    assert directory.rules.after_set({}, must_change=False) == {}
    directory.set_passwords([PasswordSet(bob.id, NEW, must_change=False)])
    assert slapd.binds("bob", NEW) == (0, None)
    assert slapd.binds("bob", slapd.old("bob"))[0] == 49
    assert slapd.operational("bob", "pwdReset")["pwdReset"] == []


def test_a_scope_without_role_leaves_staff_and_the_unselected_with_their_old_passwords(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    everyone = users(directory)
    picked = [everyone["ann"].id, everyone["bob"].id, everyone["sam"].id]
    batch = directory.scope_batch(Scope.ALL_WITHOUT_ROLE, (), None, 1000)
    batch = [user for user in batch if user.id in picked]  # a task of two, from that scope
    assert sorted(user.username for user in batch) == ["ann", "bob"]
    outcomes = directory.set_passwords([PasswordSet(user.id, NEW, False) for user in batch])
    assert {outcome.result for outcome in outcomes} == {SetResult.SET}, outcomes
    assert slapd.binds("ann", NEW)[0] == 0
    assert slapd.binds("bob", NEW)[0] == 0
    for untouched in ("sam", "sue", "p03", "nomail"):
        assert slapd.binds(untouched, slapd.old(untouched)) == (0, None)
        assert slapd.binds(untouched, NEW)[0] == 49


def test_a_lock_on_purpose_is_kept_a_lock_by_failures_is_lifted(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    everyone = users(directory)
    assert everyone["frozen"].locked_on_purpose and not everyone["tripped"].locked_on_purpose
    assert slapd.binds("tripped", slapd.old("tripped")) == (49, "accountLocked")
    directory.set_passwords([
        PasswordSet(everyone["frozen"].id, NEW, False),
        PasswordSet(everyone["tripped"].id, NEW, False),
    ])
    assert slapd.binds("tripped", NEW) == (0, None)
    assert slapd.binds("frozen", NEW) == (49, "accountLocked")
    assert slapd.operational("frozen", "pwdAccountLockedTime")["pwdAccountLockedTime"] == [
        PERMANENT_LOCK
    ]


def test_a_password_the_policy_refuses_is_that_users_outcome_and_the_batch_goes_on(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    everyone = users(directory)
    ann, bob, p04 = everyone["ann"], everyone["bob"], everyone["p04"]
    directory.set_passwords([PasswordSet(p04.id, NEW, False)])
    directory.set_passwords([PasswordSet(p04.id, "Between-pass-7", False)])
    outcomes = directory.set_passwords([
        PasswordSet(ann.id, "Short1!", False),  # under pwdMinLength
        PasswordSet(p04.id, NEW, False),  # in its history (pwdInHistory)
        PasswordSet(bob.id, NEW, False),
    ])
    assert [outcome.result for outcome in outcomes] == [
        SetResult.REFUSED, SetResult.REFUSED, SetResult.SET,
    ]
    assert "quality" in (outcomes[0].reason or "")
    assert "history" in (outcomes[1].reason or "")
    assert all("Short1!" not in (o.reason or "") and NEW not in (o.reason or "")
               for o in outcomes)
    assert slapd.binds("ann", slapd.old("ann")) == (0, None)
    assert slapd.binds("bob", NEW)[0] == 0


def test_an_id_that_names_nobody_is_not_found_and_the_batch_goes_on(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    ann = users(directory)["ann"]
    gone = "00000000-0000-0000-0000-000000000000"
    outcomes = directory.set_passwords([PasswordSet(gone, NEW, False),
                                        PasswordSet(ann.id, NEW, False)])
    assert [o.result for o in outcomes] == [SetResult.NOT_FOUND, SetResult.SET]
    assert directory.missing_ids([gone, ann.id]) == [gone]


def test_the_server_stopped_mid_batch_raises_a_retryable_error_saying_what_was_done(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    everyone = users(directory)
    names = ["p05", "p06", "p07", "p08", "p09"]

    class StopAfterTwo(OpenLdapRules):
        """The real rules; the real server is stopped once two passwords are set."""

        sets = 0

        def password_request(self, dn: str, password: str,
                             changes: Changes | None = None) -> bytes:
            if self.sets == 2:
                slapd.stop()
            self.sets += 1
            return super().password_request(dn, password, changes)

    directory.rules = StopAfterTwo(directory.profile)
    # One write in flight: the stop falls exactly between the second user and the third (the
    # pipelined case is test_a_server_stopped_with_writes_in_flight_...).
    directory.config = replace(directory.config, window=1)
    with pytest.raises(DirectoryUnavailable) as raised:
        directory.set_passwords([PasswordSet(everyone[n].id, f"{NEW}-{n}", False)
                                 for n in names])
    error = raised.value
    assert error.retryable
    assert [(o.user_id, o.result) for o in error.done] == [
        (everyone[n].id, SetResult.SET) for n in names[:2]
    ]
    assert "cannot be reached" in str(error) and f"{slapd.tls_port}" in str(error)
    assert not any(f"{NEW}-{n}" in str(error) for n in names)
    assert slapd.template.service_password not in str(error)
    slapd.start()  # the same data, running again: who has which password is known
    for n in names[:2]:
        assert slapd.binds(n, f"{NEW}-{n}")[0] == 0
    for n in names[2:]:
        assert slapd.binds(n, slapd.old(n))[0] == 0
    # The directory reconnects by itself on its next call.
    assert directory.set_passwords([PasswordSet(everyone["p07"].id, NEW, False)])[0].result \
        is SetResult.SET


# -- reading -------------------------------------------------------------------------------------


def test_a_server_stopped_with_writes_in_flight_names_only_the_answered_and_a_redo_sets_the_rest(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    """Four writes in flight: the server stops as the sixth user's is made, two users done
    (password and must-change each). The users answered are `done` and have their new password;
    those in flight may or may not (the engine does not mail them and sets them again on
    resuming: here, a second call with fresh passwords); the users never sent keep their old
    password. The server may answer in any order: the sixth is sent once two users are done."""
    everyone = users(directory)
    names = [f"p{n:02d}" for n in range(10, 18)]
    sent: list[str] = []

    class StopAtTheSixth(OpenLdapRules):
        def password_request(self, dn: str, password: str,
                             changes: Changes | None = None) -> bytes:
            if len(sent) == 5:
                slapd.stop()
            sent.append(dn)
            return super().password_request(dn, password, changes)

    directory.rules = StopAtTheSixth(directory.profile)
    directory.config = replace(directory.config, window=4)
    with pytest.raises(DirectoryUnavailable) as raised:
        directory.set_passwords([PasswordSet(everyone[n].id, f"{NEW}-{n}", True)
                                 for n in names])
    done = {outcome.user_id: outcome.result for outcome in raised.value.done}
    assert set(done.values()) == {SetResult.SET}
    assert len(done) >= 2 and set(done) <= {everyone[n].id for n in names[:5]}, done
    slapd.start()
    in_flight = []
    for n in names:
        if everyone[n].id in done:
            assert slapd.binds(n, f"{NEW}-{n}") == (0, "changeAfterReset"), n
        elif n in names[:6]:
            assert slapd.binds(n, f"{NEW}-{n}")[0] == 0 or slapd.binds(n, slapd.old(n))[0] == 0
            in_flight.append(n)
        else:
            assert slapd.binds(n, slapd.old(n)) == (0, None), n
    directory.rules = OpenLdapRules(directory.profile)
    redo = [n for n in names if everyone[n].id not in done]
    assert {n for n in redo if n not in in_flight} == set(names[6:])
    outcomes = directory.set_passwords([PasswordSet(everyone[n].id, f"Redo-pass-{n}", True)
                                        for n in redo])
    assert [o.result for o in outcomes] == [SetResult.SET] * len(redo)
    for n in redo:
        assert slapd.binds(n, f"Redo-pass-{n}") == (0, "changeAfterReset"), n


def test_a_pipelined_batch_reports_each_users_outcome_in_order_and_sets_each_as_asked(
    slapd: OpenLdap, directory: LdapDirectory
) -> None:
    """Seventeen users, sixteen in flight at once: a refusal, a user gone and a lock on purpose
    among them change nobody else's outcome; must-change is each user's own."""
    directory.config = replace(directory.config, window=16)
    everyone = users(directory)
    names = ["frozen", "tripped", *[f"p{n:02d}" for n in range(1, 16)]]
    gone = "00000000-0000-0000-0000-000000000000"
    batch = [PasswordSet(everyone[n].id, "Short1!" if n == "p05" else f"{NEW}-{n}",
                         must_change=index % 2 == 0)
             for index, n in enumerate(names)]
    batch.insert(3, PasswordSet(gone, NEW, False))
    outcomes = directory.set_passwords(batch)
    assert [o.user_id for o in outcomes] == [item.user_id for item in batch]
    expected = {everyone["p05"].id: SetResult.REFUSED, gone: SetResult.NOT_FOUND}
    assert [o.result for o in outcomes] == [expected.get(i.user_id, SetResult.SET)
                                            for i in batch]
    for index, n in enumerate(names):
        if n == "p05":
            assert slapd.binds(n, slapd.old(n)) == (0, None)
        elif n == "frozen":
            assert slapd.binds(n, f"{NEW}-{n}") == (49, "accountLocked")
        else:
            assert slapd.binds(n, f"{NEW}-{n}") == (
                0, "changeAfterReset" if index % 2 == 0 else None), n


def test_the_four_scopes_are_counted_as_the_preview_shows_them(directory: LdapDirectory) -> None:
    everyone = users(directory)
    total = len(seeded_users())
    assert directory.preview(Scope.ALL, ()).users == total
    counted = directory.preview(Scope.ALL, ())
    # nomail and blank have no usable address; sam and sue are staff; frozen is locked.
    assert (counted.without_email, counted.staff, counted.locked) == (2, 2, 1)
    assert counted.emailable == total - 2
    patrons = directory.preview(Scope.ALL_WITHOUT_ROLE, ())
    assert (patrons.users, patrons.staff) == (total - 2, 0)
    picked = [everyone["sam"].id, everyone["nomail"].id]
    chosen = directory.preview(Scope.SELECTED_ONLY, picked)
    assert (chosen.users, chosen.staff, chosen.without_email) == (2, 1, 1)
    others = directory.preview(Scope.ALL_EXCEPT_SELECTED, picked)
    assert (others.users, others.staff, others.without_email) == (total - 2, 1, 1)
    assert directory.survey() == counted


def test_the_staff_group_may_be_a_group_of_unique_names(slapd: OpenLdap) -> None:
    desk = LdapDirectory(slapd.config(DIRECTORY_STAFF_GROUP=DESK_GROUP))
    staff = [user.username for user in desk.scope_users(Scope.ALL, ()) if user.is_staff]
    assert staff == ["sue"]
    desk.dispose()


def test_users_are_read_by_their_profile_attributes(directory: LdapDirectory) -> None:
    everyone = users(directory)
    assert everyone["ann"].full_name == "Ann Patron" and everyone["ann"].email == "ann@example.org"
    assert everyone["p01"].full_name == "Patron 01"  # no displayName: cn
    assert everyone["blank"].email is None and everyone["nomail"].email is None
    assert everyone["sam"].role == "staff" and everyone["ann"].role is None
    assert len(everyone["ann"].id) == 36  # entryUUID's text
    assert [u.username for u in directory.users_by_id([everyone["bob"].id])] == ["bob"]
    assert [u.username for u in directory.by_username(["ann", "nobody"])] == ["ann"]
    assert directory.usernames_ignoring_case(["ANN"]) == {"ann": [("ann", everyone["ann"].id)]}
    assert directory.patrons_among([everyone["ann"].id, everyone["sam"].id]) == 1
    assert directory.usernames_in_password("xxbobxx-Pass1", Scope.ALL, ()) == 1
    assert [u.username for u in directory.search("patron 0", 3)] == ["p01", "p02", "p03"]
    assert isinstance(directory, Directory)


def test_searches_are_paged_past_the_servers_size_limit(slapd: OpenLdap) -> None:
    config = slapd.config()
    plain = connect(config)
    plain.search(BASE_DN, "(objectClass=inetOrgPerson)", SUBTREE, attributes=["uid"])
    assert plain.result["result"] == 4  # sizeLimitExceeded: one unpaged search gets 10 at most
    plain.unbind()
    paged = LdapDirectory(config, page_size=4)
    rows = list(paged.picker_rows())
    assert len(rows) == len(seeded_users()) > PAGE_LIMIT
    assert len({row.id for row in rows}) == len(rows)
    paged.dispose()


def walk(directory: LdapDirectory, scope: Scope, selection: list[str], limit: int,
         after: str | None = None) -> list[list[User]]:
    """The batches a planner gets, as it asks for them (the next after the last one)."""
    batches: list[list[User]] = []
    while True:
        batch = directory.scope_batch(scope, selection, after, limit)
        batches.append(batch)
        if len(batch) < limit:
            return batches
        after = batch[-1].id


def test_a_scope_is_streamed_in_pages_and_batches_in_a_stable_order(slapd: OpenLdap) -> None:
    # Pages of 4 (the service account's size limit is PAGE_LIMIT), batches of 7: 25 users in
    # 4 batches, every one once, the same order on a second walk.
    paged = LdapDirectory(slapd.config(), page_size=4)
    batches = walk(paged, Scope.ALL, [], 7)
    ids = [user.id for batch in batches for user in batch]
    assert [len(batch) for batch in batches] == [7, 7, 7, 4]
    assert len(ids) == len(set(ids)) == len(seeded_users()) > PAGE_LIMIT
    assert paged.pages_read == 7  # ceil(25 / 4): the walk read page by page
    assert [user.id for batch in walk(paged, Scope.ALL, [], 7) for user in batch] == ids
    patrons = [user for batch in walk(paged, Scope.ALL_WITHOUT_ROLE, [], 5) for user in batch]
    assert len(patrons) == len(seeded_users()) - 2 and not any(u.is_staff for u in patrons)
    paged.dispose()


def test_a_planner_resumed_elsewhere_goes_on_after_the_last_user_planned(
    slapd: OpenLdap,
) -> None:
    first = LdapDirectory(slapd.config(), page_size=4)
    everyone = [user.id for batch in walk(first, Scope.ALL, [], 7) for user in batch]
    first.dispose()
    # Another worker (a new directory object, no walk of its own) resumes after the 10th.
    second = LdapDirectory(slapd.config(), page_size=4)
    rest = [user.id for batch in walk(second, Scope.ALL, [], 7, after=everyone[9])
            for user in batch]
    assert rest == everyone[10:]
    with pytest.raises(InputError, match="changed while the task was being planned"):
        second.scope_batch(Scope.ALL, [], "00000000-0000-0000-0000-000000000000", 7)
    second.dispose()


def test_the_preview_counts_page_by_page_whatever_the_page_size(
    slapd: OpenLdap, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = LdapDirectory(slapd.config())
    expected = {scope: whole.preview(scope, []) for scope in (Scope.ALL, Scope.ALL_WITHOUT_ROLE)}
    everyone = users(whole)
    whole.dispose()
    paged = LdapDirectory(slapd.config(), page_size=3)
    for scope, counts in expected.items():
        before = paged.pages_read
        assert paged.preview(scope, []) == counts
        assert paged.pages_read - before == 9  # ceil(25 / 3)
    # A selection to leave out longer than one filter holds is left out as the pages come.
    monkeypatch.setattr(directory_module, "IDS_PER_FILTER", 3)
    picked = [everyone[uid].id for uid in ("sam", "nomail", "ann", "bob", "frozen")]
    others = paged.preview(Scope.ALL_EXCEPT_SELECTED, picked)
    assert (others.users, others.staff, others.without_email, others.locked) == (
        len(seeded_users()) - 5, 1, 1, 0)
    chosen = paged.preview(Scope.SELECTED_ONLY, picked)
    assert (chosen.users, chosen.staff, chosen.locked) == (5, 1, 1)
    assert paged.usernames_in_password("x-bob-ann-1", Scope.ALL_EXCEPT_SELECTED, picked) == 0
    paged.dispose()


def test_the_directory_password_rules_are_read_from_the_ppolicy(directory: LdapDirectory) -> None:
    rules = directory.password_rules()
    assert rules.min_length == MIN_LENGTH
    assert rules.violations("Fresh-pass-42") == []
    [reason] = rules.violations("Ab1!")
    assert f"shorter than {MIN_LENGTH}" in reason and "cn=default,ou=policies" in reason
    # Generated passwords are made at least that long, whatever PASSWORD_GENERATED_LENGTH says.
    assert directory.generated_minimum() == MIN_LENGTH


def test_ping_proves_the_server_answers_and_says_when_it_does_not(slapd: OpenLdap) -> None:
    """What /healthz asks of the directory."""
    directory = LdapDirectory(slapd.config())
    try:
        directory.ping()
        slapd.stop()
        with pytest.raises(DirectoryUnavailable):
            directory.ping()
    finally:
        directory.dispose()


def test_a_directory_that_does_not_answer_asks_generated_passwords_for_no_minimum(
    slapd: OpenLdap,
) -> None:
    """The task's first set meets the outage and pauses it; the minimum is not what fails."""
    directory = LdapDirectory(slapd.config())
    slapd.stop()
    try:
        assert directory.generated_minimum() == 0
    finally:
        directory.dispose()


# -- TLS and the service account's secret ---------------------------------------------------------


def test_ldap_urls_upgrade_with_starttls_before_the_bind(slapd: OpenLdap) -> None:
    connection = connect(slapd.config("ldap"))
    assert connection.tls_started and connection.bound
    connection.unbind()
    directory = LdapDirectory(slapd.config("ldap"))
    assert directory.preview(Scope.ALL, ()).users == len(seeded_users())
    ann = users(directory)["ann"]  # the pipelined writes go over the upgraded socket too
    assert directory.set_passwords([PasswordSet(ann.id, NEW, True)])[0].result is SetResult.SET
    assert slapd.binds("ann", NEW) == (0, "changeAfterReset")
    directory.dispose()


def test_a_server_that_will_not_start_tls_never_gets_the_bind(slapd: OpenLdap) -> None:
    """A plain listener answers StartTLS with protocolError and records every byte sent."""
    received = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            request = peer.recv(4096)
            received.extend(request)
            start = 2 + (request[1] & 0x7F if request[1] & 0x80 else 0)  # after the length
            message_id = request[start : start + 2 + request[start + 1]]  # INTEGER, echoed
            text = b"no TLS"
            result = b"\x0a\x01\x02\x04\x00\x04" + bytes([len(text)]) + text
            body = message_id + b"\x78" + bytes([len(result)]) + result
            peer.sendall(b"\x30" + bytes([len(body)]) + body)
            while chunk := peer.recv(4096):
                received.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    env = slapd.env("ldap") | {"DIRECTORY_URL": f"ldap://localhost:{port}/{BASE_DN}"}
    with pytest.raises(DirectoryTlsError, match="did not start TLS"):
        connect(LdapConfig.from_env(env))
    thread.join(timeout=5)
    listener.close()
    assert not thread.is_alive()  # resetbot hung up at once: nothing more was sent
    assert b"1.3.6.1.4.1.1466.20037" in received  # the StartTLS request, and nothing else
    assert SERVICE_DN.encode() not in received
    assert slapd.template.service_password.encode() not in received


@pytest.mark.parametrize("scheme", ["ldaps", "ldap"])
def test_a_certificate_from_another_ca_is_refused(
    slapd: OpenLdap, tmp_path: Path, scheme: str
) -> None:
    other, _ = self_signed(tmp_path, "other", ("localhost", "127.0.0.1"))
    with pytest.raises(DirectoryTlsError) as raised:
        connect(slapd.config(scheme, DIRECTORY_TLS_CA_FILE=other))
    assert "certificate" in str(raised.value).lower() or "tls" in str(raised.value).lower()
    assert slapd.template.service_password not in str(raised.value)



@pytest.mark.parametrize("scheme", ["ldaps", "ldap"])
def test_without_a_ca_file_the_systems_cas_verify_the_server(
    slapd: OpenLdap, scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No DIRECTORY_TLS_CA_FILE is no switch to turn verification off: the system's CAs are
    used (OpenSSL's default paths, which SSL_CERT_FILE names here), so the test server's own
    CA is refused until the system trusts it."""
    config = slapd.config(scheme, DIRECTORY_TLS_CA_FILE="")
    assert config.ca_file is None
    empty = tmp_path / "no-cas.pem"
    empty.write_text("", encoding="ascii")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-folder"))
    with pytest.raises(DirectoryTlsError):
        connect(config)
    monkeypatch.setenv("SSL_CERT_FILE", str(slapd.ca_file))
    connection = connect(config)
    assert connection.bound
    connection.unbind()

def test_the_bind_password_is_never_shown(
    slapd: OpenLdap, caplog: pytest.LogCaptureFixture
) -> None:
    secret = slapd.template.service_password
    config = slapd.config()
    assert secret not in repr(config) and secret not in str(config)
    caplog.set_level(logging.DEBUG)
    directory = LdapDirectory(config)
    directory.set_passwords([PasswordSet(users(directory)["ann"].id, NEW, False)])
    assert secret not in repr(directory) and secret not in repr(directory._connection)
    assert secret not in caplog.text and NEW not in caplog.text
    assert NEW not in repr(PasswordSet("x", NEW, False))
    directory.dispose()
    wrong = slapd.config(DIRECTORY_BIND_PASSWORD="Not-the-secret-9")
    with pytest.raises(ConfigError, match="refused the service account") as raised:
        connect(wrong)
    assert "Not-the-secret-9" not in str(raised.value)


def test_no_password_is_set_while_ldap3s_protocol_log_would_write_it(
    slapd: OpenLdap, directory: LdapDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    ann = users(directory)["ann"]
    caplog.set_level(logging.DEBUG)
    before = get_library_log_detail_level()
    set_library_log_detail_level(PROTOCOL)
    try:
        with pytest.raises(ConfigError, match="PROTOCOL detail"):
            directory.set_passwords([PasswordSet(ann.id, NEW, False)])
    finally:
        set_library_log_detail_level(before)
    assert NEW not in caplog.text
    assert slapd.binds("ann", slapd.old("ann")) == (0, None)


def test_an_unreachable_server_is_a_retryable_error(slapd: OpenLdap) -> None:
    slapd.stop()
    with pytest.raises(DirectoryUnavailable) as raised:
        LdapDirectory(slapd.config()).preview(Scope.ALL, ())
    assert raised.value.retryable
    assert slapd.template.service_password not in str(raised.value)


def test_the_service_account_cannot_read_passwords_or_change_other_attributes(
    slapd: OpenLdap,
) -> None:
    """The ACL gives it what Password Modify and ppolicy need, and nothing else."""
    connection = connect(slapd.config())
    connection.search(slapd.user_dn("ann"), "(objectClass=*)", "BASE",
                      attributes=["userPassword", "mail"])
    assert "userPassword" not in connection.response[0]["raw_attributes"] or not (
        connection.response[0]["raw_attributes"]["userPassword"]
    )
    connection.modify(slapd.user_dn("ann"), {"mail": [(MODIFY_REPLACE, ["evil@example.org"])]})
    assert connection.result["result"] == 50  # insufficientAccessRights
    connection.unbind()



def test_the_docs_note_gives_the_acl_the_tests_run_under() -> None:
    """The olcAccess lines of the OpenLDAP note, unfolded as LDIF is, are the rules the test
    server runs with."""
    documented: list[str] = []
    for line in (openldap_module.__doc__ or "").splitlines():
        if line.startswith("    olcAccess: {"):
            documented.append(line.strip().split("}", 1)[1])
        elif documented and line.startswith("     "):
            documented[-1] += line[5:]  # the block's indent, and the one space LDIF drops
    assert documented == resetbot_rules()


def test_the_test_server_leaves_no_process_and_no_folder_behind() -> None:
    with OpenLdapTemplate.build(seeded_users()[:2]) as built:
        with built.start() as server:
            assert server.process is not None and server.process.poll() is None
            folders = [built.folder, server.folder]
            process = server.process
        assert process.poll() is not None and not server.folder.exists()
    assert not any(folder.exists() for folder in folders)


def test_check_names_what_the_service_account_cannot_read(slapd: OpenLdap) -> None:
    LdapDirectory(slapd.config()).check()  # the working settings pass
    wrong_base = slapd.env() | {
        "DIRECTORY_URL": f"ldaps://localhost:{slapd.tls_port}/ou=nowhere,{BASE_DN}"
    }
    with pytest.raises(ConfigError, match="DIRECTORY_URL: the base DN 'ou=nowhere"):
        LdapDirectory(LdapConfig.from_env(wrong_base)).check()
    no_group = slapd.config(DIRECTORY_STAFF_GROUP=f"cn=nobody,ou=groups,{BASE_DN}")
    with pytest.raises(ConfigError, match="DIRECTORY_STAFF_GROUP: there is no entry"):
        LdapDirectory(no_group).check()
