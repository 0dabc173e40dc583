"""The exact list (issue 20): what `--dry-run --csv` and "Send me the list" say is what a confirm
resets, for each scope, on resetbot's own table and on a Koha-shaped directory; locked users
marked; cells safe in a spreadsheet."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select

from core.directory import Directory
from core.models import Mode, NoEmailChoice, ResetItem, ResetTask, Scope, TaskStatus
from core.reset_list import WHAT_HAPPENS, reset_list, reset_list_csv
from core.settings import Settings
from jobs.context import WorkerContext
from tests.scenarios.test_koha import DEFAULT_PASSWORD
from tests.scenarios.test_koha import koha_directory as koha_directory
from tests.support.cli import RunCli
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context, run_until_final, submit
from tests.support.koha import BORROWERS
from tests.support.koha import koha_engine as koha_engine
from tests.support.koha import koha_settings as koha_settings
from tests.support.koha import state_engine as state_engine
from tests.support.smtp import smtp_server as smtp_server

SCOPES = [
    (Scope.ALL, ()),
    (Scope.ALL_EXCEPT_SELECTED, (2, 5)),
    (Scope.ALL_WITHOUT_ROLE, ()),
    (Scope.SELECTED_ONLY, (1, 3, 4)),
]
OUTCOME = {words: state.value for state, words in WHAT_HAPPENS.items()}


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def items_of(context: WorkerContext, task_id: int) -> list[tuple[str, str, bool]]:
    with context.sessions() as session:
        return [(item.username, item.state, item.is_staff) for item in session.scalars(
            select(ResetItem).where(ResetItem.task_id == task_id).order_by(ResetItem.user_id))]


def listed(rows: list[dict[str, str]]) -> list[tuple[str, str, bool]]:
    return [(row["username"], OUTCOME[row["what_happens"]], row["staff"] == "yes")
            for row in rows]


@pytest.mark.parametrize(("scope", "selection"), SCOPES)
def test_the_koha_list_is_the_tasks_items_and_marks_who_staff_locked(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine, redis_conn: Redis,
    scope: Scope, selection: tuple[int, ...],
) -> None:
    directory = Directory.from_settings(koha_settings)
    try:
        rows = rows_of(reset_list_csv(reset_list(
            directory, scope, selection, Mode.DEFAULT, NoEmailChoice.RESET)))
    finally:
        directory.dispose()
    context = build_context(koha_settings, redis_conn, state_engine)
    try:
        task_id = submit(context, scope, selection, default_password=DEFAULT_PASSWORD)
        final = run_until_final(context, task_id)
        items = items_of(context, task_id)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED
    assert rows and listed(rows) == items
    by_name = {b.username: b for b in BORROWERS}
    for row in rows:
        borrower = by_name[row["username"]]
        # Koha: locked on purpose is login_attempts = -1 (a reset leaves it locked).
        assert (row["locked"] == "yes") == (borrower.login_attempts == -1)
        assert row["email"] == (borrower.email or "no usable address")
        assert row["full_name"] == f"{borrower.firstname} {borrower.surname}"


@pytest.mark.parametrize(("scope", "selection"), SCOPES)
@pytest.mark.parametrize("without_email", ["reset", "skip"])
def test_dry_run_csv_lists_what_the_reset_then_does(
    run: RunCli, cli_settings: Settings, engine: Engine, redis_conn: Redis,
    sample_users: list[Any], tmp_path: Path, scope: Scope, selection: tuple[int, ...],
    without_email: str,
) -> None:
    names = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin"}
    picked = ["--user", ",".join(names[i] for i in selection)] if selection else []
    options = ["--scope", scope.value, *picked, "--without-email", without_email]
    path = tmp_path / "who.csv"

    dry = run("reset", *options, "--dry-run", "--csv", str(path))
    assert dry.code == 0, dry.err
    assert f"it would reset: {path}" in dry.out and "Dry run: nothing was changed." in dry.out
    assert path.stat().st_mode & 0o077 == 0  # personal data: readable by its owner only
    rows = rows_of(path.read_text(encoding="utf-8"))

    queued = run("reset", *options, "--yes", "--detach")
    assert queued.code == 0, queued.err
    context = build_context(cli_settings, redis_conn, engine)
    try:
        with context.sessions() as session:
            task_id = session.scalars(select(ResetTask.id)).one()
        assert run_until_final(context, task_id).status.is_final
        assert listed(rows) == items_of(context, task_id)
    finally:
        context.close()


def test_a_formula_in_a_name_stays_text_in_the_list(
    engine: Engine, directory: Directory, sample_users: list[Any],
) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [{
            "id": 50, "username": "=cmd|' /C calc'!A0", "full_name": "+SUM(A1:A9)\nEvil",
            "email": "=1@evil.example", "role": None, "password_hash": "x",
            "must_change_password": False}])
    rows = rows_of(reset_list_csv(reset_list(
        directory, Scope.SELECTED_ONLY, (50,), Mode.GENERATED, NoEmailChoice.RESET)))
    assert [(r["username"], r["full_name"], r["email"]) for r in rows] == [
        ("'=cmd|' /C calc'!A0", "'+SUM(A1:A9) Evil", "'=1@evil.example")]


def test_dry_run_csv_needs_dry_run(run: RunCli, tmp_path: Path) -> None:
    refused = run("reset", "--scope", "all", "--yes", "--csv", str(tmp_path / "x.csv"))
    assert refused.code == 2 and "--csv FILE goes with --dry-run" in refused.err
    assert not (tmp_path / "x.csv").exists()
