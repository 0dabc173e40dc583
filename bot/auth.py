"""Who may reset: RESET_ADMINS user ids and/or the members of RESET_ADMIN_GROUP.

Checked on every request, because a payload can be replayed by anyone who reaches the endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.text import NOBODY_ALLOWED_WARNING
from core.settings import Settings

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 60.0
#: After a failed lookup, ask Slack again this soon rather than on every request.
RETRY_FAILED_LOOKUP_SECONDS = 5.0


class Admins:
    """Answers "may this Slack user reset passwords?"; one per app, with its own group cache."""

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
        self._clock = clock
        self._lock = threading.Lock()
        self._members: frozenset[str] = frozenset()
        self._fetched_at: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.group)

    def warn_if_nobody(self) -> None:
        if not self.configured:
            log.warning(NOBODY_ALLOWED_WARNING)

    def allows(self, user_id: str | None) -> bool:
        if not user_id:
            return False
        if user_id in self.users:
            return True
        return bool(self.group) and user_id in self._group_members()

    def _group_members(self) -> frozenset[str]:
        with self._lock:
            now = self._clock()
            fresh = (self._fetched_at is not None
                     and now - self._fetched_at < self._cache_seconds)
            if not fresh:
                fetched = self._fetch_group()
                if fetched is not None:
                    self._members, self._fetched_at = fetched, now
                else:
                    # Keep the last known members and back off instead of asking per request.
                    retry = RETRY_FAILED_LOOKUP_SECONDS
                    self._fetched_at = now - max(0.0, self._cache_seconds - retry)
            return self._members

    def _fetch_group(self) -> frozenset[str] | None:
        """The group's members, or None when Slack could not say (the old list then stands)."""
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
