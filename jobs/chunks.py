"""The work on a job's items: claim a batch, hash it, hand it to be settled, repeat.

The stages overlap: while the job's thread hashes one batch, a helper thread writes the previous
batch's hashes and states, claiming the batch after it in the same transaction, and sends its
mails (waiting on the database and the mail server; see `Pipeline`). Hashing releases the GIL,
so the database and mail latency hides behind the hashing that dominates a reset, and the job's
thread does little else. A batch costs as few round trips as its guarantees allow: one
transaction on resetbot's own table, one in each database on a library system's
(`jobs.settling`), plus its mail outcomes once mailed.
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import select

from core.addresses import usable_address
from core.directory.protocol import PasswordSet
from core.directory.sql import SqlDirectory
from core.errors import ConfigError
from core.models import Mode, NoEmailChoice, ResetTask, TaskStatus, utcnow
from core.passwords import generate_password
from core.sealing import unseal
from jobs.batches import (
    Claim,
    Claimed,
    Conditions,
    ItemOutcome,
    KnownPasswords,
    Settled,
    TaskView,
)
from jobs.claims import Lease, claim_items, give_back, record_outcomes, release
from jobs.context import WorkerContext
from jobs.finishing import fail_task, finish_if_done
from jobs.mailer import Mailer, MailSetupError
from jobs.outage import pause_for_mail, resume_after_mail_outage
from jobs.progress import ProgressWatch
from jobs.retries import schedule_retries
from jobs.settling import HashedBatch, PlannedSet, fail_for_mail_setup, settle_batch

#: A batch takes at most this share of the lease to hash, or to settle (measured on the
#: batches before): RESET_CLAIM_BATCH users, or fewer where hashing is slow (bcrypt at a high
#: cost) or the directory is (an LDAP server sets each password itself, one by one). A batch
#: claimed while an earlier one settles waits about two batches' time for its lease to be
#: renewed: a third of the lease at most, so the lease comfortably outlasts it.
LEASE_SHARE = 6


def batch_size(context: WorkerContext) -> int:
    """How many users the next claim takes per batch: RESET_CLAIM_BATCH, or as many as this
    worker hashes, or settles, in a LEASE_SHARE-th of the lease, whichever is fewest.

    Each batch costs a few statements and a transaction whatever its size (claim, lease, Undo's
    snapshot, hashes, states): bigger batches spread them over more users.
    """
    most = context.settings.claim_batch
    per_user = max(context.hash_seconds_per_user, context.settle_seconds_per_user)
    if per_user <= 0:
        return most
    return max(1, min(most, int(context.settings.lease_seconds / LEASE_SHARE / per_user)))


def work_items(context: WorkerContext, task_id: int, conditions: Conditions) -> None:
    """Claim, hash, write and mail batch after batch, then schedule retries and maybe finish."""
    task = load_task(context, task_id)
    if task is None:
        return
    try:
        known = _known_passwords(context, task)
    except ConfigError as error:
        fail_task(context, task_id, str(error))
        return
    mailer = Mailer(context.settings, context.smtp_factory, context.templates)
    with mailer, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"resetbot-settle-{task_id}"
    ) as helper:
        pipeline = Pipeline(context, task, conditions, mailer, helper)
        pipeline.run(known)
    del known
    schedule_retries(context, task_id, pipeline.retries)
    pipeline.progress.job_ended()
    finish_if_done(context, task_id)


def load_task(context: WorkerContext, task_id: int) -> TaskView | None:
    """The task if it is running; None when there is nothing to work on."""
    with context.sessions() as session:
        # The columns a job needs, not the whole task (its selection may hold 100,000 ids).
        task = session.execute(
            select(ResetTask.status, ResetTask.mode, ResetTask.require_change,
                   ResetTask.default_password_sealed, ResetTask.paused_since,
                   ResetTask.no_email, ResetTask.no_email_password_sealed, ResetTask.total,
                   ResetTask.planned)
            .where(ResetTask.id == task_id)
        ).one_or_none()
    if task is None or task.status != TaskStatus.RUNNING:
        return None
    return TaskView(task_id, Mode(task.mode), task.require_change,
                    task.default_password_sealed, paused=task.paused_since is not None,
                    no_email=NoEmailChoice(task.no_email),
                    no_email_sealed=task.no_email_password_sealed,
                    total=task.total if task.planned else 0)


def _known_passwords(context: WorkerContext, task: TaskView) -> KnownPasswords:
    """The default password (default mode), or the one for users without an address (`set`).

    Raises ConfigError when one is missing or cannot be unsealed with this worker's key.
    """
    key, old_keys = context.settings.reset_secret_key, context.settings.reset_secret_key_old
    if task.mode is Mode.DEFAULT:
        if task.sealed is None:
            raise ConfigError("The task's default password is missing.")
        return KnownPasswords(default=unseal(key, task.sealed, old_keys))
    # Every generated password meets the directory's own longest minimum (Koha's categories,
    # an LDAP server's policy), whoever it is for.
    at_least = context.directory.generated_minimum()
    if task.no_email is NoEmailChoice.SET:
        if task.no_email_sealed is None:
            raise ConfigError("The password for users without an e-mail address is missing.")
        return KnownPasswords(handout=unseal(key, task.no_email_sealed, old_keys),
                              generated_at_least=at_least)
    return KnownPasswords(generated_at_least=at_least)


class Pipeline:
    """One job's batches: hashed on the job's thread, claimed and settled on one helper thread.

    The helper runs one thing at a time, first in first out. Settling batch N begins with one
    transaction in resetbot's database that writes what batch N-1 left (its states, when
    nobody was mailed), renews batch N's lease and claims batch N+2; the job's thread hashes
    batch N+1 meanwhile, claimed when batch N-1 was settled. A claim thus runs after the
    settling before it, so it sees a task that settling has just failed (the claim checks the
    task still runs). At most one batch is being settled while the next one is hashed.
    """

    def __init__(
        self,
        context: WorkerContext,
        task: TaskView,
        conditions: Conditions,
        mailer: Mailer,
        helper: ThreadPoolExecutor,
    ) -> None:
        self.context = context
        self.task = task
        self.conditions = conditions
        self.mailer = mailer
        self.helper = helper
        #: Item ids waiting for a mail retry, by the number of the attempt coming up.
        self.retries: dict[int, list[int]] = defaultdict(list)
        self.in_flight: Future[Settled] | None = None
        #: Claimed by the last step collected, to be hashed after the batch being hashed.
        self.upcoming: list[Claimed] = []
        self.upcoming_taken = 0.0
        #: States the last settled batch left for the next one's first transaction.
        self.carried: list[ItemOutcome] = []
        # Used on the helper thread only, after each settled batch: never while hashing.
        self.progress = ProgressWatch(context, task.id, task.total)

    def run(self, known: KnownPasswords) -> None:
        """Hash batch after batch until none is left or the job must stop."""
        # The first batch and the one hashed while it is settled, in one transaction.
        size = batch_size(self.context)
        self.in_flight = self.helper.submit(self._claim_two, size)
        self.collect()
        both = self.take_upcoming()
        current = Claim(both.items[:size], both.taken)
        self.upcoming = both.items[size:]
        while current.items and self.mailer_ready(current.items):
            batch = hash_batch(self.context, current, known, self.task)
            if batch.sets:
                self.context.hash_seconds_per_user = batch.took / len(batch.sets)
            if not self.collect():
                self.upcoming.extend(current.items)  # given back untouched, with the next
                break
            current = self.take_upcoming()
            self.settle(batch)
        self.finish()

    def _claim_two(self, size: int) -> Settled:
        taken = time.monotonic()
        claimed = claim_items(self.context, self.task.id, self.conditions, batches=2, size=size)
        return Settled(claimed=Claim(claimed, taken))

    def take_upcoming(self) -> Claim:
        claim = Claim(self.upcoming, self.upcoming_taken)
        self.upcoming = []
        return claim

    def mailer_ready(self, claimed: list[Claimed]) -> bool:
        """The mail server takes a connection before a batch with users to mail is hashed.

        Nobody is locked out by a mail server that cannot be used: with wrong credentials the
        task fails; with a server that cannot be reached the batch goes back untouched and the
        task pauses (jobs.outage). False when the job must stop.
        """
        if self.mailer.connected or self.task.mode is not Mode.GENERATED or not any(
            usable_address(item.email) for item in claimed
        ):
            return True
        if not self.collect():
            release(self.context, claimed)
            return False
        self.mailer.reachable_again()
        try:
            self.mailer.open()
        except MailSetupError as error:
            fail_for_mail_setup(self.context, self.task.id, claimed, str(error))
            return False
        if self.mailer.unreachable is not None:
            release(self.context, claimed)
            pause_for_mail(self.context, self.task.id, self.mailer.unreachable)
            return False
        if self.task.paused:
            resume_after_mail_outage(self.context, self.task.id)
        return True

    def settle(self, batch: HashedBatch) -> None:
        """Write and mail a hashed batch on the helper thread (claiming the one after next),
        then maybe report progress."""
        carried, self.carried = self.carried, []
        # The settling thread sees this job's context too (reporters may ask for it).
        self.in_flight = self.helper.submit(
            contextvars.copy_context().run, self._settle, batch, carried,
            batch_size(self.context),
        )

    def _settle(self, batch: HashedBatch, carried: list[ItemOutcome], size: int) -> Settled:
        started, users = time.monotonic(), len(batch.claimed)
        settled = settle_batch(self.context, self.task, batch, self.mailer, carried,
                               self.conditions, size)
        if users:
            self.context.settle_seconds_per_user = (time.monotonic() - started) / users
        self.progress.settled(len(batch.claimed))
        return settled

    def collect(self) -> bool:
        """Wait for the step in flight (keeping what it claimed and what it left to write);
        False when the job must stop."""
        if self.in_flight is None:
            return True
        settled = self.in_flight.result()  # re-raises the settling stage's error here
        self.in_flight = None
        for attempt, item_ids in settled.retries.items():
            self.retries[attempt].extend(item_ids)
        if settled.claimed is not None:
            self.upcoming.extend(settled.claimed.items)
            self.upcoming_taken = settled.claimed.taken
        self.carried.extend(settled.carried)
        return not settled.stop

    def finish(self) -> None:
        """Once the last step is in: write what it left and give back what it claimed, in one
        transaction."""
        self.collect()
        left, self.carried = self.carried, []
        claimed = self.take_upcoming().items
        if not left and not claimed:
            return
        with self.context.sessions() as session:
            record_outcomes(self.context, session, left, utcnow())
            give_back(self.context, session, [item.id for item in claimed])
            session.commit()


def hash_batch(
    context: WorkerContext, claim: Claim, known: KnownPasswords, task: TaskView
) -> HashedBatch:
    """Each user's new password (a new one each in generated mode), and where the directory's
    system reads hashes (a SQL table), its hash: the cost of a reset, on the job's thread.

    In generated mode a user without an address gets a random password nobody is told
    (`reset`), none (`skip`), or the one staff typed (`set`, always to be changed at the next
    sign-in). A directory that hashes for itself (LDAP) gets the passwords as they are, in the
    settling stage, over TLS.
    """
    policy = context.settings.policy
    hashing = context.directory if isinstance(context.directory, SqlDirectory) else None
    started = time.monotonic()
    lease = Lease(context, (item.id for item in claim.items), claim.taken)
    lease.renew_if_due()
    passwords: dict[int, str] = {}
    sets: list[PlannedSet] = []
    for item in claim.items:
        must_change = task.require_change
        if known.default is not None:
            password = known.default
        elif usable_address(item.email):  # planned items hold usable ones; older ones may not
            password = passwords[item.id] = generate_password(
                policy, item.username, at_least=known.generated_at_least
            )
        elif task.no_email is NoEmailChoice.SKIP:
            continue
        elif task.no_email is NoEmailChoice.SET and known.handout is not None:
            password = known.handout
            must_change = True  # a password staff hand out is changed at the next sign-in
        else:
            password = generate_password(policy, item.username,
                                         at_least=known.generated_at_least)
        wanted = PasswordSet(item.user_id, password, must_change)
        new_hash = context.hasher.hash(password) if hashing is not None else None
        sets.append(PlannedSet(item, wanted, new_hash))
        lease.renew_if_due()
    return HashedBatch(claim.items, sets, passwords, lease, time.monotonic() - started)
