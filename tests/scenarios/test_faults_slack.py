"""Slack faults combined with the loss of Redis: messages may be late, never lost.

D's tests cover Slack answering 429/5xx for a while (tests/jobs/test_slack_reporter.py). What they
cannot cover is the delivery jobs themselves vanishing: here Slack is down until the task has
ended, then Redis restarts empty (taking every queued and scheduled delivery with it), then both
come back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.models import ResetTask, Scope, TaskStatus
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reporting import NullReporter
from jobs.slack_reporter import SlackReporter
from jobs.worker import ResetWorker, run_worker
from tests.support.faults import PrivateRedis, wait_until
from tests.support.faults import private_redis as private_redis
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

CHANNEL = "C0SLACKFAULT"


@pytest.fixture
def context(
    settings: Settings, engine: Engine, private_redis: PrivateRedis,
    slack_standin: SlackStandIn, smtp_server: SmtpServer,
) -> Iterator[WorkerContext]:
    from dataclasses import replace

    configured = replace(smtp_server.settings(slack_standin.apply_to(settings)),
                         redis_url=private_redis.url)
    redis: Redis = private_redis.client()
    built = WorkerContext.build(configured, redis, engine=engine, reporter=NullReporter())
    built.reporter = SlackReporter(built, retry_intervals=(1,) * 10)
    yield built
    built.close()
    redis.close()


def task_row(context: WorkerContext, task_id: int) -> ResetTask:
    with context.sessions() as session:
        found = session.get(ResetTask, task_id)
        assert found is not None
        return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_summary_waiting_in_redis_survives_redis_restarting_empty(
    context: WorkerContext, private_redis: PrivateRedis, slack_standin: SlackStandIn,
    smtp_server: SmtpServer, sample_users: list[Any],
) -> None:
    with context.sessions.begin() as session:
        task_id = create_task(session, context.settings, ResetRequest(
            requester="U0STAFF", scope=Scope.ALL, slack_channel=CHANNEL)).id
    enqueue_task(context.queue, task_id)
    slack_standin.rate_limit_next("*", retry_after=30, times=10_000)  # Slack is down

    ResetWorker(context, reaper=False).work(burst=True)

    assert task_row(context, task_id).status == TaskStatus.COMPLETED
    assert len(smtp_server.messages) == 5  # the resets did not wait for Slack
    assert slack_standin.messages(CHANNEL) == []
    private_redis.restart()  # every delivery waiting for Slack is gone
    slack_standin.clear_faults()

    def summary_arrived() -> bool:
        run_worker(context.settings, context.redis, burst=True, context=context)
        return task_row(context, task_id).summary_posted

    wait_until(summary_arrived, 8, "the summary to reach the thread")
    summaries = [m.text for m in slack_standin.messages(CHANNEL)
                 if m.text.startswith(f"Reset #{task_id} ")]
    assert len(summaries) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_confirm_while_redis_is_down_is_saved_answered_in_time_and_runs_later(
    settings: Settings, sessions: Any, directory: Any, private_redis: PrivateRedis,
    slack_standin: SlackStandIn, smtp_server: SmtpServer, sample_users: list[Any],
) -> None:
    """C's test_slack_app_security checks the answer with a client that never retries; this
    one goes through a redis-server that really stops (the app's ordinary client, with its
    retries) and on to the end: the saved task runs once Redis is back, empty."""
    from tests.support.signing import app_settings, form_state, start_app, submitted_view

    configured = app_settings(smtp_server.settings(settings), slack_standin,
                              redis_url=private_redis.url)
    redis: Redis = private_redis.client()
    app, thread = start_app(configured, sessions, directory, redis, slack_standin)
    try:
        preview = app.slack.submit(submitted_view(app.open_modal(),
                                                  form_state("selected_only", (1, 2)))).json()
        private_redis.stop()

        answer = app.slack.submit(preview["view"])

        assert answer.status == 200
        assert answer.elapsed < 3, f"Slack gives up after 3 s; this took {answer.elapsed:.1f} s"
        shown = json.dumps(answer.json())
        assert "saved" in shown and "queue could not be reached" in shown
        with sessions() as session:
            [task] = session.query(ResetTask).all()
            assert task.status == TaskStatus.QUEUED
        private_redis.start()  # back, and empty: the task's job was never there
        context = WorkerContext.build(configured, private_redis.client())
        try:
            def ran() -> bool:
                run_worker(configured, context.redis, burst=True, context=context)
                return task_row(context, task.id).status == TaskStatus.COMPLETED

            wait_until(ran, 20, "the saved task to run")
        finally:
            context.close()
        assert len(smtp_server.messages) == 2
    finally:
        app.stop(thread)
        redis.close()
