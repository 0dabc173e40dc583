"""Users from a file, in Slack: the form's file_input, end to end over signed HTTP.

The app reads the file through the Slack stand-in (`files.info`, then a download with the bot
token), matches it against the directory as `--users-file` does, shows the preview in place of
"Reading the file…", and a confirm resets exactly the users the file matched. On SQLite and
PostgreSQL (resetbot's own table) and on Koha's `borrowers` on MariaDB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from blocks.ids import ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW
from core.db import make_engine
from core.directory import Directory
from core.models import AuditEntry, PendingRequest, ResetTask, TaskStatus
from core.settings import Settings
from jobs.context import WorkerContext
from tests.scenarios.test_approval import SECOND
from tests.scenarios.test_task_centre import click_in_view, list_file, rows_of
from tests.support.databases import mariadb_database
from tests.support.engine import run_until_final
from tests.support.koha import OLD_HASH, create_borrowers
from tests.support.signing import (
    ADMIN,
    RunningApp,
    app_on_its_own_state,
    app_settings,
    form_state,
    start_app,
    view_text,
)
from tests.support.slack_standin import SlackStandIn

GOOD_PASSWORD = "Tulip-Lantern-47-Quay"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: The listed users: ids FIRST_ID.., usernames u00100.., addresses u00100@example.org...
FIRST_ID = 100
LISTED = 5000


@dataclass(frozen=True)
class ListedFile:
    """A 5,000-line file and what it should match."""

    lines: list[str]
    expected_ids: set[int]
    unknown: dict[int, str]  # line -> value
    ambiguous: dict[int, str]
    repeated: int


def username(number: int) -> str:
    return f"u{number:05d}"


def make_list(first_id: int, count: int) -> ListedFile:
    """Usernames, some in other case, some as addresses; unknown, repeated and ambiguous ones.

    The directory holds `lena` and `LENA` (one name ignoring case: ambiguous) and two users
    sharing `family@example.org` (ambiguous too).
    """
    lines: list[str] = []
    expected: set[int] = set()
    unknown: dict[int, str] = {}
    ambiguous: dict[int, str] = {}
    repeated = 0
    for index in range(count - 100):
        user_id = first_id + index
        name = username(user_id)
        if index % 7 == 0:
            lines.append(f"{name}@Example.org")  # an address, in another case
        elif index % 11 == 0:
            lines.append(name.upper())  # a username in another case: matched ignoring case
        else:
            lines.append(name)
        expected.add(user_id)
    for number in range(60):
        lines.append(f"nobody{number}")
        unknown[len(lines)] = f"nobody{number}"
    for number in range(30):
        lines.append(username(first_id + number))  # already on an earlier line
        repeated += 1
    for _ in range(5):
        lines.append("Lena")
        ambiguous.setdefault(len(lines), "Lena")
    for _ in range(5):
        lines.append("family@example.org")
        ambiguous.setdefault(len(lines), "family@example.org")
    # Only the first of each repeated ambiguous line is listed; the rest count as repeated.
    ambiguous = {min(k for k, v in ambiguous.items() if v == value): value
                 for value in set(ambiguous.values())}
    repeated += 8
    assert len(lines) == count
    return ListedFile(lines, expected, unknown, ambiguous, repeated)


def add_listed_users(engine: Engine, directory: Directory, first_id: int, count: int) -> None:
    """resetbot's own table: `count - 100` listed users, lena/LENA, and a shared address."""
    rows = [
        {"id": first_id + index, "username": username(first_id + index),
         "full_name": f"User {index}", "email": f"{username(first_id + index)}@example.org",
         "role": None, "password_hash": "old-hash", "must_change_password": False}
        for index in range(count - 100)
    ]
    extra = first_id + count
    rows += [
        {"id": extra, "username": "lena", "full_name": "Lena One", "email": None},
        {"id": extra + 1, "username": "LENA", "full_name": "Lena Two", "email": None},
        {"id": extra + 2, "username": "kim", "full_name": "Kim Parent",
         "email": "family@example.org"},
        {"id": extra + 3, "username": "lee", "full_name": "Lee Child",
         "email": "family@example.org"},
    ]
    for row in rows:
        row.setdefault("role", None)
        row.setdefault("password_hash", "old-hash")
        row.setdefault("must_change_password", False)
    with engine.begin() as connection:
        connection.execute(insert(directory.table), rows)


