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

from sqlalchemy import Connection

from core.directory.protocol import DirectoryUnavailable, PasswordSet, SetOutcome, SetResult
from core.directory.sql import SqlDirectory
from core.models import ItemState, utcnow
from core.undo import keeper
from jobs.batches import Claim, Claimed, Conditions, ItemOutcome, Settled, TaskView
from jobs.claims import Lease, claim_in, hold, record_outcomes, release, renew
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
    #: Seconds the batch took to hash: about how long until the next batch is settled.
    took: float = 0.0


@dataclass
class Written:
    """A batch after its passwords were set: what is left to write, mail and hand back."""

    #: Ids still held whose users are to be mailed (their generated password was set).
    held: set[int]
    #: The states of the users not to be mailed, when not written yet (a foreign directory).
    states: list[ItemOutcome]
    #: The batch claimed in the same transaction as the lease (None: none was asked for).
    claimed: Claim | None
    directory_down: bool


def settle_batch(
    context: WorkerContext,
    task: TaskView,
    batch: HashedBatch,
    mailer: Mailer,
    carried: Sequence[ItemOutcome] = (),
    claim_next: Conditions | None = None,
    claim_size: int | None = None,
) -> Settled:
    """Set a batch's passwords and write its states, then mail it (those whose password the
    directory took; after an outage mid-batch too, then the job stops).

    `carried`: the states left by the batch before (written in this batch's first
    transaction); `claim_next`: which items to claim in that transaction, for the job's thread
    to hash next but one (the returned `Settled.claimed`), `claim_size` of them (claim_batch).
    """
    written = _write_batch(context, task, batch, carried, claim_next, claim_size)
    settled = Settled(retries=defaultdict(list), stop=written.directory_down,
                      claimed=written.claimed)
    to_mail = [item for item in batch.claimed
               if item.id in batch.passwords and item.id in written.held]
    if not to_mail:
        batch.passwords.clear()
        if settled.stop or batch.took >= context.settings.lease_seconds / 3:
            # Not to be carried: the job stops, or the lease might run out before the next
            # batch is settled.
            _record_now(context, written.states)
        else:
            settled.carried = written.states
        return settled
    outcomes, setup_error = _mail_each(context, task, batch, mailer, to_mail)
    _record_now(context, [*written.states, *outcomes])
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


def _record_now(context: WorkerContext, outcomes: Sequence[ItemOutcome]) -> None:
    if not outcomes:
        return
    with context.sessions() as session:
        record_outcomes(context, session, outcomes, utcnow())
        session.commit()


def fail_for_mail_setup(
    context: WorkerContext, task_id: int, claimed: Sequence[Claimed], error: str
) -> None:
    """Wrong SMTP credentials fail the task once, not each user thousands of times."""
    reason = f"Not reset: {error}"
    _record_now(context, [ItemOutcome(item.id, ItemState.NOTIFY_FAILED, item.attempts, None,
                                      reason) for item in claimed])
    fail_task(context, task_id, error)


def shares_state(context: WorkerContext) -> bool:
    """The directory is a table in resetbot's own database (no DIRECTORY_URL): its hashes and
    the items' states can be written in one transaction."""
    directory = context.directory
    return isinstance(directory, SqlDirectory) and directory.engine is context.engine


