"""Settling a hashed batch: write its hashes and states, mail its users, record how it went.

This runs on a chunk's helper thread (see `jobs.chunks`) while the job's thread hashes the next
batch. A generated password lives only here, in memory, between its hash being committed and
its mail being accepted; a retry makes a new one.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from core.directory.protocol import DirectoryUnavailable, PasswordSet, SetOutcome, SetResult
from core.directory.sql import SqlDirectory
from core.models import ItemState, utcnow
from core.undo import keeper
from jobs.batches import Claimed, ItemOutcome, Settled, TaskView
from jobs.claims import Lease, end_unmailed, record_outcomes, release, renew
from jobs.context import WorkerContext
from jobs.finishing import fail_task
from jobs.mailer import Delivery, Mailer, MailSetupError, Outcome, PasswordMail
from jobs.outage import (
    OUTAGE_STREAK,
    pause_for_directory,
    pause_for_mail,
    resume_after_directory_outage,
)
from jobs.retries import mail_outcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedSet:
    """One user's new password, and its hash when the directory's system reads hashes."""

    item: Claimed
    wanted: PasswordSet
    new_hash: str | None = field(default=None, repr=False)


@dataclass
class HashedBatch:
    """A claimed batch after hashing: what the settling stage writes and mails."""

    claimed: list[Claimed]
    sets: list[PlannedSet] = field(repr=False)
    #: Generated passwords of the users to mail, by item id: in memory only, dropped once sent.
    passwords: dict[int, str] = field(repr=False)
    lease: Lease


def settle_batch(
    context: WorkerContext, task: TaskView, batch: HashedBatch, mailer: Mailer
) -> Settled:
    """Set a batch's passwords and write its states, then mail it (those whose password the
    directory took; after an outage mid-batch too, then the job stops)."""
    settled = Settled(retries=defaultdict(list))
    held, directory_down = _write_batch(context, task, batch)
    settled.stop = directory_down
    to_mail = [item for item in batch.claimed if item.id in batch.passwords and item.id in held]
    if not to_mail:
        batch.passwords.clear()
        return settled
    outcomes, setup_error = _mail_each(context, task, batch, mailer, to_mail)
    with context.sessions() as session:
        record_outcomes(context, session, outcomes, utcnow())
        session.commit()
    for outcome in outcomes:
        if outcome.state is ItemState.RETRY_WAIT:
            settled.retries[outcome.attempts + 1].append(outcome.item_id)
    if setup_error is not None:
        fail_task(context, task.id, setup_error)
        settled.stop = True
    elif mailer.transient_streak >= OUTAGE_STREAK:
        # The server takes connections but fails every mail: an outage all the same. Those
        # already hashed wait for their retry; nobody else is reset until it recovers.
        pause_for_mail(context, task.id, mailer.last_transient or "The mail server fails.")
        settled.stop = True
    return settled


def fail_for_mail_setup(
    context: WorkerContext, task_id: int, claimed: Sequence[Claimed], error: str
) -> None:
    """Wrong SMTP credentials fail the task once, not each user thousands of times."""
    reason = f"Not reset: {error}"
    with context.sessions() as session:
        record_outcomes(
            context, session,
            [ItemOutcome(item.id, ItemState.NOTIFY_FAILED, item.attempts, None, reason)
             for item in claimed],
            utcnow(),
        )
        session.commit()
    fail_task(context, task_id, error)


def _write_batch(
    context: WorkerContext, task: TaskView, batch: HashedBatch
) -> tuple[set[int], bool]:
    """Set the passwords and end the users not to be mailed; the ids this worker still holds
    and may mail, and whether the directory stopped answering (the job then stops).

    The passwords live in the directory, the items' states in resetbot's database: two
    transactions, in this order, so that a crash anywhere never leaves a user with a password
    nobody will be told:
      1. renew the lease (state): the check that this worker still holds each item; an item
         whose lease was lost is someone else's now, and its password is not set here;
      2. set the passwords (directory): a SQL table's hashes in one transaction, an LDAP
         server's passwords one by one;
      3. end the items not to be mailed, and those the directory refused (state); the others
         are ended once mailed.
    A crash after 2 leaves the items claimed: their lease expires, the reaper hands them back,
    and the re-do makes a fresh password, sets it again and mails it, so the last mail a user
    gets still holds the password that works. Were the states written first, a crash before the
    passwords would record users as reset whose password never changed.

    A directory that stops answering mid-batch (DirectoryUnavailable) has set the passwords of
    the users it names as done: they go on (mailed, or ended) as any others; the rest of the
    batch goes back to pending untouched, and the task pauses until the directory may answer.
    """
    now = utcnow()
    with context.sessions() as session:
        held = renew(context, session, [item.id for item in batch.claimed])
        session.commit()
    wanted = [planned for planned in batch.sets if planned.item.id in held]
    outcomes, outage = _set_passwords(context, task.id, wanted, now)
    batch.sets.clear()  # the passwords (and hashes) are not needed any more
    by_user = {outcome.user_id: outcome for outcome in outcomes}
    not_done = [planned.item for planned in wanted if planned.item.user_id not in by_user]
    refused = {
        planned.item.id: by_user[planned.item.user_id] for planned in wanted
        if planned.item.user_id in by_user
        and by_user[planned.item.user_id].result is not SetResult.SET
    }
    for item_id in [*refused, *(item.id for item in not_done)]:
        batch.passwords.pop(item_id, None)
    not_done_ids = {item.id for item in not_done}
    unmailed = [
        item.id for item in batch.claimed
        if item.id not in batch.passwords and item.id not in refused
        and item.id not in not_done_ids
    ]
    with context.sessions() as session:
        ended = end_unmailed(
            context, session, [i for i in unmailed if i in held], task.unmailed_state, now
        )
        record_outcomes(context, session, [
            ItemOutcome(item.id, ItemState.REFUSED, item.attempts, None,
                        _refusal_words(refused[item.id]))
            for item in batch.claimed if item.id in refused
        ], now)
        session.commit()
    if not_done:
        release(context, not_done)
    if outage is not None:
        pause_for_directory(context, task.id, outage)
    elif task.paused and outcomes:
        resume_after_directory_outage(context, task.id)
    batch.lease.renewed = time.monotonic()
    return held - (set(unmailed) - ended) - set(refused) - not_done_ids, outage is not None


def _set_passwords(
    context: WorkerContext, task_id: int, wanted: Sequence[PlannedSet], now: datetime
) -> tuple[list[SetOutcome], str | None]:
    """The directory's outcome per user set, and why it stopped answering (None if it did not).

    A SQL table gets the hashes made on the job's thread, and keeps what they replace for Undo
    (core/undo.py) in the same transaction; any other directory the passwords (no Undo).
    """
    if not wanted:
        return [], None
    directory = context.directory
    try:
        if isinstance(directory, SqlDirectory):
            keep = keeper(context.settings, directory, context.engine, context.sessions,
                          task_id)
            return directory.write_hashes(
                [(planned.wanted, planned.new_hash or "") for planned in wanted], now,
                before_write=keep,
            ), None
        return directory.set_passwords([planned.wanted for planned in wanted]), None
    except DirectoryUnavailable as error:
        logger.warning("the directory stopped answering mid-batch (%s of %s set): %s",
                       len(error.done), len(wanted), error)
        return list(error.done), str(error)


def _refusal_words(outcome: SetOutcome) -> str:
    if outcome.result is SetResult.NOT_FOUND:
        return "The user is no longer in the directory."
    return (outcome.reason or "The directory refused the new password.")[:2000]


def _mail_each(
    context: WorkerContext,
    task: TaskView,
    batch: HashedBatch,
    mailer: Mailer,
    to_mail: list[Claimed],
) -> tuple[list[ItemOutcome], str | None]:
    """Mail each user their password; the outcomes, and why the mail server became unusable.

    Once a reconnect finds the server unusable, the users left are not mailed.
    """
    mailer.reachable_again()
    outcomes: list[ItemOutcome] = []
    setup_error: str | None = None
    for item in to_mail:
        new_password = batch.passwords.pop(item.id)
        if setup_error is None:
            batch.lease.renew_if_due()
            try:
                delivery = mailer.send(_password_mail(task, item, new_password))
            except MailSetupError as error:  # a reconnect found the server unusable
                setup_error = str(error)
        if setup_error is not None:
            delivery = Delivery(Outcome.PERMANENT, f"The mail could not be sent: {setup_error}")
        outcomes.append(mail_outcome(context.settings.mail_retry_delays, item, delivery, utcnow()))
    batch.passwords.clear()
    return outcomes, setup_error


def _password_mail(task: TaskView, item: Claimed, password: str) -> PasswordMail:
    return PasswordMail(
        full_name=item.full_name,
        address=item.email or "",
        username=item.username,
        password=password,
        require_change=task.require_change,
    )