def add_listed_borrowers(engine: Engine, first_id: int, count: int) -> None:
    """Koha's borrowers: the same people (user id = username, a card number each)."""
    people = [(first_id + index, f"C{first_id + index:07d}", username(first_id + index),
               f"{username(first_id + index)}@example.org") for index in range(count - 100)]
    extra = first_id + count
    # Koha compares user ids without case: `lena` (a user id) and `LENA` (the card number of
    # a patron without one) are both found for "Lena".
    people += [(extra, "C9000001", "lena", None), (extra + 1, "LENA", None, None),
               (extra + 2, "C9000003", "kim", "family@example.org"),
               (extra + 3, "C9000004", "lee", "family@example.org")]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO borrowers (borrowernumber, cardnumber, userid, firstname, surname, "
                "email, flags, login_attempts, password, branchcode, categorycode) VALUES "
                "(:n, :card, :userid, 'Pat', 'Ron', :email, 0, 0, :hash, 'MAIN', 'PT')"
            ),
            [{"n": n, "card": card, "userid": userid, "email": email, "hash": OLD_HASH}
             for n, card, userid, email in people],
        )


# ---- the app ---------------------------------------------------------------------------------


@pytest.fixture
def file_app(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory, engine: Engine,
    redis_conn: Redis, slack_standin: SlackStandIn,
) -> Iterator[RunningApp]:
    """The app on resetbot's own table, with 5,000 listed users (and lena/LENA, kim/lee)."""
    add_listed_users(engine, directory, FIRST_ID, LISTED)
    configured = app_settings(settings, slack_standin, chunk_size=500, claim_batch=500)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)


@pytest.fixture
def koha_file_app(
    settings: Settings, redis_conn: Redis, slack_standin: SlackStandIn
) -> Iterator[RunningApp]:
    """The app on Koha's borrowers (MariaDB); resetbot's own state on the test's database."""
    with mariadb_database() as url:
        koha = make_engine(url)
        create_borrowers(koha)
        add_listed_borrowers(koha, FIRST_ID, LISTED)
        koha.dispose()
        configured = app_settings(
            replace(settings, directory_url=url, directory_profile="koha", password_rounds=4,
                    password_allow_weak_rounds=True),
            slack_standin, chunk_size=500, claim_batch=500,
        )
        with app_on_its_own_state(configured, redis_conn, slack_standin) as running:
            yield running


def opened_view(app: RunningApp) -> dict[str, Any]:
    """The modal as Slack holds it (with its id), as a view_submission carries it."""
    app.open_modal()
    view: dict[str, Any] = app.standin.calls("views.open")[-1].response["view"]
    return view


def file_values(standin: SlackStandIn, file_id: str, scope: str = "selected_only",
                **form: Any) -> dict[str, Any]:
    values: dict[str, Any] = form_state(scope, **form)
    values["users_file"] = {"users_file": {"type": "file_input",
                                           "files": [standin.file_json(file_id)]}}
    return values


def submit_file(app: RunningApp, file_id: str, **form: Any) -> dict[str, Any]:
    """Submit the form with the file; return the ack's body (the "Reading the file…" view)."""
    view = opened_view(app)
    answer = app.slack.submit(dict(view, state={"values": file_values(app.standin, file_id,
                                                                      **form)}))
    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.json()
    return body


def after_ack(app: RunningApp, body: dict[str, Any]) -> dict[str, Any]:
    """The view that replaced "Reading the file…" (views.update after the ack)."""
    assert body["response_action"] == "update", body
    assert body["view"]["title"]["text"] == "Reading the file"
    call = app.standin.wait_for_call("views.update", timeout=60)
    view: dict[str, Any] = call.response["view"]
    return view



def password_hashes(app: RunningApp) -> dict[int, str | None]:
    profile = app.directory.profile
    query = text(f"SELECT {profile.id}, {profile.password} FROM {profile.table}")
    with app.directory.engine.connect() as connection:
        return {int(row[0]): row[1] for row in connection.execute(query)}


def confirm_and_run(app: RunningApp, preview: dict[str, Any]) -> ResetTask:
    answer = app.slack.submit(preview)
    assert answer.json() == {"response_action": "clear"}, answer.body
    with app.sessions() as session:
        task = session.scalars(select(ResetTask).order_by(ResetTask.id.desc())).first()
        assert task is not None
    context = WorkerContext.build(app.settings, app.redis)
    try:
        final = run_until_final(context, task.id, timeout=300)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED, final
    return task


# ---- the 5,000-line file, end to end ------------------------------------------------------------


