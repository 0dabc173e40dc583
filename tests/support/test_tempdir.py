"""The run's own temporary folder: what a test leaves there fails the run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.tempdir import RunTemp


@pytest.fixture
def restored_tmpdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TMPDIR and tempfile's cache as they were, whatever the test does to them."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp_path


def test_a_run_that_leaves_something_fails_and_keeps_only_pytests_folders(
    restored_tmpdir: Path,
) -> None:
    run = RunTemp.start()
    assert run.path.parent == restored_tmpdir
    assert tempfile.gettempdir() == str(run.path) == os.environ["TMPDIR"]
    leaked = Path(tempfile.mkdtemp(prefix="redis-"))
    (run.path / "pytest-of-someone").mkdir()
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK)

    assert run.finish(session) == [leaked]  # type: ignore[arg-type]

    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert not leaked.exists()
    assert [p.name for p in run.path.iterdir()] == ["pytest-of-someone"]  # kept: the run failed
    assert os.environ["TMPDIR"] == str(restored_tmpdir)


def test_a_clean_run_removes_its_folder(restored_tmpdir: Path) -> None:
    run = RunTemp.start()
    (run.path / "pytest-of-someone").mkdir()
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK)

    assert run.finish(session) == []  # type: ignore[arg-type]

    assert session.exitstatus == pytest.ExitCode.OK
    assert not run.path.exists()
    assert tempfile.gettempdir() == str(restored_tmpdir)
