"""Every command block of README.md and docs/*.md (```sh, bash, console) is run by a test, or
named below with the reason it cannot run here: a new block cannot slip in untested.

The blocks no other test runs are run here: the README's test command against .ci/run, the
audit trail's lines, the test services' defaults, and the systemd install lines in a folder laid
out as a host.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bot.cli import main
from core.db import make_engine
from core.models import AuditEntry
from tests.support import docs
from tests.support.services import (
    DEFAULT_MARIADB_URL,
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
)

SCRIPT = Path(sys.executable).parent / "resetbot"
THIS = "tests/test_docs_commands.py"

#: (page, the block's first line) -> the test that runs the block.
RUN_BY = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e . && "
                  ".venv/bin/resetbot demo"):
        f"{THIS}::test_the_first_run_installs_as_the_tests_do_then_runs_the_demo",
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e "
                  "'.[test]' && .venv/bin/python -m pytest -n auto"):
        f"{THIS}::test_the_readme_test_command_is_the_one_ci_runs",
    ("docs/koha.md", "DIRECTORY_URL=mysql+pymysql://resetbot:choose-a-long-password@127.0.0.1:"
                     "3306/koha"):
        "tests/scenarios/test_readme_directories.py::test_using_resetbot_with_koha_as_written",
    ("docs/koha.md", "resetbot db upgrade          # resetbot's own tables, in DATABASE_URL only"):
        "tests/scenarios/test_readme_directories.py::test_using_resetbot_with_koha_as_written",
    ("docs/koha.md", "resetbot reset --scope all_without_role --dry-run    # the preview; nothing "
                     "changes"):
        "tests/scenarios/test_readme_directories.py::test_using_resetbot_with_koha_as_written",
    ("docs/openldap.md", "DIRECTORY_URL=ldaps://ldap.example.org/dc=example,dc=org"):
        "tests/scenarios/test_readme_ldap.py::test_the_openldap_settings_as_written_check_and_reset",
    ("docs/active-directory.md", "DIRECTORY_URL=ldaps://dc1.example.org/OU=People,DC=example,"
                                 "DC=org"):
        "tests/scenarios/test_readme_ldap.py::test_the_active_directory_settings_as_written_check_and_reset",
    ("docs/operating.md", "resetbot audit                      # everything, oldest first"):
        f"{THIS}::test_the_audit_lines_run_as_written",
    ("docs/architecture.md", "RESETBOT_TEST_REDIS_URL=redis://127.0.0.1:6379/0"):
        f"{THIS}::test_the_test_services_defaults_are_the_ones_the_tests_use",
    ("docs/deployment.md", "sudo cp deploy/systemd/resetbot.service deploy/systemd/"
                           "resetbot-worker@.service /etc/systemd/system/"):
        f"{THIS}::test_the_systemd_lines_install_units_that_verify",
}

#: (page, the block's first line) -> why no test can run it here.
CANNOT_RUN = {
    ("docs/benchmark.md", ".venv/bin/python -m bench.run            # about 18 minutes; --quick "
                          "for a small run"):
        "as written it runs for about 18 minutes, more than CI's budget for the whole suite; "
        "tests/scenarios/test_bench.py runs the same entry point (bench.run's main) at a tiny "
        "size",
}


def command_blocks() -> list[docs.Block]:
    return [block for page in docs.pages() for block in docs.blocks_of(docs.read(page), page)
            if block.language in docs.COMMAND_LANGUAGES]


def test_every_command_block_is_run_by_a_test_or_said_why_not() -> None:
    found = [(block.page, block.first_line) for block in command_blocks()]
    assert len(found) == len(set(found)), "two blocks of a page begin with the same line"
    unaccounted = [key for key in found if key not in RUN_BY and key not in CANNOT_RUN]
    assert not unaccounted, (
        f"{THIS}: name the test that runs each of these blocks (RUN_BY), or say why it cannot "
        f"run here (CANNOT_RUN): {unaccounted}")
    assert not set(RUN_BY) & set(CANNOT_RUN)
    stale = (set(RUN_BY) | set(CANNOT_RUN)) - set(found)
    assert not stale, f"no such block any more: {sorted(stale)}"


def test_the_walk_sees_every_kind_of_command_block() -> None:
    page = "# T\n\n```sh\na\n```\n\n```console\n$ b\n```\n\n```toml\nc = 1\n```\n```bash\nd\n```\n"
    assert [(b.language, b.first_line) for b in docs.blocks_of(page)
            if b.language in docs.COMMAND_LANGUAGES] == [("sh", "a"), ("console", "$ b"),
                                                          ("bash", "d")]


@pytest.mark.parametrize("node", sorted(set(RUN_BY.values())))
def test_the_tests_named_for_blocks_exist(node: str) -> None:
    path, _, name = node.partition("::")
    tree = ast.parse((docs.REPO / path).read_text("utf-8"))
    assert name in {item.name for item in tree.body if isinstance(item, ast.FunctionDef)}, node


def the_block(page: str, first_line: str) -> str:
    [text] = [block.text for block in command_blocks()
              if (block.page, block.first_line) == (page, first_line)]
    return text


# ---- README: the two commands -----------------------------------------------------------------


def readme_commands() -> tuple[list[str], list[str]]:
    """The README's first run and its test command, each as its `&&`-joined steps."""
    first_run, tests = docs.blocks("README.md", "Two commands", "sh")
    return first_run.strip().split(" && "), tests.strip().split(" && ")


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run makes the same venv, installs the same constraints with the test extra (and the
    docs extra, for the site), and runs exactly the README's pytest command."""
    venv, install, pytest_command = readme_commands()[1]
    ci = (docs.REPO / ".ci/run").read_text("utf-8").splitlines()
    assert venv in ci
    assert pytest_command in ci
    assert ci[-1] == pytest_command  # the last thing CI does
    [ci_install] = [line for line in ci if " install " in line and "constraints.txt" in line]
    assert install.endswith("-c constraints.txt -e '.[test]'")
    extras = re.search(r"-e '\.\[([a-z,]+)\]'", ci_install)
    assert extras is not None and "test" in extras[1].split(",")
    assert "-c constraints.txt" in ci_install