def check_a_listed_file_end_to_end(app: RunningApp) -> None:
    listed = make_list(FIRST_ID, LISTED)
    file_id = app.standin.share_file(("\n".join(listed.lines) + "\n").encode(), "class.txt",
                                     filetype="text")
    before = password_hashes(app)

    preview = after_ack(app, submit_file(app, file_id, password=GOOD_PASSWORD))

    # Read through the Web API with the bot token, from the stand-in's own host.
    [info] = app.standin.calls("files.info")
    assert info.params["file"] == file_id
    [download] = app.standin.downloads()
    assert download.headers["authorization"] == f"Bearer {app.standin.token}"
    assert download.ok
    assert preview["callback_id"] == "bulk_reset_confirm", view_text(preview)
    shown = view_text(preview)
    assert f"*Users to reset*\n{len(listed.expected_ids):,}" in shown
    assert (f"*From the file:* 5,000 entries, {len(listed.expected_ids):,} users matched, "
            f"60 not found, 2 matching several users, {listed.repeated} repeated") in shown
    # The first 20 unmatched lines, with their line numbers; the rest are counted.
    for line, value in list(listed.unknown.items())[:20]:
        assert f"line {line:,}: `{value}`: not in the directory" in shown
    assert f"line {list(listed.unknown)[20]:,}:" not in shown
    assert "… and 42 more." in shown
    assert GOOD_PASSWORD not in str(preview)

    # Every unmatched line is kept with the request (for the private list), and no secret.
    with app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None
        assert sorted(map(int, pending.selection)) == sorted(listed.expected_ids)  # ids as text
        report = pending.file_report
        assert report is not None
    unmatched = {item["line"]: item for item in report["unmatched"]}
    assert {line: item["value"] for line, item in unmatched.items()} == {
        **listed.unknown, **listed.ambiguous}
    assert sorted(unmatched[min(listed.ambiguous)]["could_be"]) == ["LENA", "lena"]
    assert sorted(unmatched[max(listed.ambiguous)]["could_be"]) == ["kim", "lee"]
    assert GOOD_PASSWORD not in str(report)

    # Confirm resets exactly the matched users.
    confirm_and_run(app, preview)
    after = password_hashes(app)
    changed = {user_id for user_id in after if after[user_id] != before[user_id]}
    assert changed == listed.expected_ids


@pytest.mark.slow
def test_a_listed_file_previews_and_resets_exactly_its_users(file_app: RunningApp) -> None:
    check_a_listed_file_end_to_end(file_app)


@pytest.mark.mariadb
@sqlite_only
@pytest.mark.slow
def test_a_listed_file_on_koha(koha_file_app: RunningApp) -> None:
    check_a_listed_file_end_to_end(koha_file_app)


# ---- formats -------------------------------------------------------------------------------------


@sqlite_only
def test_a_csv_with_its_columns_in_another_order_and_excel_utf16(file_app: RunningApp) -> None:
    csv_text = ("Name,EMAIL,UserName\r\n"
                "Anna,,u00100\r\n"
                "Ben,u00101@example.org,\r\n"
                "\"Cy, Jr\",,U00102\r\n")
    utf16 = b"\xff\xfe" + csv_text.encode("utf-16-le")
    file_id = file_app.standin.share_file(utf16, "from-excel.csv")
    preview = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    assert preview["callback_id"] == "bulk_reset_confirm", view_text(preview)
    with file_app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None
        assert sorted(map(int, pending.selection)) == [100, 101, 102]


@sqlite_only
def test_excel_unicode_text_with_tabs(file_app: RunningApp) -> None:
    tsv = "Email\tName\tCardNumber\r\nu00104@example.org\tDee\t\r\n\tEd\tu00105\r\n"
    file_id = file_app.standin.share_file(b"\xff\xfe" + tsv.encode("utf-16-le"), "list.txt",
                                          filetype="text")
    preview = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    with file_app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None and sorted(map(int, pending.selection)) == [104, 105]


@sqlite_only
def test_utf8_with_bom_is_read(file_app: RunningApp) -> None:
    file_id = file_app.standin.share_file("\ufeffusername\nu00100\nu00103\n".encode())
    preview = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    with file_app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None and sorted(map(int, pending.selection)) == [100, 103]


# ---- refusals ------------------------------------------------------------------------------------


@sqlite_only
def test_a_file_over_10_mb_is_refused_on_its_field_before_any_download(
    file_app: RunningApp
) -> None:
    file_id = file_app.standin.share_file(b"u00100\n", size=10 * 1024 * 1024 + 1)
    body = submit_file(file_app, file_id, password=GOOD_PASSWORD)
    assert body["response_action"] == "errors"
    assert "at most 10 MB" in body["errors"]["users_file"]
    assert file_app.standin.calls("files.info") == []
    assert file_app.standin.downloads() == []


