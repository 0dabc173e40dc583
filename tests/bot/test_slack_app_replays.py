"""Signed requests are single-use: a replayed signature gets 401, an Events API retry gets 200
without acting twice. Over signed HTTP to the running app, with the shared Redis (and without).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from bot.wsgi import redis_probe
from core.directory import Directory
from core.settings import Settings
from tests.support.signing import (
    ADMIN,
    SIGNING_SECRET,
    TEAM,
    RunningApp,
    app_settings,
    sign,
    start_app,
)
from tests.support.signing import slack_app as slack_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import free_port

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def command_body(trigger: str = "1.2.3") -> bytes:
    from urllib.parse import urlencode

    return urlencode({"command": "/reset-passwords", "text": "", "user_id": ADMIN,
                      "user_name": "admin", "channel_id": "C0TASKS", "trigger_id": trigger,
                      "team_id": TEAM["id"]}).encode()


def home_event(event_id: str, user: str = ADMIN) -> bytes:
    return json.dumps({
        "token": "legacy", "team_id": TEAM["id"], "api_app_id": "ARESETBOT",
        "event": {"type": "app_home_opened", "user": user, "tab": "home", "channel": "D0HOME"},
        "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM["id"], "user_id": "UBOTRESET", "is_bot": True,
                            "is_enterprise_install": False}],
    }).encode()


def publishes_for(standin: SlackStandIn, user: str) -> int:
    return sum(1 for call in standin.calls("views.publish") if call.params["user_id"] == user)


@sqlite_only
def test_a_replayed_signature_gets_401_and_the_command_acts_once(
    slack_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    body, now = command_body(), str(int(time.time()))
    signature = sign(SIGNING_SECRET, now, body)

    assert slack_app.slack.post(body, timestamp=now, signature=signature).status == 200
    slack_standin.wait_for_call("views.open")
    replayed = slack_app.slack.post(body, timestamp=now, signature=signature)

    assert replayed.status == 401 and replayed.json() == {"error": "invalid request"}
    assert slack_standin.count("views.open") == 1
    # Another request with the same words but its own signature is a new request.
    assert slack_app.slack.post(command_body("4.5.6")).status == 200
    slack_standin.wait_for_call("views.open", count=2)


@sqlite_only
def test_the_seen_signature_is_kept_in_redis_as_a_hash_until_it_expires(
    slack_app: RunningApp,
) -> None:
    body, now = command_body(), str(int(time.time()))
    signature = sign(SIGNING_SECRET, now, body)
    assert slack_app.slack.post(body, timestamp=now, signature=signature).status == 200

    keys = list(slack_app.redis.scan_iter(match=f"resetbot:{slack_app.settings.reset_queue}:*"))
    assert len(keys) == 1
    [key] = keys
    digest = hashlib.sha256(signature.encode()).hexdigest()
    assert key.decode().endswith(f"signature:{digest}")
    assert signature.encode() not in key and slack_app.redis.get(key) == b"1"
    assert 300 <= slack_app.redis.ttl(key) <= 361  # while the signature could still verify


@sqlite_only
def test_a_replay_to_another_app_process_is_refused_through_redis(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn,
) -> None:
    configured = app_settings(settings, slack_standin)
    first, first_thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    second, second_thread = start_app(configured, sessions, directory, redis_conn,
                                      slack_standin)
    try:
        body, now = command_body(), str(int(time.time()))
        signature = sign(SIGNING_SECRET, now, body)
        assert first.slack.post(body, timestamp=now, signature=signature).status == 200
        assert second.slack.post(body, timestamp=now, signature=signature).status == 401
    finally:
        first.stop(first_thread)
        second.stop(second_thread)


@sqlite_only
def test_without_redis_each_process_still_refuses_replays_it_has_seen(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    slack_standin: SlackStandIn,
) -> None:
    down = redis_probe(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    running, thread = start_app(app_settings(settings, slack_standin), sessions, directory, down,
                                slack_standin)
    try:
        body, now = command_body(), str(int(time.time()))
        signature = sign(SIGNING_SECRET, now, body)
        assert running.slack.post(body, timestamp=now, signature=signature).status == 200
        assert running.slack.post(body, timestamp=now, signature=signature).status == 401
        assert running.slack.post(command_body("7.8.9")).status == 200
    finally:
        running.stop(thread)


@sqlite_only
def test_an_events_api_retry_is_answered_200_without_acting_twice(
    slack_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    body = home_event("Ev0RETRIED1")
    now = int(time.time())
    assert slack_app.slack.post(body, content_type="application/json",
                                timestamp=str(now)).status == 200
    slack_standin.wait_for(lambda: publishes_for(slack_standin, ADMIN) == 1)

    # Slack's retries: the same event, signed again, marked with the attempt number.
    retry_headers = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    retried = slack_app.slack.post(body, content_type="application/json",
                                   timestamp=str(now + 1), extra_headers=retry_headers)
    # A retry whose signature was seen already (re-sent as it was) is answered the same way.
    repeated = slack_app.slack.post(body, content_type="application/json",
                                    timestamp=str(now + 1), extra_headers=retry_headers)
    assert (retried.status, repeated.status) == (200, 200)

    # Another user's event, after them, is handled: once it is, the retries had done nothing.
    assert slack_app.slack.post(home_event("Ev0OTHER001", user="UOTHER"),
                                content_type="application/json").status == 200
    slack_standin.wait_for(lambda: publishes_for(slack_standin, "UOTHER") == 1)
    assert publishes_for(slack_standin, ADMIN) == 1


@sqlite_only
def test_a_replayed_signature_without_the_retry_mark_is_still_401_for_an_event(
    slack_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    body, now = home_event("Ev0REPLAY01"), str(int(time.time()))
    signature = sign(SIGNING_SECRET, now, body)
    sent: dict[str, Any] = {"content_type": "application/json", "timestamp": now,
                            "signature": signature}
    assert slack_app.slack.post(body, **sent).status == 200
    assert slack_app.slack.post(body, **sent).status == 401
