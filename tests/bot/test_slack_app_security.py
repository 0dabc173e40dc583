"""Hostile requests to the running Slack app: forged, stale, malformed, replayed, or from people
who may not reset. Each gets a clear refusal (401, 400, a view error or an ephemeral line), never
a 500, and changes nothing.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import pytest
from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from bot.wsgi import HealthCheck, make_wsgi_app, redis_probe
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import VERSION_TABLE, head_revision, upgrade
from core.models import AuditEntry, PendingRequest, ResetTask
from core.settings import Settings
from tests.support.signing import (
    ADMIN,
    CHANNEL,
    OUTSIDER,
    SIGNING_SECRET,
    RunningApp,
    SignedSlack,
    app_settings,
    form_state,
    sign,
    start_app,
    submitted_view,
)
from tests.support.signing import slack_app as slack_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DEFAULT_PASSWORD = "Quiet-Harbour-92-Lamp"


def count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def refusals(sessions: sessionmaker[Session]) -> list[AuditEntry]:
    with sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == "refused").order_by(AuditEntry.id)
        return list(session.scalars(query))


def command_body() -> bytes:
    return urlencode({"command": "/reset-passwords", "text": "", "user_id": ADMIN,
                      "user_name": "admin", "channel_id": CHANNEL, "trigger_id": "1.2.3",
                      "team_id": "T0LIBRARY"}).encode()


# ---- signatures -------------------------------------------------------------------------------


@sqlite_only
def test_a_correctly_signed_request_is_served(slack_app: RunningApp,
                                              slack_standin: SlackStandIn) -> None:
    assert slack_app.slack.post(command_body()).status == 200
    slack_standin.wait_for_call("views.open")


@sqlite_only
@pytest.mark.parametrize("case", ["unsigned", "wrong secret", "tampered body", "stale",
                                  "future", "empty headers", "garbage timestamp",
                                  "non-ascii signature", "no v0 prefix"])
def test_requests_without_a_valid_signature_get_401(
    slack_app: RunningApp, slack_standin: SlackStandIn, case: str
) -> None:
    body = command_body()
    now = str(int(time.time()))
    kwargs: dict[str, Any] = {
        "unsigned": {"signed": False},
        "wrong secret": {"signature": sign("not-the-secret", now, body)},
        "tampered body": {"signature": sign(SIGNING_SECRET, now, body + b"&x=1")},
        "stale": {"timestamp": str(int(time.time()) - 301)},
        "future": {"timestamp": str(int(time.time()) + 301)},
        "empty headers": {"timestamp": "", "signature": ""},
        "garbage timestamp": {"timestamp": "yesterday", "signature": "v0=00"},
        "non-ascii signature": {"signature": "v0=é"},
        "no v0 prefix": {"signature": sign(SIGNING_SECRET, now, body)[3:]},
    }[case]
    answer = slack_app.slack.post(body, **kwargs)
    assert answer.status == 401
    assert answer.json() == {"error": "invalid request"}
    # At start: resetbot reads the workspace, Bolt checks the token; nothing since.
    assert slack_standin.count_by_method() == {"auth.test": 2}


@sqlite_only
def test_a_stale_request_is_refused_without_logging_its_body(
    slack_app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    view = {"id": "V1", "type": "modal", "callback_id": "bulk_reset", "private_metadata": "",
            "state": {"values": form_state("all", password=DEFAULT_PASSWORD)}}
    with caplog.at_level(logging.DEBUG):
        answer = slack_app.slack.payload(
            {"type": "view_submission", "user": {"id": ADMIN}, "view": view},
            timestamp=str(int(time.time()) - 600),
        )
    assert answer.status == 401
    assert DEFAULT_PASSWORD not in caplog.text
    assert "without a valid Slack signature" in caplog.text


@sqlite_only
def test_unknown_paths_and_methods(slack_app: RunningApp) -> None:
    assert slack_app.slack.get("/nope").status == 404
    assert slack_app.slack.post(command_body(), path="/slack/install").status == 404
    assert slack_app.slack.get("/slack/events").status == 405
    assert slack_app.slack.post(b"", path="/healthz").status == 405


# ---- malformed but signed -----------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("body,content_type", [
    (b"payload=%7Bnot+json", "application/x-www-form-urlencoded"),
    (b"{not json", "application/json"),
    (b"payload=%5B1%2C2%5D", "application/x-www-form-urlencoded"),
    (b"\xff\xfe\x00payload", "application/x-www-form-urlencoded"),
    (urlencode({"payload": json.dumps({"type": "view_submission", "view": "x"})}).encode(),
     "application/x-www-form-urlencoded"),
    (urlencode({"payload": json.dumps({"type": "view_submission",
                                       "view": {"callback_id": 7}})}).encode(),
     "application/x-www-form-urlencoded"),
    (urlencode({"payload": json.dumps({"type": "block_actions", "actions": "x"})}).encode(),
     "application/x-www-form-urlencoded"),
    (urlencode({"payload": json.dumps({"type": "block_actions", "actions": [{}]})}).encode(),
     "application/x-www-form-urlencoded"),
    (urlencode({"payload": json.dumps({"type": "block_suggestion", "user": 5})}).encode(),
     "application/x-www-form-urlencoded"),
    (json.dumps({"type": "event_callback", "event": ["x"]}).encode(), "application/json"),
    (json.dumps({"type": "event_callback", "event": {"type": "app_home_opened",
                                                     "user": 12}}).encode(),
     "application/json"),
    (json.dumps({"type": "event_callback", "authorizations": "x"}).encode(),
     "application/json"),
])
def test_malformed_payloads_get_400_not_500(
    slack_app: RunningApp, body: bytes, content_type: str
) -> None:
    answer = slack_app.slack.post(body, content_type=content_type)
    assert answer.status == 400, answer.body
    assert answer.json()["error"].startswith("malformed request")


@sqlite_only
def test_a_huge_body_is_refused_before_it_is_read(slack_app: RunningApp) -> None:
    port = slack_app.server.server_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(
            b"POST /slack/events HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1500000\r\n\r\npayload=aaaa"
        )
        status_line = connection.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"413", status_line


@sqlite_only
def test_the_guard_refuses_big_bodies_behind_any_wsgi_server(
    sessions: sessionmaker[Session], redis_conn: Redis
) -> None:
    from io import BytesIO

    from bot.wsgi import MAX_BODY_BYTES, ResetbotWsgi

    guard = ResetbotWsgi(None, signing_secret=None, health=dict)
    guard._slack = object()  # type: ignore[assignment]  # never reached: refused first
    statuses: list[str] = []
    environ = {"PATH_INFO": "/slack/events", "REQUEST_METHOD": "POST",
               "CONTENT_LENGTH": str(MAX_BODY_BYTES + 1), "wsgi.input": BytesIO(b"")}
    guard(environ, lambda status, headers: statuses.append(status))  # type: ignore[arg-type,return-value]
    assert statuses == ["413 Payload Too Large"]


@sqlite_only
def test_unknown_callback_and_action_ids_get_a_clear_answer(
    slack_app: RunningApp, sample_users: list[Any]
) -> None:
    unknown_view = slack_app.slack.submit({"id": "V1", "type": "modal",
                                           "callback_id": "something_else",
                                           "state": {"values": {}}})
    assert unknown_view.status == 200
    body = unknown_view.json()
    assert body["response_action"] == "update"
    assert "does not know this form" in json.dumps(body["view"])
    assert slack_app.slack.click("launch_missiles", "1").status == 200
    assert slack_app.slack.options("alice", action_id="something").json() == {"options": []}
    assert count(slack_app.sessions, ResetTask) == 0


@sqlite_only
@pytest.mark.parametrize("values,field,message", [
    ({}, "scope", "Choose who to reset."),
    ({"scope": "all"}, "scope", "Choose who to reset."),
    ({"scope": {"scope": {"selected_option": {"value": "everyone_please"}}}}, "scope",
     "Choose who to reset."),
    ({"scope": {"scope": {"selected_option": {"value": "selected_only"}}},
      "users": {"users": {"selected_options": "1,2"}}}, "users", "could not be read"),
    ({"scope": {"scope": {"selected_option": {"value": "selected_only"}}},
      "users": {"users": {"selected_options": [{"value": "a\nb"}, {"value": ""},
                                               {"value": "9" * 151}, {"nope": 1}]}}},
     "users", "4 of the picked users are not directory users"),
    ({"scope": {"scope": {"selected_option": {"value": "selected_only"}}},
      "users": {"users": {"selected_options": [{"value": str(i)} for i in range(1001)]}}},
     "users", "Pick at most 1,000 users"),
    ({"scope": {"scope": {"selected_option": {"value": "all"}}},
      "password": {"password": {"value": ["x"]}}}, "password", "could not be read"),
    ({"scope": {"scope": {"selected_option": {"value": "all"}}},
      "password": {"password": {"value": "Aa1!" * 5000}}}, "password",
     "at most 128 characters"),
    ({"scope": {"scope": {"selected_option": {"value": "selected_only"}}},
      "users": {"users": {"selected_options": [{"value": "999999"}]}}},
     "users", "no longer exist"),
])
def test_missing_malformed_or_huge_state_values_become_field_errors(
    slack_app: RunningApp, sample_users: list[Any], values: dict[str, Any], field: str,
    message: str,
) -> None:
    view = {"id": "V1", "type": "modal", "callback_id": "bulk_reset", "private_metadata": "",
            "state": {"values": values}}
    answer = slack_app.slack.submit(view)
    assert answer.status == 200
    body = answer.json()
    assert body["response_action"] == "errors"
    assert message in body["errors"][field]
    assert "Aa1!Aa1!" not in answer.body.decode()
    assert count(slack_app.sessions, PendingRequest) == 0


@sqlite_only
def test_a_state_that_is_not_an_object_is_a_field_error(slack_app: RunningApp) -> None:
    answer = slack_app.slack.submit({"id": "V1", "type": "modal", "callback_id": "bulk_reset",
                                     "state": None})
    assert answer.json()["errors"] == {"scope": "Choose who to reset."}


@sqlite_only
@pytest.mark.parametrize("metadata", ["", "not-a-pending-id", "x" * 3000,
                                      json.dumps({"password": DEFAULT_PASSWORD}),
                                      "A" * 32])
def test_a_confirm_with_a_forged_pending_id_starts_nothing(
    slack_app: RunningApp, sample_users: list[Any], metadata: str
) -> None:
    answer = slack_app.slack.submit({"id": "V1", "type": "modal",
                                     "callback_id": "bulk_reset_confirm",
                                     "private_metadata": metadata})
    assert answer.status == 200
    body = answer.json()
    assert body["response_action"] == "update"
    assert "Start again" in json.dumps(body["view"])
    assert count(slack_app.sessions, ResetTask) == 0
    assert slack_app.queue.count == 0
    assert [r.detail["step"] for r in refusals(slack_app.sessions)] == ["confirm"]


@sqlite_only
def test_another_admin_cannot_confirm_someone_elses_preview(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, sample_users: list[Any],
) -> None:
    configured = replace(app_settings(settings, slack_standin),
                         reset_admins=frozenset({ADMIN, "UOTHERADMIN"}))
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        opened = running.open_modal()
        preview = running.slack.submit(
            submitted_view(opened, form_state("selected_only", (1,)))
        ).json()["view"]
        answer = running.slack.submit(preview, user="UOTHERADMIN")
        assert answer.json()["response_action"] == "update"
        assert "unknown or not yours" in json.dumps(answer.json()["view"])
        assert count(sessions, ResetTask) == 0
        # Its owner still can.
        assert running.slack.submit(preview).json() == {"response_action": "clear"}
        assert count(sessions, ResetTask) == 1
    finally:
        running.stop(thread)


# ---- non-admins at every step -----------------------------------------------------------------


@sqlite_only
def test_a_non_admin_is_refused_at_every_step_and_changes_nothing(
    slack_app: RunningApp, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    # An admin prepares real things an outsider might replay: a pending request and a task.
    opened = slack_app.open_modal()
    preview = slack_app.slack.submit(
        submitted_view(opened, form_state("selected_only", (1,)))
    ).json()["view"]
    second = slack_app.slack.submit(
        submitted_view(opened, form_state("selected_only", (2,)))
    ).json()["view"]
    assert slack_app.slack.submit(second).json() == {"response_action": "clear"}
    with slack_app.sessions() as session:
        task = session.scalars(select(ResetTask)).one()
        task_id = task.id
    opens_before = slack_standin.count("views.open")

    command = slack_app.slack.command(user=OUTSIDER).json()
    assert command == {"text": command["text"], "response_type": "ephemeral"}
    assert "not allowed" in command["text"]
    assert slack_app.slack.command("status", user=OUTSIDER).json()["text"] == command["text"]
    assert slack_app.slack.options("alice", user=OUTSIDER).json() == {"options": []}
    submit = slack_app.slack.submit(submitted_view(opened, form_state("all")), user=OUTSIDER)
    assert submit.json()["response_action"] == "errors"
    assert "not allowed" in submit.json()["errors"]["scope"]
    confirm = slack_app.slack.submit(preview, user=OUTSIDER)
    assert confirm.json()["response_action"] == "update"
    assert "not allowed" in json.dumps(confirm.json()["view"])
    assert slack_app.slack.click("cancel_task", str(task_id), user=OUTSIDER).status == 200
    assert slack_app.slack.click("retry_failed", str(task_id), user=OUTSIDER).status == 200
    assert slack_app.slack.click_in_home("open_reset_modal", user=OUTSIDER).status == 200

    steps = [r.detail["step"] for r in refusals(slack_app.sessions)]
    assert steps == ["command", "command", "options", "submit", "confirm", "cancel_task",
                     "retry_failed", "open_reset_modal"]
    assert {r.actor for r in refusals(slack_app.sessions)} == {OUTSIDER}
    # Nothing changed: one task, not cancelled; the admin's preview still waits.
    with slack_app.sessions() as session:
        assert [t.id for t in session.scalars(select(ResetTask))] == [task_id]
        found = session.get(ResetTask, task_id)
        assert found is not None and not found.cancel_requested
        waiting = session.get(PendingRequest, preview["private_metadata"])
        assert waiting is not None and waiting.task_id is None
        assert session.scalar(select(func.count()).select_from(PendingRequest)) == 2
    # The button refusals were said ephemerally; the home button shows a notice, not the form.
    slack_standin.wait_for(lambda: len(slack_standin.ephemerals()) >= 2)
    said = [e for e in slack_standin.calls("chat.postEphemeral")]
    assert {c.params["user"] for c in said} == {OUTSIDER}
    assert all("not allowed" in c.params["text"] for c in said)
    notice = slack_standin.wait_for_call("views.open", count=opens_before + 1)
    assert notice.params["view"]["callback_id"] != "bulk_reset"


@sqlite_only
def test_a_non_admin_home_shows_no_tasks(slack_app: RunningApp,
                                         slack_standin: SlackStandIn) -> None:
    slack_app.slack.event({"type": "app_home_opened", "user": OUTSIDER, "tab": "home"})
    home = slack_standin.wait_for_call("views.publish").params["view"]
    text = json.dumps(home)
    assert "not on the list" in text
    assert "open_reset_modal" not in text


@sqlite_only
def test_a_button_naming_no_task_is_refused_clearly(
    slack_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    assert slack_app.slack.click("cancel_task", "drop table").status == 200
    assert slack_app.slack.click("cancel_task", "424242").status == 200
    slack_standin.wait_for(lambda: slack_standin.count("chat.postEphemeral") >= 2)
    texts = [c.params["text"] for c in slack_standin.calls("chat.postEphemeral")]
    assert "That button does not name a reset." in texts
    assert "There is no task #424242." in texts


# ---- health -----------------------------------------------------------------------------------


@sqlite_only
def test_healthz_reports_database_and_redis(slack_app: RunningApp) -> None:
    answer = slack_app.slack.get("/healthz")
    assert answer.status == 200
    assert answer.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@sqlite_only
def test_healthz_is_503_when_redis_is_unreachable(sessions: sessionmaker[Session]) -> None:
    from tests.support.smtp import free_port

    nowhere = redis_probe(f"redis://127.0.0.1:{free_port()}/0")
    check = HealthCheck(sessions, nowhere)
    started = time.monotonic()
    assert check() == {"database": "ok", "redis": "unavailable"}
    assert time.monotonic() - started < 2.0  # a probe does not wait out retries
    wsgi = make_wsgi_app(None, signing_secret=None, sessions=sessions, redis=nowhere,
                         namespace="unused")
    statuses: list[str] = []
    body = b"".join(wsgi({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"},
                         lambda status, headers: statuses.append(status)))  # type: ignore[arg-type,return-value]
    assert statuses == ["503 Service Unavailable"]
    assert json.loads(body)["redis"] == "unavailable"


# ---- outages and the Events API handshake ------------------------------------------------------


@sqlite_only
def test_a_confirm_while_redis_is_down_keeps_the_task_and_says_so(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    slack_standin: SlackStandIn, sample_users: list[Any],
) -> None:
    from tests.support.smtp import free_port

    down = redis_probe(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    running, thread = start_app(app_settings(settings, slack_standin), sessions, directory, down,
                                slack_standin)
    try:
        opened = running.open_modal()
        preview = running.slack.submit(
            submitted_view(opened, form_state("selected_only", (1,)))
        ).json()["view"]
        answer = running.slack.submit(preview)
        assert answer.status == 200 and answer.elapsed < 3
        body = answer.json()
        assert body["response_action"] == "update"
        with sessions() as session:
            task = session.scalars(select(ResetTask)).one()
        assert f"Reset #{task.id} is saved" in json.dumps(body["view"])
        assert task.status == "queued"  # the reaper wakes the oldest queued task
        assert running.slack.get("/healthz").json()["redis"] == "unavailable"
    finally:
        running.stop(thread)


@sqlite_only
def test_the_events_url_verification_handshake(slack_app: RunningApp) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = json.dumps({"token": "t", "challenge": challenge, "type": "url_verification"}).encode()
    answer = slack_app.slack.post(body, content_type="application/json")
    assert answer.status == 200
    assert answer.json() == {"challenge": challenge}
    assert slack_app.slack.post(body, content_type="application/json",
                                signed=False).status == 401


# ---- health: the schema -----------------------------------------------------------------------


def health_over_wsgi(sessions: sessionmaker[Session], redis: Redis) -> tuple[str, Any]:
    wsgi = make_wsgi_app(None, signing_secret=None, sessions=sessions, redis=redis,
                         namespace="unused")
    statuses: list[str] = []
    body = b"".join(wsgi({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"},
                         lambda status, headers: statuses.append(status)))  # type: ignore[arg-type,return-value]
    return statuses[0], json.loads(body)


def test_healthz_is_unavailable_on_a_database_without_the_schema(
    settings: Settings, redis_conn: Redis
) -> None:
    engine = make_engine(settings.database_url)  # a fresh, empty database
    try:
        status, body = health_over_wsgi(make_sessionmaker(engine), redis_conn)
    finally:
        engine.dispose()
    assert status == "503 Service Unavailable"
    assert body == {"status": "unavailable", "redis": "ok",
                    "database": "schema missing: run `resetbot db upgrade`"}


def test_healthz_is_unavailable_when_the_schema_is_behind_the_release(
    settings: Settings, redis_conn: Redis
) -> None:
    assert upgrade(settings) == head_revision()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    try:
        assert health_over_wsgi(sessions, redis_conn) == (
            "200 OK", {"status": "ok", "database": "ok", "redis": "ok"})
        # This release has one revision: a database at any other one is behind (or ahead).
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0000'"))
        status, body = health_over_wsgi(sessions, redis_conn)
    finally:
        engine.dispose()
    assert status == "503 Service Unavailable" and body["status"] == "unavailable"
    assert body["database"] == (f"schema at revision 0000, this release needs "
                                f"{head_revision()}: run `resetbot db upgrade`")


# ---- the audit keeps known subcommands only ---------------------------------------------------


@sqlite_only
def test_the_audit_records_known_subcommands_only(slack_app: RunningApp) -> None:
    typed = "Sesame-Street-42!"  # a password typed after the command by mistake
    for text_typed in (typed, f"{typed} again", "", "STATUS 12", "status"):
        answer = slack_app.slack.command(text_typed, user=OUTSIDER)
        assert answer.status == 200 and "not allowed" in answer.json()["text"]

    kept = [entry.detail for entry in refusals(slack_app.sessions)]
    assert [detail["subcommand"] for detail in kept] == [
        "unknown", "unknown", "open", "status", "status"]
    with slack_app.sessions() as session:
        everything = json.dumps([(e.actor, e.action, e.detail)
                                 for e in session.scalars(select(AuditEntry))])
    assert "sesame" not in everything.lower()


# ---- another workspace ------------------------------------------------------------------------


def from_elsewhere(payload: dict[str, Any], where: str) -> dict[str, Any]:
    """`payload` as another install of the app would send it: another team, another Enterprise
    Grid org, or another app."""
    if where == "team":
        other = {"id": "T0ELSEWHERE", "domain": "elsewhere"}
        user = dict(payload["user"], team_id=other["id"])
        return dict(payload, team=other, user=user)
    if where == "enterprise":
        return dict(payload, team=dict(payload["team"], enterprise_id="E0ELSEWHERE"),
                    enterprise={"id": "E0ELSEWHERE", "name": "Elsewhere"})
    return dict(payload, api_app_id="A0ELSEWHERE")


def captured_payload(slack: SignedSlack, send: Any) -> dict[str, Any]:
    """The payload a SignedSlack helper would post (posted nowhere)."""
    sent: list[dict[str, Any]] = []
    original = slack.payload
    slack.payload = lambda payload, **kwargs: sent.append(payload)  # type: ignore[method-assign]
    try:
        send()
    finally:
        slack.payload = original  # type: ignore[method-assign]
    return sent[0]


@sqlite_only
@pytest.mark.parametrize("where", ["team", "enterprise", "app"])
def test_requests_from_another_workspace_are_refused_and_read_nothing(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, sample_users: list[Any],
    caplog: pytest.LogCaptureFixture, where: str,
) -> None:
    slack_standin.app_id = "ARESETBOT"  # auth.test names the app: its id is checked too
    running, thread = start_app(app_settings(settings, slack_standin), sessions, directory,
                                redis_conn, slack_standin)
    try:
        slack = running.slack
        opened = running.open_modal()  # from this workspace: served
        calls_before = len(slack_standin.calls())
        with sessions() as session:
            audit_before = session.scalar(select(func.count()).select_from(AuditEntry))
        team_field = {"team": {"team_id": "T0ELSEWHERE"}, "enterprise": {
            "enterprise_id": "E0ELSEWHERE"}, "app": {"api_app_id": "A0ELSEWHERE"}}[where]
        requests = {
            "command": lambda: slack.post(urlencode({
                "command": "/reset-passwords", "text": "", "user_id": ADMIN,
                "channel_id": CHANNEL, "trigger_id": "1.2.3", "team_id": "T0LIBRARY",
                "api_app_id": "ARESETBOT", **team_field}).encode()),
            "options": lambda: slack.payload(from_elsewhere(
                captured_payload(slack, lambda: slack.options("alice")), where)),
            "action": lambda: slack.payload(from_elsewhere(
                captured_payload(slack, lambda: slack.click("cancel_task", "1")), where)),
            "home": lambda: slack.payload(from_elsewhere(
                captured_payload(slack, lambda: slack.click_in_home("open_reset_modal")),
                where)),
            "submission": lambda: slack.payload(from_elsewhere(captured_payload(
                slack, lambda: slack.submit(submitted_view(opened, form_state("all")))),
                where)),
        }
        with caplog.at_level(logging.WARNING, logger="resetbot.slack"):
            answers = {name: send() for name, send in requests.items()}

        for name, answer in answers.items():
            assert answer.status == 403, (name, answer.body)
            assert answer.json() == {"error": "this app does not serve your workspace"}
            assert "alice" not in answer.body.decode() and "Alice" not in answer.body.decode()
        assert caplog.text.count("refused a request from another workspace or app") == 5
        # Nothing read or done: no call to Slack, no pending request, nothing in the audit.
        assert len(slack_standin.calls()) == calls_before
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(PendingRequest)) == 0
            assert session.scalar(select(func.count()).select_from(AuditEntry)) == audit_before
        # This workspace is still served.
        assert slack.options("alice").json()["options"][0]["text"]["text"].startswith("Alice")
    finally:
        running.stop(thread)
