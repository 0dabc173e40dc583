"""A reset from the terminal: who, preview, confirmation, queue, progress, summary, exit code.

`resetbot reset` runs all of it (`run_reset`); the demo runs the same steps without asking.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from blocks.text import ended_words
from bot.terminal import (
    EXIT_NOT_COMPLETED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_WITH_ERRORS,
    OUTCOME_WORDS,
    Output,
    Refused,
    login_name,
    plural,
    requester,
    shown,
)
from core import audit, undo
from core.directory import Preview
from core.directory.factory import open_directory
from core.directory.protocol import Directory
from core.models import Mode, NoEmailChoice, Scope, TaskStatus
from core.passwords import normalised
from core.progress import TaskSnapshot, snapshot
from core.reset_list import ListedUser, reset_list, reset_list_csv
from core.settings import Settings
from core.tally import preview_tally
from core.tasks import (
    RequestInvalid,
    ResetRequest,
    approval_required,
    create_task,
    gate_new_task,
)
from core.tasks import validate_request as check_request

if TYPE_CHECKING:  # opened (cli.redis) only once a reset is confirmed: a dry run loads no Redis
    from redis import Redis

POLL_SECONDS = 0.25
#: What the preview says happens to users without an e-mail address, by --without-email.
NO_EMAIL_WORDS = {
    NoEmailChoice.RESET: "reset, nobody is told: they use \"forgot password\", or you help them",
    NoEmailChoice.SKIP: "left alone: their password does not change",
    NoEmailChoice.SET: "get the password you typed: tell each of them",
}
#: How often `y` (or another short yes) is answered with "type yes" before giving up.
CONFIRM_ATTEMPTS = 3


@dataclass(frozen=True)
class ResetChoices:
    """What `resetbot reset` was asked to do, as its options say it."""

    scope: Scope
    usernames: Sequence[str]
    default_password_stdin: bool
    require_change: bool
    dry_run: bool
    yes: bool
    detach: bool
    without_email: NoEmailChoice = NoEmailChoice.RESET
    #: --at: when the reset should start (aware); None: now.
    start_at: datetime | None = None
    #: --dry-run --csv FILE: where to write the exact list of who it would reset.
    csv: Path | None = None
    #: --skip-locked / --no-skip-locked; None: the mode's default.
    skip_locked: bool | None = None


def run_reset(
    cli: Output,
    settings: Settings,
    sessions: sessionmaker[Session],
    open_redis: Callable[[], AbstractContextManager[Redis]],
    choices: ResetChoices,
) -> int:
    """Preview, confirm, queue and follow one reset; Redis is only opened once confirmed."""
    directory = open_directory(settings)
    try:
        return _run_reset(cli, settings, sessions, open_redis, choices, directory)
    finally:
        directory.dispose()


def _run_reset(
    cli: Output,
    settings: Settings,
    sessions: sessionmaker[Session],
    open_redis: Callable[[], AbstractContextManager[Redis]],
    choices: ResetChoices,
    directory: Directory,
) -> int:
    selection, case_notes = resolve_usernames(directory, choices.usernames)
    for note in case_notes:
        cli.say(note)
    password = read_default_password() if choices.default_password_stdin else None
    handout = None
    if choices.without_email is NoEmailChoice.SET:
        handout = read_default_password(what="password for the users without e-mail")
    request = ResetRequest(
        requester=requester(),
        requester_name=login_name(),
        scope=choices.scope,
        selection=selection,
        default_password=password,
        require_change=choices.require_change,
        no_email=choices.without_email,
        no_email_password=handout,
        start_at=choices.start_at,
        skip_locked=choices.skip_locked,
    )
    preview = validate_or_refuse(cli, sessions, settings, directory, request)
    cli.say(describe_preview(request, preview))
    no_undo = undo.preview_note(settings, directory)
    if no_undo is not None:
        cli.say(f"  Note: {no_undo}")
    if request.start_at is not None:
        cli.say(f"  Starts: {when_words(request.start_at)}")
    if choices.dry_run:
        if choices.csv is not None:
            listed = write_reset_list(choices.csv, directory, request)
            cli.say(f"The list of the {plural(listed, 'user')} it would reset: {choices.csv}")
        cli.say("Dry run: nothing was changed.")
        return EXIT_OK
    changed = preview_tally(preview, request.mode, request.no_email_choice,
                           skip_locked=request.leaves_locked).changed
    passwords = "password" if changed == 1 else "passwords"
    question = f"Reset the {passwords} of {plural(changed, 'user')}?"
    if request.start_at is not None:
        question = (f"Schedule the reset of the {passwords} of {plural(changed, 'user')} "
                    f"for {when_words(request.start_at)}?")
    if not choices.yes and not confirm(cli, question):
        cli.say("Nothing was changed.")
        return EXIT_REFUSED
    if request.start_at is not None or approval_required(
        settings, request.scope, preview.users
    ):
        # Waits (for approval, or for its time): committed needing no Redis; the reaper or an
        # approver moves it on. None: it needs neither any more, and starts now.
        waiting = hold_task(sessions, settings, request, preview)
        if waiting is not None:
            say_waiting(cli, settings, *waiting)
            return EXIT_OK
    with open_redis() as redis:
        task_id, status = start_task(sessions, settings, redis, request, preview)
        if status is not TaskStatus.QUEUED:  # never followed as if it ran, should it wait
            say_waiting(cli, settings, task_id, status, request.start_at)
            return EXIT_OK
        cli.say(f"Task #{task_id} queued.")
        if choices.detach:
            cli.say(f"Follow it with: resetbot tasks show {task_id}")
            return EXIT_OK
        warn_if_no_worker(cli, settings, redis)
    final = follow(cli, sessions, task_id)
    print_summary(cli, final)
    return exit_code(final)


def resolve_usernames(
    directory: Directory, usernames: Sequence[str]
) -> tuple[tuple[str, ...], list[str]]:
    """The users' ids, and a note for each name found under another spelling.

    resetbot's own table matches a name exactly first; a library system's table as its
    database compares (its collation: MariaDB's Koha ignores case and accents, as Koha's
    sign-in does), after Unicode NFC, the same spelling winning among several. Otherwise a name
    is matched ignoring case, when exactly one username in the directory matches that way.
    Several matches are refused, naming them: only the exact spelling can say which is meant.
    """
    from core.userio import match_usernames

    match = match_usernames(directory, usernames)
    ids = set(match.ids.values())
    notes = [f"Note: {shown(name)} is {shown(found)} in the directory ({how})."
             for name, (found, how) in match.case_notes.items()]
    unknown = [shown(name) for name in match.unknown]
    clashes = [f"{shown(name)} (could be {', '.join(shown(found) for found in spelled)})"
               for name, spelled in match.ambiguous.items()]
    if clashes:
        raise Refused(
            "these names match several usernames that differ only in case or accents; type "
            "them exactly as in the directory: " + "; ".join(clashes[:20])
            + " (nothing was changed)"
        )
    if unknown:
        raise Refused(
            "no such user in the directory: " + ", ".join(unknown[:20])
            + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            + " (nothing was changed)"
        )
    return tuple(sorted(ids)), notes


def read_default_password(
    stdin: IO[str] | None = None, what: str = "default password"
) -> str:
    """One line from stdin; on a terminal it is asked twice and never shown."""
    stream = stdin if stdin is not None else sys.stdin
    if stream.isatty():
        first = getpass.getpass(f"{what[0].upper()}{what[1:]} (not shown): ")
        if getpass.getpass("The same again: ") != first:
            raise Refused("the two passwords differ (nothing was changed)")
        password = first
    else:
        password = stream.readline().rstrip("\r\n")
    if not password:
        raise Refused(f"no {what} on stdin (nothing was changed)")
    # NFC: checked (usernames in it included) and hashed as the sign-in side compares it.
    return normalised(password)


def validate_or_refuse(
    cli: Output,
    sessions: sessionmaker[Session],
    settings: Settings,
    directory: Directory,
    request: ResetRequest,
) -> Preview:
    with sessions() as session:
        try:
            return check_request(settings, directory, request)
        except RequestInvalid as invalid:
            audit.record(
                session, request.requester, "refused", step="request",
                reason="invalid request", fields=sorted(invalid.problems),
            )
            session.commit()
            lines = [
                f"  {field}: {reason}"
                for field, reasons in invalid.problems.items()
                for reason in reasons
            ]
            raise Refused(
                "the request was refused (nothing was changed):\n" + "\n".join(lines)
            ) from None


def write_reset_list(path: Path, directory: Directory, request: ResetRequest) -> int:
    """The exact list (core/reset_list.py) in a file only its owner can read (personal data)."""
    users = 0

    def counted() -> Iterator[ListedUser]:
        nonlocal users
        for row in reset_list(directory, request.scope, request.selection, request.mode,
                              request.no_email_choice, skip_locked=request.leaves_locked):
            users += 1
            yield row

    content = reset_list_csv(counted())
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8", newline="") as file:
            file.write(content)
    except OSError as error:
        raise Refused(f"cannot write {path}: {error.strerror}") from None
    return users


def describe_preview(request: ResetRequest, preview: Preview) -> str:
    from blocks.text import locked_preview, unusable_addresses

    unusable = ""
    if request.mode is Mode.DEFAULT:
        mode = "one default password for everyone; nobody is e-mailed"
        mailed = 0
    else:
        mode = "a new random password for each user, e-mailed"
        mailed = preview.emailable
        unusable = unusable_addresses(preview.unusable)
    tally = preview_tally(preview, request.mode, request.no_email_choice,
                           skip_locked=request.leaves_locked)
    lines = [
        f"Scope: {request.scope.value}" + _scope_note(request),
        f"  Users in scope:        {tally.users:>8,}",
        f"  Users to reset:        {tally.changed:>8,}",
        f"  E-mailed:              {mailed:>8,}",
        f"  Without e-mail:        {preview.without_email:>8,}"
        + (f"   ({NO_EMAIL_WORDS[request.no_email_choice]})"
           if request.mode is Mode.GENERATED and preview.without_email else ""),
        *([f"    ({unusable})"] if unusable else []),
        f"  Staff included:        {preview.staff:>8,}",
        *([f"  Locked on purpose:     {preview.locked:>8,}   ("
           + locked_preview(preview.locked, request.leaves_locked).partition(": ")[2] + ")"]
          if preview.locked else []),
        f"  Mode: {mode}",
        "  Must change the password at next sign-in: "
        + ("yes" if request.require_change else "no"),
        *(f"  Note: {note}" for note in preview.notes),
    ]
    return "\n".join(lines)


def _scope_note(request: ResetRequest) -> str:
    selected = len(request.selection)
    return {
        Scope.ALL: " (every user, staff included)",
        Scope.ALL_EXCEPT_SELECTED: f" (everyone but the {plural(selected, 'selected user')})",
        Scope.ALL_WITHOUT_ROLE: " (end users only; everyone with a role is left alone)",
        Scope.SELECTED_ONLY: f" (the {plural(selected, 'selected user')})",
    }[request.scope]


def confirm(cli: Output, question: str) -> bool:
    """True only for a typed `yes`; `y` is asked again, anything else (or no answer) is a no."""
    prompt = f"{question} Type 'yes' to go ahead: "
    for _ in range(CONFIRM_ATTEMPTS):
        try:
            answer = input(prompt).strip().lower()
        except EOFError:
            return False
        if answer == "yes":
            return True
        if answer not in ("y", "ye"):
            return False
        cli.say("Please type the whole word 'yes' to reset these passwords, or 'no' to stop.")
        prompt = "Type 'yes' to go ahead: "
    cli.say("No 'yes' typed.")
    return False


def start_task(
    sessions: sessionmaker[Session], settings: Settings, redis: Redis,
    request: ResetRequest, preview: Preview | None = None,
) -> tuple[int, TaskStatus]:
    """Commit the task through the gate (`gate_new_task`), then put it on the queue unless it
    waits (for approval, or for its start time); a task the queue lost is found by the reaper."""
    from jobs.queueing import enqueue_task, make_queue

    with sessions() as session:
        task = create_task(session, settings, request, preview)
        status = gate_new_task(session, settings, task)
        session.commit()
        task_id = task.id
    if status is TaskStatus.QUEUED:
        enqueue_task(make_queue(settings, redis), task_id)
    return task_id, status


def hold_task(
    sessions: sessionmaker[Session], settings: Settings, request: ResetRequest, preview: Preview,
) -> tuple[int, TaskStatus, datetime | None] | None:
    """Commit a task that waits (for approval, or for its start time), needing no Redis.

    (id, status, start) when the gate made it wait; None when it let it through to `queued`
    (its time passed while the question waited) and the caller starts it now.
    """
    with sessions() as session:
        task = create_task(session, settings, request, preview)
        status = gate_new_task(session, settings, task)
        if status is TaskStatus.QUEUED:
            session.rollback()
            return None
        session.commit()
        return task.id, status, task.start_at


def say_waiting(
    cli: Output, settings: Settings, task_id: int, status: TaskStatus, start_at: datetime | None
) -> None:
    """What `resetbot reset` says of a task that does not start now, before it returns."""
    if status is TaskStatus.AWAITING_APPROVAL:
        say_awaiting_approval(cli, settings, task_id, start_at)
        return
    assert start_at is not None, "a scheduled task has a start time"
    cli.say(f"Task #{task_id} scheduled for {when_words(start_at)}: a worker starts "
            "it then; nothing has changed yet.")
    cli.say(f"See it with: resetbot tasks show {task_id}; stop it with: resetbot tasks "
            f"cancel {task_id}")


def say_awaiting_approval(
    cli: Output, settings: Settings, task_id: int, start_at: datetime | None = None
) -> None:
    hours = settings.reset_approval_ttl / 3600
    cli.say(f"Task #{task_id} awaits approval by another admin: nothing changes before that.")
    cli.say(f"  An approver runs: resetbot tasks approve {task_id} --as THEIR_SLACK_USER_ID")
    if start_at is not None:
        cli.say(f"  (or: resetbot tasks reject {task_id}). Once approved it starts at "
                f"{when_words(start_at)};")
        cli.say(f"  unapproved by then (or within {hours:g} hours), it expires.")
    else:
        cli.say(f"  (or: resetbot tasks reject {task_id}). Unapproved, it expires in "
                f"{hours:g} hours.")
    cli.say(f"See where it stands: resetbot tasks show {task_id}")


def when_words(moment: datetime) -> str:
    """"Sat 2027-01-09 06:00 CET (in 3 days)": this host's time, and how far away."""
    from blocks.text import until_words
    from core.models import utcnow

    local = moment.astimezone()
    return f"{local:%a %Y-%m-%d %H:%M %Z} ({until_words(moment, utcnow())})"


