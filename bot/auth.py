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

from blocks.text import ADMIN_GROUP_UNREADABLE, NOBODY_ALLOWED_WARNING, NOT_ALLOWED
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
    ) -> None:
        self.users = settings.reset_admins
        self.group = settings.reset_admin_group
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
            return NOT_AN_ADMIN
        if user_id in self.users:
            return None
        if not self.group:
            return NOT_AN_ADMIN
        members = self._group_members()
        if members is None:
            return GROUP_UNREADABLE
        return None if user_id in members else NOT_AN_ADMIN

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
            log.warning("RESET_ADMIN_GROUP could not be read for %.0f s: its members are not "
                        "admitted until Slack answers", now - self._failing_since)

    def _fetch_group(self) -> frozenset[str] | None:
        """The group's members, or None when Slack could not say."""
        assert self.group is not None
        try:
            response = self._client.usergroups_users_list(usergroup=self.group)
        except SlackApiError as error:
            log.warning("Could not read RESET_ADMIN_GROUP %s: %s", self.group,
                        error.response.get("error"))
            return None
        except (SlackClientError, OSError) as error:
            log.warning("Could not reach Slack to read RESET_ADMIN_GROUP: %s",
                        type(error).__name__)
            return None
        users = response.get("users") or []
        return frozenset(str(user) for user in users if isinstance(user, str))