def test_the_first_run_installs_as_the_tests_do_then_runs_the_demo() -> None:
    """The first run is the test command's venv and install without the test extra, then
    `resetbot demo`, which tests/scenarios/test_cli_demo.py runs through the same console
    script on a machine with nothing configured."""
    first_run, (venv, install, _) = readme_commands()
    assert first_run == [venv, install.replace(" '.[test]'", " ."), ".venv/bin/resetbot demo"]
    assert SCRIPT.name == "resetbot" and SCRIPT.exists()


# ---- docs/operating.md: the audit trail ------------------------------------------------------


def run_line(line: str, env: dict[str, str], cwd: Path,
             capsys: pytest.CaptureFixture[str]) -> str:
    """A `resetbot ...` line of a page, in this process (as `resetbot` would run it, with the
    shell's part done here: comments dropped, `> FILE` writes the output to FILE)."""
    words = shlex.split(line, comments=True)
    assert words[0] == "resetbot", line
    target = None
    if ">" in words:
        words, (_, target) = words[:words.index(">")], words[words.index(">"):]
    capsys.readouterr()
    code = main(words[1:], environ=env)
    out, err = capsys.readouterr()
    assert code == 0, (line, err)
    if target is not None:
        (cwd / target).write_text(out, encoding="utf-8")
    return out


def test_the_audit_lines_run_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite:///{tmp_path / 'resetbot.db'}"
    env = {"DATABASE_URL": database}
    run_line("resetbot db upgrade", env, tmp_path, capsys)
    engine = make_engine(database)
    with Session(engine) as session, session.begin():
        session.add_all([
            AuditEntry(at=datetime(2025, 1, 30, 12, tzinfo=UTC), actor="U1", action="request"),
            AuditEntry(at=datetime(2025, 2, 2, 9, tzinfo=UTC), actor="U2", action="confirm"),
        ])
    engine.dispose()
    lines = the_block("docs/operating.md", "resetbot audit                      # everything, "
                                           "oldest first").splitlines()
    everything, since, _ = (run_line(line, env, tmp_path, capsys) for line in lines)
    assert everything.index("request") < everything.index("confirm")  # oldest first
    assert "confirm" in since and "request" not in since
    written = (tmp_path / "audit.csv").read_text("utf-8")
    assert "request" in written and "confirm" in written and "," in written.splitlines()[0]


# ---- docs/architecture.md: where the test services are ---------------------------------------


def test_the_test_services_defaults_are_the_ones_the_tests_use() -> None:
    block = the_block("docs/architecture.md", "RESETBOT_TEST_REDIS_URL=redis://127.0.0.1:6379/0")
    written = dict(line.split("=", 1) for line in block.splitlines())
    assert written == {"RESETBOT_TEST_REDIS_URL": DEFAULT_REDIS_URL,
                       "RESETBOT_TEST_POSTGRES_URL": DEFAULT_POSTGRES_URL,
                       "RESETBOT_TEST_MARIADB_URL": DEFAULT_MARIADB_URL}


# ---- docs/deployment.md: the systemd units installed -----------------------------------------

HOST_UNITS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


def host_root(tmp_path: Path) -> Path:
    """A folder laid out as a host with resetbot installed where the units look for it."""
    shipped = next((path for path in HOST_UNITS if (path / "sysinit.target").exists()), None)
    if shipped is None:
        pytest.skip("no systemd units shipped on this host (sysinit.target)")
    root = tmp_path / "host"
    shutil.copytree(shipped, root / "usr/lib/systemd/system", symlinks=True)
    executable = root / "opt/resetbot/venv/bin/resetbot"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def as_on_root(line: str, root: Path) -> str:
    """A line of the page run as root would run it, on the folder instead of /: `sudo` is not
    needed there, paths under /etc/ are the folder's, and `systemctl enable --now` (which needs
    a running systemd) becomes `systemd-analyze verify` of the same units."""
    line = line.removeprefix("sudo ").replace(" /etc/", f" {root}/etc/")
    return line.replace("systemctl enable --now", f"systemd-analyze verify --man=no --root={root}")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (.ci/run installs it)")
def test_the_systemd_lines_install_units_that_verify(tmp_path: Path) -> None:
    root = host_root(tmp_path)
    block = the_block("docs/deployment.md", "sudo cp deploy/systemd/resetbot.service deploy/"
                                            "systemd/resetbot-worker@.service /etc/systemd/system/")
    lines = [line for line in block.splitlines() if not line.startswith("#")]
    assert lines[-1].startswith("sudo systemctl enable --now resetbot.service resetbot-worker@1")
    script = "set -e\n" + "".join(as_on_root(line, root) + "\n" for line in lines)
    done = subprocess.run(["bash", "-c", script], cwd=docs.REPO, capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""  # verify warns about nothing
    installed = sorted(p.name for p in (root / "etc/systemd/system").iterdir())
    assert installed == ["resetbot-worker@.service", "resetbot.service"]
    settings = root / "etc/resetbot/resetbot.env"
    assert settings.read_text() == (docs.REPO / "deploy/systemd/resetbot.env.example").read_text()
    assert settings.stat().st_mode & 0o777 == 0o600