def _write_batch(
    context: WorkerContext,
    task: TaskView,
    batch: HashedBatch,
    carried: Sequence[ItemOutcome],
    claim_next: Conditions | None,
    claim_size: int | None = None,
) -> Written:
    """Set the passwords and state how it went; the states still to write (a foreign
    directory), the next claim, and whether the directory stopped answering.

    The order is what keeps a crash anywhere from leaving a user with a password nobody will
    be told:
      1. renew the lease (state): the check that this worker still holds each item; an item
         whose lease was lost is someone else's now, and its password is not set here (on
         its own table, where 3 follows in the same transaction, the items are locked
         instead, and only those to be mailed have their lease renewed, after 3);
      2. set the passwords (directory): a SQL table's hashes in one transaction, an LDAP
         server's passwords pipelined (DIRECTORY_LDAP_WINDOW writes in flight);
      3. end the items not to be mailed, and those the directory refused (state); the others
         are ended once mailed.
    Where the users live beside resetbot's state (its own table), 1 to 3 are one transaction,
    with the states carried from the batch before and the claim of the batch after next:
    they all happen, or none. Otherwise 1 is one transaction in resetbot's database (also
    writing the states carried from the batch before, and claiming), 2 one in the directory's,
    and 3 goes with this batch's mail outcomes, or, nobody being mailed, with the next batch's
    step 1. A crash after 2 leaves the items claimed: their lease expires, the reaper hands
    them back, and the re-do makes a fresh password, sets it again and mails it, so the last
    mail a user gets still holds the password that works. Were the states written first, a
    crash before the passwords would record users as reset whose password never changed.

    A directory that stops answering mid-batch (DirectoryUnavailable) has set the passwords of
    the users it names as done: they go on (mailed, or ended) as any others; the rest of the
    batch goes back to pending untouched, and the task pauses until the directory may answer.
    """
    now = utcnow()
    taken = time.monotonic()
    together = shares_state(context)
    states: list[ItemOutcome] = []
    claimed: Claim | None = None
    with context.sessions() as session:
        record_outcomes(context, session, carried, now)
        ids = [item.id for item in batch.claimed]
        # Together, every item held is ended or has its lease renewed further down in this
        # same transaction: locking them is check enough, and each is written once, not twice.
        held = hold(context, session, ids) if together else renew(context, session, ids)
        wanted = [planned for planned in batch.sets if planned.item.id in held]
        if together:
            outcomes, outage = _set_passwords(context, task.id, wanted, now,
                                              session.connection())
            states, not_done = _states_of(task, batch, held, wanted, outcomes)
            record_outcomes(context, session, states, now)
            ended = {outcome.item_id for outcome in states} | {item.id for item in not_done}
            if to_mail := sorted(held - ended):
                renew(context, session, to_mail)
            states = []
        if claim_next is not None:
            claimed = Claim(claim_in(context, session, task.id, claim_next, size=claim_size),
                            taken)
        session.commit()
    if not together:
        outcomes, outage = _set_passwords(context, task.id, wanted, now)
        states, not_done = _states_of(task, batch, held, wanted, outcomes)
    batch.sets.clear()  # the passwords (and hashes) are not needed any more
    if not_done:
        release(context, not_done)
    if outage is not None:
        pause_for_directory(context, task.id, outage)
    elif task.paused and outcomes:
        resume_after_directory_outage(context, task.id)
    batch.lease.renewed = taken
    not_mailed = {outcome.item_id for outcome in states} | {item.id for item in not_done}
    return Written(held - not_mailed, states, claimed, outage is not None)


def _states_of(
    task: TaskView,
    batch: HashedBatch,
    held: set[int],
    wanted: Sequence[PlannedSet],
    outcomes: Sequence[SetOutcome],
) -> tuple[list[ItemOutcome], list[Claimed]]:
    """The final states of the held items not to be mailed (no address, or refused by the
    directory), and the items the directory did not get to (it stopped answering). Drops the
    generated passwords of all but the users to mail."""
    by_user = {outcome.user_id: outcome for outcome in outcomes}
    not_done = [planned.item for planned in wanted if planned.item.user_id not in by_user]
    not_done_ids = {item.id for item in not_done}
    states: list[ItemOutcome] = []
    for item in batch.claimed:
        if item.id not in held or item.id in not_done_ids:
            batch.passwords.pop(item.id, None)
            continue
        outcome = by_user.get(item.user_id)
        if outcome is not None and outcome.result is not SetResult.SET:
            batch.passwords.pop(item.id, None)
            states.append(ItemOutcome(item.id, ItemState.REFUSED, item.attempts, None,
                                      _refusal_words(outcome)))
        elif item.id not in batch.passwords:
            states.append(ItemOutcome(item.id, task.unmailed_state, item.attempts))
    return states, not_done


def _set_passwords(
    context: WorkerContext, task_id: int, wanted: Sequence[PlannedSet], now: datetime,
    connection: Connection | None = None,
) -> tuple[list[SetOutcome], str | None]:
    """The directory's outcome per user set, and why it stopped answering (None if it did not).

    A SQL table gets the hashes made on the job's thread, and keeps what they replace for Undo
    (core/undo.py) in the same transaction (`connection`'s, when given: resetbot's own table);
    any other directory the passwords (no Undo).
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
                before_write=keep, connection=connection,
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
    mails = [_password_mail(task, item, batch.passwords.pop(item.id)) for item in to_mail]
    batch.passwords.clear()
    # Pipelined over one connection (see Mailer.send_each); the lease renewed as before.
    deliveries = mailer.send_each(mails, before=batch.lease.renew_if_due)
    del mails  # the passwords live on only in the sending, each until its mail is out
    for item in to_mail:
        if setup_error is None:
            try:
                delivery = next(deliveries)
            except MailSetupError as error:  # a reconnect found the server unusable
                setup_error = str(error)
        if setup_error is not None:
            delivery = Delivery(Outcome.PERMANENT, f"The mail could not be sent: {setup_error}")
        outcomes.append(mail_outcome(context.settings.mail_retry_delays, item, delivery, utcnow()))
    deliveries.close()
    return outcomes, setup_error


def _password_mail(task: TaskView, item: Claimed, password: str) -> PasswordMail:
    return PasswordMail(
        full_name=item.full_name,
        address=item.email or "",
        username=item.username,
        password=password,
        require_change=task.require_change,
    )