@sqlite_only
def test_a_file_larger_than_slack_said_stops_being_read_past_10_mb(file_app: RunningApp) -> None:
    big = b"u00100\n" * (10 * 1024 * 1024 // 7 + 10)
    file_id = file_app.standin.share_file(big, size=100)
    refused = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    assert refused["title"]["text"] == "File not used"
    assert "more than 10.0 MB; at most 10 MB fit" in view_text(refused)
    with file_app.sessions() as session:
        assert session.scalars(select(PendingRequest)).all() == []


@sqlite_only
def test_a_binary_file_is_refused(file_app: RunningApp) -> None:
    file_id = file_app.standin.share_file(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)),
                                          "users.csv")
    refused = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    assert refused["title"]["text"] == "File not used"
    assert "This is not a text file" in view_text(refused)
    with file_app.sessions() as session:
        assert session.scalars(select(PendingRequest)).all() == []
        reasons = [e.detail.get("reason") for e in session.scalars(
            select(AuditEntry).where(AuditEntry.action == "refused"))]
    assert "file refused" in reasons


class _Witness(BaseHTTPRequestHandler):
    """A server on another host (name) that records every request it gets."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"u00100\n")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@sqlite_only
def test_a_file_on_a_foreign_host_is_never_fetched(file_app: RunningApp) -> None:
    witness = ThreadingHTTPServer(("127.0.0.1", 0), _Witness)
    thread = threading.Thread(target=witness.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        port = witness.server_address[1]
        # Another host name (localhost, not 127.0.0.1), and another port, of the same machine.
        file_id = file_app.standin.share_file(
            b"u00100\n", url=f"http://localhost:{port}/files-pri/T0LIBRARY-F1/users.txt")
        refused = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    finally:
        witness.shutdown()
        witness.server_close()
        thread.join(timeout=5)
    assert refused["title"]["text"] == "File not used"
    assert "did not fetch it" in view_text(refused)
    assert _Witness.seen == []


@sqlite_only
def test_the_stand_in_refuses_a_download_without_the_bot_token(
    file_app: RunningApp
) -> None:
    import urllib.request

    file_id = file_app.standin.share_file(b"u00100\n")
    url = file_app.standin.file_json(file_id)["url_private_download"]
    with urllib.request.urlopen(url) as response:
        assert response.headers.get_content_type() == "text/html"
        assert b"u00100" not in response.read()
    assert not file_app.standin.downloads()[-1].ok


@sqlite_only
def test_a_file_needs_a_selected_scope_and_not_picked_users_too(file_app: RunningApp) -> None:
    file_id = file_app.standin.share_file(b"u00100\n")
    body = submit_file(file_app, file_id, scope="all", password=GOOD_PASSWORD)
    assert body["response_action"] == "errors"
    assert "Only the users picked" in body["errors"]["users_file"]
    body = submit_file(file_app, file_id, users=(100,), password=GOOD_PASSWORD)
    assert "not both" in body["errors"]["users_file"]
    assert file_app.standin.calls("files.info") == []


@sqlite_only
def test_everyone_except_a_file_of_users(file_app: RunningApp) -> None:
    file_id = file_app.standin.share_file(b"u00100\nu00101\n")
    preview = after_ack(file_app, submit_file(file_app, file_id, scope="all_except_selected",
                                              password=GOOD_PASSWORD))
    with file_app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None and sorted(map(int, pending.selection)) == [100, 101]
    total = LISTED - 100 + 4
    assert f"*Users to reset*\n{total - 2:,}" in view_text(preview)


@sqlite_only
def test_long_hostile_unmatched_lines_still_fit_the_preview(file_app: RunningApp) -> None:
    lines = ["u00100"] + [f"{'&<' * 150}{number}" for number in range(25)]
    file_id = file_app.standin.share_file("\n".join(lines).encode())
    preview = after_ack(file_app, submit_file(file_app, file_id, password=GOOD_PASSWORD))
    # The stand-in checks Block Kit's limits: the preview was accepted as it is.
    assert preview["callback_id"] == "bulk_reset_confirm"
    shown = view_text(preview)
    assert "&lt;" in shown and "<&" not in shown
    assert "… and 5 more." in shown


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://files.slack.com/files-pri/T1-F1/download/a.csv", True),
    ("https://slack.com/files-pri/T1-F1/download/a.csv", True),
    ("http://files.slack.com/files-pri/T1-F1/download/a.csv", False),
    ("https://files.slack.com:8443/files-pri/T1-F1/download/a.csv", False),
    ("https://files.slack.com.example.org/files-pri/a.csv", False),
    ("https://user@files.slack.com/files-pri/a.csv", False),
    ("https://example.org/files-pri/T1-F1/download/a.csv", False),
    ("file:///etc/passwd", False),
])
def test_only_the_clients_own_slack_host_is_trusted_with_the_token(
    url: str, allowed: bool
) -> None:
    from bot.slack_files import on_slack_host

    assert on_slack_host(url, "https://slack.com/api/") is allowed


# ---- Send me the list: the file's unused lines beside the exact list ----------------------------


@sqlite_only
def test_send_me_the_list_of_a_file_preview_brings_every_unused_line(
    file_app: RunningApp,
) -> None:
    """The modal shows the first 20 lines that were not used; the private list has them all,
    with their line numbers, in a second file beside the list of who would be reset."""
    app = file_app
    listed = make_list(FIRST_ID, LISTED)
    # A formula must not reach a spreadsheet as one.
    lines = [*listed.lines, "=HYPERLINK(1)"]
    file_id = app.standin.share_file(("\n".join(lines) + "\n").encode(), "class.txt",
                                     filetype="text")
    preview = after_ack(app, submit_file(app, file_id, password=GOOD_PASSWORD))
    assert ("send_list", SEND_LIST_OF_PREVIEW) in [
        (b["accessory"]["action_id"], b["accessory"]["value"]) for b in preview["blocks"]
        if "accessory" in b]

    click_in_view(app, preview, ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW)
    unused = list_file(app.standin, ADMIN, count=2)
    dm = app.standin.dm_channel(ADMIN)
    users_file, unused_file = app.standin.files(dm)
    assert unused_file.filename == "reset-preview-lines-not-used.csv"
    users = rows_of(users_file.text)
    assert app.standin.files_in_public_channels() == []

    # The list: exactly the users the file matched.
    assert len(users) == len(listed.expected_ids)
    assert {row["username"].lower() for row in users} == {
        username(user_id) for user_id in listed.expected_ids}
    # The unused lines: every one, with its number, why, and whom it could be.
    assert len(unused) == len(listed.unknown) + len(listed.ambiguous) + 1 > 20
    by_line = {int(row["line"]): row for row in unused}
    for line, value in listed.unknown.items():
        assert (by_line[line]["value"], by_line[line]["why"], by_line[line]["could_be"]) == (
            value, "not in the directory", "")
    for line, value in listed.ambiguous.items():
        assert (by_line[line]["value"], by_line[line]["why"]) == (
            value, "matches several users")
    assert sorted(by_line[min(listed.ambiguous)]["could_be"].split("; ")) == ["LENA", "lena"]
    assert sorted(by_line[max(listed.ambiguous)]["could_be"].split("; ")) == ["kim", "lee"]
    hostile = by_line[len(lines)]["value"]
    assert hostile == "'=HYPERLINK(1)"
    assert GOOD_PASSWORD not in unused_file.text + users_file.text
    with app.sessions() as session:
        [sent] = session.scalars(select(AuditEntry).where(AuditEntry.action == "send_list"))
    assert (sent.detail["users"], sent.detail["unused_lines"]) == (len(users), len(unused))


@pytest.fixture
def approval_file_app(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory, engine: Engine,
    redis_conn: Redis, slack_standin: SlackStandIn,
) -> Iterator[RunningApp]:
    """`file_app` where every reset waits for a second admin's approval."""
    add_listed_users(engine, directory, FIRST_ID, LISTED)
    configured = replace(app_settings(settings, slack_standin), reset_approval_min_users=1,
                         reset_admins=frozenset({ADMIN, SECOND}))
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)


@sqlite_only
def test_an_approver_gets_the_unused_lines_of_a_request_made_from_a_file(
    approval_file_app: RunningApp,
) -> None:
    app = approval_file_app
    file_id = app.standin.share_file(b"u00100\nnobody\nu00101\nLena\n", "few.txt",
                                     filetype="text")
    preview = after_ack(app, submit_file(app, file_id, password=GOOD_PASSWORD))
    saved = app.slack.submit(preview).json()
    assert "waits for another admin's approval" in view_text(saved["view"])
    with app.sessions() as session:
        [task] = session.scalars(select(ResetTask))
    assert task.status == TaskStatus.AWAITING_APPROVAL

    assert app.slack.click("send_list", str(task.id), user=SECOND).status == 200
    unused = list_file(app.standin, SECOND, count=2)
    users_file, unused_file = app.standin.files(app.standin.dm_channel(SECOND))
    assert unused_file.filename == f"reset-{task.id}-lines-not-used.csv"
    assert [row["username"] for row in rows_of(users_file.text)] == ["u00100", "u00101"]
    assert [(row["line"], row["value"], row["why"]) for row in unused] == [
        ("2", "nobody", "not in the directory"), ("4", "Lena", "matches several users")]
