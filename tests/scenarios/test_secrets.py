"""No password at rest, in a log line or in Slack; and an audit trail that holds none either.

A whole task of each mode goes through the real Slack app (signed HTTP), a worker on a private
Redis, aiosmtpd and the Slack stand-in, while a handler on the root logger keeps every record at
DEBUG (rq's, Bolt's, slack_sdk's and ours). Every password is known: the default ones because
the test types them, the generated ones because a spy on the engine's `generate_password` sees
each one made (including those whose mail failed and that nobody ever received). Then every Redis
key and value of every type, every row of every table, every log record (with its traceback),
every HTTP answer of the app and every call the stand-in received are searched for each of them.

Then the audit trail: every request, refusal, confirm, cancel, retry and task end, read back with
`resetbot audit [--since DATE] [--csv]`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import jobs.chunks
from bot.cli import main as resetbot
from core.directory import Directory
from core.models import AuditEntry, PendingRequest, ResetTask, TaskStatus
from core.settings import Settings
from jobs.context import WorkerContext
from jobs.worker import ResetWorker
from tests.support.faults import PrivateRedis, database_text, redis_dump, wait_until
from tests.support.faults import private_redis as private_redis
from tests.support.signing import (
    ADMIN,
    OUTSIDER,
    Response,
    RunningApp,
    app_settings,
    form_state,
    start_app,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

DEFAULT_PASSWORD = "Lantern-Quay-4821-Moss"
UNCONFIRMED_PASSWORD = "Orchard-Beacon-7730-Fen"  # previewed, never confirmed: stays sealed
REFUSED_PASSWORD = "alice-Harbour-77-Gorse"  # holds a username: refused by the policy


#: The test's own mail server logs each message it receives: that is the mailbox, not resetbot.
NOT_RESETBOT = ("mail.log",)


class KeepEverything(logging.Handler):
    """Every record, formatted with its traceback, from the whole process but the test's own
    mail server."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self._lock_lines = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(NOT_RESETBOT):
            return
        text = self.format(record)
        with self._lock_lines:
            self.lines.append(text)

    @property
    def text(self) -> str:
        with self._lock_lines:
            return "\n".join(self.lines)


@pytest.fixture
def every_log_line() -> Iterator[KeepEverything]:
    handler = KeepEverything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class Spy:
    """Sees every password the engine generates; it changes nothing about them."""

    seen: list[str] = field(default_factory=list)

    def wrap(self, real: Callable[..., str]) -> Callable[..., str]:
        def generate(*args: Any, **kwargs: Any) -> str:
            password = real(*args, **kwargs)
            self.seen.append(password)
            return password

        return generate


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    monkeypatch.setattr(jobs.chunks, "generate_password", spy.wrap(jobs.chunks.generate_password))
    return spy


@dataclass
class Run:
    app: RunningApp
    redis: Redis
    answers: list[Response] = field(default_factory=list)

    def submit(self, view: dict[str, Any], *, user: str = ADMIN) -> Response:
        answer = self.app.slack.submit(view, user=user)
        self.answers.append(answer)
        assert answer.status == 200, answer.body
        return answer

    def request(self, values: dict[str, Any]) -> Response:
        return self.submit(submitted_view(self.app.open_modal(), values))

    def confirm(self, values: dict[str, Any]) -> int:
        preview = self.request(values).json()
        assert preview["response_action"] == "update", preview
        assert self.submit(preview["view"]).json() == {"response_action": "clear"}
        with self.app.sessions() as session:
            return int(session.scalars(select(ResetTask.id).order_by(ResetTask.id.desc()))
                       .first() or 0)

    def work_until_told(self, task_id: int) -> ResetTask:
        """An in-process worker (its logs reach the root logger) until the thread has it all."""
        context = WorkerContext.build(self.app.settings, self.redis)
        try:
            def told() -> ResetTask | None:
                ResetWorker(context, reaper=False).work(burst=True, with_scheduler=True)
                with self.app.sessions() as session:
                    task = session.get(ResetTask, task_id)
                    assert task is not None
                    done = TaskStatus(task.status).is_final and task.summary_posted
                    return task if done else None

            return wait_until(told, 30, f"task {task_id} to end and be reported")
        finally:
            context.close()


