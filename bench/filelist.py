"""The `file` phase: a file of users given in Slack, at --file-lines lines (default 100,000).

What the app does after acking a form with a file, each step timed: `files.info` and the
download through the Slack stand-in with the bot token (bot.slack_files), decoding and parsing
(core.userio.entries_from_file), matching against the directory (core.userio.match_entries),
and the preview of the matched users (validate + park the request with its file report).
The ack itself does none of this: it only turns the form into "Reading the file…".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from slack_sdk import WebClient

from bench.harness import database
from bench.synth import synth_users
from bot.slack_files import download_file
from core import tasks
from core.models import Scope
from core.settings import Settings
from core.userio import entries_from_file, match_entries

Row = dict[str, Any]
#: Lines of the file that name nobody (a typo, a leaver), as a real list has a few.
UNKNOWN_EVERY = 50


def listed_file(count: int) -> bytes:
    """`count` lines: the synthetic directory's usernames, every 50th one unknown, some upper."""
    lines = []
    for user in synth_users(count):
        if user.id % UNKNOWN_EVERY == 0:
            lines.append(f"left{user.id}")
        elif user.id % 13 == 0:
            lines.append(user.username.upper())
        else:
            lines.append(user.username)
    return ("\n".join(lines) + "\n").encode()


def file_phase(
    lines: int, kinds: list[str], base: Settings, slack: Any, log: Callable[[str], None]
) -> list[Row]:
    """One row per database: the milliseconds of each step for a `lines`-line file."""
    rows: list[Row] = []
    content = listed_file(lines)
    client = WebClient(token=slack.token, base_url=slack.api_url)
    for kind in kinds:
        with database(kind, lines, base) as db:
            settings = replace(base, database_url=db.url)
            file_id = slack.share_file(content, "list.txt", filetype="text")
            started = time.perf_counter()
            data = download_file(client, file_id)
            downloaded = time.perf_counter()
            entries = entries_from_file(data)
            parsed = time.perf_counter()
            match = match_entries(db.directory, entries)
            matched = time.perf_counter()
            request = tasks.ResetRequest(requester="UBENCH", scope=Scope.SELECTED_ONLY,
                                         selection=match.ids)
            with db.sessions() as session:
                preview = tasks.validate_request(settings, db.directory, request)
                tasks.create_pending(session, settings, request, preview, match.report())
                session.commit()
            previewed = time.perf_counter()
            row = {
                "db": kind, "lines": lines, "bytes": len(data), "users": len(match.ids),
                "unmatched": len(match.unmatched),
                "download_ms": round((downloaded - started) * 1000, 1),
                "parse_ms": round((parsed - downloaded) * 1000, 1),
                "match_ms": round((matched - parsed) * 1000, 1),
                "preview_ms": round((previewed - matched) * 1000, 1),
                "total_ms": round((previewed - started) * 1000, 1),
            }
            rows.append(row)
            log(f"  file of {lines:,} lines on {kind}: download {row['download_ms']} ms, parse "
                f"{row['parse_ms']} ms, match {row['match_ms']} ms, preview "
                f"{row['preview_ms']} ms ({row['users']:,} users, {row['unmatched']:,} "
                "unmatched)")
    return rows
