"""The run leaves nothing in the system's temporary folder, and a test that would is caught.

At the start of a run (in the pytest process, or the xdist controller before it starts its
workers) a fresh folder is made in the system's temporary folder and set as TMPDIR, for the run
and every process it starts: xdist workers, `resetbot` subprocesses, redis-servers. At the end,
anything in it besides pytest's own `pytest-of-*` folders was left there by a test: the run fails
and names it. A run that passed then removes the folder; a failed one keeps it (pytest keeps the
failed tests' tmp_path folders there) and says where it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = "rbt-"  # short: unix socket paths under it must stay under 108 bytes


@dataclass
class RunTemp:
    path: Path
    previous: str | None

    @classmethod
    def start(cls) -> RunTemp:
        """A fresh folder in the system's temporary folder, TMPDIR from now on."""
        path = Path(tempfile.mkdtemp(prefix=PREFIX))
        run = cls(path, os.environ.get("TMPDIR"))
        os.environ["TMPDIR"] = str(path)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again
        return run

    def left_behind(self) -> list[Path]:
        """What the run left in its folder, pytest's own tmp_path folders aside."""
        return sorted(p for p in self.path.iterdir() if not p.name.startswith("pytest-of-"))

    def finish(self, session: pytest.Session) -> list[Path]:
        """Fail the run on anything left behind (and remove that); on success, remove all."""
        left = self.left_behind()
        for path in left:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if left and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.previous
        tempfile.tempdir = None
        if session.exitstatus == pytest.ExitCode.OK:
            shutil.rmtree(self.path, ignore_errors=True)
        return left
