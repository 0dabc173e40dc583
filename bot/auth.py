"""Who may reset: RESET_ADMINS user ids and/or the members of RESET_ADMIN_GROUP.

Checked on every request, because a payload can be replayed by anyone who reaches the endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.text import (
    ADMIN_GROUP_UNREADABLE,
    NOBODY_ALLOWED_WARNING,
    NOT_ALLOWED,
    NOT_AN_APPROVER,
)
from core.settings import Settings

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 60.0
#: After a failed lookup, ask Slack again this soon rather than on every request.
RETRY_FAILED_LOOKUP_SECONDS = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why someone may not act: `reason` for the audit trail, `message` for the person."""

    reason: str
    message: str


NOT_AN_ADMIN = Refusal("not an admin", NOT_ALLOWED)
GROUP_UNREADABLE = Refusal("admin group unreadable", ADMIN_GROUP_UNREADABLE)
NOT_LISTED_APPROVER = Refusal("not an approver", NOT_AN_APPROVER)
APPROVER_GROUP_UNREADABLE = Refusal("approver group unreadable", NOT_AN_APPROVER)


class Admins:
    """Answers "may this Slack user reset passwords?"; one per app, with its own group cache.

    The group's members are asked of Slack at most once a minute. When Slack cannot say for
    longer than RESET_ADMIN_GROUP_MAX_STALE, the last list is no longer trusted: nobody is
    admitted through the group (someone removed from it meanwhile would still be) until Slack
    answers again. RESET_ADMINS never depends on Slack.
    """

    def __init__(
        self,
        settings: Settings,
        client: WebClient,
        *,
        cache_seconds: float = GROUP_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        listed: tuple[frozenset[str], str | None] | None = None,
        group_setting: str = "RESET_ADMIN_GROUP",
        refusals: tuple[Refusal, Refusal] = (NOT_AN_ADMIN, GROUP_UNREADABLE),
    ) -> None:
        """`listed` (user ids, group) replaces RESET_ADMINS / RESET_ADMIN_GROUP, with the
        setting named `group_setting` and `refusals` (not a member, group unreadable): the same
        check for another list of people (`Approvers`)."""
        self.users, self.group = (
            listed if listed is not None else (settings.reset_admins, settings.reset_admin_group)
        )
        self._group_setting = group_setting
        self._not_member, self._unreadable = refusals
        self._client = client
        self._cache_seconds = cache_seconds
        self._max_stale = settings.admin_group_max_stale
        self._clock = clock
        self._lock = threading.Lock()
        self._members: frozenset[str] = frozenset()
        self._fetched_at: float | None = None
        self._next_fetch_at: float | None = None
        self._failing_since: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.group)

    def warn_if_nobody(self) -> None:
        if not self.configured:
            log.warning(NOBODY_ALLOWED_WARNING)

    def allows(self, user_id: str | None) -> bool:
        return self.refusal(user_id) is None

    def refusal(self, user_id: str | None) -> Refusal | None:
        """Why `user_id` may not reset passwords (None when they may)."""
        if not user_id:
            return self._not_member
        if user_id in self.users:
            return None
        if not self.group:
            return self._not_member
        members = self._group_members()
        if members is None:
            return self._unreadable
        return None if user_id in members else self._not_member

    def _group_members(self) -> frozenset[str] | None:
        """The group's members, or None when Slack has not said who they are recently enough."""
        with self._lock:
            now = self._clock()
            if self._next_fetch_at is None or now >= self._next_fetch_at:
                self._refresh(now)
            if self._fetched_at is None:
                return None
            if self._failing_since is not None and now - self._failing_since > self._max_stale:
                return None
            return self._members

    def _refresh(self, now: float) -> None:
        fetched = self._fetch_group()
        if fetched is not None:
            self._members, self._fetched_at, self._failing_since = fetched, now, None
            self._next_fetch_at = now + self._cache_seconds
            return
        # Back off instead of asking per request; the last list stands for max_stale at most.
        self._next_fetch_at = now + RETRY_FAILED_LOOKUP_SECONDS
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self._max_stale:
            log.warning("%s could not be read for %.0f s: its members are not admitted until "
                        "Slack answers", self._group_setting, now - self._failing_since)

    def _fetch_group(self) -> frozenset[str] | None:
        """The group's members, or None when Slack could not say."""
        assert self.group is not None
        try:
            response = self._client.usergroups_users_list(usergroup=self.group)
        except SlackApiError as error:
            log.warning("Could not read %s %s: %s", self._group_setting, self.group,
                        error.response.get("error"))
            return None
        except (SlackClientError, OSError) as error:
            log.warning("Could not reach Slack to read %s: %s", self._group_setting,
                        type(error).__name__)
            return None
        users = response.get("users") or []
        return frozenset(str(user) for user in users if isinstance(user, str))


class Approvers:
    """Who may approve another admin's reset: an admin and, when RESET_APPROVERS or
    RESET_APPROVER_GROUP is set, one of those; otherwise any admin.

    That the requester never approves their own reset is checked in core (every edge).
    """

    def __init__(self, settings: Settings, client: WebClient, admins: Admins) -> None:
        self.admins = admins
        listed = (settings.reset_approvers, settings.reset_approver_group)
        self.listed = Admins(
            settings, client, listed=listed, group_setting="RESET_APPROVER_GROUP",
            refusals=(NOT_LISTED_APPROVER, APPROVER_GROUP_UNREADABLE),
        ) if any(listed) else None

    def refusal(self, user_id: str | None) -> Refusal | None:
        """Why `user_id` may not approve (None when they may, their own resets aside)."""
        refusal = self.admins.refusal(user_id)
        if refusal is not None or self.listed is None:
            return refusal
        return self.listed.refusal(user_id)