@pytest.fixture
def run(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    private_redis: PrivateRedis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> Iterator[Run]:
    configured = app_settings(smtp_server.settings(settings), slack_standin,
                              redis_url=private_redis.url)
    redis = private_redis.client()
    running, thread = start_app(configured, sessions, directory, redis, slack_standin)
    try:
        yield Run(running, redis)
    finally:
        running.stop(thread)
        redis.close()


def test_no_password_anywhere_after_a_task_of_each_mode(
    run: Run, engine: Engine, every_log_line: KeepEverything, generated: Spy,
    smtp_server: SmtpServer, slack_standin: SlackStandIn,
) -> None:
    smtp_server.refuse("alice@example.org", code=450, times=1)  # a retry: a second password
    smtp_server.refuse("erin@example.org", code=550, times=1)  # set, but never mailed

    # Generated mode: everyone, passwords mailed.
    generated_task = run.confirm(form_state("all"))
    assert run.work_until_told(generated_task).status == TaskStatus.COMPLETED_WITH_ERRORS
    # Default mode: a password typed in the modal, refused once, then a good one.
    refused = run.request(form_state("selected_only", (1, 2), password=REFUSED_PASSWORD)).json()
    assert refused["response_action"] == "errors" and "username" in refused["errors"]["password"]
    default_task = run.confirm(form_state("selected_only", (1, 2, 4), password=DEFAULT_PASSWORD))
    assert run.work_until_told(default_task).status == TaskStatus.COMPLETED
    # A preview never confirmed: its password waits, sealed, until the request expires.
    waiting = run.request(form_state("all_without_role", password=UNCONFIRMED_PASSWORD)).json()
    assert waiting["response_action"] == "update"

    mailed = [mail.password for mail in smtp_server.messages]
    assert len(mailed) == 4 and set(mailed) <= set(generated.seen)  # bob, carol, grace, alice
    assert len(generated.seen) == 7 + 1  # one per user, one more for alice's retry
    secrets = [*generated.seen, DEFAULT_PASSWORD, UNCONFIRMED_PASSWORD, REFUSED_PASSWORD]
    in_redis = redis_dump(run.redis)
    in_tables = database_text(engine)
    assert in_redis and in_tables["reset_items"]  # scanned something real
    for source in ("rq.worker", "jobs.planning", "slack_sdk.web", "resetbot.bolt"):
        assert f" {source}" in every_log_line.text, f"no log records from {source} were seen"
    for secret in secrets:
        assert secret.encode() not in in_redis, "a password in Redis"
        for table, text in in_tables.items():
            assert secret not in text, f"a password in table {table}"
        assert secret not in every_log_line.text, "a password in a log line"
        assert slack_standin.requests_containing(secret) == [], "a password reached Slack"
        for answer in run.answers:
            assert secret.encode() not in answer.body, "a password echoed to Slack"
    # The one default password still at rest is sealed, on the request that waits for it.
    with run.app.sessions() as session:
        sealed = session.scalars(select(PendingRequest.default_password_sealed)
                                 .where(PendingRequest.default_password_sealed.is_not(None)))
        assert len(list(sealed)) == 1
        assert session.scalars(select(ResetTask.default_password_sealed)
                               .where(ResetTask.default_password_sealed.is_not(None))).all() == []


# ---- the audit trail -----------------------------------------------------------------------------


def audit_cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert resetbot(["audit", *args], environ=settings.to_env()) == 0
    return capsys.readouterr().out


def test_every_step_is_audited_and_readable_with_resetbot_audit(
    run: Run, sessions: sessionmaker[Session], smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = run.app
    started = datetime.now(UTC)
    # Refusals: someone who may not reset; a request the policy refuses.
    assert app.slack.command(user=OUTSIDER).status == 200
    refused = run.request(form_state("selected_only", (1,), password=REFUSED_PASSWORD)).json()
    assert refused["response_action"] == "errors"
    # A request, confirmed, run to the end with one mail failing for good; its retry.
    smtp_server.refuse("bob@example.org", code=550, times=1)
    first = run.confirm(form_state("selected_only", (1, 2)))
    assert run.work_until_told(first).status == TaskStatus.COMPLETED_WITH_ERRORS
    assert app.slack.click("retry_failed", str(first)).status == 200
    wait_until(lambda: _tasks(sessions) == 2, 10, "the retry task")
    retry = first + 1
    # Cancelled while queued.
    assert app.slack.click("cancel_task", str(retry)).status == 200
    assert run.work_until_told(retry).status == TaskStatus.CANCELLED

    with sessions() as session:
        trail = list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    actions = [(entry.action, entry.task_id) for entry in trail]
    for expected in [("refused", None), ("request", None), ("confirm", first),
                     ("start", first), ("finish", first), ("retry", retry),
                     ("cancel", retry), ("finish", retry)]:
        assert expected in actions, f"{expected} missing from {actions}"
    steps = {entry.detail.get("step") for entry in trail if entry.action == "refused"}
    assert {"command", "submit"} <= steps, "the refused command and the refused request"
    assert all(entry.actor and entry.at for entry in trail)
    [ended] = [e for e in trail if (e.action, e.task_id) == ("finish", first)]
    assert ended.detail["status"] == "completed_with_errors"
    assert ended.detail["counts"] == {"notified": 1, "notify_failed": 1}

    # Read back as a person would: the table, the CSV, and since a date.
    shown = audit_cli(app.settings, capsys)
    assert len(shown.strip().splitlines()) == len(trail)
    assert OUTSIDER in shown and "refused" in shown and f"#{retry}" in shown
    rows = list(csv.DictReader(io.StringIO(audit_cli(app.settings, capsys, "--csv"))))
    assert [(r["action"], r["task_id"]) for r in rows] == [
        (e.action, "" if e.task_id is None else str(e.task_id)) for e in trail]
    assert json.loads(rows[-1]["detail"])["status"] == "cancelled"
    tomorrow = (started + timedelta(days=1)).date().isoformat()
    assert "No audit entries." in audit_cli(app.settings, capsys, "--since", tomorrow)
    since_start = audit_cli(app.settings, capsys, "--csv", "--since",
                            (started - timedelta(seconds=1)).isoformat())
    assert len(list(csv.DictReader(io.StringIO(since_start)))) == len(trail)
    for text in (shown, since_start):
        assert REFUSED_PASSWORD not in text
        for mail in smtp_server.messages:
            assert mail.password not in text


def _tasks(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(session.scalars(select(ResetTask.id)).all())