def warn_if_no_worker(cli: Output, settings: Settings, redis: Redis) -> None:
    from rq import Worker

    from jobs.queueing import make_queue

    if not Worker.all(queue=make_queue(settings, redis)):
        cli.say(
            f"Note: no worker is running on queue {settings.reset_queue!r} yet; the task "
            "starts when one does (`resetbot worker`)."
        )


# -- following a task ---------------------------------------------------------------------------


def follow(
    cli: Output, sessions: sessionmaker[Session], task_id: int, poll: float = POLL_SECONDS
) -> TaskSnapshot:
    """Draw the task's progress from the database until it ends (Ctrl-C stops following only)."""
    # Imported here: rich is only loaded by the commands that draw progress.
    from bot.progress_view import TaskProgress

    with TaskProgress(cli.out) as progress:
        try:
            final = _poll_until_final(sessions, task_id, progress.draw, poll)
        except KeyboardInterrupt:
            progress.stop()
            cli.say(
                f"Stopped following; task #{task_id} goes on. See: resetbot tasks show {task_id}"
            )
            raise
    return final


def _poll_until_final(
    sessions: sessionmaker[Session], task_id: int, draw: Callable[[TaskSnapshot], None],
    poll: float,
) -> TaskSnapshot:
    while True:
        with sessions() as session:
            current = snapshot(session, task_id)
        if current is None:
            raise Refused(f"task #{task_id} is gone from the database")
        draw(current)
        if current.status.is_final:
            return current
        time.sleep(poll)  # the database is the truth; a worker elsewhere writes it


def print_summary(cli: Output, task: TaskSnapshot) -> None:
    took = ""
    if task.started_at and task.finished_at:
        took = f" in {(task.finished_at - task.started_at).total_seconds():.1f} s"
    tally = task.tally
    cli.say(f"Task #{task.id} {task.status.words}{took}: {plural(tally.users, 'user')}"
            f"{ended_words(tally)}.")
    for state, count in task.counts.items():
        if count:
            cli.say(f"  {OUTCOME_WORDS[state]:<34} {count:>8,}")
    if task.error:
        cli.say(f"  Error: {shown(task.error)}")
    follow_ups = task.follow_up_count
    cli.say(f"Users to contact by hand: {follow_ups:,}")
    if follow_ups:
        cli.say(f"  The list (CSV): resetbot tasks show {task.id} --csv")


def exit_code(task: TaskSnapshot) -> int:
    if task.status is TaskStatus.COMPLETED:
        return EXIT_OK
    if task.status is TaskStatus.COMPLETED_WITH_ERRORS:
        return EXIT_WITH_ERRORS
    return EXIT_NOT_COMPLETED
