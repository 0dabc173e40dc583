"""RESET_ADMIN_GROUP when Slack cannot say who is in it: the last list is trusted for
RESET_ADMIN_GROUP_MAX_STALE at most, then nobody is admitted through the group (with a clear
reason) until Slack answers again; RESET_ADMINS never depends on Slack.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from slack_sdk import WebClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from blocks.text import ADMIN_GROUP_UNREADABLE
from bot.auth import GROUP_UNREADABLE, NOT_AN_ADMIN, Admins
from core.directory import Directory
from core.models import AuditEntry
from core.settings import Settings
from tests.support.signing import ADMIN, OUTSIDER, app_settings, start_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
GROUP, MEMBER = "S0ADMINS", "UGROUPIE"
SLACK_DOWN = 10_000  # more failed calls than any test makes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@sqlite_only
def test_the_last_known_members_are_trusted_only_for_max_stale(
    settings: Settings, slack_standin: SlackStandIn
) -> None:
    slack_standin.set_usergroup(GROUP, [MEMBER])
    configured = replace(settings, reset_admins=frozenset({ADMIN}), reset_admin_group=GROUP,
                         admin_group_max_stale=120.0)
    clock = Clock()
    client = WebClient(token=slack_standin.token, base_url=slack_standin.api_url)
    admins = Admins(configured, client, cache_seconds=60, clock=clock)
    assert admins.refusal(MEMBER) is None
    assert admins.refusal(OUTSIDER) is NOT_AN_ADMIN

    slack_standin.fail_next("usergroups.users.list", "service_unavailable", times=SLACK_DOWN)
    clock.now += 61  # the list is due again; Slack fails; the list of a minute ago stands
    assert admins.refusal(MEMBER) is None
    clock.now += 120  # failing for exactly max_stale
    assert admins.refusal(MEMBER) is None
    clock.now += 1  # longer than max_stale: nobody through the group, whoever they are
    assert admins.refusal(MEMBER) is GROUP_UNREADABLE
    assert admins.refusal(OUTSIDER) is GROUP_UNREADABLE
    assert admins.refusal(ADMIN) is None  # RESET_ADMINS still work
    failed_calls = slack_standin.count("usergroups.users.list")
    assert failed_calls <= 2 + 121 // 5 + 1  # backed off, not one call per request

    slack_standin.clear_faults()
    clock.now += 5  # the next try reaches Slack again
    assert admins.refusal(MEMBER) is None
    assert admins.refusal(OUTSIDER) is NOT_AN_ADMIN


@sqlite_only
def test_a_group_slack_never_listed_admits_nobody_with_a_clear_reason(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, sample_users: list[Any],
) -> None:
    slack_standin.set_usergroup(GROUP, [MEMBER])
    slack_standin.fail_next("usergroups.users.list", "service_unavailable", times=SLACK_DOWN)
    configured = app_settings(settings, slack_standin, reset_admin_group=GROUP)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        refused = running.slack.command(user=MEMBER).json()
        assert refused == {"response_type": "ephemeral", "text": ADMIN_GROUP_UNREADABLE}
        assert "RESET_ADMINS still can" in refused["text"]
        assert running.open_modal(user=ADMIN)["callback_id"] == "bulk_reset"
    finally:
        running.stop(thread)
    with sessions() as session:
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "refused"))
    assert entry.actor == MEMBER
    assert entry.detail["reason"] == "admin group unreadable"
