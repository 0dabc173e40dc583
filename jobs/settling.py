"""Settling a hashed batch: write its hashes and states, mail its users, record how it went.

This runs on a chunk's helper thread (see `jobs.chunks`) while the job's thread hashes the next
batch. A generated password lives only here, in memory, between its hash being committed and
its mail being accepted; a retry makes a new one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.models import ItemState, utcnow
from core.undo import keeper
from jobs.batches import Claimed, ItemOutcome, Settled, TaskView
from jobs.claims import Lease, end_unmailed, record_outcomes, renew
from jobs.context import WorkerContext
from jobs.finishing import fail_task
from jobs.mailer import Delivery, Mailer, MailSetupError, Outcome, PasswordMail
from jobs.outage import OUTAGE_STREAK, pause_for_mail
from jobs.retries import mail_outcome


@dataclass
class HashedBatch:
    """A claimed batch after hashing: what the settling stage writes and mails."""

    claimed: list[Claimed]
    hashes: list[tuple[Claimed, str]]
    #: Generated passwords of the users to mail, by item id: in memory only, dropped once sent.
    passwords: dict[int, str] = field(repr=False)
    lease: Lease


def settle_batch(
    context: WorkerContext, task: TaskView, batch: HashedBatch, mailer: Mailer
) -> Settled:
    """Write a hashed batch (hashes and states in one transaction), then mail it."""
    settled = Settled(retries=defaultdict(list))
    held = _write_batch(context, task, batch)
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


def _write_batch(context: WorkerContext, task: TaskView, batch: HashedBatch) -> set[int]:
    """Write the hashes and end the users not to be mailed; the ids this worker still holds.

    The hashes live in the directory's database, the items' states in resetbot's: two
    transactions, in this order, so that a crash anywhere never leaves a user with a password
    nobody will be told:
      1. renew the lease (state): the check that this worker still holds each item; an item
         whose lease was lost is someone else's now, and its hash is not written here;
      2. write the hashes (directory), one transaction;
      3. end the items not to be mailed (state); the others are ended once mailed.
    A crash after 2 leaves the items claimed: their lease expires, the reaper hands them back,
    and the re-do makes a fresh password, writes it again and mails it, so the last mail a user
    gets still holds the password that works. Were the states written first, a crash before the
    hashes would record users as reset whose password never changed.
    """
    now = utcnow()
    unmailed = [item.id for item in batch.claimed if item.id not in batch.passwords]
    with context.sessions() as session:
        held = renew(context, session, [item.id for item in batch.claimed])
        session.commit()
    written = [(item.user_id, new_hash) for item, new_hash in batch.hashes if item.id in held]
    handed_out = _handed_out(task, batch)
    keep = keeper(context.settings, context.directory, context.engine, context.sessions, task.id)
    # A password staff hand out must be changed at the next sign-in, whatever the task says.
    for must_change, group in (
        (True, [pair for pair in written if pair[0] in handed_out]),
        (task.require_change, [pair for pair in written if pair[0] not in handed_out]),
    ):
        if group:
            context.directory.write_hashes(group, require_change=must_change, changed_at=now,
                                           before_write=keep)
    with context.sessions() as session:
        ended = end_unmailed(
            context, session, [i for i in unmailed if i in held], task.unmailed_state, now
        )
        session.commit()
    batch.lease.renewed = time.monotonic()
    return held - (set(unmailed) - ended)


def _handed_out(task: TaskView, batch: HashedBatch) -> set[int]:
    """User ids that get the password staff typed (users without an address, choice `set`)."""
    if task.unmailed_state is not ItemState.HANDED_OUT:
        return set()
    return {item.user_id for item in batch.claimed if item.id not in batch.passwords}


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
