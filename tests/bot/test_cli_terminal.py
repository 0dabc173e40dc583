"""How `resetbot` reads on a terminal: words, plurals, the confirm prompt, closed pipes, exit
codes for argument mistakes, naming users, help texts and control characters made visible.

In-process (`bot.cli.main`) on the real database; the pipe tests run the console script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import EXIT_PIPE_CLOSED, EXIT_USAGE, build_parser, main
from core.directory import Directory
from core.models import ResetTask, Scope
from core.settings import Settings
from tests.support.cli import FakeTerminal
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SCRIPT = Path(sys.executable).parent / "resetbot"
HOSTILE_USERNAME = "eve\x1b[2J\x1b[31m"
HOSTILE_NAME = "Eve \u202eevil\u202c\x9b1m"






def _task_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ResetTask)) or 0)


def _add_users(engine: Engine, directory: Directory, *users: tuple[str, str]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"username": username, "full_name": name, "email": None, "role": None,
             "password_hash": "old-hash", "must_change_password": False}
            for username, name in users
        ])


# -- the confirm prompt, words and plurals --------------------------------------------------------


@sqlite_only
def test_y_at_the_prompt_asks_for_yes_then_goes_ahead(
    run: Any, sessions: sessionmaker[Session], redis_conn: Redis, sample_users: Any
) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "alice", "--detach",
                 stdin=FakeTerminal("y\nyes\n"))
    assert result.code == 0, result.err
    assert "Reset the password of 1 user? Type 'yes' to go ahead:" in result.out
    assert "Please type the whole word 'yes'" in result.out
    assert "Task #1 queued." in result.out
    assert _task_count(sessions) == 1


@sqlite_only
def test_y_again_and_again_is_refused_clearly(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all", stdin=FakeTerminal("y\ny\ny\nyes\n"))
    assert result.code == 1
    assert result.out.count("Please type the whole word 'yes'") == 3
    assert "No 'yes' typed." in result.out and "Nothing was changed." in result.out
    assert "Reset the passwords of 7 users?" in result.out
    assert _task_count(sessions) == 0


@sqlite_only
def test_one_user_is_one_user(run: Any, sample_users: Any, tmp_path: Path) -> None:
    preview = run("reset", "--scope", "selected_only", "--user", "alice", "--dry-run")
    assert "(the 1 selected user)" in preview.out
    spared = run("reset", "--scope", "all_except_selected", "--user", "alice", "--dry-run")
    assert "(everyone but the 1 selected user)" in spared.out
    source = tmp_path / "one.csv"
    source.write_text("username,full_name,email\nzoe,Zoe Zed,zoe@example.org\n")
    assert "Imported 1 user: 1 new, 0 updated, 0 unchanged." in run("users", "import",
                                                                     str(source)).out
    target = tmp_path / "all.csv"
    assert "Wrote 8 users to" in run("users", "export", str(target)).out


# -- naming users -------------------------------------------------------------------------------


@sqlite_only
def test_user_takes_commas_and_repeats(run: Any, sample_users: Any) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "alice,bob", "--user", "carol",
                 "--user", "dave,", "--dry-run")
    assert result.code == 0, result.err
    assert "(the 4 selected users)" in result.out


@sqlite_only
def test_users_file_one_per_line_or_csv_with_a_username_column(
    run: Any, sample_users: Any, tmp_path: Path
) -> None:
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"\xef\xbb\xbfalice\r\n\r\nbob\r\n  carol  \r\n")
    plain = run("reset", "--scope", "selected_only", "--users-file", str(listed), "--dry-run")
    assert plain.code == 0, plain.err
    assert "(the 3 selected users)" in plain.out

    table = tmp_path / "class.csv"
    table.write_text("Email,USERNAME,Note\nx@example.org,dave,\"late, twice\"\n,erin,\n")
    csv_file = run("reset", "--scope", "all_except_selected", "--users-file", str(table),
                   "--user", "frank", "--dry-run")
    assert csv_file.code == 0, csv_file.err
    assert "(everyone but the 3 selected users)" in csv_file.out
    assert "Users to reset:               4" in csv_file.out


@sqlite_only
def test_a_users_file_that_is_not_a_list_of_usernames_is_refused_by_line(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("alice\nbob carol\ndave,erin\nfr\x1bank\n")
    result = run("reset", "--scope", "selected_only", "--users-file", str(bad), "--yes")
    assert result.code == 1
    assert "is not a list of usernames" in result.err
    assert f"{bad}, line 2: 'bob carol' is more than one username" in result.err
    assert f"{bad}, line 3: 'dave,erin' is more than one username" in result.err
    assert f"{bad}, line 4: a control character" in result.err
    missing = run("reset", "--scope", "selected_only", "--users-file", str(tmp_path / "no"),
                  "--yes")
    assert missing.code == 1 and "No such file or directory" in missing.err
    assert _task_count(sessions) == 0


@sqlite_only
def test_usernames_match_ignoring_case_unless_the_directory_has_them_twice(
    run: Any, engine: Engine, directory: Directory, sessions: sessionmaker[Session],
    sample_users: Any,
) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "ALICE,Bob", "--dry-run")
    assert result.code == 0, result.err
    assert "Note: ALICE is alice in the directory (matched ignoring case)." in result.out
    assert "(the 2 selected users)" in result.out

    _add_users(engine, directory, ("Henry", "Henry One"), ("henry", "Henry Two"))
    exact = run("reset", "--scope", "selected_only", "--user", "henry", "--dry-run")
    assert exact.code == 0 and "Note:" not in exact.out
    clash = run("reset", "--scope", "selected_only", "--user", "HENRY", "--yes")
    assert clash.code == 1
    assert "differ only in case" in clash.err
    assert "HENRY (could be Henry, henry)" in clash.err
    assert _task_count(sessions) == 0


# -- argument mistakes exit 2 ---------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(("argv", "said"), [
    (["reset", "--scope", "all", "--user", "bob"], "scope all takes no names"),
    (["reset", "--scope", "all_without_role", "--users-file", "x.txt"], "takes no names"),
    (["reset", "--scope", "selected_only", "--yes"], "needs the users to reset"),
    (["reset", "--scope", "all_except_selected", "--user", ",", "--yes"],
     "needs the users to leave alone"),
    (["reset", "--scope", "all"], "stdin is not a terminal"),
    (["reset", "--scope", "everyone"], "invalid choice"),
    (["tasks", "show", "abc"], "'abc' is not a task number"),
    (["tasks", "cancel", "0"], "'0' is not a task number"),
    (["tasks", "show", "1", "--json", "--csv"], "not allowed with argument"),
    (["audit", "--since", "yesterday"], "is not a date"),
    (["audit", "--since", "9999-12-31T23:59:59-14:00"], "is past the year 9999 in UTC"),
    (["serve", "--port", "70000"], "'70000' is not a port number"),
    (["frobnicate"], "invalid choice"),
])
def test_argument_mistakes_exit_2_with_one_clear_line(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, argv: list[str], said: str
) -> None:
    result = run(*argv)
    assert result.code == EXIT_USAGE == 2
    assert said in result.err
    assert "Traceback" not in result.err
    assert _task_count(sessions) == 0


# -- a reader that stops early ------------------------------------------------------------------


def _pipe_closed_early(argv: list[str], settings: Settings, cwd: Path) -> tuple[int, str]:
    """Run the console script into a real pipe; read one line and close it, as `head -1`."""
    process = subprocess.Popen(
        [str(SCRIPT), *argv], env={"PATH": "/usr/bin:/bin", **settings.to_env()}, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read().decode()
    return process.wait(30), err


@sqlite_only
def test_output_piped_into_head_ends_quietly(
    engine: Engine, directory: Directory, settings: Settings, tmp_path: Path
) -> None:
    # Far more than a pipe holds (64 KiB): the export is still writing when the reader goes.
    _add_users(engine, directory, *((f"user{n:05}", f"User Number {n} " + "x" * 40)
                                    for n in range(5000)))
    code, err = _pipe_closed_early(["users", "export"], settings, tmp_path)
    assert (code, err) == (EXIT_PIPE_CLOSED, "")
    code, err = _pipe_closed_early(["--help"], settings, tmp_path)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert code in (0, EXIT_PIPE_CLOSED)  # the help may fit in the pipe before it closes


# -- help that reads well -----------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_reset_help_explains_each_scope_and_mode_in_a_line(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["reset", "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for scope in Scope:
        [line] = [line for line in lines if line.strip().startswith(scope.value + " ")]
        assert len(line.split()) > 4, line  # the scope, then what it means
    assert any("e-mailed (default)" in line and "by e-mail" in line for line in lines)
    assert any("--default-password-stdin" in line and "no e-mail" in line
               for line in lines)
    assert "examples:" in lines


def test_every_command_has_a_one_line_description_and_help(
    capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    top = parser.format_help()
    commands = _subcommands(parser)
    assert set(commands) == {"db", "users", "directory", "reset", "tasks", "audit", "worker",
                             "serve", "demo", "mail"}
    for name in commands:
        [line] = [line for line in top.splitlines() if line.strip().startswith(name + " ")]
        assert len(line.split()) >= 4, f"{name} needs a description in `resetbot --help`"
    assert "examples:" in top and "exit codes:" in top
    for name, command in commands.items():
        paths = [[name]] + [[name, action] for action in _subcommands(command)]
        for path in paths:
            with pytest.raises(SystemExit) as exit_:
                main([*path, "--help"])
            assert exit_.value.code == 0
            text = capsys.readouterr().out
            description = text.split("\n\n")[1].strip()
            assert description and description[0].isupper() and description.endswith("."), (
                f"`resetbot {' '.join(path)} --help` should open with a sentence: {text}"
            )
    assert set(_subcommands(commands["tasks"])) == {"list", "show", "cancel", "retry", "approve",
                                                  "reject", "start"}


# -- control characters from the directory, made visible ----------------------------------------


@sqlite_only
def test_tasks_show_makes_control_characters_visible(
    run: Any, engine: Engine, directory: Directory, redis_conn: Redis, sample_users: Any
) -> None:
    _add_users(engine, directory, (HOSTILE_USERNAME, HOSTILE_NAME))
    assert run("reset", "--scope", "all_without_role", "--yes", "--detach").code == 0
    interval = sys.getswitchinterval()
    try:
        assert run("worker", "--burst").code == 0
    finally:
        sys.setswitchinterval(interval)
    shown = run("tasks", "show", "1").out
    assert "eve\\x1b[2J\\x1b[31m" in shown
    assert "\x1b" not in shown
    document = run("tasks", "show", "1", "--json").out
    assert "\\u202e" in document and "\\u009b" in document and "\u202e" not in document
    users = {user["username"]: user for user in json.loads(document)["users"]}
    assert users[HOSTILE_USERNAME]["full_name"] == HOSTILE_NAME, "the JSON still says the same"


@sqlite_only
def test_users_export_is_visible_on_a_terminal_and_exact_elsewhere(
    run: Any, engine: Engine, directory: Directory, sample_users: Any, tmp_path: Path
) -> None:
    _add_users(engine, directory, (HOSTILE_USERNAME, HOSTILE_NAME))
    screen = run("users", "export", stdout=FakeTerminal())
    assert screen.code == 0
    assert "eve\\x1b[2J\\x1b[31m,Eve \\u202eevil\\u202c\\x9b1m,," in screen.out
    assert not any(character in screen.out for character in "\x1b\u202e\x9b\r")
    assert screen.out.splitlines()[0] == "username,full_name,email,role"

    piped = run("users", "export")
    assert f"{HOSTILE_USERNAME},{HOSTILE_NAME},,\r\n" in piped.out
    target = tmp_path / "users.csv"
    assert run("users", "export", str(target)).code == 0
    assert f"{HOSTILE_USERNAME},{HOSTILE_NAME},,\r\n".encode() in target.read_bytes()
    assert target.read_bytes().decode("utf-8-sig") == piped.out
