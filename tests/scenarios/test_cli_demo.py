"""The first run: `resetbot demo` on a machine with no configuration, through the console script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(sys.executable).parent / "resetbot"


def run_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "demo"],
        # Nothing configured: no DATABASE_URL, REDIS_URL, SMTP or Slack settings, no .env; and
        # resetbot is not on PATH, as for someone who ran `.venv/bin/resetbot demo`.
        # TMPDIR: the run's own temporary folder, where a folder left behind is seen.
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": tempfile.gettempdir()},
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )


def pasted(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A line of the demo's output pasted into a shell somewhere else."""
    return subprocess.run(
        ["/bin/sh", "-c", line], env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}, cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.slow
def test_demo_runs_a_real_bulk_reset_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_demo(tmp_path)
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    # The bar as rich leaves it off a terminal: drawn once, in its final state.
    assert re.search(r"^Task #1 \S+ 46 of 46 users 100% [\d.,]+ users/s ", out, re.MULTILINE)
    assert "Task #1 completed in" in out
    assert "e-mailed                                 40" in out
    assert "Users to contact by hand: 6" in out
    assert "The local SMTP server captured 40 mails." in out
    assert "  | New password: ********" in out
    assert "verifies against the new hash in the database: yes" in out
    assert not re.search(r"New password: (?!\*{8}$)\S+$", out, re.MULTILINE)
    assert "What next" in out
    demo_dir = tmp_path / "resetbot-demo"
    assert (demo_dir / "demo.db").is_file() and (demo_dir / "sample-users.csv").is_file()
    # The embedded Redis stopped with the demo: no server left on its socket, no registry.
    assert not (demo_dir / ".resetbot" / "redis.db.settings").exists()
    socket_path = re.search(r"embedded Redis at unix://(\S+)", out)
    assert socket_path is not None
    leftovers = [
        process.info["pid"] for process in psutil.process_iter(["pid", "cmdline"])
        if socket_path.group(1) in " ".join(process.info["cmdline"] or [])
        and process.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == []
    print(f"\nresetbot demo took {took:.1f} s")

    # What it says to do next works when pasted, from another folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    commands = [line.strip().removeprefix("As CSV: ") for line in out.splitlines()
                if "DATABASE_URL=" in line]
    assert len(commands) == 5, out
    expected = {  # what each command's output holds, by how the command ends
        " tasks show 1 --csv": "username,full_name,email,outcome",
        " tasks": " completed ",
        " tasks show 1": "Task #1: completed",
        " audit": " confirm ",
        " --dry-run": "Dry run: nothing was changed.",
    }
    for command in commands:
        assert command.split()[1] == str(SCRIPT), "resetbot by its full path: it is not on PATH"
        [says] = [says for end, says in expected.items() if command.endswith(end)]
        done = pasted(command, elsewhere)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert says in done.stdout, (command, done.stdout)
    [setup] = [line.strip() for line in out.splitlines() if " db upgrade && " in line]
    shutil.copy(demo_dir / "sample-users.csv", elsewhere / "users.csv")
    done = pasted(setup, elsewhere)
    assert done.returncode == 0, done.stderr
    assert "Imported 50 users: 50 new" in done.stdout
    assert (elsewhere / "resetbot.db").is_file()

    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "This replaces the demo that ran there before" in again.stdout
    assert "This replaces" not in out
